//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) for backend
//! selection: each service gets a lookup table of prime size M whose slots
//! name a backend; the data plane indexes it with a flow hash.
//!
//! Why Maglev: the table depends only on the *set* of backends (their
//! "ip:port" names, hashed with a fixed-seed xxh3), so every node and every
//! agent restart computes the same table, and adding or removing one backend
//! moves only about 1/N of the flows instead of reshuffling all of them.
//!
//! Table size / memory trade-off: each slot is a u32, so a table costs 4·M
//! bytes of kernel memory per service. Larger M gives a more even spread
//! (slot counts per backend differ by at most one, so the imbalance is
//! about N/M) and less disruption on change, but costs memory: 16381 slots
//! is 64 KiB per service. We pick the smallest prime in [`TABLE_SIZES`] with
//! M >= 100·N (imbalance <= ~1%), so a 1-endpoint service costs 1 KiB and a
//! 10-endpoint one 4 KiB; 10 000 such services fit in ~40 MiB.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Primes we allow as table sizes, smallest first (the same ladder Cilium
/// offers; each is the largest prime below a power of two).
pub const TABLE_SIZES: [u32; 7] = [251, 509, 1021, 2039, 4093, 8191, 16381];

/// Largest table; services with more than M/100 backends trade some
/// evenness for bounded memory.
pub const MAX_TABLE_SIZE: u32 = TABLE_SIZES[TABLE_SIZES.len() - 1];

/// Identifies what [`build`] computes: the reconciler digests it with a
/// table's inputs to recognise a pinned table without recomputing it.
/// Change it with anything that changes `build`'s output (the seeds, the
/// hash, the probing), or restarted agents would keep the old tables.
pub const VERSION: u32 = 1;

const OFFSET_SEED: u64 = 0x736c_7569_6365_6f66; // "sluiceof"
const SKIP_SEED: u64 = 0x736c_7569_6365_736b; // "sluicesk"

/// Smallest allowed prime with at least 100 slots per backend.
pub fn table_size_for(backends: usize) -> u32 {
    let want = backends.saturating_mul(100);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&m| m as usize >= want)
        .unwrap_or(MAX_TABLE_SIZE)
}

