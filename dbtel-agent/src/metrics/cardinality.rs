//! Label values with no natural bound (query summaries, tables) are capped:
//! the first `cap` values seen are kept, and a value seen often later is
//! admitted too (up to a quarter more), so a hot query that appears after a
//! burst of one-off ones still gets its own series. The rest report as
//! `other`. Never raw texts: summaries are already literal-free.

use std::sync::Arc;

use crate::FastMap;

pub const OTHER: &str = "other";

/// Late values are counted in at most this many slots; when full, the
/// coldest half is forgotten (a bounded, approximate heavy-hitter count).
const PENDING_SLOTS: usize = 1024;

/// What [`Limiter::admit_seen`] did with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Empty: reported as is, counted nowhere.
    Empty,
    /// Admitted, its sighting counted in this slot (admitted values stay).
    Counted(usize),
    /// Reported as `other`.
    Refused,
}

#[derive(Debug)]
pub struct Limiter {
    cap: usize,
    /// Admitted values and where their sighting count is in `counts`.
    admitted: FastMap<Arc<str>, usize>,
    counts: Vec<u64>,
    late_admitted: usize,
    pending: FastMap<Arc<str>, u64>,
    /// Values that became `other` (a value counted once per time it was refused).
    pub refused: u64,
    /// The value admitted last and its slot in `counts`: most spans in a row
    /// carry the same value, and comparing is cheaper than hashing.
    last: Option<(Arc<str>, usize)>,
}

impl Limiter {
    pub fn new(cap: usize) -> Self {
        Limiter {
            cap,
            admitted: FastMap::default(),
            counts: Vec::new(),
            late_admitted: 0,
            pending: FastMap::default(),
            refused: 0,
            last: None,
        }
    }

    /// The value to report for `v`: itself, or `other`.
    pub fn admit<'a>(&mut self, v: &'a str) -> &'a str {
        match self.admit_seen(v) {
            Seen::Refused => OTHER,
            _ => v,
        }
    }

    /// Counts one more sighting of an admitted value (its slot from
    /// [`Self::admit_seen`]).
    pub fn count(&mut self, slot: usize) {
        self.counts[slot] += 1;
    }

    /// Admits `v` or not, as [`Self::admit`], saying where it was counted.
    pub fn admit_seen(&mut self, v: &str) -> Seen {
        if v.is_empty() {
            return Seen::Empty;
        }
        if let Some((last, slot)) = &self.last {
            if **last == *v {
                self.counts[*slot] += 1;
                return Seen::Counted(*slot);
            }
        }
        if let Some((k, &slot)) = self.admitted.get_key_value(v) {
            self.counts[slot] += 1;
            self.last = Some((k.clone(), slot));
            return Seen::Counted(slot);
        }
        if self.admitted.len() < self.cap {
            return Seen::Counted(self.add(Arc::from(v), 1));
        }
        if self.late_admitted < self.cap / 4 {
            let n = match self.pending.get_mut(v) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None => {
                    if self.pending.len() >= PENDING_SLOTS {
                        self.forget_coldest_half();
                    }
                    self.pending.insert(Arc::from(v), 1);
                    1
                }
            };
            // Checked at powers of two only: the scan is O(cap).
            if n >= 16 && n.is_power_of_two() {
                let coldest = self.counts.iter().copied().min().unwrap_or(0);
                if n > coldest {
                    let (k, n) = self.pending.remove_entry(v).expect("just counted");
                    self.late_admitted += 1;
                    return Seen::Counted(self.add(k, n));
                }
            }
        }
        self.refused += 1;
        Seen::Refused
    }

    /// Its slot in `counts`.
    fn add(&mut self, v: Arc<str>, n: u64) -> usize {
        self.admitted.insert(v, self.counts.len());
        self.counts.push(n);
        self.counts.len() - 1
    }

    fn forget_coldest_half(&mut self) {
        let mut counts: Vec<u64> = self.pending.values().copied().collect();
        let mid = counts.len() / 2;
        let (_, median, _) = counts.select_nth_unstable(mid);
        let median = *median;
        self.pending.retain(|_, n| *n > median);
        // All equal: drop them all rather than keep a full table.
        if self.pending.len() >= PENDING_SLOTS / 2 {
            self.pending.clear();
        }
    }

    pub fn distinct(&self) -> usize {
        self.admitted.len()
    }

    /// Sightings counted per admitted value, in admission order.
    #[cfg(test)]
    pub fn sightings(&self) -> &[u64] {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_values_are_kept_then_other() {
        let mut l = Limiter::new(3);
        for v in ["a", "b", "c"] {
            assert_eq!(l.admit(v), v);
        }
        assert_eq!(l.admit("d"), OTHER);
        assert_eq!(l.admit("a"), "a");
        assert_eq!(l.admit(""), "");
        assert_eq!(l.refused, 1);
    }

    #[test]
    fn a_hot_late_value_is_admitted_and_one_offs_are_not() {
        let mut l = Limiter::new(200);
        for i in 0..10_000 {
            l.admit(&format!("SELECT t{i}"));
        }
        let mut hot = 0;
        for i in 0..2_000 {
            if l.admit("SELECT hot") == "SELECT hot" {
                hot += 1;
            }
            l.admit(&format!("SELECT late{i}"));
        }
        assert!(hot > 1_900, "{hot}");
        assert!(l.distinct() <= 250, "{}", l.distinct());
        assert!(l.pending.len() <= PENDING_SLOTS);
    }

    #[test]
    fn a_value_seen_in_a_row_is_counted_each_time() {
        let mut l = Limiter::new(2);
        for v in ["a", "a", "a", "b", "a", "b", "b"] {
            assert_eq!(l.admit(v), v);
        }
        l.admit("c"); // refused: the counts stand
        let count = |v: &str| l.counts[l.admitted[v]];
        assert_eq!((count("a"), count("b")), (4, 3));
    }
}
