//! Several `sluice-server`s on one etcd: each in-process component (the
//! scheduler, the controller manager) is active on one server at a time,
//! the holder of its coordination.k8s.io/v1 Lease in kube-system; when the
//! holder dies another server takes over once the lease has gone unrenewed
//! for its duration. No root needed.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use sluice_tests::{api_server::ApiServer, etcd::EtcdCluster};

/// A ceiling that only catches a hang.
const HANG: Duration = Duration::from_secs(90);

/// The Lease's holder, once it has one.
async fn holder(leases: &Api<Lease>, name: &str, not: Option<&str>) -> Lease {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if let Some(l) = leases.get_opt(name).await.ok().flatten() {
            let h = l.spec.as_ref().and_then(|s| s.holder_identity.clone());
            if h.as_deref()
                .is_some_and(|h| !h.is_empty() && Some(h) != not)
            {
                return l;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease {name} never got a holder other than {not:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn holder_of(l: &Lease) -> String {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_killed_leader_s_components_move_to_the_other_server_within_the_lease_duration() {
    let etcd = EtcdCluster::start(1);
    let mut a = ApiServer::start(&etcd.endpoints());
    let a_pid = a.pid().expect("a running");
    let b = ApiServer::start(&etcd.endpoints());
    let b_pid = b.pid().expect("b running");
    let leases: Api<Lease> = Api::namespaced(b.client().await, "kube-system");
    for name in ["kube-scheduler", "kube-controller-manager"] {
        let first = holder(&leases, name, None).await;
        assert!(
            holder_of(&first).contains(&format!("_{a_pid}_")),
            "{name}: the first server to start leads, got {}",
            holder_of(&first)
        );
    }
    // The last renewals before the kill, read after it (no renewal can
    // follow a SIGKILL).
    a.kill();
    let mut before_kill = Vec::new();
    for name in ["kube-scheduler", "kube-controller-manager"] {
        before_kill.push((name, leases.get(name).await.expect("lease")));
    }
    for (name, before) in before_kill {
        let last_renew = before
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .expect("renewTime")
            .0;
        let duration = before
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .expect("leaseDurationSeconds");
        let after = holder(&leases, name, Some(&holder_of(&before))).await;
        assert!(
            holder_of(&after).contains(&format!("_{b_pid}_")),
            "{name}: the surviving server takes over, got {}",
            holder_of(&after)
        );
        let spec = after.spec.as_ref().expect("spec");
        let acquired = spec.acquire_time.clone().expect("acquireTime").0;
        let took = (acquired - last_renew)
            .to_std()
            .expect("acquired after the last renewal");
        // Takeover waits one lease duration of seeing no renewal; the
        // observation runs every retry period (2 s), once before and once
        // after the expiry.
        assert!(
            took <= Duration::from_secs(duration as u64 + 2 * 2 + 1),
            "{name}: took over {took:?} after the last renewal (lease {duration} s)"
        );
        assert_eq!(
            spec.lease_transitions,
            Some(1),
            "{name}: one change of leader"
        );
        eprintln!("{name}: taken over {took:?} after the leader's last renewal");
    }
}
