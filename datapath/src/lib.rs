//! Userspace side of sluice's data plane: the embedded eBPF object, loading it
//! with its maps pinned under a node's bpffs directory, attaching programs to
//! cgroups and interfaces, and forwarding eBPF-side logs into `tracing`.
//!
//! Both `sluice-agent` and `sluice-cni` use this crate, so there is exactly one
//! eBPF object and one loader (the CNI plugin must be able to bring the data
//! plane up when no agent runs).

mod bpffs;
mod error;
mod lb;
mod lb_sizes;
mod loader;
mod log_forward;
pub mod node;
mod pod;
mod sys;

pub use bpffs::ensure_pin_dir;
pub use error::DatapathError;
pub use lb::{BuiltTable, LbMaps, table_batch_limit};
pub use lb_sizes::{LbCapacity, LbMapSizes};
pub use loader::{BpfLogLevel, Datapath, LbIface, LoadOptions, pinned_counters};
pub use log_forward::spawn_log_forwarder;
pub use pod::{Endpoints, POD_FILTER_PRIORITY, POD_PROGRAMS, PodDatapath};

/// The eBPF object built from `ebpf/` by build.rs (aya-build, release).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));
