//! Command line: the contract in DESIGN.md (node overrides shared by every
//! subcommand, so `bpf ...` inspects the same node the agent runs).
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use sluice_datapath::BpfLogLevel;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-agent",
    version,
    about = "sluice node agent: eBPF service proxy and pod datapath"
)]
pub struct Cli {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What a node is: (network namespace, cgroup v2 subtree, bpffs pin dir).
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Network namespace to run in (a path such as /run/netns/NAME); default: the current one.
    #[arg(long, global = true, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// cgroup v2 directory whose sockets get service translation; default: the cgroup2 root.
    #[arg(long, global = true, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps and links.
    #[arg(long, global = true, value_name = "DIR", default_value = sluice_datapath::node::DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Directory of Kubernetes Service/EndpointSlice YAML to program (watched for changes).
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Watch Services and EndpointSlices on the API server this kubeconfig names
    /// (sluice-server's node.kubeconfig, or any Kubernetes cluster's).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// An IPv4 address of this node that NodePort services listen on (repeatable);
    /// default: every non-loopback IPv4 address in the node's network namespace.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ips: Vec<std::net::Ipv4Addr>,
    /// External interface that receives NodePort/ExternalIP/LoadBalancer traffic; gets the
    /// per-packet LB (tc ingress DNAT, egress reverse NAT). Repeatable.
    #[arg(long = "nodeport-iface", value_name = "IFACE")]
    pub nodeport_ifaces: Vec<String>,
    /// Host-side interface facing pods (e.g. a pod's veth) whose ClusterIP traffic gets the
    /// per-packet LB, for sockets the cgroup hooks do not cover. Repeatable.
    #[arg(long = "pod-iface", value_name = "IFACE")]
    pub pod_ifaces: Vec<String>,
    /// This node's name, matched against EndpointSlice `nodeName` for traffic policy Local;
    /// default: the hostname.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Where to serve Prometheus /metrics (inside the node's network namespace);
    /// port 0 picks a free port (logged).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9962")]
    pub metrics_addr: std::net::SocketAddr,
    /// Level of eBPF-side log statements that stay in the programs
    /// (off|error|warn|info|debug|trace). Lower levels are removed by the verifier.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub bpf_log_level: BpfLogLevel,
    /// Capacity of the service frontend map: ClusterIPs, node ports, external and
    /// load-balancer IPs, times ports. A changed size resizes the pinned map, keeping
    /// its entries.
    #[arg(long, value_name = "N", default_value_t = sluice_common::lb::MAX_FRONTENDS,
          value_parser = clap::value_parser!(u32).range(MAP_MIN..=MAP_MAX))]
    pub bpf_lb_max_frontends: u32,
    /// Capacity of service ids (one per service port; the Maglev table array and
    /// per-service counters).
    #[arg(long, value_name = "N", default_value_t = sluice_common::lb::MAX_SERVICES,
          value_parser = clap::value_parser!(u32).range(MAP_MIN..=MAP_MAX))]
    pub bpf_lb_max_services: u32,
    /// Capacity of backend ids (one per distinct endpoint address, port and protocol).
    #[arg(long, value_name = "N", default_value_t = sluice_common::lb::MAX_BACKENDS,
          value_parser = clap::value_parser!(u32).range(MAP_MIN..=MAP_MAX))]
    pub bpf_lb_max_backends: u32,
    /// How often idle conntrack entries of the per-packet (tc) path are
    /// removed (Cilium's --conntrack-gc-interval). Units: ms, s, m, h.
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = parse_gc_interval)]
    pub bpf_ct_gc_interval: Duration,
    /// Idle time after which an open TCP flow's conntrack entries go.
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_ct_timeout)]
    pub bpf_ct_timeout_regular_tcp: Duration,
    /// Idle time after which a TCP flow seen closing (FIN or RST) goes.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ct_timeout)]
    pub bpf_ct_timeout_regular_tcp_fin: Duration,
    /// Idle time after which a UDP flow's conntrack entries go.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_ct_timeout)]
    pub bpf_ct_timeout_regular_any: Duration,
}

/// `<number><unit>` with unit ms, s, m or h (a Go duration without
/// fractions or compound forms, enough for intervals and timeouts).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("unit {unit:?} is not one of ms, s, m, h")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn at_least(s: &str, min: Duration, why: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min {
        return Err(format!("must be at least {min:?} ({why})"));
    }
    Ok(d)
}