/// Builds a table of `size` slots over `backends` (their stable names, e.g.
/// "10.244.1.5:8080"). Returns, per slot, an index into `backends`. The
/// result does not depend on the order of `backends` beyond those indices:
/// names are what is hashed, and ties are broken by name. `size` must be
/// prime (one of [`TABLE_SIZES`]); an empty backend list gives an empty table.
pub fn build<S: AsRef<[u8]>>(backends: &[S], size: u32) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    debug_assert!(
        TABLE_SIZES.contains(&size),
        "table size {size} is not an allowed prime"
    );
    let m = u64::from(size);
    // Visit backends in name order so input order cannot change the table.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| backends[a].as_ref().cmp(backends[b].as_ref()));
    // Per backend: its permutation's next position and its skip. The
    // permutation is (offset + j·skip) mod M for j = 0, 1, ...; stepping it
    // by one addition and a conditional subtraction gives the same walk
    // without a division per probe (the division was most of the build).
    let mut walks: Vec<(u32, u32)> = order
        .iter()
        .map(|&i| {
            let name = backends[i].as_ref();
            let offset = xxh3_64_with_seed(name, OFFSET_SEED) % m;
            let skip = xxh3_64_with_seed(name, SKIP_SEED) % (m - 1) + 1;
            (offset as u32, skip as u32)
        })
        .collect();

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (k, (pos, skip)) in walks.iter_mut().enumerate() {
            // Walk this backend's permutation to its next free slot. Since M
            // is prime and 0 < skip < M, the walk visits every slot, so a
            // free one is always found while the table is not full.
            let slot = loop {
                let c = *pos as usize;
                *pos += *skip;
                if *pos >= size {
                    *pos -= size;
                }
                if table[c] == EMPTY {
                    break c;
                }
            };
            table[slot] = order[k] as u32;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn sizes_are_prime_and_scale_with_backends() {
        for m in TABLE_SIZES {
            assert!(
                (2..m).take_while(|d| d * d <= m).all(|d| m % d != 0),
                "{m} not prime"
            );
        }
        assert_eq!(table_size_for(0), 251);
        assert_eq!(table_size_for(1), 251);
        assert_eq!(table_size_for(3), 509);
        assert_eq!(table_size_for(10), 1021);
        assert_eq!(table_size_for(100_000), MAX_TABLE_SIZE);
    }

    #[test]
    fn every_slot_is_filled_and_backends_differ_by_at_most_one_slot() {
        for n in [1, 2, 3, 7, 10, 64, 200] {
            let m = table_size_for(n);
            let t = build(&names(n), m);
            assert_eq!(t.len(), m as usize);
            let c = counts(&t, n);
            let (lo, hi) = (c.iter().min().copied(), c.iter().max().copied());
            assert!(
                hi.unwrap() - lo.unwrap() <= 1,
                "n={n} m={m} counts {lo:?}..{hi:?}"
            );
        }
    }

    #[test]
    fn empty_backend_list_gives_empty_table() {
        assert!(build::<&str>(&[], 251).is_empty());
    }

    #[test]
    fn table_depends_on_the_set_not_the_order() {
        let a = names(10);
        let mut b = a.clone();
        b.reverse();
        let (ta, tb) = (build(&a, 1021), build(&b, 1021));
        let resolve = |t: &[u32], v: &[String]| -> Vec<String> {
            t.iter().map(|&i| v[i as usize].clone()).collect()
        };
        assert_eq!(resolve(&ta, &a), resolve(&tb, &b));
    }

    #[test]
    fn removing_one_backend_moves_few_other_flows() {
        let before = names(10);
        let after: Vec<String> = before
            .iter()
            .filter(|n| *n != &before[3])
            .cloned()
            .collect();
        let m = 1021;
        let (tb, ta) = (build(&before, m), build(&after, m));
        let moved = tb
            .iter()
            .zip(&ta)
            .filter(|(b, a)| {
                let (b, a) = (&before[**b as usize], &after[**a as usize]);
                b != &before[3] && b != a
            })
            .count();
        // Slots of surviving backends that changed owner: Maglev keeps this
        // to a few percent (the paper reports ~1-3%); all of the removed
        // backend's ~10% necessarily move.
        let pct = moved as f64 * 100.0 / f64::from(m);
        assert!(
            pct < 5.0,
            "{pct:.1}% of slots moved between surviving backends"
        );
    }

    /// The paper's formulation, one modulo per probe: `build` must give
    /// exactly this table (every node must agree, and a restarted agent
    /// trusts a pinned table whose inputs' digest matches; see `VERSION`).
    fn reference(backends: &[String], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_by(|&a, &b| backends[a].cmp(&backends[b]));
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let name = backends[i].as_bytes();
                let offset = xxh3_64_with_seed(name, OFFSET_SEED) % m;
                (offset, xxh3_64_with_seed(name, SKIP_SEED) % (m - 1) + 1)
            })
            .collect();
        let mut table = vec![u32::MAX; size as usize];
        let mut next = vec![0u64; order.len()];
        let mut filled = 0;
        while filled < size {
            for (k, &(offset, skip)) in perms.iter().enumerate() {
                let slot = loop {
                    let c = ((offset + next[k] * skip) % m) as usize;
                    next[k] += 1;
                    if table[c] == u32::MAX {
                        break c;
                    }
                };
                table[slot] = order[k] as u32;
                filled += 1;
                if filled == size {
                    break;
                }
            }
        }
        table
    }

    #[test]
    fn matches_the_modulo_formulation() {
        for n in [1, 2, 3, 10, 64, 200] {
            for m in [251, 1021, MAX_TABLE_SIZE] {
                assert_eq!(build(&names(n), m), reference(&names(n), m), "n={n} m={m}");
            }
        }
    }

    /// Pinned tables are recognised by a digest of their inputs and
    /// `VERSION`, not of their contents: a change to `build`'s output that
    /// keeps `VERSION` would leave restarted agents on the old tables.
    #[test]
    fn output_is_pinned_to_the_version() {
        let table = build(&names(10), 1021);
        let bytes: Vec<u8> = table.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(
            (VERSION, xxhash_rust::xxh3::xxh3_64(&bytes)),
            (1, GOLDEN_V1),
            "build() changed its output: bump maglev::VERSION and update this test"
        );
    }
    const GOLDEN_V1: u64 = 10_765_682_190_217_287_797;
}
