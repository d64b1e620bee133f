//! LB map capacities on the loader (`LoadOptions::lb_sizes`, the agent's
//! `--bpf-lb-max-*`): a changed size resizes the pinned map and keeps its
//! entries, a size too small is refused with nothing moved, and a resize
//! interrupted by a crash is undone on the next load. The agent-level test
//! (resize under connection load) is in lb_socket.rs.
use aya::maps::{HashMap, MapData, MapInfo};
use sluice_common::{
    lb::{Backend, PROTO_TCP, ServiceInfo},
    map_names,
};
use sluice_datapath::{
    BpfLogLevel, Datapath, DatapathError, LbCapacity, LbMapSizes, LbMaps, LoadOptions,
};
use sluice_tests::{PinDir, require_root};

fn load_sized(pins: &PinDir, services: u32, backends: u32) -> Result<Datapath, DatapathError> {
    Datapath::load(&LoadOptions {
        bpffs_dir: pins.path.clone(),
        log_level: BpfLogLevel::Warn,
        lb_sizes: Some(LbMapSizes {
            frontends: 64,
            services,
            backends,
        }),
    })
}

fn load(pins: &PinDir, backends: u32) -> Result<Datapath, DatapathError> {
    load_sized(pins, 32, backends)
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

    // Bigger: resized, entries kept, nothing left aside, and programs
    // loaded before (the CNI's pod set) marked for the agent to switch.
    let stale = pins.path.join("pod-progs-stale");
    drop(load(&pins, 128).expect("grow"));
    assert_eq!(backends_cap(&pins), 128);
    assert!(stale.exists(), "a resize must have pod programs switched");
    std::fs::remove_dir(&stale).expect("clear the marker");
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
    assert!(!stale.exists(), "a refused resize changes nothing");

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
    // The next load puts the old map back (its size is the one asked for,
    // so nothing is resized), and marks pod programs stale: a CNI ADD
    // could have loaded them on the half-done map meanwhile.
    drop(load(&pins, 128).expect("load after a crashed resize"));
    assert!(!aside.exists(), "aside pin left behind");
    assert!(stale.exists(), "a restore must have pod programs switched");
    assert_eq!(backends_cap(&pins), 128);
    assert_eq!(backend_at(&pins, 5), Some(backend(5)));
    assert_eq!(backend_at(&pins, 40), Some(backend(40)));
}

#[test]
fn service_ids_in_use_bound_a_shrink_not_emptied_table_slots() {
    if !require_root("service_ids_in_use_bound_a_shrink_not_emptied_table_slots") {
        return;
    }
    let pins = PinDir::new();
    drop(load_sized(&pins, 64, 64).expect("first load"));
    let mut maps = LbMaps::open(&pins.path).expect("open LB maps");
    // Service 5 is live (info + table); slot 40 holds the empty table a
    // removed service leaves behind (its info is gone).
    let mut info = ServiceInfo::default();
    info.set_name("default/live:http/TCP");
    maps.svc_info.insert(5, info, 0).expect("write info");
    let live = LbMaps::build_table(&[7; 13]).expect("build table");
    let emptied = LbMaps::build_table(&[]).expect("build empty table");
    maps.commit_tables(&[(5, Some(&live)), (40, Some(&emptied))])
        .expect("install tables");
    drop(maps);

    drop(load_sized(&pins, 16, 64).expect("16 service ids hold id 5"));
    let maps = LbMaps::open(&pins.path).expect("open LB maps");
    assert_eq!(maps.capacities().expect("capacities").services, 16);
    assert_eq!(maps.table(5).expect("read table"), Some(vec![7; 13]));
    assert_eq!(
        maps.svc_info.get(&5, 0).expect("info kept").name_str(),
        "default/live:http/TCP"
    );
    // Below the live id: refused.
    let err = load_sized(&pins, 5, 64).err().expect("id 5 needs 6");
    assert!(
        matches!(
            err,
            DatapathError::MapSize {
                which: LbCapacity::Services,
                need: 6,
                ..
            }
        ),
        "{err}"
    );
}
