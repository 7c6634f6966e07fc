//! N+1 queries: one SELECT shape run N or more times with different
//! literals or parameters in one scope, after another SELECT of that scope
//! returned N or more rows (the "1" whose rows the loop walks: an ORM's lazy
//! loading). It becomes an `n_plus_one_detected` event and a [`Detection`].
//!
//! Scope: a statement with a parent belongs to its transaction `(pid,
//! parent_span_id)`, which ends when the span it is the child of arrives
//! (the transaction span finishes after its statements); the event goes on
//! that span, so nothing is held. A statement without a parent belongs to
//! the burst on its connection `(pid, conn)`, ended by a pause longer than
//! `burst_gap`, by lasting [`MAX_BURST_NS`], or by [`NPlusOne::flush_all`];
//! the event goes on the run's first execution, held until then.
//!
//! What the rule cannot tell, so it stays quiet or may be wrong:
//! - Write loops (INSERT/UPDATE/DELETE) are never reported: a batch job
//!   inserting rows one by one on purpose looks exactly like an N+1 write.
//! - A SELECT-per-row loop with no listing before it in the same scope
//!   (pgbench -S, a cache warm-up, ids that came from elsewhere) is not
//!   reported, nor is one whose listing ran on another connection or
//!   outside the transaction.
//! - Where the text as sent is unknown (`text_hash` 0: parameters, prepared
//!   executions, MySQL/MariaDB today) every execution counts as different,
//!   so the same parameters repeated are counted too.
//! - A connection busy without pauses mixes requests into one burst: up to
//!   [`MAX_BURST_NS`] of unrelated single lookups can add up to a run.
//! - A transaction scope that ends without its span (idle past
//!   [`TXN_IDLE_NS`], evicted, flushed) reports a detection with no event.

use std::{collections::BTreeMap, time::Duration};

use opentelemetry::{KeyValue, Value};

use crate::{
    pipeline::{
        dbspan::{DbSpan, Role},
        span::Event,
    },
    FastMap,
};

/// Open scopes at most; past it the least recently used quarter ends.
pub const MAX_SCOPES: usize = 4096;
/// Shapes followed per scope; statements of further shapes pass unseen.
pub const MAX_GROUPS: usize = 64;
/// Spans held at most (burst scopes); past it the oldest leaves without event.
pub const MAX_HELD: usize = 4096;
/// No span is held longer than this (checked at tick).
pub const MAX_HOLD_NS: u64 = 10_000_000_000;
/// A burst ends after this long even without a pause, so the spans it holds
/// leave with their event before the hold limit.
pub const MAX_BURST_NS: u64 = MAX_HOLD_NS;
/// A transaction scope without a statement for this long ends (its span is
/// probably lost); generous because nothing is held for it.
pub const TXN_IDLE_NS: u64 = 300_000_000_000;

/// One N+1 found (for the metrics counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// db.system.name of the statements ("" if unknown).
    pub system: String,
    /// db.query.summary of the repeated statement (its span name if none).
    pub summary: String,
    /// Executions with different literals or parameters, the first included.
    pub count: u64,
    /// Their summed duration.
    pub total_ns: u64,
}

/// What the bounds cost: findings possibly missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Scopes ended early because [`MAX_SCOPES`] were open.
    pub evicted_scopes: u64,
    /// Statements not followed: their shape came past [`MAX_GROUPS`].
    pub statements_ignored: u64,
    /// Held spans let go without their possible event ([`MAX_HELD`],
    /// [`MAX_HOLD_NS`]).
    pub released_early: u64,
    /// Transaction scopes ended by [`TXN_IDLE_NS`] without their span.
    pub scopes_timed_out: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// Statements of one transaction: the span id of their parent.
    Txn { pid: u32, span_id: u64 },
    /// Statements outside transactions on one connection.
    Burst { pid: u32, conn: u64 },
}

/// One shape's executions in a scope.
#[derive(Debug)]
struct Group {
    key: u64,
    select: bool,
    /// Arrival order of its first execution within the scope.
    first_seq: u64,
    first_hash: u64,
    /// Arrival order of its first execution returning N rows or more.
    listed_at: Option<u64>,
    /// Executions with different literals or parameters, and their time.
    count: u64,
    total_ns: u64,
    last_end_ns: u64,
    /// db.query.summary (a shared value: cloning it is a reference count).
    summary: Value,
    /// The first execution, held in `NPlusOne::held` under this id.
    held: Option<u64>,
}

