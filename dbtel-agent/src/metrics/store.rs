//! The series of each instrument: label values to a histogram, counter or
//! gauge cell. Bounded: past `SERIES_CAP` series an instrument records into
//! one overflow series (OpenTelemetry's `otel.metric.overflow=true`).

use std::hash::BuildHasher;

use super::instruments::{Kind, DEFS};
use crate::FastMap;

pub const SERIES_CAP: usize = 2_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// `counts[i]`: observations in (bounds[i-1], bounds[i]]; the last one
    /// past the highest bound. Not cumulative.
    Histogram {
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
    Counter(f64),
    Gauge(f64),
}

#[derive(Debug, Clone)]
pub struct Series {
    /// One per label of the instrument, in its order ("" = absent).
    pub values: Vec<Box<str>>,
    /// The overflow series: its values are empty.
    pub overflow: bool,
    pub cell: Cell,
}

#[derive(Debug, Default)]
pub struct Family {
    index: FastMap<u64, usize>,
    pub series: Vec<Series>,
    /// Recordings that went to the overflow series.
    pub overflowed: u64,
    /// The series recorded into last: most spans in a row share their labels,
    /// and comparing them with its values is cheaper than hashing them.
    last: usize,
}

#[derive(Debug)]
pub struct Store {
    pub families: Vec<Family>,
    hasher: foldhash::fast::FixedState,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            families: DEFS.iter().map(|_| Family::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x0064_6274_656c),
        }
    }
}

fn empty_cell(kind: Kind) -> Cell {
    match kind {
        Kind::Histogram(b) => Cell::Histogram {
            counts: vec![0; b.len() + 1],
            sum: 0.0,
            count: 0,
        },
        Kind::Counter => Cell::Counter(0.0),
        Kind::Gauge => Cell::Gauge(0.0),
    }
}

/// Empty values are not handed to memcmp: glibc's EVEX memcmp given an
/// empty slice's dangling pointer takes a masked load's fault assist (~130
/// ns on the bench VM, more than hashing all seven labels).
fn same(kept: &[Box<str>], values: &[&str]) -> bool {
    kept.len() == values.len()
        && kept
            .iter()
            .zip(values)
            .all(|(k, v)| k.len() == v.len() && (k.is_empty() || k.as_bytes() == v.as_bytes()))
}

impl Store {
    /// The cell of instrument `id` for these label values (in its labels' order).
    fn cell(&mut self, id: usize, values: &[&str]) -> &mut Cell {
        let at = self.series_of(id, values);
        &mut self.families[id].series[at].cell
    }

    /// Where the series of instrument `id` for these label values is (the
    /// overflow series' past the cap).
    fn series_of(&mut self, id: usize, values: &[&str]) -> usize {
        let def = &DEFS[id];
        debug_assert_eq!(values.len(), def.labels.len(), "{}", def.name);
        let fam = &mut self.families[id];
        if fam
            .series
            .get(fam.last)
            .is_some_and(|s| !s.overflow && same(&s.values, values))
        {
            return fam.last;
        }
        let key = self.hasher.hash_one(values);
        let at = match fam.index.get(&key) {
            Some(&i) => i,
            None if fam.series.len() < SERIES_CAP => {
                fam.series.push(Series {
                    values: values.iter().map(|v| Box::from(*v)).collect(),
                    overflow: false,
                    cell: empty_cell(def.kind),
                });
                fam.index.insert(key, fam.series.len() - 1);
                fam.series.len() - 1
            }
            None => {
                fam.overflowed += 1;
                match fam.series.iter().position(|s| s.overflow) {
                    Some(i) => i,
                    None => {
                        fam.series.push(Series {
                            values: values.iter().map(|_| Box::from("")).collect(),
                            overflow: true,
                            cell: empty_cell(def.kind),
                        });
                        fam.series.len() - 1
                    }
                }
            }
        };
        fam.last = at;
        at
    }

