//! A backend's end: what it had open closed (its exit, its server gone,
//! the agent stopping), and a parallel worker's echo of its leader's
//! statement told from a statement of its own.

use super::{text_head, Backend, Cut, ServerQuery, ServerSpan, Tracker, TxnOutcome, WaitOutcome};

impl Tracker {
    /// A backend exited: close what it had open.
    pub fn exited(&mut self, pid: u32, ts: u64, out: &mut Vec<ServerSpan>) {
        self.cut(pid, ts, Cut::ProcessExited, out);
    }

    fn cut(&mut self, pid: u32, ts: u64, why: Cut, out: &mut Vec<ServerSpan>) {
        let Some(mut b) = self.backends.remove(&pid) else {
            return;
        };
        for mut w in b.waits.drain(..) {
            w.end_ns = ts.max(w.start_ns);
            w.outcome = match why {
                Cut::ProcessExited => WaitOutcome::ProcessExited,
                Cut::AgentStopped => WaitOutcome::AgentStopped,
            };
            self.counters.incomplete += 1;
            out.push(ServerSpan::Wait(w));
        }
        let mut txn_end = (TxnOutcome::Incomplete, ts);
        if let Some(mut q) = b.query.take() {
            if std::mem::take(&mut b.completed) {
                // It ran to its end: only its closing report is missing.
                if let Some(outcome) = b.effect.ends {
                    txn_end = (outcome, q.end_ns);
                }
                out.push(ServerSpan::Query(q));
            } else if why == Cut::ProcessExited && self.is_worker_echo(pid, &b, &q) {
                self.counters.worker_echoes += 1;
            } else {
                q.end_ns = ts.max(q.start_ns);
                q.incomplete = Some(why);
                self.counters.incomplete += 1;
                out.push(ServerSpan::Query(q));
            }
        }
        self.backends.insert(pid, b);
        self.close_txn(pid, txn_end.1, txn_end.0, out);
        self.backends.remove(&pid);
    }

    /// Every backend of a postmaster we stop tracing: it exited (`exited`),
    /// or the agent stops while its backends live on.
    pub fn server_gone(
        &mut self,
        postmaster: u32,
        ts: u64,
        exited: bool,
        out: &mut Vec<ServerSpan>,
    ) {
        let pids: Vec<u32> = self
            .backends
            .iter()
            .filter(|(_, b)| b.postmaster == postmaster)
            .map(|(p, _)| *p)
            .collect();
        let why = if exited {
            Cut::ProcessExited
        } else {
            Cut::AgentStopped
        };
        for p in pids {
            self.cut(p, ts, why, out);
        }
    }

    /// A backend exits inside a statement that another backend of its server
    /// was running when it began, and it never opened a block: a parallel
    /// worker (they report their leader's statement and exit without going
    /// idle). Its copy is not a statement of its own.
    fn is_worker_echo(&self, pid: u32, b: &Backend, q: &ServerQuery) -> bool {
        if b.txn.is_some() {
            return false;
        }
        let (len, head) = (q.text.len(), text_head(&q.text));
        // A completed statement not closed yet (its idle report is not sent)
        // counts as ended: only while it ran.
        let running = self.backends.iter().any(|(p, o)| {
            *p != pid
                && o.postmaster == b.postmaster
                && o.query.as_ref().is_some_and(|l| {
                    l.start_ns <= q.start_ns
                        && (!o.completed || q.start_ns <= l.end_ns)
                        && l.text == q.text
                })
        });
        running
            || self.ended.iter().any(|e| {
                e.pid != pid
                    && e.postmaster == b.postmaster
                    && e.len == len
                    && e.head == head
                    && e.start_ns <= q.start_ns
                    && q.start_ns <= e.end_ns
            })
    }
}
