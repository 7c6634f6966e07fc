//! When a failed OTLP export is tried again, as the Collector's exporters do:
//! retryable failures (connection errors, timeouts, HTTP 429 and 502-504,
//! gRPC UNAVAILABLE and the like) again after an exponential backoff with
//! jitter, or after the delay the collector asked for (Retry-After,
//! RetryInfo), until MAX_ELAPSED.

use std::time::{Duration, Instant};

use crate::export::transport::Transport;

/// The first wait, doubled each try up to MAX_INTERVAL.
pub const INITIAL: Duration = Duration::from_millis(500);
pub const MAX_INTERVAL: Duration = Duration::from_secs(15);
/// A batch is given up this long after its first try (counted as failed).
pub const MAX_ELAPSED: Duration = Duration::from_secs(60);

/// Set when the agent stops: exports still failing are not retried.
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A factor in [0.8, 1.2): exporters of many agents should not retry in step.
pub fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.8 + f64::from(n % 1000) / 2500.0
}

/// The wait before try `attempt + 1`: what the collector asked for
/// (Retry-After), else exponential backoff times `jitter`.
pub fn delay(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    if let Some(d) = retry_after {
        return d.min(MAX_ELAPSED);
    }
    let base = INITIAL
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_INTERVAL);
    base.mul_f64(jitter)
}

/// Why one try failed, and whether and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub why: String,
    pub retryable: bool,
    /// What the collector asked for (Retry-After, RetryInfo).
    pub after: Option<Duration>,
}

impl Failure {
    pub fn retryable(why: impl Into<String>, after: Option<Duration>) -> Self {
        Failure {
            why: why.into(),
            retryable: true,
            after,
        }
    }

    pub fn permanent(why: impl Into<String>) -> Self {
        Failure {
            why: why.into(),
            retryable: false,
            after: None,
        }
    }
}

/// Sends `body`, trying again while the failure is retryable, the agent is
/// not stopping and MAX_ELAPSED is not passed. The error names the
/// collector, the last failure and the number of tries.
pub fn send(transport: &dyn Transport, body: &bytes::Bytes) -> Result<(), String> {
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        let f = match transport.send(body) {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        let delay = delay(attempt, f.after, jitter());
        // Stopping: what fails now is counted, not waited for.
        let stopping = STOPPING.load(std::sync::atomic::Ordering::Relaxed);
        if !f.retryable || stopping || started.elapsed() + delay > MAX_ELAPSED {
            let tries = if attempt == 0 {
                String::new()
            } else {
                format!(" ({} tries)", attempt + 1)
            };
            return Err(format!(
                "OTLP collector at {}: {}{tries}",
                transport.target(),
                f.why
            ));
        }
        log::debug!(
            "OTLP collector at {}: {}; again in {:.1} s",
            transport.target(),
            f.why,
            delay.as_secs_f64()
        );
        std::thread::sleep(delay);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_retry_after_wins() {
        let waits: Vec<u64> = (0..7)
            .map(|a| delay(a, None, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 15000, 15000]);
        assert_eq!(
            delay(0, Some(Duration::from_secs(2)), 1.2),
            Duration::from_secs(2)
        );
        assert_eq!(delay(3, Some(Duration::from_secs(3600)), 1.0), MAX_ELAPSED);
        assert_eq!(delay(1, None, 0.8), Duration::from_millis(800));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.8..1.2).contains(&j), "{j}");
        }
    }
}
