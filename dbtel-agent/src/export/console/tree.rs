//! The tree format: spans of all pipelines gathered by trace, each trace
//! printed as a tree once complete. A client's spans and its server's come
//! from different processes, hence different pipelines, at different times:
//! one buffer shared by all of them, and a thread that prints what is due.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::SpanData;

use super::{duration_ms, get, kind_name, pid, push_outcome, value_of};

/// A trace prints once its root is in and none of its spans has come for
/// this long. The root can come first: a client query is exported when it
/// ends, while the server's span of it may be held up to FACTS_DEADLINE for
/// catalog answers (postgres::server::side, pipeline::FACTS_DEADLINE), then wait up to FLUSH_EVERY in its pipeline
/// (batch.rs); the rest is slack for the agent's loop.
pub const QUIET: Duration = crate::pipeline::FACTS_DEADLINE
    .saturating_add(crate::export::batch::FLUSH_EVERY)
    .saturating_add(Duration::from_millis(500));
/// A trace whose root has not come (a transaction still open, or a root lost
/// in a full export queue) is printed as it is after this long without news.
pub const ROOTLESS_QUIET: Duration = Duration::from_secs(30);
/// Spans buffered at most; beyond, the oldest traces are printed as they are.
pub const MAX_BUFFERED: usize = 20_000;
/// How often the printer looks for complete traces.
const TICK: Duration = Duration::from_millis(250);

/// A span and the service that exported it (its pipeline's resource).
#[derive(Debug, Clone)]
pub struct Arrived {
    pub span: SpanData,
    pub service: Arc<str>,
}

/// A trace taken out of the buffer, to print.
#[derive(Debug)]
pub struct Ready {
    pub trace_id: TraceId,
    pub spans: Vec<Arrived>,
    /// Printed before complete (the buffer was full).
    pub evicted: bool,
}

struct Trace {
    spans: Vec<Arrived>,
    has_root: bool,
    last: Instant,
    /// Order of first arrival: evictions and output go oldest first.
    seq: u64,
}

/// Buffered spans by trace. Pure: the caller says what time it is.
pub struct TreeBuffer {
    traces: HashMap<TraceId, Trace>,
    order: BTreeMap<u64, TraceId>,
    seq: u64,
    buffered: usize,
    cap: usize,
}

/// No parent, or one outside dbtel (a remote context): the trace's top.
fn is_root(s: &SpanData) -> bool {
    s.parent_span_id == SpanId::INVALID || s.parent_span_is_remote
}

impl TreeBuffer {
    pub fn new(cap: usize) -> TreeBuffer {
        TreeBuffer {
            traces: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            buffered: 0,
            cap: cap.max(1),
        }
    }

    /// Spans buffered.
    pub fn len(&self) -> usize {
        self.buffered
    }

    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    /// Adds spans; returns the oldest traces pushed out by the cap.
    pub fn push(&mut self, spans: impl IntoIterator<Item = Arrived>, now: Instant) -> Vec<Ready> {
        for a in spans {
            let id = a.span.span_context.trace_id();
            let t = self.traces.entry(id).or_insert_with(|| {
                self.seq += 1;
                self.order.insert(self.seq, id);
                Trace {
                    spans: Vec::new(),
                    has_root: false,
                    last: now,
                    seq: self.seq,
                }
            });
            t.has_root |= is_root(&a.span);
            t.last = now;
            t.spans.push(a);
            self.buffered += 1;
        }
        let mut out = Vec::new();
        while self.buffered > self.cap {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            if let Some(mut r) = self.remove(id) {
                r.evicted = true;
                out.push(r);
            }
        }
        out
    }

    fn remove(&mut self, id: TraceId) -> Option<Ready> {
        let t = self.traces.remove(&id)?;
        self.order.remove(&t.seq);
        self.buffered -= t.spans.len();
        Some(Ready {
            trace_id: id,
            spans: t.spans,
            evicted: false,
        })
    }

