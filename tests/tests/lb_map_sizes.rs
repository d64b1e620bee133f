//! LB map capacities on the loader (`LoadOptions::lb_sizes`, the agent's
//! `--bpf-lb-max-*`): a changed size resizes the pinned map and keeps its
//! entries, a size too small is refused with nothing moved, and a resize
//! interrupted by a crash is undone on the next load. The agent-level test
//! (resize under connection load) is in lb_socket.rs.
use aya::maps::{HashMap, MapData, MapInfo};
use sluice_common::{
    lb::{Backend, PROTO_TCP},
    map_names,
};
use sluice_datapath::{
    BpfLogLevel, Datapath, DatapathError, LbCapacity, LbMapSizes, LbMaps, LoadOptions,
};
use sluice_tests::{PinDir, require_root};

fn load(pins: &PinDir, backends: u32) -> Result<Datapath, DatapathError> {
    Datapath::load(&LoadOptions {
        bpffs_dir: pins.path.clone(),
        log_level: BpfLogLevel::Warn,
        lb_sizes: Some(LbMapSizes {
            frontends: 64,
            services: 32,
            backends,
        }),
    })
}

fn backend(last: u8) -> Backend {
    Backend::new([10, 244, 9, last], 8080, PROTO_TCP, 0)
}

fn backends_cap(pins: &PinDir) -> u32 {
    MapInfo::from_pin(pins.path.join(map_names::LB4_BACKENDS))
        .expect("LB4_BACKENDS info")
        .max_entries()
}

fn backend_at(pins: &PinDir, id: u32) -> Option<Backend> {
    LbMaps::open(&pins.path)
        .expect("open LB maps")
        .backends
        .get(&id, 0)
        .ok()
}

#[test]
fn pinned_maps_resize_keep_entries_refuse_too_small_and_undo_a_crashed_resize() {
    if !require_root("pinned_maps_resize_keep_entries_refuse_too_small_and_undo_a_crashed_resize") {
        return;
    }
    let pins = PinDir::new();
    drop(load(&pins, 64).expect("first load"));
    assert_eq!(backends_cap(&pins), 64);
    LbMaps::open(&pins.path)
        .expect("open LB maps")
        .write_backends(&[5, 40], &[backend(5), backend(40)])
        .expect("write backends");

    // Bigger: resized, entries kept, nothing left aside.
    drop(load(&pins, 128).expect("grow"));
    assert_eq!(backends_cap(&pins), 128);
    assert_eq!(backend_at(&pins, 5), Some(backend(5)));
    assert_eq!(backend_at(&pins, 40), Some(backend(40)));

    // Smaller than the largest id in use: refused, nothing moved.
    let err = load(&pins, 32).err().expect("id 40 does not fit in 32");
    match &err {
        DatapathError::MapSize {
            which, want, need, ..
        } => assert_eq!(
            (*which, *want, *need),
            (LbCapacity::Backends, 32, 41),
            "{err}"
        ),
        other => panic!("expected MapSize, got {other}"),
    }
    assert_eq!(backends_cap(&pins), 128);
    assert_eq!(backend_at(&pins, 40), Some(backend(40)));

    // A crash mid-resize: the old map moved aside, an empty new one pinned.
    let pin = pins.path.join(map_names::LB4_BACKENDS);
    let aside = pins
        .path
        .join(format!("{}_RESIZING", map_names::LB4_BACKENDS));
    std::fs::rename(&pin, &aside).expect("move aside");
    HashMap::<MapData, u32, Backend>::create(256, 0)
        .expect("create half-done map")
        .pin(&pin)
        .expect("pin half-done map");
    // The next load puts the old map back, then resizes it for real.
    drop(load(&pins, 48).expect("load after a crashed resize"));
    assert!(!aside.exists(), "aside pin left behind");
    assert_eq!(backends_cap(&pins), 48);
    assert_eq!(backend_at(&pins, 5), Some(backend(5)));
    assert_eq!(backend_at(&pins, 40), Some(backend(40)));
}
