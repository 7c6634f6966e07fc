use std::collections::HashMap;

use crate::test_rng::xorshift;

use super::*;
use crate::pipeline::{
    dbspan::{Described, Kind},
    span::Ids,
};

const MS: u64 = 1_000_000;
const GAP: Duration = Duration::from_millis(500);

/// A client statement of pid 1 on connection 7; its summary names its group.
fn stmt(id: u64, parent: u64, group: u64, hash: u64, op: &str, rows: Option<i64>) -> DbSpan {
    let mut a = vec![
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.operation.name", op.to_owned()),
        KeyValue::new("db.query.summary", format!("{op} t{group}")),
    ];
    if let Some(r) = rows {
        a.push(KeyValue::new("db.response.returned_rows", r));
    }
    DbSpan::new(
        1,
        Ids {
            trace_id: 1,
            span_id: id,
            parent_span_id: parent,
            remote: false,
            remote_sampled: false,
        },
        Kind::Client,
        (0, 0),
        Described {
            name: format!("{op} t{group}").into(),
            attributes: a,
            blocks: Default::default(),
            error: None,
        },
        vec![],
        vec![],
    )
    .ran(7, group, hash)
}

fn at(mut s: DbSpan, start_ns: u64, dur_ns: u64) -> DbSpan {
    (s.start_ns, s.end_ns) = (start_ns, start_ns + dur_ns);
    s
}

fn txn(id: u64, end_ns: u64) -> DbSpan {
    let s = DbSpan::new(
        1,
        Ids {
            trace_id: 1,
            span_id: id,
            parent_span_id: 0,
            remote: false,
            remote_sampled: false,
        },
        Kind::Client,
        (0, end_ns),
        Described {
            name: "transaction.committed".into(),
            attributes: vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.transaction.outcome", "committed"),
            ],
            blocks: Default::default(),
            error: None,
        },
        vec![],
        vec![],
    );
    s.ran(7, 0, 0)
}

/// SQLAlchemy's lazy loading: a listing of 20 authors (span id 1, group 1),
/// then one `SELECT books WHERE author_id = ?` each (ids 2.., group 2),
/// 2 ms long, 3 ms apart, the last ending at 10 + 19 * 3 + 2 = 69 ms.
fn lazy_loading(parent: u64, n: u64, hash: impl Fn(u64) -> u64) -> Vec<DbSpan> {
    let mut v = vec![at(stmt(1, parent, 1, 11, "SELECT", Some(20)), 0, 5 * MS)];
    for i in 0..n {
        let s = stmt(2 + i, parent, 2, hash(i), "SELECT", Some(3));
        v.push(at(s, 10 * MS + i * 3 * MS, 2 * MS));
    }
    v
}

fn feed(d: &mut NPlusOne, spans: Vec<DbSpan>) -> (Vec<DbSpan>, Vec<Detection>) {
    let (mut out, mut found) = (Vec::new(), Vec::new());
    for s in spans {
        d.observe(s, &mut out, &mut found);
    }
    (out, found)
}

fn events(spans: &[DbSpan]) -> Vec<(u64, &Event)> {
    spans
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (s.ids.span_id, e)))
        .collect()
}

fn attr<'a>(e: &'a Event, key: &str) -> &'a Value {
    &e.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .unwrap()
        .value
}

#[test]
fn lazy_loading_in_a_transaction_marks_the_transaction() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 20, |i| 1000 + i);
    spans.push(txn(100, 80 * MS));
    let (out, found) = feed(&mut d, spans);
    assert_eq!(out.len(), 22, "nothing held in a transaction");
    assert_eq!(
        found,
        vec![Detection {
            system: "postgresql".into(),
            summary: "SELECT t2".into(),
            count: 20,
            total_ns: 40 * MS,
        }]
    );
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    let (on, e) = ev[0];
    assert_eq!((on, e.name, e.ts_ns), (100, "n_plus_one_detected", 69 * MS));
    assert_eq!(attr(e, "dbtel.n_plus_one.count"), &Value::I64(20));
    assert_eq!(
        attr(e, "dbtel.n_plus_one.total_duration_ms"),
        &Value::F64(40.0)
    );
    assert_eq!(attr(e, "db.query.summary").as_str(), "SELECT t2");
    assert_eq!(attr(e, "db.operation.name").as_str(), "SELECT");
    assert!(d.scopes.is_empty());
}

