//! Completion indexes of an Indexed Job as upstream writes them in
//! `status.completedIndexes`: ordered, merged intervals printed as
//! `"0-2,5,7,8"` (two neighbours are listed, three or more become a range).

/// Sorted, disjoint, non-adjacent closed intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i32, i32)>);

impl Intervals {
    /// Reads `status.completedIndexes`, keeping only indexes below
    /// `completions` and skipping parts that do not parse (the field is
    /// the controller's own, but a user could have written it).
    pub fn parse(s: &str, completions: i32) -> Self {
        let mut out: Vec<(i32, i32)> = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let mut ends = part.splitn(2, '-');
            let Some(Ok(first)) = ends.next().map(str::parse::<i32>) else {
                continue;
            };
            if first >= completions {
                break;
            }
            let last = match ends.next().map(str::parse::<i32>) {
                None => first,
                Some(Ok(l)) => l.min(completions - 1),
                Some(Err(_)) => continue,
            };
            match out.last_mut() {
                Some(prev) if prev.1 + 1 == first => prev.1 = last,
                _ => out.push((first, last)),
            }
        }
        Intervals(out)
    }

    /// These intervals plus `indexes` (any order, duplicates allowed).
    pub fn with(&self, indexes: impl IntoIterator<Item = i32>) -> Self {
        let mut add: Vec<i32> = indexes.into_iter().collect();
        add.sort_unstable();
        add.dedup();
        self.merge(&Intervals(add.into_iter().map(|i| (i, i)).collect()))
    }

    pub fn merge(&self, other: &Intervals) -> Self {
        let mut all: Vec<(i32, i32)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut out: Vec<(i32, i32)> = Vec::new();
        for (first, last) in all {
            match out.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => out.push((first, last)),
            }
        }
        Intervals(out)
    }

    pub fn has(&self, ix: i32) -> bool {
        self.0.iter().any(|&(f, l)| f <= ix && ix <= l)
    }

    pub fn total(&self) -> i32 {
        self.0.iter().map(|&(f, l)| l - f + 1).sum()
    }

    /// The first `count` indexes below `completions` not in `self`.
    pub fn first_missing(&self, count: usize, completions: i32) -> Vec<i32> {
        let mut out = Vec::with_capacity(count);
        let mut candidate = 0;
        for &(first, last) in &self.0 {
            while candidate < completions && out.len() < count && candidate < first {
                out.push(candidate);
                candidate += 1;
            }
            candidate = candidate.max(last + 1);
        }
        while candidate < completions && out.len() < count {
            out.push(candidate);
            candidate += 1;
        }
        out
    }
}

impl std::fmt::Display for Intervals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(first, last)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{first}")?;
            if last == first + 1 {
                write!(f, ",{last}")?;
            } else if last > first {
                write!(f, "-{last}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_print_compressed_like_upstream() {
        let iv = Intervals::default().with([5, 0, 2, 1, 7, 8, 2]);
        assert_eq!(iv.to_string(), "0-2,5,7,8");
        assert_eq!(iv.total(), 6);
        assert!(iv.has(1) && iv.has(8) && !iv.has(3) && !iv.has(6));
        assert_eq!(Intervals::default().to_string(), "");
    }

    #[test]
    fn parsing_round_trips_and_drops_indexes_past_completions() {
        for s in ["0-2,5,7,8", "3", "1,3-9"] {
            assert_eq!(Intervals::parse(s, 100).to_string(), s);
        }
        assert_eq!(Intervals::parse("0-9,12", 5).to_string(), "0-4");
        assert_eq!(Intervals::parse("0,1,2", 10).to_string(), "0-2");
        assert_eq!(Intervals::parse("x,4", 10).to_string(), "4");
    }

    #[test]
    fn merging_joins_neighbours() {
        let a = Intervals::parse("0-2,8", 100);
        let b = Intervals::parse("3,5-7", 100);
        assert_eq!(a.merge(&b).to_string(), "0-3,5-8");
    }

    #[test]
    fn missing_indexes_are_the_lowest_not_taken() {
        let taken = Intervals::parse("0,2-3,6", 100);
        assert_eq!(taken.first_missing(3, 10), [1, 4, 5]);
        assert_eq!(taken.first_missing(10, 8), [1, 4, 5, 7]);
        assert_eq!(Intervals::default().first_missing(2, 5), [0, 1]);
    }
}
