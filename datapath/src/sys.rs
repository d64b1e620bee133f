//! The one raw bpf(2) call aya 0.14 does not wrap: batch updates (needed
//! for a map-of-maps, where every single write costs an RCU grace period,
//! and worth it for 100 000 backends: one syscall instead of one each).
use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr` as used by BPF_MAP_*_BATCH.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// BPF_MAP_UPDATE_BATCH of `keys` to `values` (for a map-of-maps, u32
/// inner map fds). `K` and `V` must be the map's key and value layouts
/// exactly: the kernel strides the arrays by the map's sizes. Retries the
/// remainder after a partial batch interrupted by a signal; any other
/// error names how far it got.
pub fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0usize;
    while done < keys.len() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: bpf(2) reads `count` keys and values from live slices and
        // writes back `count` into the attr we own.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        // The kernel writes `count` back after processing elements; on an
        // early error it may not have, so it is trusted only on success or
        // an interrupted batch.
        match err {
            None => done += attr.count as usize,
            Some(e) if e.raw_os_error() == Some(libc::EINTR) => {
                done += (attr.count as usize).min(keys.len() - done)
            }
            Some(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("batch update stopped after {done} of {}: {e}", keys.len()),
                ));
            }
        }
    }
    Ok(())
}
