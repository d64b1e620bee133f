//! `sluice-agent`: the node daemon. Binary edge: argument parsing, process
//! setup (netns, tracing), and exit codes; the work lives in modules.
mod cli;
mod lb;
mod metrics;
mod node_env;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Command::Bpf(cmd)) => {
            // Inspection output is often piped into `head`: end quietly on a
            // closed pipe like other CLI tools instead of panicking in print!.
            // SAFETY: restoring the default disposition before any threads exist.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            cli::bpf::run(&cli.node, cmd)
        }
        None => run::run(&cli.node, &cli.agent),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, naming the bad value; usage/config errors exit 2.
            eprintln!("sluice-agent: {e:#}");
            if e.is::<node_env::ConfigError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
