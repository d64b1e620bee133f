//! sluice-server's health endpoints and /version, over HTTPS with curl.
//! Health is checked, not assumed: /readyz fails naming the store while
//! etcd is down and recovers when it is back; /livez does not depend on
//! the store. No root needed.
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{api_server::ApiServer, etcd::EtcdCluster};

/// Polls `GET path` until `done` holds for (code, body); panics after
/// `ceiling` (which only catches a hang) with the last answer.
fn wait_for(
    s: &ApiServer,
    path: &str,
    what: &str,
    ceiling: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + ceiling;
    loop {
        let (code, body) = s.get(path, true);
        if done(code, &body) {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "{path}: no {what} within {ceiling:?}; last answer {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const CHECKS: [&str; 5] = ["ping", "runtime", "store", "watch-cache", "alloc-repair"];

fn assert_all_pass(body: &str) {
    for check in CHECKS {
        assert!(
            body.lines().any(|l| l == format!("[+]{check} ok")),
            "no [+]{check} ok in:\n{body}"
        );
    }
    assert!(body.ends_with("readyz check passed\n"), "{body}");
}

/// On the embedded store the server becomes ready, and `?verbose` lists
/// every check as passed; /livez and /healthz answer ok.
#[test]
fn ready_on_the_embedded_store() {
    let s = ApiServer::start(&[]);
    wait_for(&s, "/readyz", "ok", Duration::from_secs(60), |c, b| {
        c == 200 && b == "ok"
    });
    let (code, body) = s.get("/readyz?verbose", true);
    assert_eq!(code, 200, "{body}");
    assert_all_pass(&body);
    for path in ["/livez", "/healthz", "/readyz/store"] {
        assert_eq!(s.get(path, false), (200, "ok".to_string()), "{path}");
    }
    // A check that does not exist is not "ok".
    assert_eq!(s.get("/readyz/nope", false).0, 404);
}

/// With etcd killed, /readyz turns 500 naming the store check (the reason
/// for a caller with a token, withheld from anonymous ones) while /livez
/// stays ok; with etcd back on the same data and port, /readyz is ok again.
#[test]
fn readyz_names_the_store_while_etcd_is_down_and_recovers() {
    let mut etcd = EtcdCluster::start(1);
    let s = ApiServer::start(&etcd.endpoints());
    let ceiling = Duration::from_secs(60);
    wait_for(&s, "/readyz", "ok", ceiling, |c, b| c == 200 && b == "ok");

    etcd.members[0].kill();
    let (_, body) = wait_for(&s, "/readyz?verbose", "a failure", ceiling, |c, _| c == 500);
    let failed: Vec<&str> = body.lines().filter(|l| l.starts_with("[-]")).collect();
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with("[-]store failed: the store did not answer")),
        "{body}"
    );
    assert!(body.lines().any(|l| l == "[+]ping ok"), "{body}");
    assert!(body.ends_with("readyz check failed\n"), "{body}");
    let (code, single) = s.get("/readyz/store", true);
    assert_eq!(code, 500, "{single}");
    assert!(
        single.starts_with("internal server error: the store"),
        "{single}"
    );
    let (code, anonymous) = s.get("/readyz?verbose", false);
    assert_eq!(code, 500, "{anonymous}");
    assert!(
        anonymous
            .lines()
            .any(|l| l == "[-]store failed: reason withheld"),
        "{anonymous}"
    );
    // The process itself is fine: liveness does not follow the store.
    assert_eq!(s.get("/livez", false), (200, "ok".to_string()));
    // And /healthz aggregates everything, like upstream.
    assert_eq!(s.get("/healthz", false).0, 500);

    etcd.restart(0);
    let (_, body) = wait_for(&s, "/readyz?verbose", "recovery", ceiling, |c, _| c == 200);
    assert_all_pass(&body);
}

/// Go's names for the host's OS and architecture.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SSZ` as seconds since the epoch.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || &s[4..5] != "-" || &s[10..11] != "T" || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// /version (public) reports this build: the checkout's commit, a real
/// build date, the host platform and the compiler.
#[test]
fn version_reports_this_build() {
    let s = ApiServer::start(&[]);
    let (code, body) = s.get("/version", false);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let date = v["buildDate"].as_str().unwrap_or_default();
    let built = parse_date(date).unwrap_or_else(|| panic!("buildDate {date:?} is not RFC 3339"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        built > days(2020, 1, 1) * 86_400 && built <= now + 60,
        "buildDate {date} is not a real build date"
    );
    assert_eq!(v["platform"], host_platform());
    assert!(
        v["goVersion"]
            .as_str()
            .is_some_and(|r| r.starts_with("rustc 1.")),
        "{v}"
    );
    assert!(
        ["clean", "dirty"].contains(&v["gitTreeState"].as_str().unwrap_or_default()),
        "{v}"
    );
    assert_eq!(
        (&v["major"], &v["minor"]),
        (&Value::from("1"), &Value::from("33"))
    );
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(
            v["gitCommit"], head,
            "the server was built from another commit (rebuild with `cargo xtask build`)"
        ),
        None => assert_eq!(v["gitCommit"], "unknown", "no git here: {v}"),
    }
}

/// `GET /version/` (with the slash, what the official Python client's
/// VersionApi asks) answers exactly like `/version`, unauthenticated too.
#[test]
fn version_answers_with_a_trailing_slash() {
    let s = ApiServer::start(&[]);
    let (code, plain) = s.get("/version", false);
    assert_eq!(code, 200, "{plain}");
    let (code, slashed) = s.get("/version/", false);
    assert_eq!(code, 200, "{slashed}");
    let plain: Value = serde_json::from_str(&plain).expect("JSON");
    let slashed: Value = serde_json::from_str(&slashed).expect("JSON");
    assert_eq!(slashed, plain);
}