    /// Traces complete by `now` (see QUIET, ROOTLESS_QUIET), oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Ready> {
        let due: Vec<TraceId> = self
            .order
            .values()
            .copied()
            .filter(|id| {
                let t = &self.traces[id];
                now.saturating_duration_since(t.last)
                    >= if t.has_root { QUIET } else { ROOTLESS_QUIET }
            })
            .collect();
        due.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Everything, oldest first (exit).
    pub fn take_all(&mut self) -> Vec<Ready> {
        let ids: Vec<TraceId> = self.order.values().copied().collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }
}

/// One trace as text: a header line, then each root and its descendants,
/// children in start order. A span whose parent never came is shown as a
/// root, saying so.
pub fn render(r: &mut Ready) -> String {
    // Earlier first; of two starting together, the longer (the enclosing one).
    r.spans.sort_by(|a, b| {
        a.span
            .start_time
            .cmp(&b.span.start_time)
            .then(b.span.end_time.cmp(&a.span.end_time))
    });
    let spans: &[Arrived] = &r.spans;
    let index: HashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, a)| (a.span.span_context.span_id(), i))
        .collect();
    let mut children = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        match index.get(&a.span.parent_span_id) {
            Some(&p) if !is_root(&a.span) && p != i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let first = spans
        .first()
        .map(|a| a.span.start_time)
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut out = format!(
        "trace {} · {} · {} span{}",
        r.trace_id,
        humantime::format_rfc3339_micros(first),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" }
    );
    if r.evicted {
        out.push_str(" · printed early: buffer full");
    }
    out.push('\n');
    let mut w = Walk {
        spans,
        children: &children,
        seen: vec![false; spans.len()],
        out,
    };
    for &i in &roots {
        w.span(i, "", None);
    }
    // Parent cycles (duplicate span ids) leave spans unreached: shown, not lost.
    for i in 0..spans.len() {
        if !w.seen[i] {
            w.span(i, "", None);
        }
    }
    w.out
}

struct Walk<'a> {
    spans: &'a [Arrived],
    children: &'a [Vec<usize>],
    seen: Vec<bool>,
    out: String,
}

impl Walk<'_> {
    /// `last`: None for a root, else whether it is its parent's last child.
    fn span(&mut self, i: usize, prefix: &str, last: Option<bool>) {
        if std::mem::replace(&mut self.seen[i], true) {
            return;
        }
        let a = &self.spans[i];
        let (glyph, below) = match last {
            None => ("", String::new()),
            Some(true) => ("└─ ", format!("{prefix}   ")),
            Some(false) => ("├─ ", format!("{prefix}│  ")),
        };
        let mut line = span_line(a);
        if last.is_none() && !is_root(&a.span) {
            line.push_str(&format!(
                "  (parent span {} not seen)",
                a.span.parent_span_id
            ));
        }
        self.out.push_str(&format!("{prefix}{glyph}{line}\n"));
        let kids = &self.children[i];
        let bar = if kids.is_empty() { "  " } else { "│ " };
        for l in a.span.links.iter() {
            let how = match value_of(&l.attributes, "dbtel.link.type").as_deref() {
                Some("blocked_by") => "blocked by",
                _ => "linked to",
            };
            let who = value_of(&l.attributes, "db.postgresql.backend.pid")
                .map(|p| format!(" (backend pid={p})"))
                .unwrap_or_default();
            self.out.push_str(&format!(
                "{below}{bar}↳ {how} trace {} span {}{who}\n",
                l.span_context.trace_id(),
                l.span_context.span_id()
            ));
        }
        for (n, &c) in kids.iter().enumerate() {
            self.span(c, &below, Some(n + 1 == kids.len()));
        }
    }
}

