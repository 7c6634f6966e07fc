//! Text helpers of the one-shot reports (`contention`), any engine's.

/// `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn fmt_ms(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0) as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (ms / 60_000.0) as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// Longest query text shown in the text report (JSON has it all).
pub const TEXT_QUERY_MAX: usize = 200;

pub fn clip(q: &str) -> String {
    if q.chars().count() <= TEXT_QUERY_MAX {
        return q.to_string();
    }
    let mut s: String = q.chars().take(TEXT_QUERY_MAX).collect();
    s.push('…');
    s
}
