//! MySQL client spans checked against the server's general log, connection
//! by connection: the log says which statements each connection sent, in
//! order; each must be one span with that statement's obfuscated text.

use std::collections::BTreeSet;

use crate::{expected_mysql_text, GeneralLog, Span};

/// The general-log commands that are a statement a client sent (and so a span).
pub const STATEMENT_COMMANDS: [&str; 3] = ["Query", "Prepare", "Execute"];

/// The statements `connection` sent, in order.
pub fn logged_statements(log: &[GeneralLog], connection: u64) -> Vec<GeneralLog> {
    log.iter()
        .filter(|e| e.connection == connection && STATEMENT_COMMANDS.contains(&e.command.as_str()))
        .cloned()
        .collect()
}

/// Connection ids that connected after `after` (exclusive), in order.
pub fn connections_after(log: &[GeneralLog], after: u64) -> Vec<u64> {
    let agent = catalog_connections(log);
    log.iter()
        .filter(|e| {
            e.command == "Connect" && e.connection > after && !agent.contains(&e.connection)
        })
        .map(|e| e.connection)
        .collect()
}

/// What every dbtel catalog statement starts with.
pub const CATALOG_MARKER: &str = "/* dbtel catalog */";

/// The agent's own catalog sessions (a traced server's log shows them; they make no span).
pub fn catalog_connections(log: &[GeneralLog]) -> BTreeSet<u64> {
    log.iter()
        .filter(|e| e.command == "Query" && e.text.starts_with(CATALOG_MARKER))
        .map(|e| e.connection)
        .collect()
}

/// The highest connection id in the log (0 if none).
pub fn last_connection(log: &[GeneralLog]) -> u64 {
    log.iter().map(|e| e.connection).max().unwrap_or(0)
}

/// The statement spans (not transactions) of one connection, in start order.
pub fn statement_spans(spans: &[Span], connection: u64) -> Vec<&Span> {
    let mut out: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name != "transaction" && s.int("db.mysql.connection_id") == Some(connection as i64)
        })
        .collect();
    out.sort_by_key(|s| s.start_ns);
    out
}

/// Connection ids found on statement spans.
pub fn span_connections(spans: &[Span]) -> BTreeSet<u64> {
    spans
        .iter()
        .filter(|s| s.name != "transaction")
        .filter_map(|s| s.int("db.mysql.connection_id"))
        .map(|c| c as u64)
        .collect()
}

