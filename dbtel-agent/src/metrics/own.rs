//! The agent's own figures: one snapshot that both the exit summary and the
//! `dbtel_*` metrics are printed from, so they add up exactly.

/// Server-side spans by kind, as the exit summary's `server side:` line says.
pub const SERVER_KINDS: [&str; 7] = [
    "query",
    "lock_wait",
    "deadlock",
    "cut_short",
    "unexecuted",
    "unmatched_completion",
    "worker_echo",
];

pub const EVICTED: [&str; 3] = ["connection", "statement", "query"];

use super::instruments::Kind;

/// CPU time the agent used so far (user and system, all threads).
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) as f64
        + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) as f64 / 1e6
}

/// One of the agent's own metric families, for both writers.
#[derive(Debug)]
pub struct OwnFamily {
    /// OpenTelemetry name; Prometheus's is derived as for the instruments.
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub help: &'static str,
    /// Points: an optional label and the value.
    pub points: Vec<(Option<(&'static str, &'static str)>, f64)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Own {
    /// Every span the engines finished (metrics count all of them).
    pub spans_made: u64,
    /// Not sampled (dropped before export).
    pub spans_sampled_out: u64,
    pub spans_exported: u64,
    /// Failed to export, and spans the exporter could not be set up for.
    pub spans_failed: u64,
    /// Dropped because the export queue was full.
    pub spans_dropped_queue_full: u64,
    /// Handed to the export threads, not yet delivered, failed, dropped or
    /// spooled (at exit: still queued when the exporter gave up). Spans the
    /// main thread is still batching (at most 50 ms' worth) are not counted.
    pub spans_queued: u64,
    /// Waiting in the spool.
    pub spans_spooled: u64,
    pub events_read: u64,
    pub events_ring_buffer_full: u64,
    pub events_undecodable: u64,
    pub results_unmatched: u64,
    pub mysql_returns_unmatched: u64,
    pub queries_incomplete: u64,
    pub evicted: [u64; 3],
    /// In the order of [`SERVER_KINDS`].
    pub server_spans: [u64; 7],
    pub traced_processes: u64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub max_rss_bytes: u64,
    /// With --probe-stats: hits per eBPF program.
    pub probe_hits: Vec<(&'static str, u64)>,
}

impl Own {
    /// Spans lost in the export queue, as the exit summary says it.
    pub fn lost_in_export_queue(&self) -> u64 {
        self.spans_dropped_queue_full + self.spans_queued
    }

    /// The summary's first line.
    pub fn summary_line(&self) -> String {
        format!(
            "dbtel: {} spans exported, {} failed to export, {} lost in the export queue; \
             {} events read, {} lost in the ring buffer, {} undecodable, {} unmatched results, {} queries incomplete",
            self.spans_exported,
            self.spans_failed,
            self.lost_in_export_queue(),
            self.events_read,
            self.events_ring_buffer_full,
            self.events_undecodable,
            self.results_unmatched,
            self.queries_incomplete,
        ) + &if self.spans_sampled_out > 0 {
            format!(
                "; {} spans made, {} dropped by sampling",
                self.spans_made, self.spans_sampled_out
            )
        } else {
            String::new()
        }
    }

    /// The agent's CPU time and memory, read now.
    pub fn read_usage(&mut self) {
        self.cpu_seconds = cpu_seconds();
        // VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork+exec.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        self.rss_bytes = kib("VmRSS:") << 10;
        self.max_rss_bytes = kib("VmHWM:") << 10;
    }
}

fn family(
    name: &'static str,
    kind: Kind,
    unit: &'static str,
    help: &'static str,
    points: Vec<(Option<(&'static str, &'static str)>, f64)>,
) -> OwnFamily {
    OwnFamily {
        name,
        kind,
        unit,
        help,
        points,
    }
}

impl Own {
    /// Every family of the agent's own figures.
    pub fn families(&self) -> Vec<OwnFamily> {
        let n = |v: u64| v as f64;
        let one = |v: u64| vec![(None, v as f64)];
        let by = |label: &'static str, names: &[&'static str], values: &[u64]| {
            names
                .iter()
                .zip(values)
                .map(|(k, v)| (Some((label, *k)), *v as f64))
                .collect::<Vec<_>>()
        };
        let mut f = vec![
            family(
                "dbtel.spans.made",
                Kind::Counter,
                "{span}",
                "Spans the agent built from what it traced (metrics count every one).",
                one(self.spans_made),
            ),
            family(
                "dbtel.spans.exported",
                Kind::Counter,
                "{span}",
                "Spans the collector accepted.",
                one(self.spans_exported),
            ),
            family(
                "dbtel.spans.failed",
                Kind::Counter,
                "{span}",
                "Spans whose export failed.",
                one(self.spans_failed),
            ),
            family(
                "dbtel.spans.dropped",
                Kind::Counter,
                "{span}",
                "Spans dropped before export, by reason.",
                by(
                    "reason",
                    &["sampling", "export_queue_full"],
                    &[self.spans_sampled_out, self.spans_dropped_queue_full],
                ),
            ),
            family(
                "dbtel.export.queue.spans",
                Kind::Gauge,
                "{span}",
                "Spans waiting to be exported.",
                one(self.spans_queued),
            ),
            family(
                "dbtel.spans.spooled",
                Kind::Gauge,
                "{span}",
                "Spans waiting in the spool directory for the collector.",
                one(self.spans_spooled),
            ),
            family(
                "dbtel.events.read",
                Kind::Counter,
                "{event}",
                "Events read from the kernel's ring buffer.",
                one(self.events_read),
            ),
            family(
                "dbtel.events.lost",
                Kind::Counter,
                "{event}",
                "Events lost, by reason.",
                by(
                    "reason",
                    &[
                        "ring_buffer_full",
                        "undecodable",
                        "unmatched_result",
                        "mysql_return_unmatched",
                    ],
                    &[
                        self.events_ring_buffer_full,
                        self.events_undecodable,
                        self.results_unmatched,
                        self.mysql_returns_unmatched,
                    ],
                ),
            ),
            family(
                "dbtel.queries.incomplete",
                Kind::Counter,
                "{query}",
                "Client queries that ended without their result (process exit, agent stop).",
                one(self.queries_incomplete),
            ),
            family(
                "dbtel.client_state.evicted",
                Kind::Counter,
                "{item}",
                "Client state forgotten to stay within its bounds.",
                by("what", &EVICTED, &self.evicted),
            ),
            family(
                "dbtel.server_spans",
                Kind::Counter,
                "{span}",
                "PostgreSQL server-side spans and their irregular endings, by kind.",
                by("kind", &SERVER_KINDS, &self.server_spans),
            ),
            family(
                "dbtel.traced_processes",
                Kind::Gauge,
                "{process}",
                "Processes traced now.",
                one(self.traced_processes),
            ),
            family(
                "dbtel.agent.cpu_seconds",
                Kind::Counter,
                "s",
                "CPU time the agent used (user and system).",
                vec![(None, self.cpu_seconds)],
            ),
            family(
                "dbtel.agent.memory.rss_bytes",
                Kind::Gauge,
                "By",
                "The agent's resident memory.",
                vec![(None, n(self.rss_bytes))],
            ),
            family(
                "dbtel.agent.memory.max_rss_bytes",
                Kind::Gauge,
                "By",
                "The agent's peak resident memory.",
                vec![(None, n(self.max_rss_bytes))],
            ),
        ];
        if !self.probe_hits.is_empty() {
            f.push(family(
                "dbtel.probe_hits",
                Kind::Counter,
                "{hit}",
                "eBPF program runs (with --probe-stats).",
                self.probe_hits
                    .iter()
                    .map(|(p, v)| (Some(("program", *p)), n(*v)))
                    .collect(),
            ));
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_counts_queue_losses_as_drops_plus_stuck() {
        let o = Own {
            spans_exported: 10,
            spans_failed: 2,
            spans_dropped_queue_full: 3,
            spans_queued: 1,
            events_read: 40,
            ..Own::default()
        };
        assert_eq!(
            o.summary_line(),
            "dbtel: 10 spans exported, 2 failed to export, 4 lost in the export queue; \
             40 events read, 0 lost in the ring buffer, 0 undecodable, 0 unmatched results, 0 queries incomplete"
        );
    }

    #[test]
    fn usage_is_read() {
        let mut o = Own::default();
        o.read_usage();
        assert!(o.rss_bytes > 0 && o.max_rss_bytes >= o.rss_bytes);
    }
}
