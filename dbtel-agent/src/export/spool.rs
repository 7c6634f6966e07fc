//! `--spool-dir`: requests the collector could not take wait on disk, oldest
//! sent first, so an outage of minutes loses nothing. One file per encoded
//! request (`<seq>-<spans>.otlp`, written whole then renamed), a size cap
//! (the oldest go first, counted), a lock so two agents never share a spool,
//! and files left by an earlier run sent at start.

use std::{
    collections::VecDeque,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::export::{retry, transport::Transport, ExportStats};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("--spool-dir {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("--spool-dir {0}: used by another dbtel agent (its lock is held)")]
    Locked(PathBuf),
}

/// The longest wait between two tries of the oldest request while the
/// collector is away: it is back in use within this much of its return.
const PROBE_AT_MOST: Duration = Duration::from_secs(2);

struct Entry {
    seq: u64,
    spans: u64,
    bytes: u64,
    /// Left by an earlier run: not among this run's spans.
    earlier: bool,
}

#[derive(Default)]
struct State {
    files: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
    /// Stop sending (agent stopping and the collector away, or done).
    stop: bool,
    /// The sender is at rest: nothing to send or told to stop.
    idle: bool,
    /// The agent is stopping: the sender stops at the collector's first failure.
    finishing: bool,
}

/// What the spool did, for the exit report.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Spans of an earlier run delivered / dropped for the cap.
    pub earlier_delivered: AtomicU64,
    pub earlier_dropped: AtomicU64,
    /// This run's spans dropped for the cap (also counted as failed).
    pub dropped: AtomicU64,
    /// Spans of an earlier run found at start.
    pub earlier_found: AtomicU64,
}

pub struct Spool {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
    wake: Condvar,
    export: Arc<ExportStats>,
    pub stats: SpoolStats,
    _lock: File,
}

fn name(seq: u64, spans: u64) -> String {
    format!("{seq:016}-{spans}.otlp")
}

fn parse_name(n: &str) -> Option<(u64, u64)> {
    let (seq, spans) = n.strip_suffix(".otlp")?.split_once('-')?;
    Some((seq.parse().ok()?, spans.parse().ok()?))
}