#[test]
fn lazy_loading_in_a_burst_marks_the_first_of_the_run() {
    let mut d = NPlusOne::new(10, GAP);
    let (mut out, mut found) = feed(&mut d, lazy_loading(0, 20, |i| 1000 + i));
    // The listing and the run but its first execution went on.
    assert_eq!(out.len(), 20);
    assert!(out
        .iter()
        .all(|s| s.ids.span_id != 2 && s.events.is_empty()));
    d.tick(69 * MS + 400 * MS, &mut out, &mut found);
    assert_eq!(out.len(), 20, "the burst goes on within the gap");
    d.tick(69 * MS + 501 * MS, &mut out, &mut found);
    assert_eq!(out.len(), 21);
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].0, ev[0].1.ts_ns), (2, 69 * MS));
    assert_eq!(attr(ev[0].1, "dbtel.n_plus_one.count"), &Value::I64(20));
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].count, found[0].total_ns), (20, 40 * MS));
    assert!(d.held.is_empty() && d.scopes.is_empty());
}

#[test]
fn a_pause_ends_the_burst_and_the_next_statement_opens_another() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(0, 12, |i| 1000 + i);
    let later = stmt(50, 0, 3, 5, "SELECT", Some(1));
    spans.push(at(later, 2_000 * MS, MS));
    let (out, found) = feed(&mut d, spans);
    // The held first of the run leaves, marked, before the later statement.
    let ids: Vec<u64> = out.iter().map(|s| s.ids.span_id).collect();
    assert_eq!(&ids[ids.len() - 2..], &[2, 50]);
    assert_eq!(out[out.len() - 2].events.len(), 1);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].count, 12);
}

#[test]
fn a_burst_without_pause_ends_before_the_hold_limit() {
    let mut d = NPlusOne::new(10, GAP);
    let (mut out, mut found) = feed(&mut d, lazy_loading(0, 15, |i| 1000 + i));
    // Lookups every 100 ms keep the burst going past MAX_BURST_NS.
    let mut t = 100 * MS;
    let mut id = 100;
    while t < MAX_BURST_NS + 300 * MS {
        d.observe(
            at(stmt(id, 0, 9, id, "UPDATE", None), t, MS),
            &mut out,
            &mut found,
        );
        d.tick(t + MS, &mut out, &mut found);
        (t, id) = (t + 100 * MS, id + 1);
    }
    assert_eq!(found.len(), 1);
    let first = out.iter().find(|s| s.ids.span_id == 2).unwrap();
    assert_eq!(first.events.len(), 1);
    assert_eq!(d.counters().released_early, 0);
}

#[test]
fn an_insert_loop_stays_quiet() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = vec![at(stmt(1, 100, 1, 1, "SELECT", Some(500)), 0, MS)];
    for i in 0..200 {
        spans.push(at(
            stmt(2 + i, 100, 2, 1000 + i, "INSERT", None),
            MS * (2 + i),
            MS,
        ));
    }
    spans.push(txn(100, 300 * MS));
    let (out, found) = feed(&mut d, spans);
    assert_eq!(out.len(), 202);
    assert!(found.is_empty() && events(&out).is_empty());
    // Nor in a burst, where nothing is held for a write either.
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = vec![at(stmt(1, 0, 1, 1, "SELECT", Some(500)), 0, MS)];
    for i in 0..200 {
        spans.push(at(
            stmt(2 + i, 0, 2, 1000 + i, "INSERT", None),
            MS * (2 + i),
            MS,
        ));
    }
    let (out, _) = feed(&mut d, spans);
    assert_eq!(out.len(), 201);
}

#[test]
fn a_select_loop_without_a_listing_stays_quiet() {
    for parent in [100, 0] {
        let mut d = NPlusOne::new(10, GAP);
        let mut spans = lazy_loading(parent, 50, |i| 1000 + i);
        spans.remove(0);
        spans.push(txn(100, 300 * MS));
        let (mut out, mut found) = feed(&mut d, spans);
        assert_eq!(out.len(), 51, "nothing held without a listing");
        d.flush_all(&mut out, &mut found);
        assert!(found.is_empty() && events(&out).is_empty());
    }
}

