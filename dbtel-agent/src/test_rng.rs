//! A small deterministic generator for randomized unit tests (no crate
//! needed for it; the same seed gives the same sequence on every run).

/// A xorshift generator: `next(n)` in 0..n.
pub fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed;
    move |n| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}
