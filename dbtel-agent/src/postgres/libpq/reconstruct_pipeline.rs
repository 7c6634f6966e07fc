//! libpq's pipeline mode (PQenterPipelineMode … PQexitPipelineMode).
//!
//! Queries are sent one after the other without waiting; their results come
//! back in the order sent, each query's followed by a NULL from PQgetResult
//! (which the result probe does not see), and each sync point
//! (PQpipelineSync, PQsendPipelineSync) gets a PGRES_PIPELINE_SYNC result.
//! After an error the server skips every statement up to the next sync:
//! libpq gives each skipped query one PGRES_PIPELINE_ABORTED result. A send
//! does not supersede the queries before it, and libpq refuses the
//! synchronous calls (PQexec & co.) outright.
//!
//! Each query in a pipeline is one statement (libpq sends even PQsendQuery
//! with the extended protocol there), so its first final result is its
//! last, with one exception: the statements before a sync form an implicit
//! transaction, committed at the sync, and an error there (a deferred
//! constraint, a serialization failure) comes after the last statement's
//! result and before the sync's. So a query whose next item is another
//! query ends at its final result; the last before a sync when the sync's
//! result comes (a late error lands on it first); the last one sent so far
//! when the next query's result comes, or when its connection has been
//! quiet for [`QUIET_NS`](super::QUIET_NS).

use super::*;