#[test]
fn a_listing_too_short_or_after_the_loop_is_not_the_one() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 20, |i| 1000 + i);
    spans[0] = at(stmt(1, 100, 1, 11, "SELECT", Some(9)), 0, 5 * MS);
    spans.push(txn(100, 90 * MS));
    assert!(feed(&mut d, spans).1.is_empty());
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 20, |i| 1000 + i);
    let listing = spans.remove(0);
    spans.push(at(listing, 80 * MS, MS));
    spans.push(txn(100, 90 * MS));
    let (out, found) = feed(&mut d, spans);
    assert!(found.is_empty() && events(&out).is_empty());
}

#[test]
fn a_listing_on_another_connection_is_not_seen() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(0, 20, |i| 1000 + i);
    spans[0].conn = 8;
    let (mut out, mut found) = feed(&mut d, spans);
    d.flush_all(&mut out, &mut found);
    assert_eq!(out.len(), 21);
    assert!(found.is_empty());
}

#[test]
fn the_same_text_repeated_is_not_a_run() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 30, |_| 4242);
    spans.push(txn(100, 300 * MS));
    let (out, found) = feed(&mut d, spans);
    assert!(found.is_empty() && events(&out).is_empty());
    // Only the executions that differ from the first count.
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 30, |i| if i % 3 == 0 { 4242 } else { i });
    spans.push(txn(100, 300 * MS));
    let (_, found) = feed(&mut d, spans);
    assert_eq!(found[0].count, 21);
}

#[test]
fn prepared_executions_count() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 12, |_| 0);
    spans.push(txn(100, 300 * MS));
    let (_, found) = feed(&mut d, spans);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].count, 12);
    // One short of the threshold.
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 9, |_| 0);
    spans.push(txn(100, 300 * MS));
    assert!(feed(&mut d, spans).1.is_empty());
}

#[test]
fn mirrored_server_spans_and_transactions_are_not_statements() {
    let mut d = NPlusOne::new(10, GAP);
    let mut spans = lazy_loading(100, 20, |i| 1000 + i);
    for s in &mut spans {
        s.kind = Kind::Server;
        s.mirrored = true;
    }
    spans.push(txn(100, 300 * MS));
    let (out, found) = feed(&mut d, spans);
    assert_eq!(out.len(), 22);
    assert!(found.is_empty() && d.scopes.is_empty());
}

#[test]
fn threshold_zero_passes_everything_through() {
    let mut d = NPlusOne::new(0, GAP);
    let mut spans = lazy_loading(0, 20, |i| 1000 + i);
    spans.push(txn(100, 300 * MS));
    let ids: Vec<u64> = spans.iter().map(|s| s.ids.span_id).collect();
    let (mut out, mut found) = feed(&mut d, spans);
    d.tick(u64::MAX, &mut out, &mut found);
    d.flush_all(&mut out, &mut found);
    assert_eq!(out.iter().map(|s| s.ids.span_id).collect::<Vec<_>>(), ids);
    assert!(found.is_empty() && events(&out).is_empty());
}

#[test]
fn scopes_past_the_bound_end_least_recently_used_first() {
    let mut d = NPlusOne::new(10, GAP);
    // The oldest scope holds a finding: evicted, it is still counted.
    let (mut out, mut found) = feed(&mut d, lazy_loading(1, 20, |i| 1000 + i));
    for t in 0..MAX_SCOPES as u64 {
        let s = at(
            stmt(10_000 + t, 2 + t, 1, 1, "SELECT", Some(1)),
            100 * MS,
            MS,
        );
        d.observe(s, &mut out, &mut found);
    }
    let c = d.counters();
    assert_eq!(c.evicted_scopes, MAX_SCOPES as u64 / 4);
    assert_eq!(d.scopes.len(), MAX_SCOPES - MAX_SCOPES / 4 + 1);
    assert_eq!(found.len(), 1);
    // Its transaction's span comes later, unmarked.
    d.observe(txn(1, 200 * MS), &mut out, &mut found);
    assert_eq!(out.len(), 21 + MAX_SCOPES + 1);
    assert!(events(&out).is_empty());
    // Groups past the bound are not followed.
    let mut d = NPlusOne::new(10, GAP);
    let spans = (0..MAX_GROUPS as u64 + 5)
        .map(|g| at(stmt(g + 1, 100, g + 1, 1, "SELECT", Some(1)), g * MS, MS))
        .collect();
    let (out, _) = feed(&mut d, spans);
    assert_eq!(out.len(), MAX_GROUPS + 5);
    assert_eq!(d.counters().statements_ignored, 5);
}

