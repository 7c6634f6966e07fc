//! libpq's pipeline mode, end to end: psycopg 3 (its binary wheel, which
//! bundles libpq 18) traced by PID, and pgbench's \startpipeline scripts.
//! Every statement is a span of its own with its own rows and status,
//! compared with the server's csvlog statement by statement; the server is
//! traced in the same runs.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Stdio},
    time::Duration,
};

use dbtel_tests::{
    drivers, otlp::Value, require_root, run_agent, Agent, AgentRun, Cluster, Receiver, Span,
};

const CLIENT: i32 = 3;
const SERVER: i32 = 2;
const ERROR: i32 = 2;

/// tests/drivers/pipeline.py's 20-statement pipeline: (span name, text),
/// statement `i` being text `i % 4` run with `j = i / 4`.
const PIPELINE: [(&str, &str); 4] = [
    ("SELECT t", "select id from t where id <= $1"),
    ("UPDATE t", "update t set n = n + $1 where id = $2"),
    ("INSERT u", "insert into u (id) values ($1)"),
    ("SELECT t", "select count(*) from t where id > $1"),
];

/// The failing pipeline on the second connection: (text, what the client got).
const FAILING: [(&str, Outcome); 7] = [
    ("select id from t where id = $1", Outcome::Rows(1)),
    (
        "update t set n = n + $1 where id = $2",
        Outcome::Affected(1),
    ),
    ("insert into u (id) values ($1)", Outcome::Affected(1)),
    ("insert into u (id) values ($1)", Outcome::Failed("23505")),
    ("select id from t where id = $1", Outcome::Skipped),
    ("update t set n = n + $1 where id = $2", Outcome::Skipped),
    ("insert into u (id) values ($1)", Outcome::Skipped),
];

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Rows(i64),
    Affected(i64),
    Failed(&'static str),
    Skipped,
}

fn assert_outcome(s: &Span, want: Outcome) {
    let skipped = s.attrs.get("dbtel.query.skipped");
    match want {
        Outcome::Rows(n) => {
            assert_eq!(
                (s.int("db.response.returned_rows"), s.status_code, skipped),
                (Some(n), 0, None),
                "{s:?}"
            );
        }
        Outcome::Affected(n) => {
            assert_eq!(
                (
                    s.int("db.response.affected_rows"),
                    s.int("db.response.returned_rows")
                ),
                (Some(n), Some(0)),
                "{s:?}"
            );
            assert_eq!((s.status_code, skipped), (0, None), "{s:?}");
        }
        Outcome::Failed(code) => {
            assert_eq!(
                (s.status_code, s.status_message.as_str()),
                (ERROR, code),
                "{s:?}"
            );
            assert_eq!(
                (s.str("error.type"), s.str("db.response.status_code")),
                (Some(code), Some(code)),
                "{s:?}"
            );
            assert_eq!(skipped, None);
        }
        Outcome::Skipped => {
            // It did not run: no rows, no error of its own (the failed statement has it).
            assert_eq!(skipped, Some(&Value::Bool(true)), "{s:?}");
            assert_eq!((s.status_code, s.str("error.type")), (0, None), "{s:?}");
            assert_eq!(
                (
                    s.int("db.response.returned_rows"),
                    s.int("db.response.affected_rows")
                ),
                (None, None),
                "{s:?}"
            );
        }
    }
}

/// A program under tests/drivers, started and waiting for its go.
struct Program {
    child: Child,
    out: BufReader<ChildStdout>,
    pid: u32,
    /// Backend PIDs of its connections.
    backends: Vec<u32>,
}

