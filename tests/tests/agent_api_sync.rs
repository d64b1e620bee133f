//! An agent following the API (`--kubeconfig`) never withdraws a service
//! because the API server or the agent itself restarts: it publishes
//! nothing until Services and EndpointSlices have both been listed, and
//! meanwhile the pinned maps keep forwarding. Checked under traffic
//! through every phase: server down, agent restarted while the server is
//! down, server back, server restarted under a running agent.
use std::time::{Duration, Instant};

use sluice_tests::{
    api_server::{API_ONLY, ApiServer},
    require_root,
    topology::programmed,
    topology::{LbTopology, TempDir, http_service},
};

const VIP: &str = "10.96.0.110";
const SERVICE: &str = "default/web:http/TCP";
/// Generous for the watchers' backoff (up to 30 s between tries).
const CEILING: Duration = Duration::from_secs(120);

/// The service is in the pinned maps with both backends, and a client's
/// connections to it are answered by a backend under the service's
/// address. Panics naming `phase` otherwise.
fn assert_serving(t: &LbTopology, phase: &str) {
    let lb = t.lb_list_json();
    let backends = lb.as_array().and_then(|a| {
        a.iter().find(|s| s["name"] == SERVICE).map(|s| {
            s["backends"].as_array().map_or(0, |b| {
                b.iter()
                    .filter(|b| b["slots"].as_u64().is_some_and(|n| n > 0))
                    .count()
            })
        })
    });
    assert_eq!(backends, Some(2), "{phase}: bpf lb list: {lb}");
    let peer = format!("{VIP}:80");
    let replies = t.client(&["tcp", &peer, "4"]);
    assert!(
        replies.len() == 4
            && replies
                .iter()
                .all(|l| l.starts_with("pod-") && l.ends_with(&format!(" {peer}"))),
        "{phase}: connections to the service: {replies:?}"
    );
}

/// Keeps checking [`assert_serving`] until `done` (at least twice: once
/// before and once after `done` held).
fn serving_until(t: &LbTopology, phase: &str, done: impl Fn(&LbTopology) -> bool) {
    let deadline = Instant::now() + CEILING;
    loop {
        assert_serving(t, phase);
        if done(t) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{phase}: timed out; agent output:\n{}",
            t.agent.as_ref().map(|a| a.output()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_serving(t, phase);
}

fn agent_lines(t: &LbTopology, pred: impl Fn(&str) -> bool) -> usize {
    t.agent.as_ref().map_or(0, |a| a.count_lines(pred))
}

fn watch_failed(l: &str) -> bool {
    l.contains("retrying") && l.contains("watching")
}

fn published(l: &str) -> bool {
    l.contains("API state read")
}

#[test]
fn restarts_of_the_api_server_and_the_agent_withdraw_no_service() {
    if !require_root("restarts_of_the_api_server_and_the_agent_withdraw_no_service") {
        return;
    }
    let mut t = LbTopology::new(2);
    let mut api = ApiServer::start_on(Some(&t.node), &[], API_ONLY);
    let files = TempDir::new();
    let manifest = files.0.join("web.yaml");
    std::fs::write(&manifest, http_service(&t, "web", VIP, &[0, 1])).expect("write manifest");
    api.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);
    let kubeconfig = api.node_kubeconfig().display().to_string();
    t.start_agent_on(&["--kubeconfig", &kubeconfig], &[]);
    t.agent()
        .wait_for_line("in sync", Duration::from_secs(30), |l| {
            l.contains("LB maps in sync")
        });
    assert_serving(&t, "synced");

    // 1. The API server goes away under a running agent.
    let failures = agent_lines(&t, watch_failed);
    api.stop();
    serving_until(&t, "API server down", |t| {
        agent_lines(t, watch_failed) > failures
    });

    // 2. The agent crashes and starts again while the server is down: it
    // adopts the pinned state and, unable to list, publishes nothing. Three
    // failed tries per watcher: their jittered backoffs drift apart, so
    // when the server is back one kind is listed well before the other
    // (the case where publishing early would withdraw backends).
    t.agent().kill();
    t.agent = None;
    assert_serving(&t, "agent down");
    t.start_agent_on(&["--kubeconfig", &kubeconfig], &[]);
    serving_until(&t, "agent restarted, API server down", |t| {
        ["watching Services", "watching EndpointSlices"]
            .iter()
            .all(|kind| agent_lines(t, |l| watch_failed(l) && l.contains(kind)) >= 3)
    });
    assert_eq!(
        agent_lines(&t, published),
        0,
        "an agent that could not list published a state"
    );

    // 3. The server comes back: both watchers list, the agent publishes,
    // and the maps already match (nothing written, nothing withdrawn).
    api.start_again();
    serving_until(&t, "API server back", |t| {
        agent_lines(t, |l| l.contains("LB maps in sync")) > 0
    });
    assert_eq!(
        agent_lines(&t, programmed),
        0,
        "the restarted agent changed the maps:\n{}",
        t.agent.as_ref().map(|a| a.output()).unwrap_or_default()
    );

    // 4. The server restarts under the running agent: its watchers resume
    // (from their last resourceVersion, or by listing again) and follow a
    // new change, which adds a service and withdraws none.
    api.stop();
    api.start_again();
    let other = files.0.join("other.yaml");
    std::fs::write(&other, http_service(&t, "other", "10.96.0.111", &[0])).expect("write manifest");
    api.kubectl_ok(&["apply", "-f", &other.display().to_string()]);
    serving_until(&t, "API server restarted", |t| {
        t.lb_list_json()
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["name"] == "default/other:http/TCP"))
    });
}
