use std::path::PathBuf;

/// Everything that can go wrong bringing the data plane up. Each variant names
/// the path, program or map involved so the agent's one-line error is useful.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs directory {path}: {reason}")]
    Bpffs { path: PathBuf, reason: String },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} missing from the eBPF object")]
    ProgramMissing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error(
        "{want} is too small: {map} pinned under {dir} needs {need} {which} \
         (raise it, or remove {dir} to start empty)"
    )]
    MapSize {
        which: crate::LbCapacity,
        want: u32,
        need: u32,
        map: &'static str,
        dir: PathBuf,
    },
    #[error("Maglev table: {0}")]
    Table(String),
    #[error("eBPF log forwarding: {0}")]
    Log(String),
}

impl DatapathError {
    /// Adapter for `map_err` on aya map calls: names the map in the error.
    pub fn map(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
        move |source| DatapathError::Map { name, source }
    }
}
