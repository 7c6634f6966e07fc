use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use opentelemetry::{
    trace::{Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::*;

const T: u128 = 0xabc;

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
}

fn span(
    trace: u128,
    id: u64,
    parent: u64,
    name: &str,
    kind: SpanKind,
    (start, end): (u64, u64),
    attributes: Vec<KeyValue>,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(trace),
            SpanId::from(id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from(parent),
        parent_span_is_remote: false,
        span_kind: kind,
        name: name.to_string().into(),
        start_time: at(start),
        end_time: at(end),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("test").build(),
    }
}

fn arrived(span: SpanData, service: &str) -> Arrived {
    Arrived {
        span,
        service: Arc::from(service),
    }
}

fn kv(k: &'static str, v: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(k, v)
}

/// A blocked client UPDATE: client span, the server's statement under it,
/// the lock wait under that (linked to the blocker), plus a later sibling.
fn blocked_update() -> Vec<Arrived> {
    let client = span(
        T,
        1,
        0,
        "UPDATE t",
        SpanKind::Client,
        (0, 1_000),
        vec![
            kv("process.pid", 10i64),
            kv("db.postgresql.backend.pid", 20i64),
            kv("db.namespace", "postgres"),
            kv("db.response.returned_rows", 1i64),
            kv("db.query.text", "UPDATE t SET v=v+? WHERE id=?"),
        ],
    );
    let server = span(
        T,
        2,
        1,
        "UPDATE t",
        SpanKind::Server,
        (1, 999),
        vec![
            kv("db.postgresql.backend.pid", 20i64),
            kv("db.namespace", "postgres"),
        ],
    );
    let mut wait = span(
        T,
        3,
        2,
        "lock wait t",
        SpanKind::Internal,
        (2, 990),
        vec![
            kv("db.postgresql.backend.pid", 20i64),
            kv("db.postgresql.lock.type", "transactionid"),
            kv("db.postgresql.lock.mode", "ShareLock"),
            kv("db.postgresql.lock.relation", "public.t"),
            kv("db.postgresql.lock.outcome", "granted"),
            kv("db.postgresql.blocker.pid", 30i64),
            kv("db.postgresql.blocker.state", "idle in transaction"),
            kv(
                "db.postgresql.blocker.query",
                "UPDATE t SET v=v+? WHERE id=?",
            ),
            kv("db.query.text", "UPDATE t SET v=v+? WHERE id=?"),
        ],
    );
    let blocker = SpanContext::new(
        TraceId::from(0xdef),
        SpanId::from(0x77),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    wait.links.links.push(Link::new(
        blocker,
        vec![
            kv("dbtel.link.type", "blocked_by"),
            kv("db.postgresql.backend.pid", 30i64),
        ],
        0,
    ));
    // Arrival order is not display order.
    vec![
        arrived(wait, "postgres"),
        arrived(client, "psql"),
        arrived(server, "postgres"),
    ]
}

fn ready(spans: Vec<Arrived>) -> Ready {
    Ready {
        trace_id: TraceId::from(T),
        spans,
        evicted: false,
    }
}

#[test]
fn three_levels_nest_with_glyphs_and_the_link_below_its_span() {
    let text = render(&mut ready(blocked_update()));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with(
            "trace 00000000000000000000000000000abc · 2023-11-14T22:13:20.000000Z · 3 spans"
        ),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "UPDATE t  CLIENT  1000.000 ms  psql pid=10 backend=20 rows=1 db=postgres  \"UPDATE t SET v=v+? WHERE id=?\""
    );
    assert_eq!(
        lines[2],
        "└─ UPDATE t  SERVER  998.000 ms  postgres pid=20 db=postgres"
    );
    assert_eq!(
        lines[3],
        "   └─ lock wait t  INTERNAL  988.000 ms  postgres pid=20 lock=transactionid/ShareLock relation=public.t outcome=granted  \
         blocker pid=30 (idle in transaction) \"UPDATE t SET v=v+? WHERE id=?\""
    );
    assert_eq!(lines[4], "        ↳ blocked by trace 00000000000000000000000000000def span 0000000000000077 (backend pid=30)");
}

#[test]
fn children_are_ordered_by_start_time_and_continue_with_a_bar() {
    let txn = span(
        T,
        1,
        0,
        "transaction",
        SpanKind::Client,
        (0, 100),
        vec![
            kv("db.transaction.outcome", "committed"),
            kv("db.transaction.statement_count", 2i64),
        ],
    );
    let second = span(T, 3, 1, "SELECT b", SpanKind::Client, (50, 60), vec![]);
    let first = span(T, 2, 1, "SELECT a", SpanKind::Client, (10, 20), vec![]);
    let first_server = span(T, 4, 2, "SELECT a", SpanKind::Server, (11, 19), vec![]);
    let text = render(&mut ready(vec![
        arrived(second, "app"),
        arrived(first_server, "pg"),
        arrived(txn, "app"),
        arrived(first, "app"),
    ]));
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "transaction  CLIENT  100.000 ms  app pid= outcome=committed statements=2",
            "├─ SELECT a  CLIENT  10.000 ms  app pid=",
            "│  └─ SELECT a  SERVER  8.000 ms  pg pid=",
            "└─ SELECT b  CLIENT  10.000 ms  app pid=",
        ]
    );
}

