//! Lock waits held until the statement that waited ends (pure, no clock).
//!
//! thd_wait_begin / thd_wait_end pair on an OS thread: a wait starts and
//! ends on the thread running its statement. But the statement may end on
//! another thread: with pool-of-threads, a commit whose redo write is still
//! pending returns WOULDBLOCK and the command is resumed, end_statement
//! included, by whichever worker is free (measured: 1314 times in 3000
//! contended autocommit UPDATEs, and the wait then landed on another
//! connection's statement). So a wait whose THD the probe names
//! (InnoDB's row and table locks pass it) is kept by its connection id; one
//! without (MDL and thr_lock pass NULL: the current THD) by its thread, for
//! the next statement that ends there.

use super::spans::LockType;
use crate::{events::ServerHit, mysql::conns::Conns};

/// OS threads with waits kept per server.
pub const THREADS_PER_SERVER: usize = 16_384;
/// Connections with waits kept per server.
pub const CONNECTIONS_PER_SERVER: usize = 16_384;
/// Finished waits kept per thread or connection until its statement ends (the oldest go first).
pub const WAITS_PER_THREAD: usize = 64;

/// A finished wait, held until its statement ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub lock: LockType,
    /// The thread that waited.
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A wait begun and not ended.
#[derive(Debug, Clone, Copy)]
struct Open {
    lock: LockType,
    start_ns: u64,
    /// Its THD's connection id (0: the probe did not name the THD).
    connection: u64,
}

#[derive(Debug, Default)]
struct Thread {
    open: Option<Open>,
    /// Finished waits of no known connection.
    done: Vec<Wait>,
}

/// Waits left when tracing stops: (wait, its connection if known, cut short).
pub type Left = (Wait, Option<u64>, bool);

pub struct Waits {
    /// By (server pid, OS thread).
    threads: Conns<Thread>,
    /// By (server pid, connection id).
    conns: Conns<Vec<Wait>>,
    /// Waits let go of to stay within the bounds.
    pub dropped: u64,
}

impl Default for Waits {
    fn default() -> Self {
        Self::new()
    }
}

fn push(list: &mut Vec<Wait>, w: Wait, dropped: &mut u64) {
    if list.len() >= WAITS_PER_THREAD {
        list.remove(0);
        *dropped += 1;
    }
    list.push(w);
}

impl Waits {
    pub fn new() -> Self {
        Waits {
            threads: Conns::new(THREADS_PER_SERVER),
            conns: Conns::new(CONNECTIONS_PER_SERVER),
            dropped: 0,
        }
    }

    /// Waits begun and not ended.
    pub fn in_flight(&self) -> usize {
        self.threads.values().filter(|t| t.open.is_some()).count()
    }

    /// OS threads with waits held for a server.
    pub fn threads_held(&self, pid: u32) -> usize {
        self.threads.held(pid).0
    }

    /// Finished waits held for a thread, and for a connection.
    pub fn held(&self, pid: u32, tid: u32, connection: u64) -> (usize, usize) {
        let on_thread = self
            .threads
            .get((pid, u64::from(tid)))
            .map_or(0, |t| t.done.len());
        (
            on_thread,
            self.conns.get((pid, connection)).map_or(0, Vec::len),
        )
    }

    fn thread(&mut self, pid: u32, tid: u32) -> &mut Thread {
        let key = (pid, u64::from(tid));
        if let Some((_, t)) = self
            .threads
            .touch(key, Thread::default, |t| t.open.is_none())
        {
            self.dropped += (t.done.len() + usize::from(t.open.is_some())) as u64;
        }
        self.threads.get_mut(key).expect("touched")
    }

    /// A finished wait: kept by its connection if known, else by its thread.
    fn finished(&mut self, pid: u32, connection: u64, w: Wait) {
        if connection == 0 {
            let t = self.thread(pid, w.tid);
            let mut dropped = 0;
            push(&mut t.done, w, &mut dropped);
            self.dropped += dropped;
            return;
        }
        let key = (pid, connection);
        if let Some((_, gone)) = self.conns.touch(key, Vec::new, |_| true) {
            self.dropped += gone.len() as u64;
        }
        push(
            self.conns.get_mut(key).expect("touched"),
            w,
            &mut self.dropped,
        );
    }