#[test]
fn held_spans_are_bounded_in_number_and_time() {
    let mut d = NPlusOne::new(10, GAP);
    let (mut out, mut found) = (Vec::new(), Vec::new());
    let mut id = 0;
    for conn in 0..70 {
        for g in 0..61 {
            id += 1;
            let mut s = at(stmt(id, 0, g + 1, id, "SELECT", Some(20)), id * 1000, 500);
            s.conn = conn;
            d.observe(s, &mut out, &mut found);
        }
    }
    assert_eq!(d.held.len(), MAX_HELD);
    assert_eq!(d.counters().released_early, 70 * 60 - MAX_HELD as u64);
    assert_eq!(out.len() + d.held.len(), 70 * 61);
    d.flush_all(&mut out, &mut found);
    assert_eq!(out.len(), 70 * 61);
    // A held span that finished long before its burst's others leaves at tick.
    let mut d = NPlusOne::new(10, Duration::from_secs(60));
    let listing = at(stmt(1, 0, 1, 1, "SELECT", Some(20)), 20_000 * MS, MS);
    let late = at(stmt(2, 0, 2, 2, "SELECT", Some(1)), 19_900 * MS, 50 * MS);
    let (mut out, mut found) = feed(&mut d, vec![listing, late]);
    assert_eq!(d.held.len(), 1);
    d.tick(29_960 * MS, &mut out, &mut found);
    assert_eq!((out.len(), d.counters().released_early), (2, 1));
    assert_eq!(d.scopes.len(), 1, "its burst goes on");
}

/// A random statement `id` of the mix: under transaction `open_txn` or
/// not, mostly a few shapes (runs), sometimes more than a scope follows.
fn random_statement(next: &mut impl FnMut(u64) -> u64, id: u64, open_txn: u64) -> DbSpan {
    let parent = if next(2) == 0 { 0 } else { open_txn };
    let op = ["SELECT", "SELECT", "INSERT"][next(3) as usize];
    let rows = (next(2) == 0).then(|| next(6) as i64);
    let group = if next(10) == 0 { next(70) } else { next(6) };
    stmt(id, parent, group, next(4), op, rows)
}

/// Random statements, transactions, ticks over many connections: every
/// span comes out once, bounds hold, events sit on transactions or held
/// firsts only.
#[test]
fn every_span_comes_out_exactly_once() {
    let mut findings = 0;
    let small_limits = Limits {
        scopes: 48,
        groups: 3,
        held: 4,
        hold_ns: 200 * MS,
        txn_idle_ns: 300 * MS,
    };
    for (seed, conns, small) in [(1_u64, 4_u64, false), (2, 20, true), (3, 40, false)] {
        let mut next = xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let gap = Duration::from_millis(if small { 100 } else { 5 });
        let mut d = NPlusOne::new(3, gap);
        if small {
            d.limits = small_limits;
        }
        let (mut out, mut found) = (Vec::new(), Vec::new());
        let (mut t, mut id, mut open_txn) = (0_u64, 0_u64, 1_000_000_u64);
        let mut sent = Vec::new();
        for _ in 0..30_000 {
            t += next(3 * MS);
            id += 1;
            let r = next(100);
            if r < 3 {
                d.tick(t, &mut out, &mut found);
                let hold = d.limits.hold_ns;
                assert!(d.held.values().all(|s| t - s.end_ns <= hold));
                continue;
            }
            let mut s = if r < 8 {
                open_txn += 1;
                txn(open_txn - 1, t)
            } else {
                random_statement(&mut next, id, open_txn)
            };
            s.pid = 1 + next(2) as u32;
            if s.role() == Role::Query {
                (s.start_ns, s.end_ns) = (t.saturating_sub(next(2 * MS)), t);
                s.conn = next(conns);
                s.mirrored = next(10) == 0;
            }
            sent.push(s.ids.span_id);
            d.observe(s, &mut out, &mut found);
            assert!(d.scopes.len() <= d.limits.scopes && d.held.len() <= d.limits.held);
        }
        if small {
            let c = d.counters();
            assert!(c.evicted_scopes > 0 && c.statements_ignored > 0);
            assert!(c.released_early > 0 && c.scopes_timed_out > 0);
        }
        d.flush_all(&mut out, &mut found);
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for s in &out {
            *seen.entry(s.ids.span_id).or_default() += 1;
            for e in &s.events {
                assert_eq!(e.name, "n_plus_one_detected");
                assert!(s.role() == Role::Transaction || s.operation() == Some("SELECT"));
            }
        }
        assert!(seen.values().all(|&n| n == 1), "a span came out twice");
        assert_eq!(out.len(), sent.len());
        assert!(sent.iter().all(|id| seen.contains_key(id)));
        assert!(d.held.is_empty() && d.scopes.is_empty());
        findings += found.len();
    }
    assert!(findings > 0, "the mix never fired");
}

