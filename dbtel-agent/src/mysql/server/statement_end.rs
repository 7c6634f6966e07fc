//! A top-level statement's end: its span, its lock waits' spans, and what
//! it did to the connection's transaction.

use super::*;

impl Tracker {
    /// A top-level statement ended: its span, its waits', and what it did
    /// to the transaction.
    pub(super) fn emit(
        &mut self,
        key: (u32, u64),
        conn: &mut Conn,
        d: Done,
        out: &mut Vec<DbSpan>,
    ) {
        self.counters.statements += 1;
        let facts = d.text.as_deref().map(|t| self.facts.get(t));
        let sql = Sql::new(d.text.as_deref(), d.truncated, facts.clone());
        if facts.is_some() {
            conn.last.clone_from(&facts);
        }
        if d.errno().is_none() {
            let used = match d.command {
                command::INIT_DB => d.text.clone(),
                _ => d.text.as_deref().and_then(sessions::used_database),
            };
            if used.is_some() {
                conn.db = used;
                conn.described = None;
            }
        }
        let what = match d.command {
            command::STMT_PREPARE => What::Prepare,
            command::STMT_FETCH => What::Fetch,
            command::INIT_DB => What::InitDb,
            _ => What::Statement,
        };
        let errno = d.errno();
        let (start_ns, end_ns) = (d.start_ns(), d.ts_ns);
        let runs = matches!(what, What::Statement | What::InitDb);
        let verb = if what == What::Statement {
            sql.verb.clone()
        } else {
            Verb::Other
        };
        let now_in = d.server_status & IN_TRANS != 0;
        let was = conn.in_trans.replace(now_in);
        // BEGIN commits a transaction still open, and opens the next.
        let restarts =
            verb == Verb::Begin && sql.implicit_commit && errno.is_none() && was != Some(false);
        if restarts {
            if let Some(t) = conn.txn.take() {
                self.close_txn(key, t, start_ns, Outcome::Committed, None, out);
            }
        }
        if now_in && (was == Some(false) || restarts) {
            conn.txn = Some(self.open_txn(d.client, start_ns));
        }
        let parent = d.client.or(conn.txn.as_ref().map(|t| t.ids));
        if let Some(t) = conn.txn.as_mut().filter(|_| runs) {
            t.statements += 1;
        }
        let ids = match parent {
            Some(p) => p.child(&mut self.gen),
            None => self.gen.root(),
        };
        let (mut returned_rows, mut affected_rows) = (None, None);
        match (what, d.status) {
            (_, da::ERROR) | (What::Prepare, _) => {}
            (What::Fetch, _) | (_, da::EOF) => returned_rows = Some(d.sent),
            _ if sql.counts_affected => affected_rows = Some(d.affected),
            _ => {}
        }
        let mut events = Vec::with_capacity(2 * d.waits.len() + 1);
        let deadlock = d.deadlock_other.as_ref().map(|o| Event {
            name: "deadlock_detected",
            ts_ns: end_ns,
            attributes: spans::deadlock_attributes(
                (key.1, facts.as_ref().map(|f| f.text.as_str())),
                (o.connection, o.query.as_ref().map(|f| f.text.as_str())),
                o.client,
            ),
        });
        events.extend(deadlock.clone());
        for w in &d.waits {
            for name in ["contention_detected", "lock_contention_detected"] {
                events.push(Event {
                    name,
                    ts_ns: w.start_ns,
                    attributes: vec![],
                });
            }
        }
        let last = d.waits.len().saturating_sub(1);
        for (i, w) in d.waits.iter().enumerate() {
            self.counters.lock_waits += 1;
            let outcome = if i == last {
                WaitOutcome::from_errno(errno)
            } else {
                WaitOutcome::Granted
            };
            let span = WaitSpan {
                ids: ids.child(&mut self.gen),
                pid: key.0,
                tid: w.tid,
                connection_id: Some(key.1),
                start_ns: w.start_ns,
                end_ns: w.end_ns,
                lock: w.lock,
                outcome,
                facts: facts.clone(),
                blocked: self.answers.take((key.0, w.tid, w.start_ns)),
                events: deadlock
                    .iter()
                    .filter(|_| outcome == WaitOutcome::Deadlock)
                    .cloned()
                    .collect(),
            };
            out.push(spans::wait_span(span, self.system));
        }
        let s = StatementSpan {
            ids,
            joined: d.client.is_some(),
            pid: key.0,
            tid: d.tid,
            connection_id: key.1,
            start_ns,
            end_ns,
            what,
            facts,
            truncated: d.truncated,
            errno,
            error_format: errno.and_then(|n| Some(self.formats.get(&key.0)?.get(n)?.to_string())),
            returned_rows,
            affected_rows,
            events,
        };
        out.push(spans::statement_span(s, self.system));
        // The transaction ends with this statement (COMMIT, ROLLBACK, DDL's
        // implicit commit, SET autocommit=1, a deadlock's rollback), or
        // ends and chains (COMMIT AND CHAIN).
        let chains = now_in && matches!(verb, Verb::Commit | Verb::Rollback) && errno.is_none();
        if !now_in || chains {
            if let Some(t) = conn.txn.take() {
                let (outcome, error) = match (errno, &verb) {
                    // DDL committed before it ran, whether it failed or not.
                    (Some(_), _) if sql.implicit_commit && verb != Verb::Begin => {
                        (Outcome::Committed, None)
                    }
                    (Some(n), _) => (Outcome::RolledBack, Some(n)),
                    (None, Verb::Rollback) => (Outcome::RolledBack, None),
                    (None, _) => (Outcome::Committed, None),
                };
                self.close_txn(key, t, end_ns, outcome, error, out);
                if chains {
                    conn.txn = Some(self.open_txn(d.client, end_ns));
                }
            }
        }
    }
}
