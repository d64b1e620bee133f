//! CPU-bound steps of programming (YAML parsing, Maglev tables) spread
//! over the node's CPUs: at 10 000 services each is hundreds of ms on one.
//! Scoped threads, not a pool: they run once per change and leave nothing
//! resident (an idle pool's stacks and arenas would count against the
//! agent's RSS between changes).

/// Maps `f` over every item of `runs`, each run on a thread of its own (the
/// first on the caller's), with results in input order. A panic in `f` is
/// re-raised here.
pub fn map_runs<T: Sync, R: Send>(runs: &[&[T]], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let f = &f;
    let run = move |items: &[T]| items.iter().map(f).collect::<Vec<R>>();
    let Some((first, rest)) = runs.split_first() else {
        return Vec::new();
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = rest.iter().map(|r| s.spawn(move || run(r))).collect();
        let mut out = run(first);
        for h in handles {
            match h.join() {
                Ok(v) => out.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// `items` cut into `threads` contiguous runs of about equal length.
pub fn even_runs<T>(items: &[T], threads: usize) -> Vec<&[T]> {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    items.chunks(per).collect()
}

/// One thread per CPU.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_kept_for_any_split() {
        let items: Vec<u32> = (0..1000).collect();
        let want: Vec<u32> = items.iter().map(|x| x * 3).collect();
        for threads in [1, 2, 3, 7, 2000] {
            let runs = even_runs(&items, threads);
            assert!(runs.len() <= threads.max(1));
            assert_eq!(map_runs(&runs, |x| x * 3), want, "{threads} threads");
        }
        assert!(map_runs::<u32, u32>(&even_runs(&[], 4), |x| *x).is_empty());
    }
}
