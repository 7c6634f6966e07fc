//! The one span type engines hand to the pipeline: ids, kind, name, times,
//! attributes, status, events and links, plus typed copies of the facts
//! later stages (metrics, detectors) read, so they never parse attributes.
//! The exporter turns it into OpenTelemetry's SpanData and knows no engine.

use opentelemetry::{KeyValue, StringValue, Value};

use super::span::{Event, Ids, Link};

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
    pub name: String,
    pub attributes: Vec<KeyValue>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DbSpan {
    /// The traced process whose resource the span is exported with (a
    /// server's spans go with its postmaster).
    pub pid: u32,
    pub ids: Ids,
    pub kind: Kind,
    pub name: String,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<KeyValue>,
    /// Status ERROR with this description; None: status unset.
    pub error: Option<String>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    /// db.system.name
    pub system: Option<StringValue>,
    /// db.operation.name
    pub operation: Option<StringValue>,
    /// db.collection.name
    pub collection: Option<StringValue>,
    /// db.response.returned_rows
    pub rows: Option<i64>,
    /// db.response.affected_rows
    pub affected_rows: Option<i64>,
    /// error.type
    pub error_type: Option<StringValue>,
}

impl DbSpan {
    /// A span from its describer's output; the typed fields are read off the
    /// attributes once here (reference-counted strings: no text is copied).
    pub fn new(pid: u32, ids: Ids, kind: Kind, (start_ns, end_ns): (u64, u64), d: Described, events: Vec<Event>, links: Vec<Link>) -> Self {
        let mut s = DbSpan {
            pid,
            ids,
            kind,
            name: d.name,
            start_ns,
            end_ns,
            attributes: d.attributes,
            error: d.error,
            events,
            links,
            system: None,
            operation: None,
            collection: None,
            rows: None,
            affected_rows: None,
            error_type: None,
        };
        for kv in &s.attributes {
            let text = || match &kv.value {
                Value::String(v) => Some(v.clone()),
                _ => None,
            };
            let int = || match &kv.value {
                Value::I64(n) => Some(*n),
                _ => None,
            };
            match kv.key.as_str() {
                "db.system.name" => s.system = text(),
                "db.operation.name" => s.operation = text(),
                "db.collection.name" => s.collection = text(),
                "db.response.returned_rows" => s.rows = int(),
                "db.response.affected_rows" => s.affected_rows = int(),
                "error.type" => s.error_type = text(),
                _ => {}
            }
        }
        s
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
            error: Some("42P01".into()),
        };
        let s = DbSpan::new(7, Ids::default(), Kind::Client, (1_000, 4_000), d, vec![], vec![]);
        assert_eq!(s.system.as_ref().map(StringValue::as_str), Some("postgresql"));
        assert_eq!(s.operation.as_ref().map(StringValue::as_str), Some("SELECT"));
        assert_eq!(s.collection.as_ref().map(StringValue::as_str), Some("items"));
        assert_eq!((s.rows, s.affected_rows), (Some(3), None));
        assert_eq!(s.error_type.as_ref().map(StringValue::as_str), Some("42P01"));
        assert_eq!(s.duration_ns(), 3_000);
    }
}
