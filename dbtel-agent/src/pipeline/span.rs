//! Span identity and the pieces shared by every kind of reconstructed span
//! (client queries, transactions, server queries, lock waits).
//!
//! Identifiers are assigned when a span *opens*, not when it is exported:
//! a lock wait or a server span that completes first must already know the
//! trace and span id of the client query it belongs under.

use std::sync::Arc;

use opentelemetry::{KeyValue, StringValue, Value};

/// A string attribute value that spans share (reference-counted): for
/// values built once and cloned into every span, such as a query's facts.
pub fn shared(s: &str) -> Value {
    Value::String(StringValue::from(Arc::<str>::from(s)))
}

/// Trace and span identity of one span. Zero means "none" (as in W3C/OTLP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ids {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: a root span.
    pub parent_span_id: u64,
    /// The parent is the application's own span, named by a traceparent in
    /// the query's sqlcommenter comment: the span is this agent's local root.
    pub remote: bool,
    /// With `remote`: the application sampled its span (the traceparent's flag).
    pub remote_sampled: bool,
}

impl Ids {
    /// A new span whose parent is the application's span `tp` names.
    pub fn under_app(tp: &crate::pipeline::sqlcomment::TraceParent, gen: &mut IdGen) -> Ids {
        Ids {
            trace_id: tp.trace_id,
            span_id: gen.span_id(),
            parent_span_id: tp.span_id,
            remote: true,
            remote_sampled: tp.sampled,
        }
    }

    /// This agent's root of its trace (no parent, or the application's).
    pub fn local_root(&self) -> bool {
        self.parent_span_id == 0 || self.remote
    }

    /// A child of `self` in the same trace.
    pub fn child(&self, gen: &mut IdGen) -> Ids {
        Ids {
            trace_id: self.trace_id,
            span_id: gen.span_id(),
            parent_span_id: self.span_id,
            remote: false,
            remote_sampled: false,
        }
    }
}

/// Random identifiers without a system call per id: xorshift128+ seeded once.
/// Deterministic under [`IdGen::seeded`], so reconstruction tests replay.
#[derive(Debug, Clone)]
pub struct IdGen {
    s: [u64; 2],
}

impl IdGen {
    pub fn seeded(seed: u64) -> Self {
        // splitmix64 spreads a small seed over both words; neither may be 0.
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x ^ (x >> 31)) | 1
        };
        IdGen {
            s: [next(), next()],
        }
    }

    /// Seeded from the OS's random source.
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        let seed = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .map(|_| u64::from_ne_bytes(b))
            .unwrap_or_else(|_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    ^ u64::from(std::process::id())
            });
        Self::seeded(seed)
    }

    fn next(&mut self) -> u64 {
        let (mut s1, s0) = (self.s[0], self.s[1]);
        let out = s0.wrapping_add(s1);
        self.s[0] = s0;
        s1 ^= s1 << 23;
        self.s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
        out
    }

    pub fn span_id(&mut self) -> u64 {
        loop {
            let v = self.next();
            if v != 0 {
                return v;
            }
        }
    }

    pub fn trace_id(&mut self) -> u128 {
        ((self.span_id() as u128) << 64) | self.span_id() as u128
    }

    /// Ids of a new root span (a new trace).
    pub fn root(&mut self) -> Ids {
        Ids {
            trace_id: self.trace_id(),
            span_id: self.span_id(),
            parent_span_id: 0,
            remote: false,
            remote_sampled: false,
        }
    }
}

/// A timestamped event inside a span (OpenTelemetry span event).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub attributes: Vec<KeyValue>,
}

/// A span link: points at another span, usually in another trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub trace_id: u128,
    pub span_id: u64,
    pub attributes: Vec<KeyValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_children_share_the_trace() {
        let mut g = IdGen::seeded(7);
        let root = g.root();
        let child = root.child(&mut g);
        assert_ne!(root.span_id, child.span_id);
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent_span_id, root.span_id);
        let mut seen = std::collections::HashSet::new();
        assert!((0..10_000).all(|_| seen.insert(g.span_id())));
        assert_eq!(IdGen::seeded(7).trace_id(), IdGen::seeded(7).trace_id());
    }
}
