//! `sluice-cni`: the CNI plugin (spec 1.1.0; results rendered in 0.3.1,
//! 0.4.0, 1.0.0 or 1.1.0 format as the config asks). Gives each pod an
//! address from the node's pod CIDR and a veth whose host side runs
//! sluice's pod datapath. See ARCHITECTURE.md.
mod config;
mod ipam;
mod net;
mod plugin;

use rscni_plugin::{cni::Plugin, version::SpecVersion};

fn main() {
    let versions = vec![
        SpecVersion::new(0, 3, 1),
        SpecVersion::new(0, 4, 0),
        SpecVersion::new(1, 0, 0),
        SpecVersion::new(1, 1, 0),
    ];
    // No about text (`.msg`): with one, rscni-plugin answers an unset
    // CNI_COMMAND with help and exit 0 (libcni's skel habit); the spec makes
    // CNI_COMMAND required, so the answer is its error code 4 on stdout.
    let plugin = Plugin::new(SpecVersion::new(1, 1, 0), versions);
    // The error result is already on stdout; exit non-zero as the spec asks.
    if let Err(e) = plugin.run(&plugin::Sluice) {
        eprintln!("sluice-cni: {e}");
        std::process::exit(i32::try_from(u32::from(&e)).unwrap_or(1).max(1));
    }
}
