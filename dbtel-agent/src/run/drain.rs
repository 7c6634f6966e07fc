//! The ring buffer drained: records to their engine, finished spans to the
//! exporter (a flood neither holds spans nor keeps the loop from its other work).

use super::Agent;
use crate::events::{self, Record};

/// Records between two hand-offs of the spans made so far: a drain that a
/// flood keeps from ending must not hold its spans (a traced program would
/// grow the agent without bound).
const FLUSH_EVERY: u32 = 64;
/// Records one drain reads at most before the loop's other work (signals,
/// housekeeping, drop warnings) gets its turn; the rest wait in the ring.
const DRAIN_MAX: u32 = 2048;

impl Agent {
    /// Reads the ring buffer (at most DRAIN_MAX records); returns whether it
    /// stopped before the end.
    pub(super) fn drain(&mut self) -> bool {
        self.drain_n(DRAIN_MAX, &mut 0)
    }

    /// Reads what the ring buffer holds now, before a process is forgotten:
    /// its last records are read (however far the loop fell behind), and a
    /// flood from another cannot stall the loop for more than one ring's worth.
    pub(super) fn drain_written(&mut self) {
        let mut bytes = 0u64;
        while self.drain_n(DRAIN_MAX, &mut bytes) && bytes < u64::from(dbtel_common::RING_BYTES) {}
    }

    fn drain_n(&mut self, max: u32, bytes: &mut u64) -> bool {
        let Some(mut ring) = self.ring.take() else {
            return false;
        };
        let mut read = 0u32;
        let more = loop {
            read += 1;
            if read.is_multiple_of(FLUSH_EVERY) {
                self.flush_spans();
            }
            if read > max {
                break true;
            }
            let Some(item) = ring.get_mut().next() else {
                break false;
            };
            // Its room in the ring: an 8-byte header, rounded up to 8.
            *bytes += (item.len() as u64 + 8 + 7) & !7;
            self.summary.events += 1;
            let record = match events::engine_of(&item) {
                // Another engine's record: decoded by its engine.
                Some(e)
                    if !matches!(
                        e,
                        dbtel_common::Engine::Postgres | dbtel_common::Engine::Host
                    ) =>
                {
                    self.on_engine_record(&item);
                    continue;
                }
                _ => events::decode_record(&item),
            };
            drop(item);
            match record {
                Ok(Record::Client(ev)) => {
                    // Looked up until the first call only: this runs per event.
                    if let Some((pid, used)) = &mut self.command {
                        if !*used {
                            let from = ev.origin().pid;
                            *used = *pid == from || self.followed.contains(&from);
                        }
                    }
                    if self.host.is_none() || self.choose_client(ev.origin().pid) {
                        self.recon.on_event(ev, &mut self.spans)
                    }
                }
                Ok(Record::Server(hit)) => self.server.on_hit(hit, &mut self.recon),
                Ok(Record::ServerExit(at)) => self.server.on_exit(at),
                Ok(Record::Exec(e)) => {
                    // The old program's queries end here, before the new one's
                    // first event (next in the buffer) has it chosen anew.
                    if self.host.is_some() {
                        self.ended(e.at.pid, e.at.ts_ns);
                        self.on_exec(&e);
                    } else {
                        self.on_followed_exec(&e);
                    }
                }
                Ok(Record::Loaded { at, held }) => self.on_loaded(at, held),
                Ok(Record::ClientExit(at)) => {
                    self.ended(at.pid, at.ts_ns);
                    if let Some(h) = &mut self.host {
                        h.forget(at.pid);
                    }
                }
                Err(e) => {
                    self.summary.decode_errors += 1;
                    log::warn!("undecodable event: {e}");
                }
            }
        };
        self.ring = Some(ring);
        self.flush_spans();
        more
    }

    /// Everything in the ring buffer now, within bounds: a program still
    /// flooding it does not keep the agent from stopping.
    pub(super) fn drain_all(&mut self) {
        for _ in 0..64 {
            if !self.drain() {
                break;
            }
        }
    }

    /// A traced process's program ended at `ts_ns` (exit or exec): its spans go out now.
    pub(super) fn ended(&mut self, pid: u32, ts_ns: u64) {
        if self.live.contains_key(&pid) {
            self.end_queries(pid, ts_ns);
            self.flush_spans();
            self.forget_process(pid);
        }
    }

    /// Ends what a process's program had in flight, in every engine, at `ts_ns`.
    pub(super) fn end_queries(&mut self, pid: u32, ts_ns: u64) {
        self.recon.process_exited(pid, ts_ns, &mut self.spans);
        for e in &mut self.engines {
            e.forget(pid, ts_ns, &mut self.engine_spans);
        }
    }

    pub(super) fn flush_spans(&mut self) {
        self.flush_spans_now(false);
    }

    /// `force`: export held lock waits without waiting for the catalog (exit).
    pub(super) fn flush_spans_now(&mut self, force: bool) {
        use crate::postgres::libpq::{attributes, reconstruct::ClientSpan};
        self.server.take_replies(&self.recon);
        // Drained rather than taken: its capacity is kept for the next drain
        // (regrown from nothing, it moved every client span at each doubling).
        let mut spans = std::mem::take(&mut self.spans);
        // Reused and sized once: growing it moved every span made so far (a
        // realloc per doubling).
        let mut ready = std::mem::take(&mut self.stages.ready);
        ready.reserve(spans.len() + self.engine_spans.len());
        self.server.flush(&mut self.facts, force, &mut ready);
        ready.append(&mut self.engine_spans);
        for s in spans.drain(..) {
            if !self.port_selected(&s) {
                continue;
            }
            ready.push(match s {
                ClientSpan::Query(q) => {
                    let text = match &q.text {
                        Some(t) => {
                            let (facts, hash) = self.facts.get_shared_hashed(t);
                            Some((&**facts, hash))
                        }
                        None => None,
                    };
                    attributes::query_span(q, text)
                }
                ClientSpan::Txn(t, conn) => attributes::txn_span(t, conn.as_deref()),
            });
        }
        self.spans = spans;
        self.hand_on(ready);
        self.exporter.flush();
    }
}
