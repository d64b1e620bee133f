//! sluice's eBPF programs. Built for bpfel-unknown-none by datapath/build.rs;
//! userspace embeds the resulting object. On the host the crate is only
//! type-checked (so `cargo clippy --workspace` lints it) and its binary
//! refuses to run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod lb_maps;
mod select;
mod sock;
mod stats;
mod tc;
mod tc_lb;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a real panic; this only
    // exists to satisfy the compiler.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sluice-ebpf holds eBPF programs; it is built for bpfel-unknown-none, not run");
    std::process::exit(2);
}