#[test]
fn statements_under_the_applications_spans_are_a_burst_and_a_gone_process_lets_go() {
    let mut d = NPlusOne::new(10, GAP);
    // sqlcommenter: each statement's parent is its own application span.
    let spans: Vec<DbSpan> = lazy_loading(0, 20, |i| 100 + i)
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            (s.ids.parent_span_id, s.ids.remote) = (9_000 + i as u64, true);
            s
        })
        .collect();
    let n = spans.len();
    let (mut out, mut found) = feed(&mut d, spans);
    assert_eq!(out.len(), n - 1, "the run's first is held");
    // The process exits: its burst ends, the held span comes out marked.
    d.end_process(1, &mut out, &mut found);
    assert_eq!(out.len(), n);
    assert_eq!(found.len(), 1);
    assert_eq!(events(&out).len(), 1);
}

#[test]
fn a_batch_in_place_gives_what_span_by_span_gives() {
    let small_limits = Limits {
        scopes: 16,
        groups: 3,
        held: 4,
        hold_ns: 200 * MS,
        txn_idle_ns: 300 * MS,
    };
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let (mut one, mut all) = (NPlusOne::new(3, GAP), NPlusOne::new(3, GAP));
    (one.limits, all.limits) = (small_limits, small_limits);
    let (mut out_one, mut found_one) = (Vec::new(), Vec::new());
    let (mut out_all, mut found_all) = (Vec::new(), Vec::new());
    let (mut t, mut id, mut open_txn) = (0_u64, 0_u64, 1_000_000_u64);
    for _ in 0..400 {
        let mut batch = Vec::new();
        for _ in 0..1 + next(64) {
            t += next(3 * MS);
            id += 1;
            let mut s = if next(100) < 5 {
                open_txn += 1;
                txn(open_txn - 1, t)
            } else {
                random_statement(&mut next, id, open_txn)
            };
            if s.role() == Role::Query {
                (s.start_ns, s.end_ns) = (t.saturating_sub(next(2 * MS)), t);
                s.conn = next(30);
            }
            batch.push(s);
        }
        for s in batch.iter().cloned() {
            one.observe(s, &mut out_one, &mut found_one);
        }
        all.observe_all(&mut batch, &mut found_all);
        out_all.append(&mut batch);
        if next(4) == 0 {
            one.tick(t, &mut out_one, &mut found_one);
            all.tick(t, &mut out_all, &mut found_all);
        }
    }
    one.flush_all(&mut out_one, &mut found_one);
    all.flush_all(&mut out_all, &mut found_all);
    assert_eq!(found_one, found_all);
    assert!(
        found_one.len() > 10,
        "the mix fired too seldom: {}",
        found_one.len()
    );
    let c = all.counters();
    assert!(c.released_early > 0 && c.evicted_scopes > 0, "{c:?}");
    let key = |v: &[DbSpan]| {
        let mut k: Vec<(u64, Vec<(u64, String)>)> = v
            .iter()
            .map(|s| {
                let ev = s.events.iter();
                let ev = ev.map(|e| (e.ts_ns, format!("{:?}", e.attributes)));
                (s.ids.span_id, ev.collect())
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(out_one.len(), id as usize);
    assert_eq!(key(&out_one), key(&out_all));
}
