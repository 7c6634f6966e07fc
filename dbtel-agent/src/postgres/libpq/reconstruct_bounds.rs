//! What a traced program cannot grow without bound: connections (a program
//! leaking PGconn handles, never calling PQfinish), prepared statements per
//! connection, queries in flight per connection. Past a bound the oldest go,
//! their queries cut as `connection_evicted`, and every eviction is counted.

use super::*;

/// Connections tracked per process: past it, the least recently used
/// quarter (idle ones first) is forgotten at once (amortized: one scan per
/// CONNECTIONS_PER_PROCESS / 4 new connections).
pub const CONNECTIONS_PER_PROCESS: usize = 4096;
/// Statement names remembered per connection (their texts, for executions).
pub const PREPARED_PER_CONNECTION: usize = 2048;
/// Queries in flight per connection (a pipeline that never reads its results).
pub const QUEUE_PER_CONNECTION: usize = 4096;

impl Reconstructor {
    /// A connection seen for the first time at `ts` (now in `conns`).
    pub(super) fn conn_created(&mut self, key: Key, out: &mut Vec<ClientSpan>, ts: u64) {
        let n = self.per_process.entry(key.0).or_default();
        *n += 1;
        if *n <= CONNECTIONS_PER_PROCESS {
            return;
        }
        let mut theirs: Vec<(bool, u64, Key)> = self
            .conns
            .iter()
            .filter(|(k, _)| k.0 == key.0 && **k != key)
            .map(|(k, c)| (!c.queue.is_empty(), c.last_ns, *k))
            .collect();
        theirs.sort_unstable();
        for (_, _, k) in theirs.into_iter().take(CONNECTIONS_PER_PROCESS / 4) {
            let c = self.conns.remove(&k).expect("listed");
            self.conn_dropped(k);
            self.counters.evicted_connections += 1;
            self.conn_gone(k, c, ts, End::Evicted, out);
        }
    }

    /// A connection is gone from `conns` for good (PQfinish, exit, eviction).
    pub(super) fn conn_dropped(&mut self, key: Key) {
        if let Some(n) = self.per_process.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_process.remove(&key.0);
            }
        }
    }

    /// Remembers a prepared statement's text, forgetting another past the bound.
    pub(super) fn remember_prepared(
        counters: &mut Counters,
        conn: &mut ConnState,
        name: String,
        text: (std::sync::Arc<str>, bool),
    ) {
        if conn.prepared.len() >= PREPARED_PER_CONNECTION && !conn.prepared.contains_key(&name) {
            if let Some(old) = conn.prepared.keys().next().cloned() {
                conn.prepared.remove(&old);
                counters.evicted_statements += 1;
            }
        }
        conn.prepared.insert(name, text);
    }

    /// Past the queue's bound, the oldest query in flight is cut.
    pub(super) fn bound_queue(
        &mut self,
        key: Key,
        conn: &mut ConnState,
        ts: u64,
        out: &mut Vec<ClientSpan>,
    ) {
        while conn.queue.len() > QUEUE_PER_CONNECTION {
            let q = conn.queue.pop_front().expect("non-empty");
            self.counters.evicted_queries += 1;
            self.cut(key, q, ts, End::Evicted, out);
        }
    }
}
