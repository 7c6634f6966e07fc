//! Sampling that keeps what matters: OTEL_TRACES_SAMPLER decides per trace
//! (all spans of a transaction together), but a trace with an error, a lock
//! wait, a deadlock, a retry or a slow query is always kept. Spans wait here
//! until their trace's root (the transaction, or an autocommit statement)
//! has ended; spans of a decided trace that arrive later (server spans held
//! for the catalog) follow the decision. Metrics have counted every span
//! before this point.
//!
//! Bounded: a trace whose root has not come within ROOT_WAIT, or past
//! MAX_HELD spans in all, is decided with what it has (oldest first).

use std::collections::VecDeque;

use opentelemetry::{
    trace::{
        SamplingDecision, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
        TraceState,
    },
    Context,
};
use opentelemetry_sdk::trace::ShouldSample;

use super::dbspan::{DbSpan, Role};
use crate::FastMap;

/// Longest a trace waits for its root.
pub const ROOT_WAIT_NS: u64 = 30_000_000_000;
/// Most spans waiting in all.
pub const MAX_HELD: usize = 20_000;
/// Decisions remembered for late spans (FIFO).
const DECIDED: usize = 65_536;

/// Why a trace was kept, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Sampler,
    Error,
    LockWait,
    Deadlock,
    Retry,
    Slow,
}

