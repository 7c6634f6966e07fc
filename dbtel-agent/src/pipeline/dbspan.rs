//! The one span type engines hand to the pipeline: ids, kind, name, times,
//! attributes, status, events and links, plus typed access to the facts
//! later stages (metrics, detectors) read, so they never parse attributes.
//! The exporter turns it into OpenTelemetry's SpanData and knows no engine.

use opentelemetry::{KeyValue, Value};

use super::attr_block::Blocks;
use super::name::Name;
use super::span::{Event, Ids, Link};
use super::typed::{At, Typed};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The application's call to a database (and its transactions).
    Client,
    /// A statement or transaction as the server ran it.
    Server,
    /// Time spent inside the server (a lock wait).
    Internal,
}

/// Name, attributes and error of one span, as an engine describes it: pure,
/// unit-tested.
#[derive(Debug)]
pub struct Described {
    pub name: Name,
    /// The span's own attributes.
    pub attributes: Vec<KeyValue>,
    /// Attributes it shares with other spans (its text's facts, its
    /// connection's description), exported after its own.
    pub blocks: Blocks,
    pub error: Option<String>,
}

/// What a span stands for, as metrics and detectors count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A statement (client call or server statement).
    Query,
    /// A transaction (it carries `db.transaction.outcome`).
    Transaction,
    /// Time spent waiting for a lock inside the server.
    LockWait,
}

#[derive(Debug, Clone)]
pub struct DbSpan {
    /// The traced process whose resource the span is exported with (a
    /// server's spans go with its postmaster).
    pub pid: u32,
    pub ids: Ids,
    pub kind: Kind,
    pub name: Name,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Its own attributes; `blocks` holds those it shares.
    pub attributes: Vec<KeyValue>,
    pub blocks: Blocks,
    /// Status ERROR with this description; None: status unset.
    pub error: Option<String>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    /// A server span whose client's span is traced too (its child): counted
    /// once, by the client's, where both sides would say the same.
    pub mirrored: bool,
    /// The connection it ran on, unique within its process (0: unknown).
    pub conn: u64,
    /// Its text's grouping key (pipeline::group; 0: no text).
    pub group: u64,
    /// A hash of the text as sent, literals included; 0 when its values
    /// were not in the text (parameters, prepared executions).
    pub text_hash: u64,
    /// Where the typed facts are in `attributes` (read through the accessors).
    typed: Typed,
}

/// A statement the span could not see finish (`why`: `connection_closed`,
/// `process_exited`, …): its `error.type` is `dbtel.<why>`; returns the
/// status message.
pub fn cut_short(why: &str, a: &mut Vec<KeyValue>) -> String {
    a.push(KeyValue::new("error.type", format!("dbtel.{why}")));
    format!("query did not complete: {}", why.replace('_', " "))
}

impl DbSpan {
    /// A span from its describer's output; where its typed facts are is
    /// read off the attributes once here.
    pub fn new(
        pid: u32,
        ids: Ids,
        kind: Kind,
        (start_ns, end_ns): (u64, u64),
        d: Described,
        events: Vec<Event>,
        links: Vec<Link>,
    ) -> Self {
        // Blocks first (their positions found once, when each was made): a
        // span's own attribute of the same key wins.
        let mut typed = Typed::default();
        if let Some(b) = &d.blocks.facts {
            typed.overlay(b.typed(), 1);
        }
        if let Some(b) = &d.blocks.conn {
            typed.overlay(b.typed(), 2);
        }
        typed.note_all(0, &d.attributes);
        DbSpan {
            pid,
            ids,
            kind,
            name: d.name,
            start_ns,
            end_ns,
            attributes: d.attributes,
            blocks: d.blocks,
            error: d.error,
            events,
            links,
            mirrored: false,
            conn: 0,
            group: 0,
            text_hash: 0,
            typed,
        }
    }

