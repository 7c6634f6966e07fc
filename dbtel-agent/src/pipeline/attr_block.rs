//! Attributes many spans carry alike: a statement text's facts, a
//! connection's or backend's description. Built once, shared by reference
//! (one count per span instead of one per attribute), and encoded for export
//! once: the encoder splices the bytes it cached here.

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;

use super::typed::Typed;

#[derive(Debug, Default)]
pub struct AttrBlock {
    kvs: Vec<KeyValue>,
    /// Where its typed facts are (slot 0: see DbSpan::new).
    typed: Typed,
    /// The block as the exporter encodes it (one encoder writes blocks).
    encoded: OnceLock<Box<[u8]>>,
}

/// Equal when the attributes are (the cached encoding follows from them).
impl PartialEq for AttrBlock {
    fn eq(&self, other: &Self) -> bool {
        self.kvs == other.kvs
    }
}

impl AttrBlock {
    pub fn new(kvs: Vec<KeyValue>) -> Arc<Self> {
        let mut typed = Typed::default();
        typed.note_all(0, &kvs);
        Arc::new(AttrBlock {
            kvs,
            typed,
            encoded: OnceLock::new(),
        })
    }

    pub fn kvs(&self) -> &[KeyValue] {
        &self.kvs
    }

    pub(crate) fn typed(&self) -> &Typed {
        &self.typed
    }

    /// Appends its encoding to `out`: `encode` writes it the first time,
    /// and it is kept when at most [`KEPT_MAX`] bytes long (a long text's
    /// facts are encoded per span instead: the cache of facts would
    /// otherwise hold each long text once more).
    pub fn encode_into(&self, out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>, &[KeyValue])) {
        if let Some(bytes) = self.encoded.get() {
            out.extend_from_slice(bytes);
            return;
        }
        let start = out.len();
        encode(out, &self.kvs);
        if out.len() - start <= KEPT_MAX {
            let _ = self.encoded.set(out[start..].into());
        }
    }
}

/// Longest encoding a block keeps.
pub const KEPT_MAX: usize = 1024;

/// The blocks a span carries: its text's facts and its connection's (or
/// backend's) description.
#[derive(Debug, Clone, Default)]
pub struct Blocks {
    pub facts: Option<Arc<AttrBlock>>,
    pub conn: Option<Arc<AttrBlock>>,
}

impl Blocks {
    pub fn new(facts: Option<&Arc<AttrBlock>>, conn: Option<&Arc<AttrBlock>>) -> Self {
        Blocks {
            facts: facts.cloned(),
            conn: conn.cloned(),
        }
    }

    /// The very same blocks (not equal ones: the same allocations).
    pub fn same(&self, other: &Blocks) -> bool {
        let same = |a: &Option<Arc<AttrBlock>>, b: &Option<Arc<AttrBlock>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same(&self.facts, &other.facts) && same(&self.conn, &other.conn)
    }

    /// Where they are (0 for a block it lacks).
    pub fn addresses(&self) -> [usize; 2] {
        let at = |b: &Option<Arc<AttrBlock>>| b.as_ref().map_or(0, |b| Arc::as_ptr(b) as usize);
        [at(&self.facts), at(&self.conn)]
    }

    /// In order: facts, then connection.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<AttrBlock>> {
        self.facts.iter().chain(self.conn.iter())
    }

    pub fn kvs(&self) -> impl Iterator<Item = &KeyValue> {
        self.iter().flat_map(|b| b.kvs.iter())
    }

    /// Slot 0 the facts, 1 the connection.
    pub(crate) fn slot(&self, slot: u8) -> Option<&AttrBlock> {
        match slot {
            0 => self.facts.as_deref(),
            _ => self.conn.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_encoded_once_unless_long() {
        let b = AttrBlock::new(vec![KeyValue::new("db.namespace", "shop")]);
        let long = AttrBlock::new(vec![KeyValue::new("db.query.text", "x".repeat(KEPT_MAX))]);
        for (block, want_calls) in [(&b, 1), (&long, 3)] {
            let mut calls = 0;
            for _ in 0..3 {
                let mut out = vec![7];
                block.encode_into(&mut out, |out, kvs| {
                    calls += 1;
                    let v = kvs[0].value.as_str();
                    out.extend_from_slice(kvs[0].key.as_str().as_bytes());
                    out.extend_from_slice(v.as_bytes());
                });
                let key = block.kvs()[0].key.as_str();
                assert_eq!(out[0], 7);
                assert_eq!(&out[1..1 + key.len()], key.as_bytes());
                assert_eq!(
                    out.len(),
                    1 + key.len() + block.kvs()[0].value.as_str().len()
                );
            }
            assert_eq!(calls, want_calls, "{:?}", block.kvs()[0].key);
        }
    }

    #[test]
    fn blocks_list_facts_before_the_connection() {
        let f = AttrBlock::new(vec![KeyValue::new("db.query.text", "SELECT 1")]);
        let c = AttrBlock::new(vec![KeyValue::new("db.namespace", "shop")]);
        let b = Blocks::new(Some(&f), Some(&c));
        let keys: Vec<&str> = b.kvs().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["db.query.text", "db.namespace"]);
        assert_eq!(Blocks::new(None, Some(&c)).kvs().count(), 1);
    }
}
