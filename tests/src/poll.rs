//! Waiting for an event under a ceiling that only catches a hang.
use std::time::{Duration, Instant};

/// Calls `probe` until it returns `Some`, every 100 ms; panics naming
/// `what` (and the last state `describe` gives) after `ceiling`.
pub fn wait_until<T>(
    what: &str,
    ceiling: Duration,
    mut probe: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + ceiling;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {ceiling:?} waiting for {what}; last state:\n{}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
