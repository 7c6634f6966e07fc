//! The loop's periodic work besides the processes: servers gone, the
//! catalog's own sessions kept untraced, ring-buffer losses said.

use std::time::Duration;

use dbtel_common::counter;

use super::Agent;
use crate::export::Clock;

impl Agent {
    /// Servers that went away; the catalog's own sessions kept untraced.
    pub(super) fn servers_housekeeping(&mut self) {
        if self.server.servers.is_empty() {
            return;
        }
        self.server.warn_idle_in_transaction();
        // Drained first: an exit record still in the ring buffer is not lost
        // (nor are the last events of a server found gone below).
        self.drain_written();
        let now = Clock::monotonic_now_ns();
        self.server.sweep_dead(now);
        let probes = &mut self.probes;
        self.server
            .close_quiet(now, &self.recon, &mut |pid| probes.held_completion(pid));
        for pid in self.server.own_backends_on_host() {
            self.probes.untrace_backend(pid);
        }
        let gone: Vec<u32> = self
            .server
            .servers
            .keys()
            .copied()
            .filter(|pm| !crate::host::process::process_exists(*pm))
            .collect();
        for pm in gone {
            self.server.server_gone(pm, Clock::monotonic_now_ns(), true);
            self.flush_spans_now(true);
            self.server.drop_catalog(pm);
            self.probes.untrace_server(pm);
            self.release_held(pm);
            self.exporter.process_gone(pm);
            log::info!("PostgreSQL server {pm} exited");
        }
    }

    /// Ring-buffer losses, said while they happen: one line per 5 s at most,
    /// with the count since the last one (`last`: the counters then).
    pub(super) fn warn_on_new_drops(
        &mut self,
        last: &mut [u64; counter::COUNT as usize],
        warned_at: &mut Option<std::time::Instant>,
    ) {
        if warned_at.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        let now = self.probes.kernel_counters();
        let full = counter::RINGBUF_FULL as usize;
        if now[full] > last[full] {
            log::warn!(
                "ring buffer full: {} more events lost, {} so far (the traced programs write faster than the agent reads)",
                now[full] - last[full],
                now[full]
            );
            *warned_at = Some(std::time::Instant::now());
        }
        *last = now;
    }
}