/// The mark a span puts on its trace, if any (the strongest reason).
pub fn mark_of(s: &DbSpan) -> Option<Keep> {
    let has = |name: &str| s.events.iter().any(|e| e.name == name);
    let deadlock = has("deadlock_detected")
        || matches!(s.status_code(), Some("40P01" | "1213"))
        || s.lock_outcome() == Some("deadlock");
    if deadlock {
        Some(Keep::Deadlock)
    } else if s.role() == Role::LockWait || has("lock_contention_detected") {
        Some(Keep::LockWait)
    } else if s.retry_count().is_some_and(|n| n > 0) {
        Some(Keep::Retry)
    } else if s.error.is_some() {
        Some(Keep::Error)
    } else if has("slow_query_detected") {
        Some(Keep::Slow)
    } else {
        None
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Spans dropped by the sampler's decision.
    pub dropped: u64,
    /// Traces kept, by reason: sampler, error, lock wait, deadlock, retry, slow.
    pub kept: [u64; 6],
    /// Traces decided before their root came (waited too long, or too many spans held).
    pub decided_early: u64,
    /// Spans of dropped traces exported anyway because they carry a mark.
    pub kept_late: u64,
}

struct Pending {
    spans: Vec<DbSpan>,
    mark: Option<Keep>,
    since_ns: u64,
}

pub struct TraceGate {
    /// None: keep everything (always_on), nothing waits.
    sampler: Option<Box<dyn ShouldSample>>,
    pending: FastMap<u128, Pending>,
    /// Traces in the order they began waiting (some may be decided already).
    order: VecDeque<u128>,
    held: usize,
    decided: FastMap<u128, bool>,
    decided_order: VecDeque<u128>,
    pub counters: Counters,
}

impl TraceGate {
    /// From OTEL_TRACES_SAMPLER / _ARG (checked at start by settings).
    pub fn from_env() -> Self {
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let always = matches!(name.trim(), "" | "always_on" | "parentbased_always_on");
        Self::with((!always).then(|| opentelemetry_sdk::trace::Config::default().sampler))
    }

    pub fn with(sampler: Option<Box<dyn ShouldSample>>) -> Self {
        TraceGate {
            sampler,
            pending: FastMap::default(),
            order: VecDeque::new(),
            held: 0,
            decided: FastMap::default(),
            decided_order: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Every span goes on as it comes (no sampler): the outflow then
    /// exports its spans where they are instead of pushing each through.
    pub fn passes_all(&self) -> bool {
        self.sampler.is_none()
    }

    /// One finished span: kept spans go to `out` (now or later).
    pub fn push(&mut self, span: DbSpan, now_ns: u64, out: &mut Vec<DbSpan>) {
        if self.sampler.is_none() {
            out.push(span);
            return;
        }
        let trace = span.ids.trace_id;
        let mark = mark_of(&span);
        if let Some(&keep) = self.decided.get(&trace) {
            if keep {
                out.push(span);
            } else if mark.is_some() {
                self.counters.kept_late += 1;
                out.push(span);
            } else {
                self.counters.dropped += 1;
            }
            return;
        }
        let root = span.ids.local_root();
        // Decided traces leave ids behind in `order`: dropped from its front
        // (and bounded) so one long transaction cannot make it grow.
        while self.order.len() > MAX_HELD
            && self
                .order
                .front()
                .is_some_and(|t| !self.pending.contains_key(t))
        {
            self.order.pop_front();
        }
        let p = self.pending.entry(trace).or_insert_with(|| {
            self.order.push_back(trace);
            Pending {
                spans: Vec::new(),
                mark: None,
                since_ns: now_ns,
            }
        });
        p.mark = p.mark.or(mark);
        p.spans.push(span);
        self.held += 1;
        if root {
            self.decide(trace, out);
        }
        while self.held > MAX_HELD {
            match self.order.pop_front() {
                Some(t) if self.pending.contains_key(&t) => {
                    self.counters.decided_early += 1;
                    self.decide(t, out);
                }
                Some(_) => {}
                None => break,
            }
        }
    }

    fn decide(&mut self, trace: u128, out: &mut Vec<DbSpan>) {
        let Some(p) = self.pending.remove(&trace) else {
            return;
        };
        self.held -= p.spans.len();
        let keep = match p.mark {
            Some(m) => Some(m),
            None => {
                let root = p
                    .spans
                    .iter()
                    .find(|s| s.ids.local_root())
                    .unwrap_or(&p.spans[0]);
                let sampler = self.sampler.as_ref().expect("gate on");
                // The application's span as the parent where a traceparent
                // named it (parentbased_* samplers follow its flag); else no
                // parent: a pure function of the trace id for every sampler.
                let parent = root.ids.remote.then(|| {
                    let flags = if root.ids.remote_sampled {
                        TraceFlags::SAMPLED
                    } else {
                        TraceFlags::default()
                    };
                    Context::new().with_remote_span_context(SpanContext::new(
                        TraceId::from(trace),
                        SpanId::from(root.ids.parent_span_id),
                        flags,
                        true,
                        TraceState::default(),
                    ))
                });
                let r = sampler.should_sample(
                    parent.as_ref(),
                    TraceId::from(trace),
                    &root.name,
                    &SpanKind::Client,
                    &[],
                    &[],
                );
                (r.decision == SamplingDecision::RecordAndSample).then_some(Keep::Sampler)
            }
        };
        if let Some(k) = keep {
            self.counters.kept[k as usize] += 1;
            out.extend(p.spans);
        } else {
            self.counters.dropped += p.spans.len() as u64;
        }
        if self.decided_order.len() >= DECIDED {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
        self.decided.insert(trace, keep.is_some());
        self.decided_order.push_back(trace);
    }

    /// Traces that waited too long for their root are decided.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<DbSpan>) {
        while let Some(&t) = self.order.front() {
            match self.pending.get(&t) {
                None => {
                    self.order.pop_front();
                }
                Some(p) if now_ns.saturating_sub(p.since_ns) >= ROOT_WAIT_NS => {
                    self.order.pop_front();
                    self.counters.decided_early += 1;
                    self.decide(t, out);
                }
                Some(_) => break,
            }
        }
    }

    /// The process is gone: traces holding its spans are decided with what
    /// they have (its pipeline closes next).
    pub fn release_pid(&mut self, pid: u32, out: &mut Vec<DbSpan>) {
        if self.pending.is_empty() {
            return;
        }
        let mine: Vec<u128> = self
            .pending
            .iter()
            .filter(|(_, p)| p.spans.iter().any(|s| s.pid == pid))
            .map(|(t, _)| *t)
            .collect();
        for t in mine {
            self.counters.decided_early += 1;
            self.decide(t, out);
        }
    }

    /// At exit: every waiting trace is decided with what it has.
    pub fn flush_all(&mut self, out: &mut Vec<DbSpan>) {
        while let Some(t) = self.order.pop_front() {
            self.decide(t, out);
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