/// One line per span, for failure messages.
pub fn dump(spans: &[&Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{:>14} {} {:?} {:?} conn={:?} err={:?} parent={}{}",
                s.start_ns,
                s.name,
                s.text(),
                s.str("code.function.name"),
                s.int("db.mysql.connection_id"),
                s.str("db.response.status_code"),
                hex(&s.parent_span_id),
                s.str("db.transaction.outcome")
                    .map(|o| format!(
                        " outcome={o} retry={:?}",
                        s.int("db.transaction.retry_count")
                    ))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Pairs `connection`'s statement spans with its logged statements, asserting
/// one span per statement, in order, each with the logged text obfuscated
/// (an execution's log entry has its parameters inlined: obfuscated, it is
/// the prepared text again), the connection id, kind CLIENT, and the
/// operation and function its command implies. `query_function`: the
/// function expected for `Query` entries (mysql_real_query for most clients).
pub fn pair_with_log<'a>(
    spans: &[&'a Span],
    log: &[GeneralLog],
    connection: u64,
    query_function: &dyn Fn(&GeneralLog) -> &'static str,
) -> Vec<(&'a Span, GeneralLog)> {
    let logged = logged_statements(log, connection);
    let got: Vec<&str> = spans.iter().map(|s| s.text()).collect();
    let want: Vec<String> = logged
        .iter()
        .map(|e| expected_mysql_text(&e.text))
        .collect();
    assert_eq!(
        got,
        want,
        "connection {connection}: one span per logged statement, in order\n{}",
        dump(spans)
    );
    for (s, e) in spans.iter().zip(&logged) {
        let what = format!("connection {connection}: {} {:?}", e.command, e.text);
        assert_eq!(s.kind, 3, "{what}: CLIENT");
        assert_eq!(
            s.int("db.mysql.connection_id"),
            Some(connection as i64),
            "{what}"
        );
        assert_eq!(s.str("db.system.name"), Some("mariadb"), "{what}");
        let function = match e.command.as_str() {
            "Prepare" => "mysql_stmt_prepare",
            "Execute" => "mysql_stmt_execute",
            _ => query_function(e),
        };
        assert_eq!(s.str("code.function.name"), Some(function), "{what}");
        if e.command == "Prepare" {
            assert_eq!(s.str("db.operation.name"), Some("PREPARE"), "{what}");
            assert!(s.name.starts_with("PREPARE"), "{what}: span {:?}", s.name);
        }
        assert_eq!(
            s.str("db.query.summary"),
            Some(s.name.as_str()),
            "{what}: the span is named by its summary"
        );
        assert!(
            s.start_ns < s.end_ns,
            "{what}: {} .. {}",
            s.start_ns,
            s.end_ns
        );
        assert!(
            s.int("process.pid").is_some() && s.int("thread.id").is_some(),
            "{what}"
        );
    }
    spans.iter().copied().zip(logged).collect()
}

/// The first word of a statement, upper-cased: its db.operation.name.
pub fn first_word(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// OTLP SpanKind SERVER.
pub const SERVER: i32 = 2;

/// True for a server span standing for a statement (not a transaction, not a lock wait).
pub fn is_server_statement(s: &Span) -> bool {
    s.kind == SERVER && s.name != "transaction" && !s.name.starts_with("lock wait")
}

/// The server's statement spans of one connection, in the order they ended
/// (the order the server ran them: a start is only as fine as a microsecond).
pub fn server_statement_spans(spans: &[Span], connection: u64) -> Vec<&Span> {
    let mut out: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            is_server_statement(s) && s.int("db.mysql.connection_id") == Some(connection as i64)
        })
        .collect();
    out.sort_by_key(|s| s.end_ns);
    out
}

/// The server's side of [`pair_with_log`]: one SERVER span per logged
/// statement of `connection`, in order, with the logged text obfuscated, the
/// connection id, and a prepare named as the client names it. `server_pid`:
/// the mariadbd the spans must come from.
pub fn pair_server_with_log<'a>(
    spans: &[&'a Span],
    log: &[GeneralLog],
    connection: u64,
    server_pid: u32,
) -> Vec<(&'a Span, GeneralLog)> {
    let logged = logged_statements(log, connection);
    let got: Vec<&str> = spans.iter().map(|s| s.text()).collect();
    let want: Vec<String> = logged
        .iter()
        .map(|e| expected_mysql_text(&e.text))
        .collect();
    assert_eq!(
        got,
        want,
        "connection {connection}: one server span per logged statement, in order\n{}",
        dump(spans)
    );
    for (s, e) in spans.iter().zip(&logged) {
        let what = format!("connection {connection}: {} {:?}", e.command, e.text);
        assert_eq!(s.kind, SERVER, "{what}: SERVER");
        assert_eq!(
            s.int("db.mysql.connection_id"),
            Some(connection as i64),
            "{what}"
        );
        assert_eq!(s.str("db.system.name"), Some("mariadb"), "{what}");
        assert_eq!(
            s.resource_int("process.pid"),
            Some(i64::from(server_pid)),
            "{what}"
        );
        if e.command == "Prepare" {
            assert_eq!(s.str("db.operation.name"), Some("PREPARE"), "{what}");
            assert!(s.name.starts_with("PREPARE"), "{what}: span {:?}", s.name);
        }
        assert!(
            s.start_ns <= s.end_ns,
            "{what}: {} .. {}",
            s.start_ns,
            s.end_ns
        );
        assert!(s.int("thread.id").is_some(), "{what}");
    }
    spans.iter().copied().zip(logged).collect()
}
