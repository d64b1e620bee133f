//! `sluice-server`: the control plane. The store and API server arrive with
//! their own issues; until then the binary exists so the layout and the
//! build contract (`cargo xtask build` produces it) hold, and it says plainly
//! that it cannot serve yet.
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sluice-server",
    version,
    about = "sluice control plane (not yet implemented)"
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("sluice-server: the control plane is not implemented yet");
    std::process::ExitCode::FAILURE
}
