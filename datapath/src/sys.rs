//! The one raw bpf(2) call aya 0.14 does not wrap: deleting from a
//! map-of-maps (`ArrayOfMaps` has no remove).
use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `union bpf_attr` as used by BPF_MAP_*_ELEM (map_fd, pad, key pointer).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

pub fn map_delete_elem<K>(map: BorrowedFd<'_>, key: &K) -> std::io::Result<()> {
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        pad: 0,
        key: key as *const K as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: bpf(2) reads `size_of::<ElemAttr>()` bytes of a valid attr whose
    // key pointer is live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