impl Spool {
    /// Opens (creates) the spool, locks it and indexes what an earlier run left.
    pub fn open(dir: &Path, cap: u64, export: Arc<ExportStats>) -> Result<Arc<Spool>, SpoolError> {
        let io = |e| SpoolError::Io(dir.to_path_buf(), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = File::create(dir.join(".lock")).map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(SpoolError::Locked(dir.to_path_buf()));
        }
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".tmp") {
                // A write cut short by a crash: never complete.
                let _ = std::fs::remove_file(e.path());
            } else if let Some((seq, spans)) = parse_name(&n) {
                let bytes = e.metadata().map_err(io)?.len();
                files.push(Entry {
                    seq,
                    spans,
                    bytes,
                    earlier: true,
                });
            }
        }
        files.sort_by_key(|f| f.seq);
        let state = State {
            bytes: files.iter().map(|f| f.bytes).sum(),
            next_seq: files.last().map_or(0, |f| f.seq + 1),
            files: files.into(),
            ..Default::default()
        };
        let stats = SpoolStats::default();
        stats
            .earlier_found
            .store(state.files.iter().map(|f| f.spans).sum(), Ordering::Relaxed);
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            cap,
            state: Mutex::new(state),
            wake: Condvar::new(),
            export,
            stats,
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while requests wait: new ones queue behind them (the collector
    /// is away, or being caught up with).
    pub fn busy(&self) -> bool {
        !self.state.lock().unwrap().files.is_empty()
    }

    /// Spans and bytes waiting now.
    pub fn waiting(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.files.iter().map(|f| f.spans).sum(), st.bytes)
    }

    /// Keeps a request of `spans` spans for later. Err: it could not be
    /// written (counted as failed by the caller).
    pub fn put(&self, body: &[u8], spans: u64) -> Result<(), String> {
        let len = body.len() as u64;
        if len > self.cap {
            return Err(format!("a request of {len} bytes exceeds the spool's cap"));
        }
        let mut st = self.state.lock().unwrap();
        while st.bytes + len > self.cap {
            let Some(old) = st.files.pop_front() else {
                break;
            };
            self.evict(&mut st, old);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let path = self.dir.join(name(seq, spans));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("spooling to {}: {e}", self.dir.display())
            })?;
        st.files.push_back(Entry {
            seq,
            spans,
            bytes: len,
            earlier: false,
        });
        st.bytes += len;
        self.export.spooled.fetch_add(spans, Ordering::Relaxed);
        self.wake.notify_all();
        Ok(())
    }

    /// The oldest request goes for the cap: its spans are lost, counted.
    fn evict(&self, st: &mut State, old: Entry) {
        st.bytes -= old.bytes;
        let _ = std::fs::remove_file(self.dir.join(name(old.seq, old.spans)));
        if old.earlier {
            self.stats
                .earlier_dropped
                .fetch_add(old.spans, Ordering::Relaxed);
        } else {
            self.export.spooled.fetch_sub(old.spans, Ordering::Relaxed);
            self.export.failed.fetch_add(old.spans, Ordering::Relaxed);
            self.stats.dropped.fetch_add(old.spans, Ordering::Relaxed);
        }
        log::warn!(
            "spool full ({} MiB): the oldest request ({} spans) dropped",
            self.cap >> 20,
            old.spans
        );
    }

    /// Starts the thread that sends what waits, oldest first.
    pub fn start_sender(self: &Arc<Self>, transport: Arc<dyn Transport>) -> JoinHandle<()> {
        let spool = self.clone();
        std::thread::Builder::new()
            .name("dbtel-spool".into())
            .spawn(move || spool.send_loop(&*transport))
            .expect("spawn spool thread")
    }

    fn send_loop(&self, transport: &dyn Transport) {
        let mut attempt = 0u32;
        let mut warned: Option<Instant> = None;
        loop {
            let head = {
                let mut st = self.state.lock().unwrap();
                loop {
                    if st.stop {
                        st.idle = true;
                        self.wake.notify_all();
                        return;
                    }
                    if let Some(f) = st.files.front() {
                        let head = (f.seq, f.spans, f.earlier);
                        st.idle = false;
                        break head;
                    }
                    st.idle = true;
                    self.wake.notify_all();
                    st = self.wake.wait(st).unwrap();
                }
            };
            let (seq, spans, earlier) = head;
            let path = self.dir.join(name(seq, spans));
            let result = match std::fs::read(&path) {
                Ok(body) => transport.send(&Bytes::from(body)),
                Err(e) => Err(retry::Failure::permanent(format!(
                    "reading {}: {e}",
                    path.display()
                ))),
            };
            match result {
                Ok(()) => {
                    attempt = 0;
                    if warned.take().is_some() {
                        log::info!(
                            "OTLP collector at {} is back: sending the spool",
                            transport.target()
                        );
                    }
                    self.done(seq, true);
                }
                Err(f) if f.retryable => {
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        let (n, bytes) = self.waiting();
                        log::warn!(
                            "OTLP collector at {}: {}; {n} spans ({} KiB) wait in {}",
                            transport.target(),
                            f.why,
                            bytes >> 10,
                            self.dir.display()
                        );
                        warned = Some(Instant::now());
                    }
                    let wait = retry::delay(attempt, f.after, retry::jitter()).min(PROBE_AT_MOST);
                    attempt += 1;
                    let st = self.state.lock().unwrap();
                    let (mut st, _) = self
                        .wake
                        .wait_timeout_while(st, wait, |s| !s.stop && !s.finishing)
                        .unwrap();
                    if st.finishing {
                        // Stopping with the collector away: what waits stays for the next run.
                        st.stop = true;
                    }
                }
                Err(f) => {
                    // The collector refuses this request for good: it is dropped, counted.
                    log::warn!(
                        "OTLP collector at {}: {}; a spooled request of {spans} spans dropped",
                        transport.target(),
                        f.why
                    );
                    if !earlier {
                        self.export.failed.fetch_add(spans, Ordering::Relaxed);
                    }
                    self.done(seq, false);
                }
            }
        }
    }

    /// The head request is done with: delivered or refused.
    fn done(&self, seq: u64, delivered: bool) {
        let mut st = self.state.lock().unwrap();
        if st.files.front().is_none_or(|f| f.seq != seq) {
            return; // evicted meanwhile: counted there
        }
        let f = st.files.pop_front().expect("head");
        st.bytes -= f.bytes;
        let _ = std::fs::remove_file(self.dir.join(name(f.seq, f.spans)));
        match (f.earlier, delivered) {
            (true, true) => {
                self.stats
                    .earlier_delivered
                    .fetch_add(f.spans, Ordering::Relaxed);
            }
            (true, false) => {
                self.stats
                    .earlier_dropped
                    .fetch_add(f.spans, Ordering::Relaxed);
            }
            (false, true) => {
                self.export.spooled.fetch_sub(f.spans, Ordering::Relaxed);
                self.export.exported.fetch_add(f.spans, Ordering::Relaxed);
            }
            (false, false) => {
                self.export.spooled.fetch_sub(f.spans, Ordering::Relaxed);
            }
        }
        if st.files.is_empty() {
            self.wake.notify_all();
        }
    }

    /// At exit: sends what waits while the collector takes it, up to
    /// `timeout`; stops at once if it is away. What is left stays on disk.
    pub fn finish(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        st.finishing = true;
        self.wake.notify_all();
        while !(st.idle && (st.files.is_empty() || st.stop)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .wake
                .wait_timeout(st, left.min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
        st.stop = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
