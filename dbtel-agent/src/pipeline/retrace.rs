//! Spans made before their transaction joined the application's trace (its
//! BEGIN, the server's view of it) are moved into that trace on their way
//! out. A transaction's BEGIN span waits here until the transaction's next
//! span (or at most PARK_NS): the application names its trace only in the
//! statement after BEGIN (psycopg2 sends BEGIN itself, uncommented).
//! Bounded: the oldest moves are forgotten past MAX, at most MAX_PARKED
//! BEGINs wait.

use std::collections::VecDeque;

use super::{
    dbspan::{DbSpan, Role},
    txn::Retrace,
};
use crate::FastMap;

const MAX: usize = 65_536;
const MAX_PARKED: usize = 4_096;
const PARK_NS: u64 = 1_000_000_000;

#[derive(Default)]
pub struct Retracer {
    to: FastMap<u128, u128>,
    order: VecDeque<u128>,
    /// BEGIN spans by their transaction's span id, and when they came.
    parked: FastMap<u64, (DbSpan, u64)>,
}

fn begins_a_transaction(s: &DbSpan) -> bool {
    s.ids.parent_span_id != 0
        && !s.ids.remote
        && s.role() == Role::Query
        && matches!(s.operation(), Some("BEGIN" | "START"))
}

impl Retracer {
    pub fn learn(&mut self, r: Retrace) {
        if self.to.insert(r.from, r.to).is_none() {
            self.order.push_back(r.from);
        }
        if self.order.len() > MAX {
            if let Some(old) = self.order.pop_front() {
                self.to.remove(&old);
            }
        }
    }

    /// One span on its way out: moved if its trace moved; a BEGIN waits for
    /// its transaction's next span, which lets it go first.
    /// [`Self::pass`] for each of `spans`, which then holds what goes on, in
    /// order. Done in place when nothing waits and no span begins a
    /// transaction (a move of each span into another buffer was ~1.5 % of
    /// the agent); `scratch` (empty) is the other buffer otherwise.
    pub fn pass_all(&mut self, spans: &mut Vec<DbSpan>, now_ns: u64, scratch: &mut Vec<DbSpan>) {
        debug_assert!(scratch.is_empty());
        if self.parked.is_empty() && !spans.iter().any(begins_a_transaction) {
            if !self.to.is_empty() {
                spans.iter_mut().for_each(|s| self.apply(s));
            }
            return;
        }
        for s in spans.drain(..) {
            self.pass(s, now_ns, scratch);
        }
        std::mem::swap(spans, scratch);
    }

    pub fn pass(&mut self, mut span: DbSpan, now_ns: u64, out: &mut Vec<DbSpan>) {
        if !self.parked.is_empty() {
            for key in [span.ids.parent_span_id, span.ids.span_id] {
                if let Some((mut b, _)) = self.parked.remove(&key) {
                    self.apply(&mut b);
                    out.push(b);
                }
            }
        }
        self.apply(&mut span);
        if begins_a_transaction(&span) && self.parked.len() < MAX_PARKED {
            self.parked.insert(span.ids.parent_span_id, (span, now_ns));
            return;
        }
        out.push(span);
    }