#[test]
fn a_span_whose_parent_never_came_is_its_own_root_and_says_so() {
    let root = span(T, 1, 0, "SELECT a", SpanKind::Client, (0, 10), vec![]);
    let orphan = span(T, 5, 4, "lock wait t", SpanKind::Internal, (5, 8), vec![]);
    let text = render(&mut ready(vec![arrived(orphan, ""), arrived(root, "")]));
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "SELECT a  CLIENT  10.000 ms  pid=",
            "lock wait t  INTERNAL  3.000 ms  pid=  (parent span 0000000000000004 not seen)"
        ]
    );
}

#[test]
fn a_trace_prints_once_its_root_is_in_and_it_has_been_quiet() {
    let t0 = Instant::now();
    let mut b = TreeBuffer::new(100);
    let mut spans = blocked_update();
    let client = spans.remove(1);
    // Server side first: no root yet, so not due even after QUIET.
    assert!(b.push(spans, t0).is_empty());
    assert!(b.take_due(t0 + QUIET * 2).is_empty());
    // The root comes; the quiet period starts over.
    b.push([client], t0 + QUIET * 2);
    assert!(b
        .take_due(t0 + QUIET * 3 - Duration::from_millis(1))
        .is_empty());
    let due = b.take_due(t0 + QUIET * 3);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].spans.len(), 3);
    assert!(!due[0].evicted);
    assert!(b.is_empty());
}

#[test]
fn a_root_that_comes_first_waits_for_the_held_server_spans() {
    let t0 = Instant::now();
    let mut b = TreeBuffer::new(100);
    let mut spans = blocked_update();
    let client = spans.remove(1);
    b.push([client], t0);
    // The server's spans, held for catalog answers, come within QUIET.
    b.push(spans, t0 + QUIET - Duration::from_millis(10));
    assert!(b.take_due(t0 + QUIET).is_empty());
    let due = b.take_due(t0 + QUIET * 2);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].spans.len(), 3, "printed whole");
}

#[test]
fn a_rootless_trace_prints_after_the_longer_quiet_and_everything_at_exit() {
    let t0 = Instant::now();
    let mut b = TreeBuffer::new(100);
    let orphan = span(T, 5, 4, "SELECT a", SpanKind::Client, (5, 8), vec![]);
    b.push([arrived(orphan, "")], t0);
    assert!(b
        .take_due(t0 + ROOTLESS_QUIET - Duration::from_millis(1))
        .is_empty());
    assert_eq!(b.take_due(t0 + ROOTLESS_QUIET).len(), 1);

    // At exit: complete or not, oldest first, nothing left behind.
    let open = span(2, 9, 8, "SELECT b", SpanKind::Client, (0, 1), vec![]);
    b.push(blocked_update(), t0);
    b.push([arrived(open, "")], t0);
    let all = b.take_all();
    assert_eq!(
        all.iter().map(|r| r.trace_id).collect::<Vec<_>>(),
        [TraceId::from(T), TraceId::from(2)]
    );
    assert_eq!(all.iter().map(|r| r.spans.len()).sum::<usize>(), 4);
    assert!(b.is_empty() && b.take_all().is_empty());
}