impl Reconstructor {
    /// The server side began a statement on this backend, whose client is
    /// traced. In a pipeline the client may not have read the results of the
    /// statements before it yet, so the query the server runs is told by
    /// order: the server runs the queries in the order they were sent, the
    /// next one after the last it began — past the next sync point when that
    /// one failed (`after_error`: the server skipped the rest). From then on
    /// [`Self::client_context`] and [`Self::annotate`] name that query. Outside a
    /// pipeline, the query in flight is the one. A prepare (a Parse alone) is
    /// no statement the server runs: its Parse and the first execution of
    /// the statement after it are one server statement, that execution's.
    pub fn server_began(&mut self, backend_pid: i32, after_error: bool) {
        let Some(key) = self.by_backend.get(&backend_pid).copied() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key).filter(|c| c.pipeline) else {
            return;
        };
        let from = match conn.server_at {
            Some(s) if after_error => conn.syncs.iter().copied().find(|&m| m > s).unwrap_or(s + 1),
            Some(s) => s + 1,
            None => 0,
        };
        if let Some(q) = conn
            .queue
            .iter()
            .find(|q| q.seq >= from && !q.span.skipped && !q.span.is_prepare())
        {
            conn.server_at = Some(q.seq);
            conn.server_waiting = None;
        } else if conn
            .queue
            .back()
            .is_some_and(|q| q.seq >= from && q.span.is_prepare())
        {
            // The Parse of a prepare whose execution is not sent yet (as far
            // as the probes tell): that execution's ids are chosen now, as
            // its block stands, and given to it when it is sent.
            let reserved = match self.txns.current(key) {
                Some(t) => t.child(&mut self.ids),
                None => self.ids.root(),
            };
            conn.server_waiting = Some((from, reserved));
        }
    }

    /// Entering and leaving pipeline mode (reported with their result), and
    /// sync points.
    pub(super) fn on_pipeline(
        &mut self,
        at: Origin,
        f: u32,
        ret: Option<i32>,
        out: &mut Vec<ClientSpan>,
    ) {
        let key = (at.pid, at.conn);
        match f {
            func::PQENTER_PIPELINE_MODE | func::PQEXIT_PIPELINE_MODE if ret == Some(1) => {
                let entering = f == func::PQENTER_PIPELINE_MODE;
                let new = !self.conns.contains_key(&key);
                let mut conn = self.conns.remove(&key).unwrap_or_default();
                if conn.pipeline != entering {
                    // libpq enters only an idle connection, and leaves only
                    // once every result was read: what is still in flight
                    // lost its results.
                    self.complete_answered(key, &mut conn, out);
                    self.close_all(key, &mut conn, at.ts_ns, End::Superseded, out);
                    conn.syncs.clear();
                    conn.pipeline = entering;
                    conn.server_waiting = None;
                }
                self.conns.insert(key, conn);
                if new {
                    self.conn_created(key, out, at.ts_ns);
                }
            }
            func::PQPIPELINE_SYNC | func::PQSEND_PIPELINE_SYNC => {
                if let Some(conn) = self.conns.get_mut(&key).filter(|c| c.pipeline) {
                    conn.syncs.push_back(conn.sent);
                }
            }
            // Failed to enter (busy) or to leave (results unread): nothing changes.
            _ => {}
        }
    }

    /// A result (or, with entry and return probes, a NULL) on a connection
    /// in pipeline mode.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pipeline_result(
        &mut self,
        at: Origin,
        result: u64,
        status: i32,
        ntuples: i32,
        cmd_status: std::sync::Arc<str>,
        sqlstate: Option<String>,
        out: &mut Vec<ClientSpan>,
    ) {
        let key = (at.pid, at.conn);
        let mut conn = self.conns.remove(&key).expect("looked up by the caller");
        if result == 0 {
            // The NULL after a query's results; the last before a sync waits
            // for the sync's result (see the module's comment).
            let front = conn
                .queue
                .front()
                .and_then(|q| Some((q.answered_at?, q.seq)));
            if let Some((ts, _)) = front.filter(|&(_, seq)| conn.syncs.front() != Some(&(seq + 1)))
            {
                let q = conn.queue.pop_front().expect("front exists");
                self.completed(key, q, ts, &conn.info.clone(), out);
            }
        } else if status == PGRES_PIPELINE_SYNC {
            // Everything sent before that sync is over (all of it, if the
            // sync was not seen: the agent attached inside the pipeline).
            let upto = conn.syncs.pop_front().unwrap_or(u64::MAX);
            self.complete_before(key, &mut conn, upto, at.ts_ns, out);
        } else {
            self.statement_result(
                key, &mut conn, at.ts_ns, status, ntuples, cmd_status, sqlstate, out,
            );
        }
        self.conns.insert(key, conn);
    }

    #[allow(clippy::too_many_arguments)]
    fn statement_result(
        &mut self,
        key: Key,
        conn: &mut ConnState,
        ts: u64,
        status: i32,
        ntuples: i32,
        cmd_status: std::sync::Arc<str>,
        sqlstate: Option<String>,
        out: &mut Vec<ClientSpan>,
    ) {
        let error = matches!(status, PGRES_FATAL_ERROR | PGRES_BAD_RESPONSE);
        // Its query: the first one without its final result.
        let target = conn.queue.iter().position(|q| q.answered_at.is_none());
        let target_seq = target.map(|i| conn.queue[i].seq);
        match conn.syncs.front().copied() {
            // Every query sent before the next sync has had its final result.
            Some(m) if target_seq.is_none_or(|t| t >= m) => {
                // The sync's commit failed: the error belongs to the last statement before it.
                if let Some(i) = conn.queue.iter().rposition(|q| q.seq < m).filter(|_| error) {
                    apply(
                        &mut conn.queue[i].span,
                        status,
                        ntuples,
                        cmd_status,
                        sqlstate,
                    );
                    return;
                }
                // A result for a query sent after that sync, before the
                // sync's own: the sync was never sent (its call failed).
                if let Some(t) = target_seq {
                    while conn.syncs.front().is_some_and(|&m| m <= t) {
                        conn.syncs.pop_front();
                    }
                }
            }
            // No sync seen, every query answered: a late error (the agent attached inside the pipeline).
            None if target.is_none() && error => {
                if let Some(q) = conn.queue.back_mut() {
                    apply(&mut q.span, status, ntuples, cmd_status, sqlstate);
                    return;
                }
            }
            _ => {}
        }
        let Some(i) = target else {
            self.counters.unmatched_results += 1;
            return;
        };
        // The queries before it had all their results, or this one's would not have come.
        for _ in 0..i {
            let q = conn.queue.pop_front().expect("counted");
            let ts = q.answered_at.expect("answered");
            self.completed(key, q, ts, &conn.info.clone(), out);
        }
        let q = conn.queue.front_mut().expect("target");
        apply(&mut q.span, status, ntuples, cmd_status, sqlstate);
        if !ends_statement(status) {
            return;
        }
        q.answered_at = Some(ts);
        // Followed by another query, not a sync: nothing more can come for it.
        let seq = q.seq;
        if conn.queue.len() > 1 && conn.syncs.front() != Some(&(seq + 1)) {
            let q = conn.queue.pop_front().expect("front");
            self.completed(key, q, ts, &conn.info.clone(), out);
        }
    }

    /// Ends the queries sent before the sync point `upto` (their results are
    /// in: the sync's has come); one never answered lost its results.
    fn complete_before(
        &mut self,
        key: Key,
        conn: &mut ConnState,
        upto: u64,
        ts: u64,
        out: &mut Vec<ClientSpan>,
    ) {
        while conn.queue.front().is_some_and(|q| q.seq < upto) {
            let q = conn.queue.pop_front().expect("front");
            match q.answered_at {
                Some(at) => self.completed(key, q, at, &conn.info.clone(), out),
                None => self.cut(key, q, ts, End::Superseded, out),
            }
        }
    }
}

/// A query sent in a pipeline: if the server already began it (see
/// `ConnState::server_waiting`), it takes the ids its server span has as
/// parent, provided its block is the one they were chosen in.
pub(super) fn take_reserved(conn: &mut ConnState, ids: &mut Ids) {
    let Some((from, reserved)) = conn.server_waiting else {
        return;
    };
    if conn.sent < from {
        return;
    }
    conn.server_waiting = None;
    conn.server_at = Some(conn.sent);
    let same_block = reserved.parent_span_id == ids.parent_span_id
        && (ids.parent_span_id == 0 || reserved.trace_id == ids.trace_id);
    if same_block {
        (ids.trace_id, ids.span_id) = (reserved.trace_id, reserved.span_id);
    }
}
