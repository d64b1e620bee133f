//! What the benchmark binaries share: `--key value` arguments (a bad one
//! exits 2 with one line naming it) and the statistics they report.
use std::{collections::HashMap, path::PathBuf, time::Duration};

pub struct BenchArgs {
    usage: &'static str,
    values: HashMap<String, String>,
}

impl BenchArgs {
    /// Parses `std::env::args()`; `usage` is the binary's usage line and
    /// `known` the accepted `--flags` (each takes one value).
    pub fn parse(usage: &'static str, known: &[&str]) -> Self {
        let mut me = Self {
            usage,
            values: HashMap::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if !known.contains(&a.as_str()) {
                me.fail(&format!("unknown argument {a:?}"));
            }
            let v = args
                .next()
                .unwrap_or_else(|| me.fail(&format!("{a} needs a value")));
            me.values.insert(a, v);
        }
        me
    }

    pub fn fail(&self, msg: &str) -> ! {
        let name = self.usage.split_whitespace().next().unwrap_or("bench");
        eprintln!("{name}: {msg}");
        eprintln!("usage: {}", self.usage);
        std::process::exit(2)
    }

    pub fn num(&self, key: &str, default: usize) -> usize {
        match self.values.get(key) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| self.fail(&format!("{key}: not a number: {v}"))),
        }
    }

    pub fn path(&self, key: &str, default: &str) -> PathBuf {
        PathBuf::from(self.values.get(key).map_or(default, String::as_str))
    }
}

/// The `p` quantile of `v` in milliseconds (NaN when empty).
pub fn pct_ms(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// Median of the finite values (NaN when none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prints `md` and writes `<out>/<stem>.md` and `<out>/<stem>.json`;
/// exits 1 naming the problem when it cannot.
pub fn write_report(out: &std::path::Path, stem: &str, md: &str, json: &serde_json::Value) {
    print!("{md}");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join(format!("{stem}.md")), md)?;
        std::fs::write(
            out.join(format!("{stem}.json")),
            serde_json::to_string_pretty(json).unwrap_or_default(),
        )
    };
    if let Err(e) = write() {
        eprintln!("writing {stem} reports under {}: {e}", out.display());
        std::process::exit(1);
    }
}

/// `(VmRSS, VmHWM)` of process `pid` in MiB (NaN when unreadable).
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
