//! Ring-buffer records: bytes the kernel side copied out of traced
//! programs, so any length and any contents. Each record is decoded as the
//! main loop decodes it (by the engine its header names), and the records
//! decoded are played through the pure client reconstructors (libpq,
//! MySQL), as a run of records from one ring buffer.
//!
//! Input: records, each a little-endian u16 length then that many bytes.
#![no_main]

use dbtel_agent::{
    events::{self, Record},
    mysql,
    pipeline::sql::Text,
    postgres::libpq::reconstruct,
};
use dbtel_common::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut libpq = reconstruct::Reconstructor::with_seed(1);
    let mut my = mysql::reconstruct::Reconstructor::with_seed(1, Text::Obfuscated);
    let (mut client_spans, mut spans) = (Vec::new(), Vec::new());
    let mut rest = data;
    let mut last_ts = 0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let record = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + record.len()..];
        let _ = events::decode(record);
        if events::engine_of(record) == Some(Engine::Mysql) {
            if let Ok(r) = mysql::records::decode(record) {
                last_ts = r.origin().ts_ns;
                my.on_record(r, &mut spans);
            }
            continue;
        }
        match events::decode_record(record) {
            Ok(Record::Client(ev)) => {
                last_ts = ev.origin().ts_ns;
                libpq.on_event(ev, &mut client_spans);
            }
            Ok(Record::ClientExit(at)) => {
                libpq.process_exited(at.pid, at.ts_ns, &mut client_spans);
                my.process_exited(at.pid, at.ts_ns, &mut spans);
            }
            _ => {}
        }
    }
    libpq.complete_quiet(last_ts.saturating_add(10_000_000_000), &mut client_spans);
});