#[derive(Debug)]
struct Scope {
    /// For eviction: when a statement last came (`NPlusOne::clock`).
    touched: u64,
    opened_ns: u64,
    last_end_ns: u64,
    /// Statements followed so far (their arrival order).
    seq: u64,
    system: Option<Value>,
    groups: Vec<Group>,
}

impl Scope {
    fn listed(&self) -> bool {
        self.groups.iter().any(|g| g.listed_at.is_some())
    }

    /// The group is reported: a SELECT with N executions or more, after
    /// another SELECT shape that returned N rows or more.
    fn fires(&self, g: &Group, n: u64) -> bool {
        g.select
            && g.count >= n
            && self
                .groups
                .iter()
                .any(|h| h.key != g.key && h.listed_at.is_some_and(|at| at < g.first_seq))
    }
}

/// The bounds (the constants above; smaller in tests, to reach them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    scopes: usize,
    groups: usize,
    held: usize,
    hold_ns: u64,
    txn_idle_ns: u64,
}

/// The detector: pure, fed every finished span in the order they finish.
#[derive(Debug)]
pub struct NPlusOne {
    threshold: u64,
    burst_gap_ns: u64,
    limits: Limits,
    scopes: FastMap<Key, Scope>,
    /// Held spans by hold id (increasing: the first is the oldest).
    held: BTreeMap<u64, DbSpan>,
    next_hold: u64,
    clock: u64,
    counters: Counters,
}