impl Program {
    fn start(name: &str, dsn: &str) -> Program {
        let mut child = drivers::python()
            .arg("-u")
            .arg(drivers::program(name))
            .arg(dsn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let n: Vec<u32> = first
            .split_whitespace()
            .map(|w| w.parse().expect("PID and backend PIDs"))
            .collect();
        let Some((pid, backends)) = n.split_first() else {
            panic!("{name} did not start: {first:?}")
        };
        Program {
            child,
            out,
            pid: *pid,
            backends: backends.to_vec(),
        }
    }

    /// Runs the workload; returns what it printed.
    fn run(&mut self) -> Vec<String> {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        let lines: Vec<String> = (&mut self.out).lines().map_while(Result::ok).collect();
        assert!(self.child.wait().unwrap().success(), "{lines:?}");
        lines
    }
}

/// A cluster with the tables made by `setup`, a program run while the
/// agent traces it and the server by PID (it prints `printed`); the spans
/// and the agent's exit report.
fn traced_run(
    program: &str,
    setup: &str,
    printed: &[&str],
) -> (Cluster, Program, Vec<Span>, AgentRun) {
    require_root();
    let pg = Cluster::start_logged();
    pg.psql("postgres", setup);
    let rx = Receiver::start();
    let mut p = Program::start(program, &pg.dsn("postgres"));
    let (pid, pm) = (p.pid.to_string(), pg.postmaster_pid().to_string());
    let agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &pid,
            "--pid",
            &pm,
        ],
        Stdio::null(),
    );
    let line = agent
        .stderr_lines
        .iter()
        .find(|l| l.starts_with("dbtel: tracing"))
        .unwrap()
        .clone();
    assert!(
        line.contains("psycopg_binary.libs/libpq-") && line.contains(".so.5.18"),
        "psycopg's own libpq 18: {line}"
    );
    assert_eq!(p.run(), printed);
    // The server's spans can wait for the catalog's answers.
    std::thread::sleep(Duration::from_millis(2500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    (pg, p, spans, run)
}

fn psycopg_run() -> (Cluster, Program, Vec<Span>, AgentRun) {
    let tables = "create table t (id int primary key, n int); create table u (id int primary key)";
    traced_run("pipeline.py", tables, &["50", "23505", "done"])
}

/// Spans of one kind on one backend's connection, in the order they began.
fn on_backend(spans: &[Span], kind: i32, backend: u32) -> Vec<Span> {
    let mut v: Vec<Span> = spans
        .iter()
        .filter(|s| s.kind == kind && s.int("db.postgresql.backend.pid") == Some(backend as i64))
        .cloned()
        .collect();
    v.sort_by_key(|s| s.start_ns);
    v
}

#[test]
fn psycopg_executemany_and_pipeline_blocks_give_a_span_per_statement() {
    let (pg, p, spans, run) = psycopg_run();
    let [a, b] = p.backends[..] else { panic!() };
    assert!(
        run.summary().contains(
            "0 lost in the ring buffer, 0 undecodable, 0 unmatched results, 0 queries incomplete"
        ),
        "{}",
        run.summary()
    );
    let client: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    assert!(client
        .iter()
        .all(|s| s.resource_int("process.pid") == Some(p.pid as i64)));
    assert_eq!(
        client.iter().filter(|s| s.name == "transaction").count(),
        0,
        "autocommit"
    );

    // The first connection: executemany (psycopg prepares its statement), then the pipeline block.
    let on_a = on_backend(&spans, CLIENT, a);
    let (prepare, statements) = on_a.split_first().expect("spans on the first connection");
    assert_eq!(
        (prepare.name.as_str(), prepare.str("code.function.name")),
        ("PREPARE INSERT t", Some("PQsendPrepare"))
    );
    assert_eq!(
        (prepare.text(), prepare.str("db.postgresql.statement.name")),
        ("insert into t (id, n) values ($1, $2)", Some("_pg3_0"))
    );
    assert_eq!(
        statements.len(),
        70,
        "50 executemany rows and a 20-statement pipeline: {:?}",
        names(statements)
    );
    let logged: Vec<(u32, String, String)> = pg
        .logged_queries()
        .into_iter()
        .filter(|(pid, _, _)| *pid == a)
        .collect();
    assert_eq!(logged.len(), 70, "{logged:?}");
    for (i, (s, (_, text, detail))) in statements.iter().zip(&logged).enumerate() {
        assert_eq!(s.text(), text, "statement {i}, as the server logged it");
        assert_eq!(
            s.parent_span_id,
            Vec::<u8>::new(),
            "autocommit: each statement is a trace's root"
        );
        if i < 50 {
            assert_eq!(detail, &format!("parameters: $1 = '{}', $2 = '0'", i + 1));
            assert_eq!(
                (s.name.as_str(), s.str("code.function.name")),
                ("INSERT t", Some("PQsendQueryPrepared")),
                "{s:?}"
            );
            assert_eq!(s.str("db.postgresql.statement.name"), Some("_pg3_0"));
            assert_outcome(s, Outcome::Affected(1));
        } else {
            let (k, j) = ((i - 50) % 4, (i - 50) as i64 / 4);
            assert_eq!(
                (s.name.as_str(), s.text()),
                PIPELINE[k],
                "pipeline statement {}",
                i - 50
            );
            assert_eq!(s.str("code.function.name"), Some("PQsendQueryParams"));
            let (param, want) = match k {
                0 => (
                    format!("parameters: $1 = '{}'", j + 1),
                    Outcome::Rows(j + 1),
                ),
                1 => (
                    format!("parameters: $1 = '{j}', $2 = '{}'", j + 1),
                    Outcome::Affected(1),
                ),
                2 => (format!("parameters: $1 = '{j}'"), Outcome::Affected(1)),
                _ => (format!("parameters: $1 = '{j}'"), Outcome::Rows(1)),
            };
            assert_eq!(detail, &param, "statement {i}");
            assert_outcome(s, want);
        }
    }
    let mut ids: Vec<&Vec<u8>> = statements.iter().map(|s| &s.span_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 70, "a span each");
    assert!(
        statements.iter().all(|s| s.status_code != ERROR),
        "none failed"
    );

    // The second connection: the fourth statement fails, the server skips the rest.
    let on_b = on_backend(&spans, CLIENT, b);
    assert_eq!(on_b.len(), FAILING.len(), "{:?}", names(&on_b));
    for (s, (text, want)) in on_b.iter().zip(FAILING) {
        assert_eq!(s.text(), text);
        assert_outcome(s, want);
    }
    let logged: Vec<String> = pg
        .logged_queries()
        .into_iter()
        .filter(|(pid, _, _)| *pid == b)
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(
        logged,
        FAILING[..4]
            .iter()
            .map(|(t, _)| t.to_string())
            .collect::<Vec<_>>(),
        "the server ran four of them"
    );
    let errors: Vec<String> = pg
        .logged_errors()
        .into_iter()
        .filter(|(pid, _)| *pid == b)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(errors, ["23505"]);
    assert_eq!(client.len(), 1 + 70 + 7);
}

/// The server side makes a span of each statement it runs, Sync or not,
/// and calls `Reconstructor::server_began` as each begins: the client may
/// not have read the results before it, so the join is by order.
#[test]
fn server_spans_are_children_of_their_client_statements_in_psycopg_pipelines() {
    let (_pg, p, spans, _run) = psycopg_run();
    let [a, b] = p.backends[..] else { panic!() };
    // The Parse of executemany's prepared statement runs nothing: it is part
    // of the server's first execution, whose span is the first INSERT's child.
    let client: Vec<Span> = on_backend(&spans, CLIENT, a)
        .into_iter()
        .filter(|s| s.str("code.function.name") != Some("PQsendPrepare"))
        .collect();
    let server = on_backend(&spans, SERVER, a);
    assert_eq!(
        server.len(),
        70,
        "client: {:?}\nserver: {:?}",
        names(&client),
        names(&server)
    );
    assert_eq!(server.len(), client.len());
    for (i, (c, s)) in client.iter().zip(&server).enumerate() {
        assert_eq!(
            (s.parent_span_id.as_slice(), s.text()),
            (c.span_id.as_slice(), c.text()),
            "statement {i}"
        );
    }
    // The failing pipeline: the four statements the server ran.
    let client = on_backend(&spans, CLIENT, b);
    let server = on_backend(&spans, SERVER, b);
    assert_eq!(server.len(), 4, "{:?}", names(&server));
    for (c, s) in client.iter().zip(&server) {
        assert_eq!(s.parent_span_id, c.span_id);
    }
    assert_eq!(server[3].str("error.type"), Some("23505"));
}

/// The calls themselves, on psycopg's libpq 18: PQsendPipelineSync, a
/// commit that fails at a sync, a PQexec refused in pipeline mode, and
/// leaving pipeline mode.
#[test]
fn libpq_pipeline_calls_late_commit_errors_and_refused_calls() {
    let table = "create table d (id int, constraint d_id unique (id) deferrable initially deferred); insert into d values (1)";
    let printed = ["2 -", "1 -", "7 23505", "10 -", "2 -", "10 -", "done"];
    let (pg, p, spans, run) = traced_run("libpq_pipeline.py", table, &printed);
    assert!(
        run.summary().contains(
            "0 lost in the ring buffer, 0 undecodable, 0 unmatched results, 0 queries incomplete"
        ),
        "{}",
        run.summary()
    );
    let backend = p.backends[0];
    let client = on_backend(&spans, CLIENT, backend);
    let got: Vec<(&str, Option<&str>)> = client
        .iter()
        .map(|s| (s.text(), s.str("code.function.name")))
        .collect();
    let params = Some("PQsendQueryParams");
    let want = [
        ("select ?", params),
        ("insert into d (id) values (?)", params),
        ("select ?", Some("PQexec")),
        ("select ?", params),
        ("select ?", Some("PQexec")),
    ];
    assert_eq!(got, want);
    assert_outcome(&client[0], Outcome::Rows(1));
    // Its CommandComplete said INSERT 0 1; the commit at the sync failed on it.
    assert_outcome(&client[1], Outcome::Failed("23505"));
    let refused = &client[2];
    assert_eq!(
        (refused.status_code, refused.str("error.type")),
        (ERROR, Some("dbtel.refused")),
        "{refused:?}"
    );
    assert_eq!(refused.status_message, "query did not complete: refused");
    assert_eq!(refused.end_ns, refused.start_ns);
    assert_outcome(&client[3], Outcome::Rows(1));
    assert_outcome(&client[4], Outcome::Rows(1));
    let logged: Vec<String> = pg
        .logged_queries()
        .into_iter()
        .filter(|(pid, _, _)| *pid == backend)
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(
        logged,
        [
            "select 1",
            "insert into d (id) values (1)",
            "select 2",
            "select 3"
        ],
        "the refused call never reached the server"
    );
    let errors: Vec<String> = pg
        .logged_errors()
        .into_iter()
        .filter(|(pid, _)| *pid == backend)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(errors, ["23505"]);
}

fn names(spans: &[impl std::borrow::Borrow<Span>]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} {:?}", s.borrow().name, s.borrow().text()))
        .collect()
}