    /// thd_wait_begin: args THD, type, the THD's connection id. Returns
    /// the lock type and start of a wait that begins (not of the next
    /// chunk of one that goes on).
    pub fn begin(&mut self, hit: &ServerHit) -> Option<(LockType, u64)> {
        let lock = LockType::from_wait_type(hit.args[1])?;
        let (pid, tid, ts) = (hit.at.pid, hit.at.tid, hit.at.ts_ns);
        if let Some(o) = self.thread(pid, tid).open.take() {
            // A begin without its end: the end was lost.
            self.finished(
                pid,
                o.connection,
                Wait {
                    lock: o.lock,
                    tid,
                    start_ns: o.start_ns,
                    end_ns: ts,
                },
            );
        }
        let t = self.thread(pid, tid);
        // MDL waits in 1-second chunks: consecutive ones are one wait.
        let chunk = lock == LockType::Metadata
            && t.done.last().is_some_and(|w| w.lock == LockType::Metadata);
        let start_ns = if chunk {
            t.done.pop().expect("checked").start_ns
        } else {
            ts
        };
        t.open = Some(Open {
            lock,
            start_ns,
            connection: hit.args[2],
        });
        (!chunk).then_some((lock, start_ns))
    }

    /// thd_wait_end: args THD, the THD's connection id.
    pub fn end(&mut self, hit: &ServerHit) {
        let (pid, tid) = (hit.at.pid, hit.at.tid);
        let Some(t) = self.threads.get_mut((pid, u64::from(tid))) else {
            return;
        };
        let Some(o) = t.open.take() else { return };
        let connection = if o.connection != 0 {
            o.connection
        } else {
            hit.args[1]
        };
        self.finished(
            pid,
            connection,
            Wait {
                lock: o.lock,
                tid,
                start_ns: o.start_ns,
                end_ns: hit.at.ts_ns.max(o.start_ns),
            },
        );
    }

    /// The waits of the statement of `connection` ending on `tid` at `ts`:
    /// its connection's, and those of no known connection on that thread
    /// (one still open ends now), in start order.
    pub fn take(&mut self, pid: u32, tid: u32, connection: u64, ts: u64) -> Vec<Wait> {
        let mut waits = self.conns.remove((pid, connection)).unwrap_or_default();
        if let Some(mut t) = self.threads.remove((pid, u64::from(tid))) {
            if let Some(o) = t.open.take() {
                waits.push(Wait {
                    lock: o.lock,
                    tid,
                    start_ns: o.start_ns,
                    end_ns: ts.max(o.start_ns),
                });
            }
            waits.append(&mut t.done);
        }
        waits.sort_by_key(|w| w.start_ns);
        waits
    }

    /// The connection ended: its waits whose statement never ended.
    pub fn forget_connection(&mut self, pid: u32, connection: u64) -> Vec<Wait> {
        self.conns.remove((pid, connection)).unwrap_or_default()
    }

    /// Tracing stops at `ts`: every wait held, those still open cut short.
    pub fn cut(&mut self, pid: u32, ts: u64) -> Vec<Left> {
        let mut left = Vec::new();
        for key in self.conns.keys_of(pid) {
            let waits = self.conns.remove(key).expect("key listed");
            left.extend(waits.into_iter().map(|w| (w, Some(key.1), false)));
        }
        for key in self.threads.keys_of(pid) {
            let t = self.threads.remove(key).expect("key listed");
            left.extend(t.done.into_iter().map(|w| (w, None, false)));
            if let Some(o) = t.open {
                let w = Wait {
                    lock: o.lock,
                    tid: key.1 as u32,
                    start_ns: o.start_ns,
                    end_ns: ts.max(o.start_ns),
                };
                left.push((w, Some(o.connection).filter(|&c| c != 0), true));
            }
        }
        left
    }
}
