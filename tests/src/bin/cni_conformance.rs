//! `sluice-cni-conformance --plugin PATH --conf FILE [--cni-path DIRS] [--ipam-store DIR]`:
//! runs the black-box CNI conformance suite (`sluice_tests::cni_suite`)
//! against any plugin binary and prints `N passed, M failed, K skipped`.
//! Exit 0 when nothing failed, 1 when something did, 2 on bad usage.
use std::path::PathBuf;

use sluice_tests::cni_suite::{Options, run};

fn usage(msg: &str) -> ! {
    eprintln!("sluice-cni-conformance: {msg}");
    eprintln!(
        "usage: sluice-cni-conformance --plugin PATH --conf FILE [--cni-path DIR[:DIR]] [--ipam-store DIR]"
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut plugin, mut conf, mut cni_path, mut ipam_store) = (None, None, None, None);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--plugin" => plugin = Some(PathBuf::from(val())),
            "--conf" => conf = Some(PathBuf::from(val())),
            "--cni-path" => cni_path = Some(val()),
            // host-local-layout address store: lets GC check released addresses
            "--ipam-store" => ipam_store = Some(PathBuf::from(val())),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let plugin = plugin.unwrap_or_else(|| usage("--plugin is required"));
    let conf_path = conf.unwrap_or_else(|| usage("--conf is required"));
    if !plugin.is_file() {
        usage(&format!("--plugin {}: no such file", plugin.display()));
    }
    let text = std::fs::read_to_string(&conf_path)
        .unwrap_or_else(|e| usage(&format!("--conf {}: {e}", conf_path.display())));
    let conf: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        usage(&format!(
            "--conf {}: invalid JSON: {e}",
            conf_path.display()
        ))
    });
    if conf.get("plugins").is_some() {
        usage(&format!(
            "--conf {}: give one network config, not a conflist (the suite builds chains itself)",
            conf_path.display()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        usage("needs root (network namespaces)");
    }
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let plugin_dir = plugin
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let o = Options {
        cni_path: cni_path.unwrap_or_else(|| format!("{plugin_dir}:/usr/lib/cni:/opt/cni/bin")),
        plugin,
        conf,
        testpod: here.join("sluice-testpod"),
        ipam_store,
    };
    let report = run(&o, |line| println!("{line}"));
    println!("{}", report.summary());
    std::process::exit(if report.counts().1 == 0 { 0 } else { 1 });
}