/// pgbench's tpcb-like transaction inside \startpipeline … \endpipeline.
const SCRIPT: &str = "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
\\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\\endpipeline
";

/// (span name, what each execution gives)
const TPCB: [(&str, Outcome); 7] = [
    ("BEGIN", Outcome::Rows(0)),
    ("UPDATE pgbench_accounts", Outcome::Affected(1)),
    ("SELECT pgbench_accounts", Outcome::Rows(1)),
    ("UPDATE pgbench_tellers", Outcome::Affected(1)),
    ("UPDATE pgbench_branches", Outcome::Affected(1)),
    ("INSERT pgbench_history", Outcome::Affected(1)),
    ("END", Outcome::Rows(0)),
];

const CLIENTS: usize = 2;
const TXNS: usize = 20;

/// pgbench running SCRIPT, traced with its server; the spans, the
/// statements its connections ran (csvlog) and their backends' PIDs.
fn pgbench_run() -> (
    Vec<Span>,
    Vec<(u32, String, String)>,
    std::collections::BTreeSet<u32>,
) {
    require_root();
    let pg = Cluster::start_logged();
    pg.pgbench_init(1);
    let before = pg.logged_queries().len();
    let script = pg.socket_dir().join("pipeline.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let rx = Receiver::start();
    let (endpoint, pm, pgbench) = (
        rx.http_endpoint(),
        pg.postmaster_pid().to_string(),
        pg.bin("pgbench").display().to_string(),
    );
    let (c, t, f) = (
        CLIENTS.to_string(),
        TXNS.to_string(),
        script.display().to_string(),
    );
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--pid",
        &pm,
        "--",
        &pgbench,
        "-n",
        "-c",
        &c,
        "-j",
        &c,
        "-t",
        &t,
        "-M",
        "extended",
        "-f",
        &f,
    ];
    let conn = pg.conn_args();
    args.extend(conn.iter().map(String::as_str));
    args.push("postgres");
    let run = run_agent(&args, b"", Duration::from_secs(120));
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "number of transactions actually processed: {0}/{0}",
            CLIENTS * TXNS
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.summary().contains(
            "0 lost in the ring buffer, 0 undecodable, 0 unmatched results, 0 queries incomplete"
        ),
        "{}",
        run.summary()
    );
    let spans = rx.spans();
    let logged = pg.logged_queries().split_off(before);
    // pgbench's connections (the agent's catalog connection logs its queries too).
    let backends: std::collections::BTreeSet<u32> = spans
        .iter()
        .filter(|s| s.kind == CLIENT)
        .filter_map(|s| s.int("db.postgresql.backend.pid"))
        .map(|p| p as u32)
        .collect();
    assert_eq!(backends.len(), CLIENTS, "{logged:?}");
    let logged = logged
        .into_iter()
        .filter(|(pid, _, _)| backends.contains(pid))
        .collect();
    (spans, logged, backends)
}

