//! Pipeline throughput without the kernel: recorded events through decode,
//! reconstruction and export (to a discarding exporter), on one thread.
//! Prints one JSON line per stage; `cargo xtask bench` collects them.

use std::time::{Duration, Instant};

use dbtel_agent::{
    events::{decode, encode, Origin},
    export::{Clock, ExportConfig, Exporter, ExporterKind, Protocol},
    pipeline::sql::{FactsCache, Text},
    postgres::libpq::{
        attributes,
        reconstruct::{ClientSpan, Reconstructor},
    },
};
use dbtel_common::func;

/// A pgbench-like stream: per query a send, one result, the final NULL; four
/// connections interleaved.
fn recorded(queries: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(queries * 3 + 4);
    let mut ts = 1_000_000u64;
    let mut at = |conn: u64| {
        ts += 1_000;
        Origin {
            pid: 42,
            tid: 42 + conn as u32,
            ts_ns: ts,
            conn: 0x1000 * conn,
        }
    };
    for c in 1..=4 {
        out.push(encode::conn(
            at(c),
            100 + c as i32,
            "bench",
            "/var/run/postgresql",
            "5432",
        ));
    }
    for q in 0..queries {
        let c = 1 + (q % 4) as u64;
        out.push(encode::call(
            at(c),
            func::PQSEND_QUERY_PARAMS,
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
            None,
        ));
        out.push(encode::result(at(c), 0xbeef, 2, 1, "SELECT 1", ""));
        out.push(encode::result(at(c), 0, -1, 0, "", ""));
    }
    out
}

fn measure(name: &str, events: &[Vec<u8>], mut stage: impl FnMut(&[Vec<u8>]) -> usize) {
    // Warm up, then run for at least two seconds.
    stage(events);
    let start = Instant::now();
    let (mut n, mut spans) = (0u64, 0usize);
    while start.elapsed() < Duration::from_secs(2) {
        spans += stage(events);
        n += events.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"stage\":\"{name}\",\"events\":{n},\"spans\":{spans},\"seconds\":{secs:.3},\"events_per_sec\":{:.0}}}",
        n as f64 / secs
    );
}

fn main() {
    let events = recorded(100_000);
    measure("decode", &events, |evs| {
        evs.iter().filter(|b| decode(b).is_ok()).count() / 3
    });
    measure("decode+reconstruct", &events, |evs| {
        let mut r = Reconstructor::new();
        let mut out = Vec::new();
        for b in evs {
            r.on_event(decode(b).unwrap(), &mut out);
        }
        out.len()
    });
    let mut exporter = Exporter::new(
        ExportConfig {
            kind: ExporterKind::None,
            protocol: Protocol::Grpc,
            endpoint: None,
            service_name: None,
            console_format: Default::default(),
            spool: None,
        },
        Clock::fixed(0),
        None,
    )
    .unwrap();
    let mut facts = FactsCache::new(Text::default(), 10_000);
    measure("decode+reconstruct+export", &events, |evs| {
        let mut r = Reconstructor::new();
        let mut out = Vec::new();
        for b in evs {
            r.on_event(decode(b).unwrap(), &mut out);
            for s in out.drain(..) {
                match s {
                    ClientSpan::Query(q) => {
                        // As the agent does: facts and hash once per shared text.
                        let text = q.text.clone();
                        let f = text.as_ref().map(|t| facts.get_shared_hashed(t));
                        let f = f.map(|(facts, hash)| (&**facts, hash));
                        exporter.emit(&mut attributes::query_span(q, f)).unwrap()
                    }
                    ClientSpan::Txn(t, conn) => exporter
                        .emit(&mut attributes::txn_span(t, conn.as_deref()))
                        .unwrap(),
                }
            }
        }
        evs.len() / 3
    });
    exporter.shutdown();
}
