//! The exit sequence: the last records read, every process let go, spans
//! still held exported, and the summary built.

use super::{command::program_name, Agent, Summary};
use crate::export::{Clock, Exporter};

impl Agent {
    /// After the loop: `command` is the `--` command (empty if none),
    /// `child` its PID while it has not exited.
    pub(super) fn finish(
        mut self,
        command: &[String],
        child: Option<u32>,
        probe_stats: bool,
    ) -> (Summary, Exporter) {
        self.probes.stop_following();
        self.drain_all();
        self.continue_descendants();
        let pids: Vec<u32> = self.live.keys().copied().collect();
        self.summary.incomplete += self
            .engines
            .iter()
            .map(|e| e.in_flight() as u64)
            .sum::<u64>();
        for pid in pids {
            self.end_queries(pid, Clock::monotonic_now_ns());
            self.probes.detach_pid(pid);
        }
        self.probes.finish_detaching();
        if let Some(pid) = child {
            // The agent stops without its command: with the loader's hook gone
            // (above), a hold it was put in since the last drain is let go.
            // (Not yet reaped, so the PID is still the command's.)
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
        if let Some(line) = self
            .holds
            .report(&command.first().map_or(String::new(), |c| program_name(c)))
        {
            log::info!("{line}");
        }
        let now = Clock::monotonic_now_ns();
        let postmasters: Vec<u32> = self.server.servers.keys().copied().collect();
        for pm in postmasters {
            self.server.server_gone(pm, now, false);
        }
        self.flush_spans_now(true);
        self.detectors_flush();
        self.refresh_summary();
        self.summary.sampled_out = self.gate.counters.dropped;
        if probe_stats {
            self.summary.program_runs = self.probes.program_runs();
        }
        (self.summary, self.exporter)
    }
}