fn parse_gc_interval(s: &str) -> Result<Duration, String> {
    at_least(s, Duration::from_millis(100), "a walk of the whole map")
}

/// The data path refreshes an entry's last-seen time at most once a
/// second, so a shorter timeout would remove entries of busy flows.
fn parse_ct_timeout(s: &str) -> Result<Duration, String> {
    at_least(
        s,
        Duration::from_secs(2),
        "the data path refreshes last-seen once a second",
    )
}

/// Bounds of the `--bpf-lb-max-*` flags: id 0 is reserved, so a map needs a
/// few slots to hold anything; past 16M entries a map's memory (and the
/// kernel's allocation limits) make a bigger one a mistake, not a choice.
const MAP_MIN: i64 = 16;
const MAP_MAX: i64 = 1 << 24;

impl AgentArgs {
    pub fn ct_timeouts(&self) -> crate::lb::conntrack::Timeouts {
        crate::lb::conntrack::Timeouts {
            tcp: self.bpf_ct_timeout_regular_tcp,
            tcp_closing: self.bpf_ct_timeout_regular_tcp_fin,
            udp: self.bpf_ct_timeout_regular_any,
        }
    }

    pub fn lb_map_sizes(&self) -> sluice_datapath::LbMapSizes {
        sluice_datapath::LbMapSizes {
            frontends: self.bpf_lb_max_frontends,
            services: self.bpf_lb_max_services,
            backends: self.bpf_lb_max_backends,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect the node's pinned eBPF state.
    #[command(subcommand)]
    Bpf(BpfCommand),
}

#[derive(Subcommand, Debug)]
pub enum BpfCommand {
    /// Service load balancer state.
    #[command(subcommand)]
    Lb(LbCommand),
    /// Connection tracking of the per-packet (tc) LB path.
    #[command(subcommand)]
    Ct(CtCommand),
    /// Per-program run counters from the pinned stats map.
    Stats {
        /// Output format.
        #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum LbCommand {
    /// Services, their frontends, Maglev table sizes and backends, from the pinned maps.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum CtCommand {
    /// Conntrack entries (forward and reverse) from the pinned map.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OutputFormat {
    Table,
    Json,
}

pub mod bpf {
    use anyhow::Context as _;

    use super::{BpfCommand, CtCommand, LbCommand, NodeArgs, OutputFormat};

    pub fn run(node: &NodeArgs, cmd: BpfCommand) -> anyhow::Result<()> {
        match cmd {
            BpfCommand::Ct(CtCommand::List { output }) => {
                let maps = sluice_datapath::LbMaps::open(&node.bpffs).with_context(|| {
                    format!("no sluice LB maps pinned under {}", node.bpffs.display())
                })?;
                let rows = crate::lb::conntrack::list(&maps)?;
                match output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                    OutputFormat::Table => print!("{}", crate::lb::conntrack::render_table(&rows)),
                }
                Ok(())
            }
            BpfCommand::Lb(LbCommand::List { output }) => {
                let maps = sluice_datapath::LbMaps::open(&node.bpffs).with_context(|| {
                    format!("no sluice LB maps pinned under {}", node.bpffs.display())
                })?;
                let rows = crate::lb::list::collect(&maps)?;
                match output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                    OutputFormat::Table => print!("{}", crate::lb::list::render_table(&rows)),
                }
                Ok(())
            }
            BpfCommand::Stats { output } => {
                let counters =
                    sluice_datapath::pinned_counters(&node.bpffs).with_context(|| {
                        format!("no sluice datapath pinned under {}", node.bpffs.display())
                    })?;
                match output {
                    OutputFormat::Json => {
                        let rows: Vec<_> = counters
                            .iter()
                            .map(|(s, c)| {
                                serde_json::json!({"program": s.name(), "runs": c.packets, "bytes": c.bytes})
                            })
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&rows)?);
                    }
                    OutputFormat::Table => {
                        println!("{:<20} {:>12} {:>14}", "PROGRAM", "RUNS", "BYTES");
                        for (s, c) in counters {
                            println!("{:<20} {:>12} {:>14}", s.name(), c.packets, c.bytes);
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        for bad in ["30", "s", "1.5s", "10d", "-1s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_ct_timeout("1s").is_err(), "below the refresh slack");
        assert_eq!(parse_ct_timeout("2s"), Ok(Duration::from_secs(2)));
    }
}