    /// Returns the series recorded into, unless it was the overflow series
    /// (recordings there are counted as overflowed: see [`Self::observe_at`]).
    pub fn observe(&mut self, id: usize, values: &[&str], v: f64) -> Option<usize> {
        let at = self.series_of(id, values);
        self.observe_at(id, at, v);
        (!self.families[id].series[at].overflow).then_some(at)
    }

    /// Records into a series [`Self::observe`] returned (series stay where
    /// they are: they are never removed).
    pub fn observe_at(&mut self, id: usize, series: usize, v: f64) {
        let Kind::Histogram(bounds) = DEFS[id].kind else {
            panic!("{} is not a histogram", DEFS[id].name)
        };
        if let Cell::Histogram { counts, sum, count } = &mut self.families[id].series[series].cell {
            // Prometheus's `le`: a value equal to a bound falls in that bucket.
            let b = bounds.partition_point(|&x| x < v);
            counts[b] += 1;
            *sum += v;
            *count += 1;
        }
    }

    pub fn add(&mut self, id: usize, values: &[&str], v: f64) {
        if let Cell::Counter(c) = self.cell(id, values) {
            *c += v;
        }
    }

    /// Sets a gauge series.
    pub fn set(&mut self, id: usize, values: &[&str], v: f64) {
        if let Cell::Gauge(g) = self.cell(id, values) {
            *g = v;
        }
    }

    /// Every series of gauge `id` to 0 (before the new values are set: a
    /// namespace with no open transaction left reads 0, not its last value).
    pub fn zero_gauges(&mut self, id: usize) {
        for s in &mut self.families[id].series {
            s.cell = Cell::Gauge(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::instruments::id;
    use super::*;

    #[test]
    fn histograms_bucket_by_le_and_counters_add() {
        let mut s = Store::default();
        let v = ["postgresql", "shop", "COMMIT"];
        s.observe(id::TXN_DURATION, &v, 0.001);
        s.observe(id::TXN_DURATION, &v, 0.0011);
        s.observe(id::TXN_DURATION, &v, 100.0);
        let fam = &s.families[id::TXN_DURATION];
        assert_eq!(fam.series.len(), 1);
        let Cell::Histogram { counts, count, sum } = &fam.series[0].cell else {
            panic!()
        };
        assert_eq!((counts[1], counts[2], *counts.last().unwrap()), (1, 1, 1));
        assert_eq!(*count, 3);
        assert!((sum - 100.0021).abs() < 1e-9);
        s.add(id::RETRIES, &["postgresql", "shop"], 1.0);
        s.add(id::RETRIES, &["postgresql", "shop"], 2.0);
        assert_eq!(s.families[id::RETRIES].series[0].cell, Cell::Counter(3.0));
    }

    #[test]
    fn the_last_series_shortcut_never_mixes_series() {
        let mut s = Store::default();
        for v in [
            ["pg", "a"],
            ["pg", "a"],
            ["pg", "b"],
            ["pg", "a"],
            ["pg", "b"],
            ["pg", "b"],
        ] {
            s.add(id::RETRIES, &v, 1.0);
        }
        let fam = &s.families[id::RETRIES];
        let got: Vec<(&str, &Cell)> = fam
            .series
            .iter()
            .map(|x| (&*x.values[1], &x.cell))
            .collect();
        assert_eq!(
            got,
            [("a", &Cell::Counter(3.0)), ("b", &Cell::Counter(3.0))]
        );
    }

    #[test]
    fn past_the_cap_one_overflow_series_takes_the_rest() {
        let mut s = Store::default();
        for i in 0..SERIES_CAP + 500 {
            s.add(id::SLOW, &["postgresql", &format!("SELECT t{i}")], 1.0);
        }
        let fam = &s.families[id::SLOW];
        assert_eq!(fam.series.len(), SERIES_CAP + 1);
        let o = fam.series.iter().find(|s| s.overflow).unwrap();
        assert_eq!(o.cell, Cell::Counter(500.0));
        assert_eq!(fam.overflowed, 500);
    }
}
