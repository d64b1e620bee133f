//! Builds the eBPF object (ebpf/, bpfel-unknown-none, always release) with
//! aya-build and leaves it in OUT_DIR for `include_bytes_aligned!`.
//! Needs the nightly toolchain with rust-src and bpf-linker on PATH:
//! `cargo xtask bootstrap` installs them.
fn main() -> anyhow::Result<()> {
    // aya-build emits rerun-if-changed for this directory (recursively), so
    // edits to the programs or the shared types rebuild the object; no
    // build-dependency on the eBPF crate, which must never build for the host.
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sluice-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
