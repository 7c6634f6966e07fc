//! The texts server probes report, shared: a backend reports the same few
//! texts again and again (every execution of a prepared statement, a pool's
//! repeated queries), and a copy of each would be an allocation, a copy and
//! a free per statement. Recent texts are kept in a small direct-mapped
//! table: bounded (SLOTS texts of at most the probes' text limit each), no
//! eviction bookkeeping, and a text seen again is a reference count.

use std::{cell::RefCell, hash::BuildHasher, sync::Arc};

/// Texts remembered (a power of two): enough for the statements a busy
/// server interleaves, small enough that the table is a few KiB plus texts.
const SLOTS: usize = 256;

struct Recent {
    hasher: foldhash::fast::RandomState,
    hashes: Box<[u64; SLOTS]>,
    texts: Box<[Option<Arc<str>>; SLOTS]>,
}

thread_local! {
    static RECENT: RefCell<Recent> = RefCell::new(Recent {
        hasher: Default::default(),
        hashes: Box::new([0; SLOTS]),
        texts: Box::new([const { None }; SLOTS]),
    });
}

/// The text in `bytes` (up to its NUL, if any), invalid UTF-8 replaced.
pub fn shared(bytes: &[u8]) -> Arc<str> {
    let bytes = super::until_nul(bytes);
    RECENT.with_borrow_mut(|r| {
        let hash = r.hasher.hash_one(bytes);
        // The high bits: the low ones of foldhash vary less with the input.
        let slot = (hash >> 56) as usize % SLOTS;
        if r.hashes[slot] == hash {
            if let Some(t) = r.texts[slot].as_ref().filter(|t| t.as_bytes() == bytes) {
                return t.clone();
            }
        }
        let text: Arc<str> = Arc::from(&*super::lossy(bytes));
        r.hashes[slot] = hash;
        r.texts[slot] = Some(text.clone());
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_seen_again_is_the_same_allocation() {
        let a = shared(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1\0junk");
        let b = shared(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        assert_eq!(&*a, "SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn different_texts_stay_different() {
        // More texts than slots: every one comes back as it was sent,
        // whichever slot it shared.
        let texts: Vec<String> = (0..4 * SLOTS).map(|i| format!("select {i}")).collect();
        for t in &texts {
            assert_eq!(&*shared(t.as_bytes()), t.as_str());
        }
        for t in texts.iter().rev() {
            assert_eq!(&*shared(t.as_bytes()), t.as_str());
        }
        assert_eq!(&*shared(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
        assert_eq!(&*shared(b""), "");
    }
}
