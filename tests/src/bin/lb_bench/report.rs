//! lb.md (tables of ratios against direct, targets met or not), lb.json
//! (every number) and lb.svg (CRR and connect p50/p99 per path over
//! service counts).
use std::fmt::Write as _;

use plotters::prelude::*;
use serde_json::{Value, json};

use super::{Load, Opts, Outcome, Ratio, Scale};

/// A target from the issue, evaluated on this run.
struct Target {
    name: &'static str,
    value: Option<f64>,
    unit: &'static str,
    op: &'static str,
    bound: f64,
}

impl Target {
    fn met(&self) -> Option<bool> {
        self.value.map(|v| match self.op {
            ">=" => v >= self.bound,
            _ => v <= self.bound,
        })
    }
    fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    }
}

fn at(scales: &[Scale], n: usize) -> Option<&Scale> {
    scales.iter().find(|s| s.services == n)
}

fn measured(o: &Outcome) -> Option<&Load> {
    match o {
        Outcome::Measured(l) => Some(l),
        Outcome::Skipped(_) => None,
    }
}

fn min_ratio(scales: &[Scale], f: impl Fn(&Scale) -> f64) -> Option<f64> {
    scales.iter().map(f).reduce(f64::min)
}

fn targets(scales: &[Scale]) -> Vec<Target> {
    let largest = scales.iter().max_by_key(|s| s.services);
    let p99_growth = match (at(scales, 1), largest) {
        (Some(one), Some(big)) if big.services > 1 => {
            Some(big.socket.connect_p99_us / one.socket.connect_p99_us)
        }
        _ => None,
    };
    let at10k = at(scales, 10_000);
    vec![
        Target {
            name: "socket LB request rate / direct (worst scale)",
            value: min_ratio(scales, |s| s.socket_ratio.rps),
            unit: "x",
            op: ">=",
            bound: 0.98,
        },
        Target {
            name: "tc path request rate / direct, every pod a sluice endpoint (a node's ClusterIP path to its pods; worst scale)",
            value: min_ratio(scales, |s| s.node_tc_ratio.rps),
            unit: "x",
            op: ">=",
            bound: 0.95,
        },
        Target {
            name: "tc path request rate / direct, backends behind host routing (worst scale)",
            value: min_ratio(scales, |s| s.tc_ratio.rps),
            unit: "x",
            op: ">=",
            bound: 0.95,
        },
        Target {
            name: "socket LB connect p99 at the largest count / at 1 service",
            value: p99_growth,
            unit: "x",
            op: "<=",
            bound: 1.1,
        },
        Target {
            name: "socket LB CRR / iptables CRR at 10 000 services (alternated rounds)",
            value: at10k.map(|s| s.socket_vs_iptables.crr),
            unit: "x",
            op: ">=",
            bound: 2.0,
        },
        Target {
            name: "10 000 services programmed: model + map writes (what an API watch pays)",
            value: at10k.map(|s| s.sluice_apply_ms),
            unit: "ms",
            op: "<=",
            bound: 1000.0,
        },
        Target {
            name: "10 000 services programmed: manifest change seen -> maps updated (incl. YAML parsing)",
            value: at10k.map(|s| s.sluice_program_ms),
            unit: "ms",
            op: "<=",
            bound: 1000.0,
        },
        Target {
            name: "agent RSS at 10 000 services",
            value: at10k.map(|s| s.agent_rss_mb),
            unit: "MB",
            op: "<=",
            bound: 64.0,
        },
    ]
}

/// Ratios of `l` against the direct medians (paths not measured in pairs).
fn vs_medians(l: &Load, direct: &Load) -> Ratio {
    Ratio {
        rps: l.rps / direct.rps,
        crr: l.crr / direct.crr,
        rps_lo: f64::NAN,
        rps_hi: f64::NAN,
        crr_lo: f64::NAN,
        crr_hi: f64::NAN,
    }
}

/// A paired ratio's median and the per-round extremes it came from.
fn spread(median: f64, min: f64, max: f64) -> Value {
    json!({"median": median, "min": min, "max": max})
}

fn load_json(l: &Load, r: Ratio) -> Value {
    json!({
        "requests_per_s": l.rps,
        "crr_per_s": l.crr,
        "connect_p50_us": l.connect_p50_us,
        "connect_p99_us": l.connect_p99_us,
        "errors": l.errors,
        "rps_vs_direct": r.rps,
        "rps_vs_direct_min": r.rps_lo,
        "rps_vs_direct_max": r.rps_hi,
        "crr_vs_direct": r.crr,
    })
}

