//! `cargo xtask`: the project's task runner. Every install a fresh machine
//! needs happens in `bootstrap`, so CI and newcomers run the same steps.
mod bench;
mod bootstrap;
mod build;
mod cmd;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sluice task runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh Debian machine lacks (idempotent; prints one line per step).
    Bootstrap,
    /// Bootstrap if needed, then release-build all binaries and the eBPF object.
    Build,
    /// Bootstrap and build, then fmt check, clippy -D warnings, and the whole test suite.
    /// Needs root: the eBPF, netns, CNI and CRI tests are the suite's core.
    Test {
        /// Run as a non-root user: only the unprivileged tests run; every
        /// privileged one prints `SKIP` (never use this for CI).
        #[arg(long)]
        unprivileged: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run the black-box CNI conformance suite against any plugin binary:
    /// `cni-conformance --plugin PATH --conf FILE [--cni-path DIRS]`
    /// (prints `N passed, M failed, K skipped`; needs root).
    CniConformance {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a single-node cluster (control plane + agent). Not built yet.
    Up,
    /// Install sluice on this host. Not built yet.
    Install,
    /// Benchmarks: `bench lb [--services 1,1000,10000] ...` (service load balancing vs
    /// direct, iptables and IPVS), `bench cni [--adds 100]` (sluice-cni vs bridge +
    /// host-local), `bench store [--ops 2000]` (embedded store vs etcd), `bench api [--pods 10000]`
    /// (sluice-server on both stores), `bench scheduler [--nodes 1000 --pods 10000]` (scheduler
    /// vs raw binding on fake nodes), `bench controllers [--replicas 3000]` (a Deployment vs raw
    /// create+bind, rolling update, server RSS); reports in target/bench/.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Bootstrap => bootstrap::run().map(|_| ()),
        Command::Build => bootstrap::run().and_then(|env| build::run(&env).map(|_| ())),
        Command::Test {
            unprivileged,
            cargo_test_args,
        } => {
            if !unprivileged && !cmd::is_root() {
                eprintln!(
                    "xtask: error: `cargo xtask test` needs root (the eBPF, netns, CNI and CRI tests); \
                     run it as root, or `cargo xtask test --unprivileged` for the unprivileged tests only"
                );
                return std::process::ExitCode::from(2);
            }
            bootstrap::run().and_then(|env| test::run(&env, unprivileged, &cargo_test_args))
        }
        Command::Bench { args } => bootstrap::run().and_then(|env| bench::run(&env, &args)),
        Command::CniConformance { args } => {
            bootstrap::run().and_then(|env| bench::cni_conformance(&env, &args))
        }
        Command::Up | Command::Install => Err(anyhow::anyhow!(
            "not yet: this command arrives with the control plane / benchmark issues"
        )),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