impl NPlusOne {
    /// `threshold` N (0: off, every span passes through untouched);
    /// `burst_gap`: the pause that ends a burst on a connection.
    pub fn new(threshold: u32, burst_gap: Duration) -> Self {
        NPlusOne {
            threshold: u64::from(threshold),
            burst_gap_ns: u64::try_from(burst_gap.as_nanos()).unwrap_or(u64::MAX),
            limits: Limits {
                scopes: MAX_SCOPES,
                groups: MAX_GROUPS,
                held: MAX_HELD,
                hold_ns: MAX_HOLD_NS,
                txn_idle_ns: TXN_IDLE_NS,
            },
            scopes: FastMap::default(),
            held: BTreeMap::new(),
            next_hold: 0,
            clock: 0,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// One finished span. Spans ready to go on (this one, earlier held
    /// ones, possibly with an event added) are pushed to `out`, findings to
    /// `found`. Every span passed in comes out exactly once.
    pub fn observe(&mut self, mut span: DbSpan, out: &mut Vec<DbSpan>, found: &mut Vec<Detection>) {
        match self.look_at(&mut span, out, found) {
            Some(id) => {
                self.held.insert(id, span);
            }
            None => out.push(span),
        }
    }

    /// [`Self::observe`] for each of `spans`, in place: they stay where they
    /// are (a move of each into another buffer was ~2 % of the agent) but
    /// those it holds; the held ones it lets go of follow, after them.
    pub fn observe_all(&mut self, spans: &mut Vec<DbSpan>, found: &mut Vec<Detection>) {
        if self.threshold == 0 {
            return;
        }
        let mut released = Vec::new();
        let mut taken = Vec::new();
        for (i, span) in spans.iter_mut().enumerate() {
            if let Some(id) = self.look_at(span, &mut released, found) {
                // Held now: a later span of this batch may let it go.
                self.held
                    .insert(id, std::mem::replace(span, DbSpan::placeholder()));
                taken.push(i);
            }
        }
        if !taken.is_empty() {
            let mut i = 0;
            spans.retain(|_| {
                i += 1;
                !taken.contains(&(i - 1))
            });
        }
        spans.append(&mut released);
    }

    /// One span, where it lies: Some(hold id) if it is to be held (the
    /// caller moves it into `held` under that id); spans let go of go to `out`.
    fn look_at(
        &mut self,
        span: &mut DbSpan,
        out: &mut Vec<DbSpan>,
        found: &mut Vec<Detection>,
    ) -> Option<u64> {
        if self.threshold == 0 {
            return None;
        }
        // The span its statements are children of ends a transaction scope
        // and carries its findings.
        if span.ids.span_id != 0 {
            let key = Key::Txn {
                pid: span.pid,
                span_id: span.ids.span_id,
            };
            if let Some(scope) = self.scopes.remove(&key) {
                self.end(scope, Some(span), out, found);
            }
        }
        if !(span.outermost() && span.role() == Role::Query && span.group != 0) {
            return None;
        }
        // A statement under the application's own span (sqlcommenter) is
        // outside any transaction here: it belongs to its connection's burst.
        let key = if span.ids.parent_span_id != 0 && !span.ids.remote {
            Key::Txn {
                pid: span.pid,
                span_id: span.ids.parent_span_id,
            }
        } else {
            Key::Burst {
                pid: span.pid,
                conn: span.conn,
            }
        };
        if let Some(scope) = self.scopes.get(&key) {
            let paused = span.start_ns > scope.last_end_ns.saturating_add(self.burst_gap_ns);
            let long = span.end_ns.saturating_sub(scope.opened_ns) > self.limits.hold_ns;
            if matches!(key, Key::Burst { .. }) && (paused || long) {
                let scope = self.scopes.remove(&key).expect("just seen");
                self.end(scope, None, out, found);
            }
        }
        if !self.scopes.contains_key(&key) && self.scopes.len() >= self.limits.scopes {
            self.evict(out, found);
        }
        self.clock += 1;
        let n = self.threshold;
        let scope = self.scopes.entry(key).or_insert_with(|| Scope {
            touched: 0,
            opened_ns: span.start_ns,
            last_end_ns: 0,
            seq: 0,
            system: span.attribute("db.system.name").cloned(),
            groups: Vec::new(),
        });
        scope.touched = self.clock;
        scope.last_end_ns = scope.last_end_ns.max(span.end_ns);
        let seq = scope.seq;
        scope.seq += 1;
        let select = span
            .operation()
            .is_some_and(|op| op.eq_ignore_ascii_case("SELECT"));
        let listing = select && span.rows().is_some_and(|r| r >= 0 && r as u64 >= n);
        let dur = span.duration_ns();
        if let Some(g) = scope.groups.iter_mut().find(|g| g.key == span.group) {
            if span.text_hash == 0 || span.text_hash != g.first_hash {
                g.count += 1;
                g.total_ns += dur;
                g.last_end_ns = g.last_end_ns.max(span.end_ns);
            }
            if listing && g.listed_at.is_none() {
                g.listed_at = Some(seq);
            }
            return None;
        }
        if scope.groups.len() >= self.limits.groups {
            self.counters.statements_ignored += 1;
            return None;
        }
        // In a burst the event goes on the run's first execution, so once a
        // listing was seen each new SELECT shape's first one waits.
        let hold = matches!(key, Key::Burst { .. }) && select && scope.listed();
        let summary = span
            .attribute("db.query.summary")
            .cloned()
            .unwrap_or_else(|| Value::from(String::from(span.name.clone())));
        let mut g = Group {
            key: span.group,
            select,
            first_seq: seq,
            first_hash: span.text_hash,
            listed_at: listing.then_some(seq),
            count: 1,
            total_ns: dur,
            last_end_ns: span.end_ns,
            summary,
            held: None,
        };
        if hold {
            if self.held.len() >= self.limits.held {
                if let Some((_, oldest)) = self.held.pop_first() {
                    self.counters.released_early += 1;
                    out.push(oldest);
                }
            }
            self.next_hold += 1;
            g.held = Some(self.next_hold);
        }
        scope.groups.push(g);
        hold.then_some(self.next_hold)
    }

    /// Ends the scopes whose time is up (`now_ns`: CLOCK_MONOTONIC, as the
    /// spans') and lets go of spans held too long.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<DbSpan>, found: &mut Vec<Detection>) {
        let mut over: Vec<(u64, Key)> = self
            .scopes
            .iter()
            .filter(|(k, s)| {
                let idle = now_ns.saturating_sub(s.last_end_ns);
                match k {
                    Key::Txn { .. } => idle > self.limits.txn_idle_ns,
                    Key::Burst { .. } => {
                        idle > self.burst_gap_ns
                            || now_ns.saturating_sub(s.opened_ns) > self.limits.hold_ns
                    }
                }
            })
            .map(|(k, s)| (s.touched, *k))
            .collect();
        over.sort_unstable_by_key(|&(touched, _)| touched);
        for (_, key) in over {
            let scope = self.scopes.remove(&key).expect("listed above");
            if matches!(key, Key::Txn { .. }) {
                self.counters.scopes_timed_out += 1;
            }
            self.end(scope, None, out, found);
        }
        // Bursts end before their spans reach the limit; this catches a
        // span that finished long before its burst's others.
        let stale: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.end_ns) > self.limits.hold_ns)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            out.extend(self.held.remove(&id));
            self.counters.released_early += 1;
        }
    }

    /// The process is gone: its scopes end (their held spans come out, to be
    /// exported with its resource before its pipeline closes).
    pub fn end_process(&mut self, pid: u32, out: &mut Vec<DbSpan>, found: &mut Vec<Detection>) {
        let mut mine: Vec<(u64, Key)> = self
            .scopes
            .iter()
            .filter(|(k, _)| matches!(k, Key::Txn { pid: p, .. } | Key::Burst { pid: p, .. } if *p == pid))
            .map(|(k, s)| (s.touched, *k))
            .collect();
        mine.sort_unstable_by_key(|&(touched, _)| touched);
        for (_, key) in mine {
            let scope = self.scopes.remove(&key).expect("listed above");
            self.end(scope, None, out, found);
        }
    }

    /// Ends every scope (at exit): all held spans come out.
    pub fn flush_all(&mut self, out: &mut Vec<DbSpan>, found: &mut Vec<Detection>) {
        let mut all: Vec<(u64, Key)> = self.scopes.iter().map(|(k, s)| (s.touched, *k)).collect();
        all.sort_unstable_by_key(|&(touched, _)| touched);
        for (_, key) in all {
            let scope = self.scopes.remove(&key).expect("listed above");
            self.end(scope, None, out, found);
        }
        // None should be left: each belongs to an open scope's group.
        out.extend(std::mem::take(&mut self.held).into_values());
    }

    /// Ends the least recently used quarter of the scopes.
    fn evict(&mut self, out: &mut Vec<DbSpan>, found: &mut Vec<Detection>) {
        let mut ages: Vec<(u64, Key)> = self.scopes.iter().map(|(k, s)| (s.touched, *k)).collect();
        let n = (ages.len() / 4).max(1);
        ages.select_nth_unstable_by_key(n - 1, |&(touched, _)| touched);
        ages.truncate(n);
        ages.sort_unstable_by_key(|&(touched, _)| touched);
        for (_, key) in ages {
            let scope = self.scopes.remove(&key).expect("listed above");
            self.counters.evicted_scopes += 1;
            self.end(scope, None, out, found);
        }
    }

    /// A scope ends: each reported group's event goes on `enclosing` (the
    /// transaction's span) or its held first execution; held spans go on.
    fn end(
        &mut self,
        scope: Scope,
        mut enclosing: Option<&mut DbSpan>,
        out: &mut Vec<DbSpan>,
        found: &mut Vec<Detection>,
    ) {
        for g in &scope.groups {
            // None if it was let go early.
            let mut held = g.held.and_then(|id| self.held.remove(&id));
            if scope.fires(g, self.threshold) {
                let event = Event {
                    name: "n_plus_one_detected",
                    ts_ns: g.last_end_ns,
                    attributes: vec![
                        KeyValue::new("db.operation.name", "SELECT"),
                        KeyValue::new("db.query.summary", g.summary.clone()),
                        KeyValue::new("dbtel.n_plus_one.count", g.count as i64),
                        KeyValue::new(
                            "dbtel.n_plus_one.total_duration_ms",
                            g.total_ns as f64 / 1e6,
                        ),
                    ],
                };
                if let Some(e) = enclosing.as_deref_mut() {
                    e.events.push(event);
                } else if let Some(h) = held.as_mut() {
                    h.events.push(event);
                }
                found.push(Detection {
                    system: scope
                        .system
                        .as_ref()
                        .map_or_else(String::new, |v| v.as_str().into_owned()),
                    summary: g.summary.as_str().into_owned(),
                    count: g.count,
                    total_ns: g.total_ns,
                });
            }
            out.extend(held);
        }
    }
}

#[cfg(test)]
#[path = "nplusone_tests.rs"]
mod tests;