    /// BEGINs that waited PARK_NS go on.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<DbSpan>) {
        if self.parked.is_empty() {
            return;
        }
        let due: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, (_, at))| now_ns.saturating_sub(*at) >= PARK_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some((mut b, _)) = self.parked.remove(&k) {
                self.apply(&mut b);
                out.push(b);
            }
        }
    }

    /// The process is gone: its waiting BEGINs go on.
    pub fn release_pid(&mut self, pid: u32, out: &mut Vec<DbSpan>) {
        if self.parked.is_empty() {
            return;
        }
        let mine: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, (s, _))| s.pid == pid)
            .map(|(k, _)| *k)
            .collect();
        for k in mine {
            if let Some((mut b, _)) = self.parked.remove(&k) {
                self.apply(&mut b);
                out.push(b);
            }
        }
    }

    /// At exit: every waiting BEGIN.
    pub fn flush(&mut self, out: &mut Vec<DbSpan>) {
        for (_, (mut b, _)) in std::mem::take(&mut self.parked) {
            self.apply(&mut b);
            out.push(b);
        }
    }

    /// Moves `span` (and its links) into the trace its own moved to.
    pub fn apply(&self, span: &mut DbSpan) {
        if self.to.is_empty() {
            return;
        }
        if let Some(&to) = self.to.get(&span.ids.trace_id) {
            span.ids.trace_id = to;
        }
        for l in &mut span.links {
            if let Some(&to) = self.to.get(&l.trace_id) {
                l.trace_id = to;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{
        dbspan::{Described, Kind},
        span::Ids,
    };

    #[test]
    fn spans_of_a_moved_trace_follow_it() {
        let mut r = Retracer::default();
        r.learn(Retrace { from: 1, to: 9 });
        let mk = |trace| {
            DbSpan::new(
                1,
                Ids {
                    trace_id: trace,
                    span_id: 2,
                    parent_span_id: 3,
                    remote: false,
                    remote_sampled: false,
                },
                Kind::Client,
                (0, 1),
                Described {
                    name: "BEGIN".into(),
                    attributes: vec![],
                    blocks: Default::default(),
                    error: None,
                },
                vec![],
                vec![],
            )
        };
        let (mut a, mut b) = (mk(1), mk(2));
        r.apply(&mut a);
        r.apply(&mut b);
        assert_eq!((a.ids.trace_id, b.ids.trace_id), (9, 2));
        for i in 0..(MAX as u128 + 5) {
            r.learn(Retrace {
                from: 100 + i,
                to: 1,
            });
        }
        assert!(r.to.len() <= MAX && !r.to.contains_key(&1));
    }

    fn mk(trace: u128, span: u64, parent: u64, op: &str) -> DbSpan {
        use opentelemetry::KeyValue;
        DbSpan::new(
            1,
            Ids {
                trace_id: trace,
                span_id: span,
                parent_span_id: parent,
                remote: false,
                remote_sampled: false,
            },
            Kind::Client,
            (0, 1),
            Described {
                name: op.to_string().into(),
                attributes: vec![KeyValue::new("db.operation.name", op.to_string())],
                blocks: Default::default(),
                error: None,
            },
            vec![],
            vec![],
        )
    }

    #[test]
    fn a_batch_passes_as_its_spans_one_by_one_would_in_place_or_not() {
        let ids = |v: &[DbSpan]| {
            v.iter()
                .map(|s| (s.ids.span_id, s.ids.trace_id))
                .collect::<Vec<_>>()
        };
        // Nothing waits, no BEGIN: in place, a learned retrace applied.
        let mut r = Retracer::default();
        r.learn(Retrace { from: 3, to: 8 });
        let mut batch = vec![mk(3, 30, 0, "SELECT"), mk(4, 40, 0, "SELECT")];
        let mut scratch = vec![];
        r.pass_all(&mut batch, 0, &mut scratch);
        assert_eq!(ids(&batch), [(30, 8), (40, 4)]);
        // A BEGIN waits for its transaction's next span, which comes after it
        // in the batch; the span after goes on behind both.
        let mut batch = vec![
            mk(1, 10, 5, "BEGIN"),
            mk(1, 11, 5, "SELECT"),
            mk(2, 20, 0, "SELECT"),
        ];
        r.pass_all(&mut batch, 0, &mut scratch);
        assert!(scratch.is_empty());
        assert_eq!(ids(&batch), [(10, 1), (11, 1), (20, 2)]);
        // A BEGIN last in its batch waits; the next batch's first span of its
        // transaction lets it go first, though the batch needs no other move.
        let mut batch = vec![mk(2, 21, 0, "SELECT"), mk(1, 12, 6, "BEGIN")];
        r.pass_all(&mut batch, 0, &mut scratch);
        assert_eq!(ids(&batch), [(21, 2)]);
        let mut batch = vec![mk(1, 13, 6, "SELECT")];
        r.pass_all(&mut batch, 0, &mut scratch);
        assert_eq!(ids(&batch), [(12, 1), (13, 1)]);
    }

    #[test]
    fn a_begin_waits_for_its_transactions_next_span_and_moves_with_it() {
        let mut r = Retracer::default();
        let mut out = vec![];
        r.pass(mk(1, 10, 5, "BEGIN"), 0, &mut out);
        assert!(out.is_empty());
        r.learn(Retrace { from: 1, to: 7 });
        r.pass(mk(7, 11, 5, "SELECT"), 0, &mut out);
        assert_eq!(
            out.iter()
                .map(|s| (s.ids.span_id, s.ids.trace_id))
                .collect::<Vec<_>>(),
            [(10, 7), (11, 7)]
        );
        // Alone, it goes on after PARK_NS.
        out.clear();
        r.pass(mk(2, 20, 6, "BEGIN"), 0, &mut out);
        r.tick(PARK_NS - 1, &mut out);
        assert!(out.is_empty());
        r.tick(PARK_NS, &mut out);
        assert_eq!(out.len(), 1);
    }
}
