//! Spent attribute vectors, kept for the next spans: a span's own
//! attributes were a malloc when it was described and a free when it was
//! encoded, and with thousands of spans alive between the two, glibc's
//! per-thread cache had none left (its slow path was ~4 % of the agent's CPU
//! on a traced server at full rate). One thread's: the main loop builds and
//! encodes the spans.

use std::cell::RefCell;

use opentelemetry::KeyValue;

/// Vectors kept at most: spans in flight between two encodes at full rate.
const KEPT: usize = 4096;
/// A vector larger than this goes back to the allocator.
const MAX_CAPACITY: usize = 32;
/// Nor is one smaller than this kept (one built outside the pool): a query
/// span taking it grew it again, a realloc and a copy (3.6 % of the agent's
/// samples on pgbench tpcb-like, when transaction spans built their own).
const MIN_CAPACITY: usize = 16;

thread_local! {
    static SPENT: RefCell<Vec<Vec<KeyValue>>> = const { RefCell::new(Vec::new()) };
}

/// An empty vector with room for at least `n` attributes.
pub fn take(n: usize) -> Vec<KeyValue> {
    let v = SPENT.with(|s| s.borrow_mut().pop());
    match v {
        Some(mut v) => {
            v.reserve(n);
            v
        }
        None => Vec::with_capacity(n.max(MIN_CAPACITY)),
    }
}

/// A span's attributes after it was encoded: emptied and kept (bounded).
pub fn give_back(mut v: Vec<KeyValue>) {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&v.capacity()) {
        return;
    }
    v.clear();
    SPENT.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEPT {
            s.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_given_back_is_taken_again_empty_and_the_pool_is_bounded() {
        let mut v = take(2);
        v.push(KeyValue::new("a", 1));
        let at = v.as_ptr();
        give_back(v);
        let w = take(2);
        assert!(w.is_empty());
        assert_eq!(w.as_ptr(), at);
        // Too small to serve the usual span without growing: not kept.
        give_back(Vec::with_capacity(4));
        assert!(SPENT.with(|s| s.borrow().is_empty()));
        for _ in 0..KEPT + 10 {
            give_back(Vec::with_capacity(MIN_CAPACITY));
        }
        assert_eq!(SPENT.with(|s| s.borrow().len()), KEPT);
        give_back(Vec::with_capacity(MAX_CAPACITY + 1));
        assert_eq!(SPENT.with(|s| s.borrow().len()), KEPT);
        // Whatever is taken then serves a query span's attributes as it is.
        assert!(take(4).capacity() >= MIN_CAPACITY);
    }
}