#[test]
fn beyond_the_cap_the_oldest_traces_are_printed_as_they_are() {
    let t0 = Instant::now();
    let mut b = TreeBuffer::new(5);
    for trace in 1..=5u128 {
        assert!(b
            .push(
                [arrived(
                    span(trace, 1, 0, "SELECT", SpanKind::Client, (0, 1), vec![]),
                    ""
                )],
                t0
            )
            .is_empty());
    }
    assert_eq!(b.len(), 5);
    let evicted = b.push(
        [arrived(
            span(6, 1, 0, "SELECT", SpanKind::Client, (0, 1), vec![]),
            "",
        )],
        t0,
    );
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].trace_id, TraceId::from(1), "the oldest goes");
    assert!(evicted[0].evicted);
    assert!(render(&mut { evicted }.remove(0))
        .lines()
        .next()
        .unwrap()
        .ends_with("printed early: buffer full"));
    assert_eq!(b.len(), 5);
    // A span of a buffered trace joins it and evicts another, never itself.
    let evicted = b.push(
        [arrived(
            span(6, 2, 1, "SELECT", SpanKind::Server, (0, 1), vec![]),
            "",
        )],
        t0,
    );
    assert_eq!(
        evicted.iter().map(|r| r.trace_id).collect::<Vec<_>>(),
        [TraceId::from(2)]
    );
    assert_eq!(b.take_all().iter().map(|r| r.spans.len()).sum::<usize>(), 5);
}

#[test]
fn json_lines_carry_ids_times_attributes_events_and_links() {
    let mut spans = blocked_update();
    let mut wait = spans.remove(0).span;
    wait.status = Status::error("lock_timeout");
    wait.events.events.push(opentelemetry::trace::Event::new(
        "deadlock_detected",
        at(500),
        vec![kv("db.postgresql.deadlock.pids", 3i64)],
        0,
    ));
    let mut resource = serde_json::Map::new();
    resource.insert("service.name".into(), "postgres".into());
    let j: serde_json::Value = serde_json::from_str(&json_line(&wait, &resource)).unwrap();
    assert_eq!(j["name"], "lock wait t");
    assert_eq!(j["kind"], "INTERNAL");
    assert_eq!(j["trace_id"], "00000000000000000000000000000abc");
    assert_eq!(j["span_id"], "0000000000000003");
    assert_eq!(j["parent_span_id"], "0000000000000002");
    assert_eq!(j["start_time"], "2023-11-14T22:13:20.002000000Z");
    assert_eq!(j["duration_ms"], 988.0);
    assert_eq!(j["status"]["code"], "ERROR");
    assert_eq!(j["status"]["message"], "lock_timeout");
    assert_eq!(j["attributes"]["db.postgresql.blocker.pid"], 30);
    assert_eq!(j["attributes"]["db.postgresql.lock.mode"], "ShareLock");
    assert_eq!(j["events"][0]["name"], "deadlock_detected");
    assert_eq!(j["links"][0]["span_id"], "0000000000000077");
    assert_eq!(j["links"][0]["attributes"]["dbtel.link.type"], "blocked_by");
    assert_eq!(j["resource"]["service.name"], "postgres");
    let root: serde_json::Value =
        serde_json::from_str(&json_line(&spans.remove(0).span, &resource)).unwrap();
    assert!(root["parent_span_id"].is_null());
    assert_eq!(root["status"]["code"], "UNSET");
}

#[test]
fn lines_keep_their_format() {
    let client = blocked_update().remove(1).span;
    assert_eq!(
        console_line(&client),
        "2023-11-14T22:13:20.000000Z   1000.000 ms  pid=10 UPDATE t                         rows=1 db=postgres  \"UPDATE t SET v=v+? WHERE id=?\""
    );
}
