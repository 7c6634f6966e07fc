//! pgbench with a fixed number of transactions in each protocol mode, started
//! by the agent: every statement of every transaction must arrive as a span.

use std::time::Duration;

use dbtel_tests::{require_root, run_agent, AgentRun, Cluster, Receiver, Span};

const CLIENTS: usize = 2;
const TXNS: usize = 25;

/// The built-in tpcb-like script: (span name, returned rows per execution).
const TPCB: &[(&str, i64)] = &[
    ("BEGIN", 0),
    ("UPDATE pgbench_accounts", 0),
    ("SELECT pgbench_accounts", 1),
    ("UPDATE pgbench_tellers", 0),
    ("UPDATE pgbench_branches", 0),
    ("INSERT pgbench_history", 0),
    ("END", 0),
];

/// pgbench under the agent (`agent_args -- pgbench pgbench_args <conn> postgres`).
fn pgbench_under_agent(pg: &Cluster, agent_args: &[&str], pgbench_args: &[&str]) -> AgentRun {
    let pgbench = pg.bin("pgbench").display().to_string();
    let conn = pg.conn_args();
    let mut args: Vec<&str> = agent_args.to_vec();
    args.extend(["--", &pgbench]);
    args.extend(pgbench_args);
    args.extend(conn.iter().map(String::as_str));
    args.push("postgres");
    run_agent(&args, b"", Duration::from_secs(120))
}

fn run_pgbench(mode: &str, grpc: bool) -> (Vec<Span>, String) {
    require_root();
    let pg = Cluster::start();
    pg.pgbench_init(1);
    let rx = Receiver::start();
    let endpoint = if grpc {
        rx.grpc_endpoint()
    } else {
        rx.http_endpoint()
    };
    let protocol = if grpc { "grpc" } else { "http/protobuf" };
    let (c, t) = (CLIENTS.to_string(), TXNS.to_string());
    let run = pgbench_under_agent(
        &pg,
        &["--otlp-protocol", protocol, "--otlp-endpoint", &endpoint],
        &["-n", "-c", &c, "-j", &c, "-t", &t, "-M", mode],
    );
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "number of transactions actually processed: {}/{}",
            CLIENTS * TXNS,
            CLIENTS * TXNS
        )),
        "{}",
        run.stdout
    );
    let summary = run.summary().to_string();
    let spans = rx.spans();
    assert!(
        summary.starts_with(&format!(
            "dbtel: {} spans exported, 0 failed to export, 0 lost in the export queue",
            spans.len()
        )),
        "{summary}"
    );
    assert!(
        summary.contains(
            "0 lost in the ring buffer, 0 undecodable, 0 unmatched results, 0 queries incomplete"
        ),
        "{summary}"
    );
    (spans, summary)
}

fn assert_every_statement(spans: &[Span], mode: &str) {
    for (name, rows) in TPCB {
        let of: Vec<&Span> = spans.iter().filter(|s| s.name == *name).collect();
        assert_eq!(of.len(), CLIENTS * TXNS, "{mode}: spans named {name:?}");
        for s in of {
            assert_eq!(
                s.int("db.response.returned_rows"),
                Some(*rows),
                "{mode}: {name}"
            );
            assert_eq!(s.status_code, 0);
            assert_eq!(s.kind, 3);
            assert_eq!(s.resource_str("service.name"), Some("pgbench"));
        }
    }
    // Statements reach the server with their text: values as literals in
    // simple mode (obfuscated), as parameters otherwise.
    let select = spans
        .iter()
        .find(|s| s.name == "SELECT pgbench_accounts")
        .unwrap();
    let expected = if mode == "simple" {
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
    } else {
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    };
    assert_eq!(select.text(), expected, "{mode}");
    assert_eq!(select.str("db.collection.name"), Some("pgbench_accounts"));
    // Both connections' backends appear, each on its own thread.
    let backends: std::collections::BTreeSet<i64> = spans
        .iter()
        .filter(|s| s.name == "BEGIN")
        .filter_map(|s| s.int("db.postgresql.backend.pid"))
        .collect();
    assert_eq!(backends.len(), CLIENTS, "{mode}: one backend per client");
}

#[test]
fn pgbench_simple_protocol() {
    let (spans, _) = run_pgbench("simple", false);
    assert_every_statement(&spans, "simple");
    assert!(spans
        .iter()
        .filter(|s| s.name.starts_with("BEGIN"))
        .all(|s| s.str("code.function.name") == Some("PQsendQuery")));
}

#[test]
fn pgbench_extended_protocol_over_grpc() {
    let (spans, _) = run_pgbench("extended", true);
    assert_every_statement(&spans, "extended");
    assert!(spans
        .iter()
        .filter(|s| s.name == "BEGIN")
        .all(|s| s.str("code.function.name") == Some("PQsendQueryParams")));
}

