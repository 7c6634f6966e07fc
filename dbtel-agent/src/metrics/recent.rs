//! The series a query span's labels led to, remembered by the span's blocks:
//! the spans of one statement on one connection carry the same blocks, and
//! when every label but the system is the blocks' (DbSpan::labels_in_blocks),
//! the next such span needs its labels neither read, capped nor looked up
//! (their string compares were ~5 % of the agent's CPU per server span at
//! full rate).

use crate::pipeline::{
    attr_block::Blocks,
    dbspan::{DbSpan, Kind},
};

/// Entries (a power of two): the statements and connections a busy server
/// interleaves; a miss costs only the full path.
const SLOTS: usize = 64;

/// Where one kind of span with these blocks records.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Held: while here, no other block can be made at their addresses, so
    /// the same addresses mean the same labels.
    pub blocks: Blocks,
    pub kind: Kind,
    pub outermost: bool,
    /// Its db.system.name (which may be a span's own attribute).
    pub system: Box<str>,
    pub series: Series,
    /// Count slots of its admitted values: namespace, collection, summary,
    /// server address (each limiter counts sightings).
    pub counted: [Option<usize>; 4],
}

/// The series such a span records into.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// Its duration histogram's (client or server).
    pub duration: usize,
    /// db.client.operation.duration's library twin's, when outermost.
    pub query: Option<usize>,
    /// The returned-rows histogram's (client spans that had rows).
    pub rows: Option<usize>,
}

#[derive(Debug)]
pub struct Recent {
    slots: Vec<Option<Entry>>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: vec![None; SLOTS],
        }
    }
}

fn slot(blocks: &Blocks, kind: Kind, outermost: bool) -> usize {
    let [facts, conn] = blocks.addresses();
    let key = (facts ^ conn.rotate_left(32) ^ (kind as usize) << 1 ^ usize::from(outermost)) as u64;
    // Fibonacci hashing: the top bits of the product depend on every bit.
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl Recent {
    /// The entry for a span like this one (same blocks, kind and
    /// outermost), if it has every series the span records into.
    pub fn get(&self, span: &DbSpan) -> Option<&Entry> {
        let e = self.slots[slot(&span.blocks, span.kind, span.outermost())].as_ref()?;
        let rows_known =
            span.kind != Kind::Client || span.rows().is_none() || e.series.rows.is_some();
        (e.kind == span.kind
            && e.outermost == span.outermost()
            && rows_known
            && e.blocks.same(&span.blocks)
            && *e.system == *span.system().unwrap_or(""))
        .then_some(e)
    }

    pub fn put(&mut self, e: Entry) {
        let at = slot(&e.blocks, e.kind, e.outermost);
        self.slots[at] = Some(e);
    }
}
