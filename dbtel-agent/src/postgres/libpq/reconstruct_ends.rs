//! How queries end: at their last result, once their connection has been
//! quiet, or cut short (superseded, refused, the connection or process
//! gone); and the transactions they end with them.

use super::*;

impl Reconstructor {
    /// The front query of `key` got its last result at `ts`.
    pub(super) fn complete_front(&mut self, key: Key, ts: u64, out: &mut Vec<ClientSpan>) {
        let conn = self.conns.get_mut(&key).expect("looked up by the caller");
        let q = conn.queue.pop_front().expect("front exists");
        let info = conn.info.clone();
        self.completed(key, q, ts, &info, out);
    }

    /// Ends the answered queries at the front of a connection taken out of the map.
    pub(super) fn complete_answered(
        &mut self,
        key: Key,
        conn: &mut ConnState,
        out: &mut Vec<ClientSpan>,
    ) {
        while let Some(ts) = conn.queue.front().and_then(|q| q.answered_at) {
            let q = conn.queue.pop_front().expect("front exists");
            self.completed(key, q, ts, &conn.info, out);
        }
    }

    pub(super) fn completed(
        &mut self,
        key: Key,
        mut q: InFlight,
        ts: u64,
        info: &Option<Arc<ConnInfo>>,
        out: &mut Vec<ClientSpan>,
    ) {
        q.span.end_ns = ts;
        let s = &q.span;
        let mut txns = Vec::new();
        if s.skipped {
            self.txns.query_skipped(key, &s.ids, &q.verb, ts);
        } else {
            self.txns.query_ended(
                key,
                &s.ids,
                &q.verb,
                ts,
                s.failed,
                s.sqlstate.as_deref(),
                s.cmd_status.as_deref(),
                &mut txns,
            );
        }
        out.push(ClientSpan::Query(q.span));
        push_txns(txns, info, out);
    }

    /// Ends answered queries on connections quiet since (QUIET_NS, or
    /// QUIET_MULTI_NS for multi-statement texts) at `now_ns`. Only where NULLs
    /// are not seen: there a NULL ends them.
    pub fn complete_quiet(&mut self, now_ns: u64, out: &mut Vec<ClientSpan>) {
        let quiet = |q: &InFlight| {
            let wait = if q.one_result {
                QUIET_NS
            } else {
                QUIET_MULTI_NS
            };
            q.answered_at
                .is_some_and(|t| t.saturating_add(wait) < now_ns)
        };
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.fast && c.queue.front().is_some_and(quiet))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let mut conn = self.conns.remove(&key).expect("key listed");
            self.complete_answered(key, &mut conn, out);
            self.conns.insert(key, conn);
        }
    }

    pub(super) fn close_all(
        &mut self,
        key: Key,
        conn: &mut ConnState,
        ts: u64,
        end: End,
        out: &mut Vec<ClientSpan>,
    ) {
        for q in std::mem::take(&mut conn.queue) {
            self.cut(key, q, ts, end, out);
        }
    }

    /// Ends a query without its final result (see [`End`]).
    pub(super) fn cut(
        &mut self,
        key: Key,
        mut q: InFlight,
        ts: u64,
        end: End,
        out: &mut Vec<ClientSpan>,
    ) {
        q.span.end_ns = ts.max(q.span.start_ns);
        q.span.end = end;
        if end != End::Refused {
            self.counters.incomplete += 1;
        }
        // Its outcome is unknown: it only stops being in flight. A
        // transaction it was ending stays open until the connection closes.
        let mut none = Vec::new();
        self.txns.query_ended(
            key,
            &q.span.ids,
            &Verb::Other,
            q.span.end_ns,
            false,
            None,
            None,
            &mut none,
        );
        out.push(ClientSpan::Query(q.span));
    }

    /// A connection taken out of the map is gone (PQfinish, exit): answered
    /// queries complete, the rest are cut with `end`, its transaction closes.
    pub(super) fn conn_gone(
        &mut self,
        key: Key,
        mut c: ConnState,
        ts: u64,
        end: End,
        out: &mut Vec<ClientSpan>,
    ) {
        self.complete_answered(key, &mut c, out);
        self.close_all(key, &mut c, ts, end, out);
        self.forget_backend(key, &c);
        let mut txns = Vec::new();
        self.txns.conn_closed(key, ts, &mut txns);
        push_txns(txns, &c.info, out);
    }

    /// The process is gone: close what it had in flight and forget it.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<ClientSpan>) {
        let keys: Vec<_> = self
            .conns
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for k in keys {
            let c = self.conns.remove(&k).expect("key listed");
            self.conn_dropped(k);
            self.conn_gone(k, c, ts_ns, End::ProcessExited, out);
        }
        let mut txns = Vec::new();
        self.txns.process_exited(pid, ts_ns, &mut txns);
        push_txns(txns, &None, out);
    }
}