#[test]
fn pgbench_startpipeline_gives_a_span_per_statement_executed() {
    let (spans, logged, backends) = pgbench_run();
    let mut executed = 0;
    for backend in backends {
        let client = on_backend(&spans, CLIENT, backend);
        let queries: Vec<&Span> = client.iter().filter(|s| s.name != "transaction").collect();
        let texts: Vec<&str> = logged
            .iter()
            .filter(|(pid, _, _)| *pid == backend)
            .map(|(_, t, _)| t.as_str())
            .collect();
        assert_eq!(
            queries.iter().map(|s| s.text()).collect::<Vec<_>>(),
            texts,
            "backend {backend}: statement by statement"
        );
        executed += texts.len();
        // The script's statements (pgbench's own first queries aside), transaction by transaction.
        let script: Vec<&Span> = queries
            .iter()
            .copied()
            .skip_while(|s| s.name != "BEGIN")
            .collect();
        assert_eq!(
            script.len(),
            TPCB.len() * TXNS,
            "backend {backend}: {:?}",
            names(&script)
        );
        let txns: Vec<&Span> = client.iter().filter(|s| s.name == "transaction").collect();
        assert_eq!(txns.len(), TXNS);
        for (n, (block, txn)) in script.chunks(TPCB.len()).zip(&txns).enumerate() {
            assert_eq!(txn.str("db.transaction.outcome"), Some("committed"));
            assert_eq!(
                txn.int("db.transaction.statement_count"),
                Some(TPCB.len() as i64)
            );
            for (s, (name, want)) in block.iter().zip(TPCB) {
                assert_eq!(s.name, name, "backend {backend}, transaction {n}");
                assert_eq!(s.str("code.function.name"), Some("PQsendQueryParams"));
                assert_eq!(
                    s.parent_span_id, txn.span_id,
                    "backend {backend}, transaction {n}: {name}"
                );
                assert_outcome(s, want);
            }
        }
    }
    let client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.name != "transaction")
        .collect();
    assert_eq!(
        client.len(),
        executed,
        "one client span per statement executed"
    );
    assert!(client.iter().all(|s| s.status_code != ERROR));
}

