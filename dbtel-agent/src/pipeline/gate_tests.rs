use opentelemetry::KeyValue;

use super::*;
use crate::pipeline::{
    dbspan::{Described, Kind},
    span::{Event, Ids},
};

fn span(trace: u128, id: u64, parent: u64, attrs: Vec<KeyValue>, error: bool) -> DbSpan {
    DbSpan::new(
        1,
        Ids {
            trace_id: trace,
            span_id: id,
            parent_span_id: parent,
            remote: false,
            remote_sampled: false,
        },
        Kind::Client,
        (0, 1_000),
        Described {
            name: "q".into(),
            attributes: attrs,
            blocks: Default::default(),
            error: error.then(|| "42P01".into()),
        },
        vec![],
        vec![],
    )
}

fn txn(trace: u128, id: u64) -> DbSpan {
    span(
        trace,
        id,
        0,
        vec![KeyValue::new("db.transaction.outcome", "committed")],
        false,
    )
}

fn ratio(r: f64) -> TraceGate {
    TraceGate::with(Some(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(r),
    )))
}

#[test]
fn always_on_passes_everything_at_once() {
    let mut g = TraceGate::with(None);
    let mut out = vec![];
    g.push(span(1, 2, 1, vec![], false), 0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(g.held(), 0);
}

#[test]
fn a_transaction_and_its_statements_go_together() {
    let mut g = ratio(0.5);
    let (mut kept, mut traces_kept) = (0, 0);
    for t in 1..=2_000u128 {
        let trace = t.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let mut out = vec![];
        g.push(span(trace, 2, 1, vec![], false), 0, &mut out);
        g.push(span(trace, 3, 1, vec![], false), 0, &mut out);
        assert!(out.is_empty(), "statements wait for their transaction");
        g.push(txn(trace, 1), 0, &mut out);
        assert!(out.len() == 3 || out.is_empty());
        kept += out.len();
        traces_kept += usize::from(!out.is_empty());
    }
    assert_eq!(kept, traces_kept * 3);
    assert!((800..1200).contains(&traces_kept), "{traces_kept}");
    assert_eq!(g.counters.dropped as usize, (2_000 - traces_kept) * 3);
    assert_eq!(g.held(), 0);
}

#[test]
fn marked_traces_are_always_kept_and_late_spans_follow() {
    let mut g = ratio(0.0);
    let mut out = vec![];
    // An error.
    g.push(span(1, 2, 1, vec![], true), 0, &mut out);
    g.push(txn(1, 1), 0, &mut out);
    assert_eq!(out.len(), 2);
    // A slow statement, a retry, a lock wait.
    let mut slow = span(2, 2, 1, vec![], false);
    slow.events.push(Event {
        name: "slow_query_detected",
        ts_ns: 0,
        attributes: vec![],
    });
    g.push(slow, 0, &mut out);
    g.push(txn(2, 1), 0, &mut out);
    let retry = span(
        3,
        1,
        0,
        vec![
            KeyValue::new("db.transaction.outcome", "committed"),
            KeyValue::new("db.transaction.retry_count", 1_i64),
        ],
        false,
    );
    g.push(retry, 0, &mut out);
    assert_eq!(out.len(), 5);
    // A plain one is dropped, and so is its late server span...
    g.push(txn(4, 1), 0, &mut out);
    g.push(span(4, 9, 1, vec![], false), 0, &mut out);
    assert_eq!(out.len(), 5);
    // ...unless that one carries a mark (a lock wait seen only by the server).
    let mut wait = span(4, 10, 9, vec![], false);
    wait.kind = Kind::Internal;
    g.push(wait, 0, &mut out);
    assert_eq!(out.len(), 6);
    assert_eq!(g.counters.kept_late, 1);
    assert_eq!(g.counters.kept[Keep::Error as usize], 1);
    assert_eq!(g.counters.kept[Keep::Slow as usize], 1);
    assert_eq!(g.counters.kept[Keep::Retry as usize], 1);
    assert_eq!(g.counters.dropped, 2);
}

#[test]
fn rootless_traces_are_decided_after_the_wait_and_the_hold_is_bounded() {
    let mut g = ratio(1.0);
    let mut out = vec![];
    g.push(span(1, 2, 1, vec![], false), 0, &mut out);
    g.tick(ROOT_WAIT_NS - 1, &mut out);
    assert!(out.is_empty());
    g.tick(ROOT_WAIT_NS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(g.counters.decided_early, 1);
    for t in 0..(MAX_HELD as u128 + 10) {
        g.push(span(100 + t, 2, 1, vec![], false), 0, &mut out);
        assert!(g.held() <= MAX_HELD);
    }
    g.flush_all(&mut out);
    assert_eq!(out.len(), MAX_HELD + 11);
    assert_eq!(g.held(), 0);
}

#[test]
fn a_parent_based_sampler_follows_the_applications_flag() {
    let mut g = TraceGate::with(Some(Box::new(
        opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOff,
        )),
    )));
    let mut out = vec![];
    for (trace, sampled) in [(1u128, true), (2, false)] {
        let mut s = span(trace, 2, 77, vec![], false);
        (s.ids.remote, s.ids.remote_sampled) = (true, sampled);
        g.push(s, 0, &mut out);
    }
    assert_eq!(out.iter().map(|s| s.ids.trace_id).collect::<Vec<_>>(), [1]);
}

#[test]
fn a_gone_process_gets_its_waiting_traces_decided() {
    let mut g = ratio(1.0);
    let mut out = vec![];
    g.push(span(1, 2, 1, vec![], false), 0, &mut out);
    let mut other = span(2, 2, 1, vec![], false);
    other.pid = 5;
    g.push(other, 0, &mut out);
    g.release_pid(1, &mut out);
    assert_eq!(out.iter().map(|s| s.ids.trace_id).collect::<Vec<_>>(), [1]);
    assert_eq!(g.held(), 1);
}