    /// An empty span, left for a moment where one was taken out of a batch.
    pub fn placeholder() -> Self {
        DbSpan {
            pid: 0,
            ids: Ids::default(),
            kind: Kind::Internal,
            name: Name::default(),
            start_ns: 0,
            end_ns: 0,
            attributes: Vec::new(),
            blocks: Blocks::default(),
            error: None,
            events: Vec::new(),
            links: Vec::new(),
            mirrored: false,
            conn: 0,
            group: 0,
            text_hash: 0,
            typed: Typed::default(),
        }
    }

    /// Where it ran and what text it ran (for detectors).
    pub fn ran(mut self, conn: u64, group: u64, text_hash: u64) -> Self {
        (self.conn, self.group, self.text_hash) = (conn, group, text_hash);
        self
    }

    /// Marks a server span whose client's span is traced too.
    pub fn mirrored(mut self, yes: bool) -> Self {
        self.mirrored = yes;
        self
    }

    pub fn role(&self) -> Role {
        if self.kind == Kind::Internal {
            Role::LockWait
        } else if self.typed.outcome != At::NONE {
            Role::Transaction
        } else {
            Role::Query
        }
    }

    /// The span the application's own call would make: a client span, or a
    /// server span whose client is not traced. Library-named metrics and
    /// detectors count these, so nothing is counted twice.
    pub fn outermost(&self) -> bool {
        match self.kind {
            Kind::Client => true,
            Kind::Server => !self.mirrored,
            Kind::Internal => true,
        }
    }

    fn value(&self, at: At) -> Option<&Value> {
        let (slot, i) = at.get()?;
        let kvs = match slot {
            0 => &self.attributes[..],
            n => self.blocks.slot(n - 1)?.kvs(),
        };
        Some(&kvs.get(i)?.value)
    }

