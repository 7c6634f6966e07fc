//! Where a span's typed facts are among its attributes and blocks: found
//! once per block (when it is made) and once per span for its own.

use opentelemetry::KeyValue;

/// Where a typed fact is: in the span's own attributes (slot 0) or in one
/// of its blocks (1: facts, 2: connection), at an index below 2^14, packed
/// in 16 bits: the span is moved from stage to stage, and these were a third
/// of its size as options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At(u16);

impl At {
    pub(crate) const NONE: At = At(u16::MAX);

    pub(crate) fn new(slot: u8, i: usize) -> At {
        if i < 1 << 14 {
            At(u16::from(slot) << 14 | i as u16)
        } else {
            At::NONE
        }
    }

    pub(crate) fn get(self) -> Option<(u8, usize)> {
        (self != At::NONE).then_some(((self.0 >> 14) as u8, usize::from(self.0 & 0x3fff)))
    }
}

impl Default for At {
    fn default() -> Self {
        At::NONE
    }
}

/// Positions of the facts later stages read: no string is cloned (a
/// reference count shared with the export thread cost the export stage
/// ~25 % in the pipeline bench).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Typed {
    pub(crate) system: At,
    pub(crate) operation: At,
    pub(crate) collection: At,
    pub(crate) error_type: At,
    pub(crate) namespace: At,
    pub(crate) summary: At,
    pub(crate) status_code: At,
    pub(crate) server_address: At,
    pub(crate) outcome: At,
    pub(crate) lock_outcome: At,
    pub(crate) server_port: At,
    pub(crate) retry_count: At,
    pub(crate) rows: At,
    pub(crate) affected_rows: At,
}

impl Typed {
    /// Notes where the typed facts among `kvs` are (slot: see [`At`]).
    pub(crate) fn note_all(&mut self, slot: u8, kvs: &[KeyValue]) {
        for (i, kv) in kvs.iter().enumerate() {
            let at = At::new(slot, i);
            match kv.key.as_str() {
                "db.system.name" => self.system = at,
                "db.operation.name" => self.operation = at,
                "db.collection.name" => self.collection = at,
                "error.type" => self.error_type = at,
                "db.namespace" => self.namespace = at,
                "db.query.summary" => self.summary = at,
                "db.response.status_code" => self.status_code = at,
                "server.address" => self.server_address = at,
                "db.transaction.outcome" => self.outcome = at,
                "db.postgresql.lock.outcome" | "db.mysql.lock.outcome" => self.lock_outcome = at,
                "server.port" => self.server_port = at,
                "db.transaction.retry_count" => self.retry_count = at,
                "db.response.returned_rows" => self.rows = at,
                "db.response.affected_rows" => self.affected_rows = at,
                _ => {}
            }
        }
    }

    /// Takes the facts `o` found (in a block, at slot 0) as being in `slot`.
    pub(crate) fn overlay(&mut self, o: &Typed, slot: u8) {
        self.lay(o, slot, false);
    }

    /// [`Typed::overlay`] of a block added after the span's own
    /// attributes were noted: its own (slot 0) still win.
    pub(crate) fn underlay(&mut self, o: &Typed, slot: u8) {
        self.lay(o, slot, true);
    }

    fn lay(&mut self, o: &Typed, slot: u8, own_wins: bool) {
        macro_rules! each {
            ($($f:ident),*) => {$(
                if let Some((_, i)) = o.$f.get() {
                    if !(own_wins && matches!(self.$f.get(), Some((0, _)))) {
                        self.$f = At::new(slot, i);
                    }
                }
            )*};
        }
        each!(
            system,
            operation,
            collection,
            error_type,
            namespace,
            summary,
            status_code,
            server_address,
            outcome,
            lock_outcome,
            server_port,
            retry_count,
            rows,
            affected_rows
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_pack_slot_and_index() {
        assert_eq!(At::new(2, 5).get(), Some((2, 5)));
        assert_eq!(At::new(0, 0).get(), Some((0, 0)));
        assert_eq!(At::new(1, (1 << 14) - 1).get(), Some((1, (1 << 14) - 1)));
        assert_eq!(At::new(0, 1 << 14).get(), None);
        assert_eq!(At::default().get(), None);
    }

    #[test]
    fn an_overlay_moves_positions_to_its_slot_and_keeps_the_rest() {
        let mut block = Typed::default();
        block.note_all(
            0,
            &[
                KeyValue::new("db.query.text", "x"),
                KeyValue::new("db.operation.name", "SELECT"),
            ],
        );
        let mut t = Typed::default();
        t.note_all(0, &[KeyValue::new("db.system.name", "postgresql")]);
        t.overlay(&block, 2);
        assert_eq!(t.operation.get(), Some((2, 1)));
        assert_eq!(t.system.get(), Some((0, 0)));
        assert_eq!(t.collection.get(), None);
    }
}