fn outcome_json(o: &Outcome, direct: &Load) -> Value {
    match o {
        Outcome::Measured(l) => load_json(l, vs_medians(l, direct)),
        Outcome::Skipped(why) => json!({ "skipped": why }),
    }
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "kernel": kernel.trim(), "cpus": cpus })
}

pub fn write(o: &Opts, scales: &[Scale], steal_pct: f64) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let ts = targets(scales);
    let doc = json!({
        "machine": machine(),
        "cpu_steal_pct": steal_pct,
        "params": {
            "endpoints_per_service": o.endpoints, "secs": o.secs, "rounds": o.rounds,
            "rr_conns": o.rr_conns, "crr_conns": o.crr_conns, "sampled_services": o.sample,
            "iptables_restore": o.iptables_restore,
        },
        "scales": scales.iter().map(|s| json!({
            "services": s.services,
            "direct": load_json(&s.direct, vs_medians(&s.direct, &s.direct)),
            "sluice_socket": load_json(&s.socket, s.socket_ratio),
            "sluice_tc": load_json(&s.tc, s.tc_ratio),
            "rr_null_ratio": spread(s.null_ratio.rps, s.null_ratio.rps_lo, s.null_ratio.rps_hi),
            "direct_endpoints": load_json(&s.node_direct, vs_medians(&s.node_direct, &s.direct)),
            "sluice_tc_endpoints": load_json(&s.node_tc, s.node_tc_ratio),
            "rr_null_ratio_endpoints": spread(s.node_null_ratio.rps, s.node_null_ratio.rps_lo, s.node_null_ratio.rps_hi),
            "iptables": outcome_json(&s.iptables, &s.direct),
            "crr_socket_vs_iptables": spread(s.socket_vs_iptables.crr, s.socket_vs_iptables.crr_lo, s.socket_vs_iptables.crr_hi),
            "crr_direct_vs_iptables": spread(s.direct_vs_iptables.crr, s.direct_vs_iptables.crr_lo, s.direct_vs_iptables.crr_hi),
            "ipvs": outcome_json(&s.ipvs, &s.direct),
            "sluice_program_ms": s.sluice_program_ms,
            "sluice_apply_ms": s.sluice_apply_ms,
            "sluice_program_wall_ms": s.sluice_program_wall_ms,
            "agent_rss_mb": s.agent_rss_mb,
            "agent_cpu_pct_under_socket_load": s.agent_cpu_pct,
            "agent_cpu_pct_under_tc_load": s.agent_cpu_tc_pct,
            "agent_peak_rss_mb": s.agent_peak_rss_mb,
            "prog_costs": s.prog_costs.iter().map(|(path, n, runs, ns)| json!({
                "path": path, "program": n, "runs": runs, "ns_per_run": ns,
            })).collect::<Vec<_>>(),
            "iptables_rules": s.iptables_rules,
            "iptables_program_ms": s.iptables_program_ms,
        })).collect::<Vec<_>>(),
        "targets": ts.iter().map(|t| json!({
            "name": t.name, "value": t.value, "unit": t.unit,
            "target": format!("{} {}", t.op, t.bound), "verdict": t.verdict(),
        })).collect::<Vec<_>>(),
    });
    let json_path = o.out.join("lb.json");
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, pretty + "\n")
        .map_err(|e| format!("{}: {e}", json_path.display()))?;

    let md = markdown(o, scales, &ts, steal_pct);
    let md_path = o.out.join("lb.md");
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg_path = o.out.join("lb.svg");
    plot(scales, &svg_path)?;
    print!("{md}");
    eprintln!(
        "wrote {}, {}, {}",
        md_path.display(),
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn markdown(o: &Opts, scales: &[Scale], ts: &[Target], steal_pct: f64) -> String {
    let mut m = String::new();
    let mach = machine();
    let _ = writeln!(
        m,
        "# Service LB benchmark\n\nkernel {}, {} CPUs; {} endpoints per service; {} rounds x {} s per figure (median); \
         rr over {} persistent connections, CRR (connect, read the reply, close) on {} threads over {} sampled services \
         (these balance over the backend pods; every other service has endpoints of its own that no traffic reaches, \
         so N services program N x endpoints backends); \
         kube-proxy rules loaded with {}. \
         \"x direct\" for (b) and (c) is the median of per-round ratios against direct measured in the same round: \
         for req/s one load generator drives the path's connections and direct ones (from a pod no sluice program sees) \
         in alternating 50 ms slices (A B B A, fresh connections every 8 slices), for CRR the rounds alternate; \
         for (d) and (e) it is against the median of all direct rounds. \
         (d) runs from the baseline pod (kube-proxy's PREROUTING jump takes only its veth, and the socket LB's client is exempt from conntrack, as on a node without kube-proxy) in rounds alternating with \
         CRR rounds of the socket LB and of direct traffic from the client pod, so the CRR target is a median of \
         per-round ratios too, next to its ceiling (direct / iptables). The A/A line under each table pairs direct with direct \
         the same way: the method's noise floor. \
         (c) runs with the backends as plain routed pods (as remote backends are reached: through the node's routing); \
         in (c') every pod is a sluice endpoint the way sluice-cni wires it (pod programs on its veth, an EP4 entry), \
         so DNATed traffic and its replies go from veth to veth in the kernel, and its \"x direct\" pairs it with direct \
         traffic on that same datapath (a'); (a') against (a) is unpaired. \
         CPU steal during the run: {:.1}% (a shared VM).\n",
        mach["kernel"].as_str().unwrap_or("?"),
        mach["cpus"],
        o.endpoints,
        o.rounds,
        o.secs,
        o.rr_conns,
        o.crr_conns,
        o.sample,
        o.iptables_restore,
        steal_pct
    );
    for s in scales {
        let _ = writeln!(m, "## {} services\n", s.services);
        let _ = writeln!(
            m,
            "| path | req/s | x direct | CRR/s | x direct | connect p50 us | connect p99 us | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );

        let rows: [Row; 7] = [
            (
                "(a) direct to pod IPs",
                Some((&s.direct, vs_medians(&s.direct, &s.direct))),
                "",
            ),
            (
                "(b) sluice socket LB",
                Some((&s.socket, s.socket_ratio)),
                "",
            ),
            (
                "(c) sluice tc path, backends behind host routing",
                Some((&s.tc, s.tc_ratio)),
                "",
            ),
            (
                "(a') direct, every pod a sluice endpoint",
                Some((&s.node_direct, vs_medians(&s.node_direct, &s.direct))),
                "",
            ),
            (
                "(c') sluice tc path, every pod a sluice endpoint",
                Some((&s.node_tc, s.node_tc_ratio)),
                "",
            ),
            (
                "(d) kube-proxy iptables",
                measured_row(&s.iptables, &s.direct),
                skipped(&s.iptables),
            ),
            (
                "(e) IPVS",
                measured_row(&s.ipvs, &s.direct),
                skipped(&s.ipvs),
            ),
        ];
        for (name, l, why) in rows {
            match l {
                Some((l, r)) => {
                    let _ = writeln!(
                        m,
                        "| {name} | {:.0} | {:.3} | {:.0} | {:.3} | {:.0} | {:.0} | {} |",
                        l.rps, r.rps, l.crr, r.crr, l.connect_p50_us, l.connect_p99_us, l.errors
                    );
                }
                None => {
                    let _ = writeln!(m, "| {name} | skipped: {why} | | | | | | |");
                }
            }
        }
        let _ = writeln!(
            m,
            "\nreq/s ratio per round (min - max): socket LB {:.3} - {:.3}, tc path {:.3} - {:.3}, \
             tc path with endpoints {:.3} - {:.3}; A/A noise floor {:.3} (min - max {:.3} - {:.3}), \
             with endpoints {:.3} ({:.3} - {:.3}).",
            s.socket_ratio.rps_lo,
            s.socket_ratio.rps_hi,
            s.tc_ratio.rps_lo,
            s.tc_ratio.rps_hi,
            s.node_tc_ratio.rps_lo,
            s.node_tc_ratio.rps_hi,
            s.null_ratio.rps,
            s.null_ratio.rps_lo,
            s.null_ratio.rps_hi,
            s.node_null_ratio.rps,
            s.node_null_ratio.rps_lo,
            s.node_null_ratio.rps_hi
        );
        if measured(&s.iptables).is_some() {
            let (r, d) = (&s.socket_vs_iptables, &s.direct_vs_iptables);
            let _ = writeln!(
                m,
                "\nCRR against iptables, rounds alternated: socket LB / iptables {:.3} (min - max {:.3} - {:.3}); \
                 direct / iptables {:.3} ({:.3} - {:.3}), the ceiling for any LB.",
                r.crr, r.crr_lo, r.crr_hi, d.crr, d.crr_lo, d.crr_hi
            );
        }
        let _ = writeln!(
            m,
            "\nProgramming: sluice {:.1} ms (change seen -> maps updated; {:.1} ms of it model + map writes, the rest YAML parsing; {:.1} ms from the manifest's rename to the agent's log line), \
             iptables restore of {} rules {:.1} ms. Agent RSS {:.1} MB (peak {:.1} MB), agent CPU {:.1}% / {:.1}% while the socket LB / tc path was under load.\n",
            s.sluice_program_ms,
            s.sluice_apply_ms,
            s.sluice_program_wall_ms,
            s.iptables_rules,
            s.iptables_program_ms,
            s.agent_rss_mb,
            s.agent_peak_rss_mb,
            s.agent_cpu_pct,
            s.agent_cpu_tc_pct
        );
    }
    let _ = writeln!(
        m,
        "## In-kernel cost of sluice's programs\n\nMean run time per invocation (kernel BPF stats, one extra round per path; \
         a connect runs sock4_connect once, a packet runs tc_pod_ingress or tc_lb_egress once, by direction).\n\n| services | path | program | runs | ns per run |\n|---:|---|---|---:|---:|"
    );
    for s in scales {
        for (path, name, runs, ns) in &s.prog_costs {
            let _ = writeln!(m, "| {} | {path} | {name} | {runs} | {ns:.0} |", s.services);
        }
    }
    let _ = writeln!(m);
    let _ = writeln!(
        m,
        "## Targets\n\n| target | value | bound | verdict |\n|---|---:|---:|---|"
    );
    for t in ts {
        let v = t
            .value
            .map_or("-".to_string(), |v| format!("{v:.3} {}", t.unit));
        let _ = writeln!(
            m,
            "| {} | {v} | {} {} {} | {} |",
            t.name,
            t.op,
            t.bound,
            t.unit,
            t.verdict()
        );
    }
    m
}

/// A table row: path name, its numbers and ratio (or none), why skipped.
type Row<'a> = (&'static str, Option<(&'a Load, Ratio)>, &'a str);

fn measured_row<'a>(o: &'a Outcome, direct: &Load) -> Option<(&'a Load, Ratio)> {
    measured(o).map(|l| (l, vs_medians(l, direct)))
}

fn skipped(o: &Outcome) -> &str {
    match o {
        Outcome::Skipped(why) => why,
        Outcome::Measured(_) => "",
    }
}

type Getter = fn(&Load) -> f64;
/// One plotted path: name, colour, (scale index, value) points.
type Series = (&'static str, RGBColor, Vec<(i32, f64)>);

fn plot(scales: &[Scale], path: &std::path::Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Debug| format!("plotting {}: {e:?}", path.display());
    let root = SVGBackend::new(path, (1500, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 3));
    let metrics: [(&str, Getter); 3] = [
        ("new connections/s (CRR)", |l| l.crr),
        ("connect p50 (us)", |l| l.connect_p50_us),
        ("connect p99 (us)", |l| l.connect_p99_us),
    ];
    let labels: Vec<String> = scales.iter().map(|s| s.services.to_string()).collect();
    let n = scales.len() as i32;
    for (panel, (title, get)) in panels.iter().zip(metrics) {
        let series: Vec<Series> = [
            ("direct", BLACK),
            ("sluice socket", BLUE),
            ("sluice tc", GREEN),
            ("sluice tc, endpoints", CYAN),
            ("iptables", RED),
            ("ipvs", MAGENTA),
        ]
        .into_iter()
        .map(|(name, color)| {
            let pts = scales
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let l = match name {
                        "direct" => Some(&s.direct),
                        "sluice socket" => Some(&s.socket),
                        "sluice tc" => Some(&s.tc),
                        "sluice tc, endpoints" => Some(&s.node_tc),
                        "iptables" => measured(&s.iptables),
                        _ => measured(&s.ipvs),
                    }?;
                    let v = get(l);
                    v.is_finite().then_some((i as i32, v))
                })
                .collect();
            (name, color, pts)
        })
        .filter(|(_, _, pts): &Series| !pts.is_empty())
        .collect();
        let max = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|&(_, v)| v))
            .fold(1.0f64, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(-1..n, 0f64..max * 1.15)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels((n + 1) as usize)
            .x_label_formatter(&|i| labels.get(*i as usize).cloned().unwrap_or_default())
            .x_desc("services")
            .draw()
            .map_err(|e| err(&e))?;
        for (name, color, pts) in series {
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
