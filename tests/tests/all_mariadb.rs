//! `--all` with MariaDB servers: every mariadbd on the host is traced, the
//! ones running when the agent starts and one started after it (the probes
//! sit on the file once; each process running it is a server of its own),
//! and `--port` narrows them to the one listening there. Checked against
//! each server's general log.

use std::{process::Stdio, time::Duration};

use dbtel_tests::{mysql_spans::logged_statements, require_root, Agent, MariaDb, Receiver, Span};

const SERVER: i32 = 2;

/// The server spans exported for `db`'s process, by text.
fn server_texts(spans: &[Span], db: &MariaDb) -> Vec<String> {
    let mut of: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && s.name != "transaction"
                && s.resource_int("process.pid") == Some(db.pid() as i64)
        })
        .collect();
    of.sort_by_key(|s| s.start_ns);
    of.iter().map(|s| s.text().to_string()).collect()
}

/// The statements `db` logged for the CLI sessions that ran `marker`.
fn logged_markers(db: &MariaDb, marker: &str) -> usize {
    let log = db.general_log();
    let conns: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|e| e.text.contains(marker))
        .map(|e| e.connection)
        .collect();
    conns
        .iter()
        .map(|&c| logged_statements(&log, c).len())
        .sum()
}

#[test]
fn every_mariadb_server_is_traced_and_port_chooses_one() {
    require_root();
    let (one, two) = (MariaDb::start(), MariaDb::start());

    // Every server: the two running, and a third started after the agent.
    let rx = Receiver::start();
    let agent = Agent::start(
        &["--all", "--otlp-endpoint", &rx.http_endpoint()],
        Stdio::null(),
    );
    let three = MariaDb::start();
    std::thread::sleep(Duration::from_millis(1500));
    for (db, marker) in [(&one, "one"), (&two, "two"), (&three, "three")] {
        db.cli(&format!("select '{marker}' as server; select 2 * 21"));
    }
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    for (db, marker) in [(&one, "one"), (&two, "two"), (&three, "three")] {
        let texts = server_texts(&spans, db);
        let want = ["select ? as server", "select ? * ?"];
        assert!(
            texts.ends_with(&want.map(String::from)),
            "server {marker}: {texts:?}"
        );
        assert_eq!(logged_markers(db, marker), 2, "server {marker}'s log");
    }

    // --port: only the server listening there.
    let rx = Receiver::start();
    let port = two.port.to_string();
    let agent = Agent::start(
        &[
            "--all",
            "--port",
            &port,
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    for (db, marker) in [(&one, "uno"), (&two, "dos"), (&three, "tres")] {
        db.cli(&format!("select '{marker}' as server"));
    }
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    assert_eq!(server_texts(&spans, &two), ["select ? as server"]);
    assert!(
        server_texts(&spans, &one).is_empty() && server_texts(&spans, &three).is_empty(),
        "{spans:?}"
    );
}