/// Needs the server side to call `Reconstructor::server_began` as each
/// statement begins (see above): pgbench sends a whole transaction before
/// reading any result.
#[test]
fn server_spans_are_children_of_their_client_statements_in_pgbench_pipelines() {
    let (spans, logged, backends) = pgbench_run();
    for backend in backends {
        let (client, server) = (
            on_backend(&spans, CLIENT, backend),
            on_backend(&spans, SERVER, backend),
        );
        let split = |v: Vec<Span>| -> (Vec<Span>, Vec<Span>) {
            v.into_iter().partition(|s| s.name != "transaction")
        };
        let ((client, client_txns), (server, server_txns)) = (split(client), split(server));
        assert_eq!(
            server.len(),
            logged.iter().filter(|(pid, _, _)| *pid == backend).count(),
            "backend {backend}: {:?}",
            names(&server)
        );
        assert_eq!(server.len(), client.len());
        for (i, (c, s)) in client.iter().zip(&server).enumerate() {
            assert_eq!(
                (s.parent_span_id.as_slice(), s.text()),
                (c.span_id.as_slice(), c.text()),
                "backend {backend}, statement {i}"
            );
        }
        assert_eq!(server_txns.len(), client_txns.len());
        for (c, s) in client_txns.iter().zip(&server_txns) {
            assert_eq!(
                s.parent_span_id, c.span_id,
                "backend {backend}: the server's block under the client's"
            );
        }
    }
}
