//! eBPF-side logs (aya-log ring buffer) -> the `log` facade -> `tracing`.
//! The binaries install `tracing_log::LogTracer`, so records show up in the
//! same output as the agent's own events, with target `sluice_ebpf`.
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use crate::DatapathError;

/// Starts draining the object's log ring buffer on the current tokio runtime.
/// Returns Ok(None) when the object was built without any log statement.
pub fn spawn_log_forwarder(
    ebpf: &mut Ebpf,
) -> Result<Option<tokio::task::JoinHandle<()>>, DatapathError> {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(aya_log::Error::MapNotFound) => return Ok(None),
        Err(e) => return Err(DatapathError::Log(e.to_string())),
    };
    // SAFETY: the logger owns the ring buffer fd and moves into the AsyncFd,
    // so the fd stays open exactly as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| DatapathError::Log(e.to_string()))?;
    Ok(Some(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!("eBPF log ring buffer unreadable, stopping forwarder: {e}");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })))
}