    fn text(&self, at: At) -> Option<&str> {
        match self.value(at)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn int(&self, at: At) -> Option<i64> {
        match self.value(at)? {
            Value::I64(n) => Some(*n),
            _ => None,
        }
    }

    /// db.system.name
    pub fn system(&self) -> Option<&str> {
        self.text(self.typed.system)
    }

    /// db.operation.name
    pub fn operation(&self) -> Option<&str> {
        self.text(self.typed.operation)
    }

    /// db.collection.name
    pub fn collection(&self) -> Option<&str> {
        self.text(self.typed.collection)
    }

    /// error.type
    pub fn error_type(&self) -> Option<&str> {
        self.text(self.typed.error_type)
    }

    /// db.namespace
    pub fn namespace(&self) -> Option<&str> {
        self.text(self.typed.namespace)
    }

    /// db.query.summary
    pub fn summary(&self) -> Option<&str> {
        self.text(self.typed.summary)
    }

    /// db.response.status_code
    pub fn status_code(&self) -> Option<&str> {
        self.text(self.typed.status_code)
    }

    /// server.address
    pub fn server_address(&self) -> Option<&str> {
        self.text(self.typed.server_address)
    }

    /// server.port
    pub fn server_port(&self) -> Option<i64> {
        self.int(self.typed.server_port)
    }

    /// db.transaction.outcome
    pub fn outcome(&self) -> Option<&str> {
        self.text(self.typed.outcome)
    }

    /// db.transaction.retry_count
    pub fn retry_count(&self) -> Option<i64> {
        self.int(self.typed.retry_count)
    }

    /// A lock wait's outcome (granted, deadlock, lock_timeout, …).
    pub fn lock_outcome(&self) -> Option<&str> {
        self.text(self.typed.lock_outcome)
    }

    /// Adds an attribute after construction, keeping typed positions valid
    /// (attributes are only ever appended).
    pub fn push_attribute(&mut self, kv: KeyValue) {
        self.attributes.push(kv);
    }

    /// Its connection's (or session's) block, known only after it was
    /// described: its own attributes of the same keys still win.
    pub fn set_conn_block(&mut self, b: std::sync::Arc<super::attr_block::AttrBlock>) {
        self.typed.underlay(b.typed(), 2);
        self.blocks.conn = Some(b);
    }

    /// Every attribute in the order exported: its own, then its blocks'.
    pub fn exported_attributes(&self) -> Vec<KeyValue> {
        self.attributes
            .iter()
            .chain(self.blocks.kvs())
            .cloned()
            .collect()
    }

    /// The value of `key` as exported: its own last one, else a block's.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        let own = self.attributes.iter().rev();
        own.chain(self.blocks.kvs())
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// db.response.returned_rows
    pub fn rows(&self) -> Option<i64> {
        self.int(self.typed.rows)
    }

    /// db.response.affected_rows
    pub fn affected_rows(&self) -> Option<i64> {
        self.int(self.typed.affected_rows)
    }

    /// Its metric labels are all its blocks' (none its own, no error) but
    /// db.system.name (client spans carry it as their own): a span with
    /// the same blocks and system has the same labels (metrics::recent).
    pub fn labels_in_blocks(&self) -> bool {
        let t = &self.typed;
        let shared = |at: At| at.get().is_none_or(|(slot, _)| slot != 0);
        t.error_type == At::NONE
            && t.status_code == At::NONE
            && [
                t.namespace,
                t.operation,
                t.collection,
                t.summary,
                t.server_address,
                t.server_port,
            ]
            .into_iter()
            .all(shared)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_follow_the_attributes() {
        let d = Described {
            name: "SELECT items".into(),
            attributes: vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.operation.name", "SELECT"),
                KeyValue::new("db.collection.name", "items"),
                KeyValue::new("db.response.returned_rows", 3_i64),
                KeyValue::new("error.type", "42P01"),
            ],
            blocks: Default::default(),
            error: Some("42P01".into()),
        };
        let s = DbSpan::new(
            7,
            Ids::default(),
            Kind::Client,
            (1_000, 4_000),
            d,
            vec![],
            vec![],
        );
        assert_eq!(
            (s.system(), s.operation(), s.collection()),
            (Some("postgresql"), Some("SELECT"), Some("items"))
        );
        assert_eq!((s.rows(), s.affected_rows()), (Some(3), None));
        assert_eq!(s.error_type(), Some("42P01"));
        assert_eq!(s.duration_ns(), 3_000);
    }

    #[test]
    fn typed_fields_read_through_blocks_and_own_attributes_win() {
        use crate::pipeline::attr_block::{AttrBlock, Blocks};
        let facts = AttrBlock::new(vec![
            KeyValue::new("db.operation.name", "SELECT"),
            KeyValue::new("db.collection.name", "items"),
        ]);
        let conn = AttrBlock::new(vec![
            KeyValue::new("db.namespace", "shop"),
            KeyValue::new("server.port", 5432_i64),
        ]);
        let d = Described {
            name: "EXECUTE s1".into(),
            attributes: vec![
                KeyValue::new("db.operation.name", "EXECUTE"),
                KeyValue::new("db.response.affected_rows", 2_i64),
            ],
            blocks: Blocks::new(Some(&facts), Some(&conn)),
            error: None,
        };
        let s = DbSpan::new(1, Ids::default(), Kind::Client, (0, 1), d, vec![], vec![]);
        assert_eq!(s.operation(), Some("EXECUTE"));
        assert_eq!(
            s.attribute("db.operation.name"),
            Some(&Value::from("EXECUTE"))
        );
        assert_eq!(
            (s.collection(), s.namespace()),
            (Some("items"), Some("shop"))
        );
        assert_eq!(
            (s.server_port(), s.affected_rows(), s.rows()),
            (Some(5432), Some(2), None)
        );
        assert_eq!(s.attributes.len() + s.blocks.kvs().count(), 6);
        assert_eq!(s.role(), Role::Query);
    }
}
