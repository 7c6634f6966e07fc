//! Kernel timestamps (CLOCK_MONOTONIC, what bpf_ktime_get_ns reads) as wall-clock times.

use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC (what bpf_ktime_get_ns reads) → wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime − monotonic, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    /// Samples both clocks a few times and keeps the tightest bracket.
    pub fn now() -> Self {
        let mut best = (i128::MAX, 0i128);
        for _ in 0..5 {
            let r1 = clock_ns(libc::CLOCK_REALTIME);
            let m = clock_ns(libc::CLOCK_MONOTONIC);
            let r2 = clock_ns(libc::CLOCK_REALTIME);
            if r2 - r1 < best.0 {
                best = (r2 - r1, (r1 + r2) / 2 - m);
            }
        }
        Clock { offset_ns: best.1 }
    }

    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds, as sampled.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn fixed(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    pub fn monotonic_now_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.wall_ns(mono_ns))
    }

    /// Wall-clock nanoseconds since the epoch (what OTLP carries).
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_converts_monotonic_to_wall() {
        let c = Clock::fixed(1_700_000_000_000_000_000);
        assert_eq!(
            c.wall(5)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            1_700_000_000_000_000_005
        );
        let now = Clock::now();
        let wall = now.wall(Clock::monotonic_now_ns());
        let err = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(err < Duration::from_millis(50), "{err:?}");
    }
}