#[test]
fn pgbench_prepared_statements_carry_their_sql() {
    let (spans, _) = run_pgbench("prepared", false);
    assert_every_statement(&spans, "prepared");
    let executions: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "UPDATE pgbench_tellers")
        .collect();
    assert!(executions
        .iter()
        .all(|s| s.str("code.function.name") == Some("PQsendQueryPrepared")));
    assert!(executions.iter().all(|s| s
        .str("db.postgresql.statement.name")
        .is_some_and(|n| n.starts_with('P'))));
    // One prepare per statement per connection, with the statement's text.
    let prepares: Vec<&Span> = spans
        .iter()
        .filter(|s| s.str("db.operation.name") == Some("PREPARE"))
        .collect();
    assert_eq!(
        prepares.len(),
        TPCB.len() * CLIENTS,
        "{:?}",
        prepares.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(prepares
        .iter()
        .any(|s| s.name == "PREPARE UPDATE pgbench_tellers"
            && s.text() == "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;"));
    assert!(spans.iter().all(|s| s
        .attrs
        .get("dbtel.statement.prepared_before_attach")
        .is_none()));
}

#[test]
fn statements_prepared_before_attach_say_so() {
    require_root();
    let pg = Cluster::start();
    pg.pgbench_init(1);
    // pgbench prepares its statements at start; the agent attaches later, by PID.
    let mut bench = std::process::Command::new(pg.bin("pgbench"))
        .args(pg.conn_args())
        .args([
            "-n", "-c", "1", "-T", "3", "-R", "50", "-M", "prepared", "postgres",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let pid = bench.id().to_string();
    let agent = dbtel_tests::Agent::start(
        &["--otlp-endpoint", &endpoint, "--pid", &pid],
        std::process::Stdio::null(),
    );
    assert!(bench.wait().unwrap().success());
    let run = agent.wait(Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    assert!(spans.len() >= 7, "{} spans", spans.len());
    for s in &spans {
        assert_eq!(
            s.attrs.get("dbtel.statement.prepared_before_attach"),
            Some(&dbtel_tests::otlp::Value::Bool(true)),
            "{s:?}"
        );
        let name = s
            .str("db.postgresql.statement.name")
            .expect("statement name");
        assert_eq!(s.name, format!("EXECUTE {name}"));
        assert_eq!(s.str("db.operation.name"), Some("EXECUTE"));
        assert_eq!(s.str("db.query.text"), None, "no invented text");
    }
}

/// `--probes-only` (the benchmark's floor): every probe is attached and hit,
/// and nothing is recorded or exported.
#[test]
fn probes_only_hits_every_probe_and_records_nothing() {
    require_root();
    let pg = Cluster::start();
    pg.pgbench_init(1);
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let run = pgbench_under_agent(
        &pg,
        &[
            "--probes-only",
            "--probe-stats",
            "--otlp-endpoint",
            &endpoint,
        ],
        &["-n", "-c", "1", "-t", "50", "-M", "prepared"],
    );
    assert!(run.status.success(), "{run:?}");
    let hits = run
        .stderr
        .lines()
        .find(|l| l.starts_with("dbtel: probe hits:"))
        .expect("probe hits line")
        .to_string();
    let count = |program: &str| -> u64 {
        hits.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{program}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {program} in {hits}"))
    };
    // 50 transactions of 7 statements, each sent once and answered once
    // (plus the 7 prepares and pgbench's own setup queries).
    assert!(count("pq_query") >= 350 + 7, "{hits}");
    assert!(count("pq_result") >= 350 + 7, "{hits}");
    assert!(
        run.summary()
            .starts_with("dbtel: 0 spans exported, 0 failed to export"),
        "{}",
        run.summary()
    );
    // The only events: its exec (held until looked at) and the loader's, at
    // each library load pgbench was held at (the probes on its libpq are
    // placed at the load, probes-only too).
    let held = run
        .stderr
        .lines()
        .find(|l| l.contains("] held "))
        .expect("a held load");
    let loads: u64 = held
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect(held);
    assert!(loads >= 1, "{held}");
    assert!(
        run.summary()
            .contains(&format!("; {} events read", loads + 1)),
        "{}\n{held}",
        run.summary()
    );
    assert!(rx.spans().is_empty());
}

/// `pgbench -C`: a new connection per transaction, each often at the address
/// of the one just closed. Every statement's span names the backend that
/// logged it (the kernel side sends a connection's details once, and must
/// send them again for a new connection at an old address).
#[test]
fn a_connection_per_transaction_each_span_names_its_backend() {
    require_root();
    let pg = Cluster::start_logged();
    pg.pgbench_init(1);
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let run = pgbench_under_agent(
        &pg,
        &["--otlp-endpoint", &endpoint],
        &["-n", "-C", "-S", "-c", "1", "-t", "20"],
    );
    assert!(run.status.success(), "{run:?}");
    let mut selects: Vec<Span> = rx
        .spans()
        .into_iter()
        .filter(|s| s.name == "SELECT pgbench_accounts")
        .collect();
    selects.sort_by_key(|s| s.start_ns);
    let traced: Vec<i64> = selects
        .iter()
        .map(|s| s.int("db.postgresql.backend.pid").expect("backend pid"))
        .collect();
    let logged: Vec<i64> = pg
        .logged_statements()
        .into_iter()
        .filter(|(_, text)| text.starts_with("SELECT abalance FROM pgbench_accounts"))
        .map(|(pid, _)| i64::from(pid))
        .collect();
    assert_eq!(logged.len(), 20);
    assert_eq!(traced, logged);
}
