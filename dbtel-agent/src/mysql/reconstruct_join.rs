//! The server side's join: what a traced server asks of the client about a
//! connection it knows by its id (CONNECTION_ID()), and that id's index.

use std::sync::Arc;

use super::{Key, Reconstructor};
use crate::pipeline::{span::Ids, sql::QueryFacts};

impl Reconstructor {
    /// The ids of the client query in flight on the connection the server
    /// knows by `connection_id` (its CONNECTION_ID()), if one is: the server
    /// side's spans of that statement become its children.
    pub fn in_flight_on(&self, connection_id: u64) -> Option<Ids> {
        let key = self.by_thread.get(&connection_id)?;
        let conn = self
            .conns
            .get(*key)
            .filter(|c| c.thread_id == connection_id)?;
        conn.op.as_ref().map(|op| op.span.ids)
    }

    /// The text of the client query in flight on that connection.
    pub fn text_on(&self, connection_id: u64) -> Option<Arc<QueryFacts>> {
        let key = self.by_thread.get(&connection_id)?;
        let conn = self
            .conns
            .get(*key)
            .filter(|c| c.thread_id == connection_id)?;
        conn.op.as_ref().and_then(|op| op.sql.facts.clone())
    }

    /// The transaction open on the connection the server knows by `connection_id`.
    pub fn txn_on(&self, connection_id: u64) -> Option<Ids> {
        let key = *self.by_thread.get(&connection_id)?;
        self.conns
            .get(key)
            .filter(|c| c.thread_id == connection_id)?;
        self.txns.current(key)
    }

    /// The ids of the client's prepare of `text` on the connection the
    /// server knows by `connection_id`. The server sends a prepare's reply
    /// before its end_statement, so by then the client may have returned
    /// and sent its next command (one: the server answers nothing more on
    /// the connection until this end): the oldest unanswered of its last
    /// two prepares with that text. Answered, it is let go.
    pub fn prepare_on(&mut self, connection_id: u64, text: Option<&str>) -> Option<Ids> {
        let key = *self.by_thread.get(&connection_id)?;
        let facts = text.map(|t| self.facts.get(t));
        let conn = self
            .conns
            .get_mut(key)
            .filter(|c| c.thread_id == connection_id)?;
        let same = |f: &Option<Arc<QueryFacts>>| {
            f.as_ref().map(|f| &f.text) == facts.as_ref().map(|f| &f.text)
        };
        let i = conn.prepares.iter().position(|(_, f)| same(f))?;
        conn.prepares.drain(..=i).next_back().map(|(ids, _)| ids)
    }

    /// Connection ids indexed (for bound checks).
    pub fn connection_ids_held(&self) -> usize {
        self.by_thread.len()
    }

    /// The connection `key` now has server connection id `id` (it had `old`).
    pub(super) fn index(&mut self, key: Key, old: u64, id: u64) {
        self.unindex(key, old);
        if id != 0 {
            self.by_thread.insert(id, key);
        }
    }

    pub(super) fn unindex(&mut self, key: Key, id: u64) {
        if self.by_thread.get(&id) == Some(&key) {
            self.by_thread.remove(&id);
        }
    }
}