/// `NAME  KIND  duration  service pid=…` and the span's key attributes.
pub fn span_line(a: &Arrived) -> String {
    let s = &a.span;
    let mut line = format!(
        "{}  {}  {:.3} ms ",
        s.name,
        kind_name(&s.span_kind),
        duration_ms(s)
    );
    if !a.service.is_empty() {
        line.push_str(&format!(" {}", a.service));
    }
    line.push_str(&format!(" pid={}", pid(s)));
    if let Some(b) = get(s, "db.postgresql.backend.pid").filter(|_| get(s, "process.pid").is_some())
    {
        line.push_str(&format!(" backend={b}"));
    }
    push_outcome(s, &mut line);
    if let opentelemetry::trace::Status::Error { description } = &s.status {
        if get(s, "error.type").as_deref() != Some(description.as_ref()) {
            line.push_str(&format!(" status={description:?}"));
        }
    }
    if let Some(o) = get(s, "db.transaction.outcome") {
        line.push_str(&format!(" outcome={o}"));
        if let Some(n) = get(s, "db.transaction.statement_count") {
            line.push_str(&format!(" statements={n}"));
        }
    }
    let lock = get(s, "db.postgresql.lock.type");
    if let Some(t) = &lock {
        let mode = get(s, "db.postgresql.lock.mode").unwrap_or_default();
        line.push_str(&format!(" lock={t}/{mode}"));
        if let Some(r) = get(s, "db.postgresql.lock.relation") {
            line.push_str(&format!(" relation={r}"));
        }
        if let Some(o) = get(s, "db.postgresql.lock.outcome") {
            line.push_str(&format!(" outcome={o}"));
        }
        if let Some(b) = get(s, "db.postgresql.blocker.pid") {
            line.push_str(&format!("  blocker pid={b}"));
            if let Some(st) = get(s, "db.postgresql.blocker.state") {
                line.push_str(&format!(" ({st})"));
            }
            if let Some(q) = get(s, "db.postgresql.blocker.query") {
                line.push_str(&format!(" {q:?}"));
            }
        }
    }
    let mut events: Vec<&str> = s
        .events
        .iter()
        .map(|e| e.name.as_ref())
        .filter(|n| !n.starts_with("transaction."))
        .collect();
    events.dedup();
    if !events.is_empty() {
        line.push_str(&format!(" events={}", events.join(",")));
    }
    // A lock wait's text is its waiting query's, shown on that query already.
    if let Some(t) = get(s, "db.query.text").filter(|_| lock.is_none()) {
        line.push_str(&format!("  {t:?}"));
    }
    line
}

/// The buffer and the printer thread's stop flag, shared with every pipeline's Console.
pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    buf: TreeBuffer,
    stopping: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tree::Shared")
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A panic while printing leaves the buffer consistent: keep going.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// From an export thread. Traces the cap pushes out are printed at once.
    pub(crate) fn push(&self, batch: Vec<SpanData>, service: &Arc<str>) -> std::io::Result<()> {
        let spans = batch.into_iter().map(|span| Arrived {
            span,
            service: service.clone(),
        });
        let evicted = lock(self).buf.push(spans, Instant::now());
        print(evicted)
    }
}

/// Renders outside the buffer's lock; one write per trace, so traces printed
/// from different threads never interleave.
fn print(ready: Vec<Ready>) -> std::io::Result<()> {
    if ready.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for mut r in ready {
        out.write_all(render(&mut r).as_bytes())?;
    }
    out.flush()
}

/// Owns the printer thread; `finish` (or drop) prints what is left.
pub struct TreePrinter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TreePrinter {
    pub fn start() -> TreePrinter {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: TreeBuffer::new(MAX_BUFFERED),
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dbtel-console".into())
            .spawn(move || {
                let mut st = lock(&sh);
                while !st.stopping {
                    st = sh
                        .wake
                        .wait_timeout(st, TICK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    let due = st.buf.take_due(Instant::now());
                    drop(st);
                    if let Err(e) = print(due) {
                        log::warn!("console: {e}");
                    }
                    st = lock(&sh);
                }
            })
            .expect("spawn console thread");
        TreePrinter {
            shared,
            thread: Some(thread),
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops the thread and prints every trace still buffered, complete or
    /// not. Call after the pipelines have shut down (their spans are in).
    pub fn finish(&mut self) {
        let Some(t) = self.thread.take() else { return };
        lock(&self.shared).stopping = true;
        self.shared.wake.notify_all();
        let _ = t.join();
        let rest = lock(&self.shared).buf.take_all();
        if let Err(e) = print(rest) {
            log::warn!("console: {e}");
        }
    }
}

impl Drop for TreePrinter {
    fn drop(&mut self) {
        self.finish();
    }
}
