//! A psycopg2 application traced by PID, beside an identical untraced one.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, Agent, Cluster, PyProgram, Receiver, Span};

struct App {
    child: Child,
    out: BufReader<ChildStdout>,
    pid: u32,
}

impl App {
    fn start(dsn: &str) -> App {
        let p = PyProgram::start("app.py", dsn);
        App {
            pid: p.pid(),
            child: p.child,
            out: p.out,
        }
    }

    fn go(&mut self) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
    }

    /// Waits for the workload to finish and the process to exit.
    fn finish(mut self) -> Vec<String> {
        let lines: Vec<String> = (&mut self.out).lines().map_while(Result::ok).collect();
        assert!(self.child.wait().unwrap().success());
        lines
    }
}

/// (span name, db.query.text, status code or rows)
const WORKLOAD: &[(&str, &str, Result<i64, &str>)] = &[
    ("BEGIN", "BEGIN", Ok(0)),
    (
        "SELECT items",
        "select id, name from items where id = ?",
        Ok(1),
    ),
    (
        "UPDATE items",
        "update items set name = ? where id = ?",
        Ok(0),
    ),
    ("COMMIT", "COMMIT", Ok(0)),
    ("BEGIN", "BEGIN", Ok(0)),
    (
        "SELECT no_such_table",
        "select * from no_such_table",
        Err("42P01"),
    ),
    ("ROLLBACK", "ROLLBACK", Ok(0)),
    ("BEGIN", "BEGIN", Ok(0)),
    ("SELECT", "select pg_sleep(?)", Ok(1)),
    ("COMMIT", "COMMIT", Ok(0)),
];

/// Transactions in WORKLOAD: committed, rolled back after an error, committed.
const TXNS: usize = 3;

fn assert_workload(mut spans: Vec<Span>, who: &str) {
    spans.sort_by_key(|s| s.start_ns);
    // Transaction spans are asserted in tests/transactions.rs; here, their number.
    let (txns, spans): (Vec<Span>, Vec<Span>) =
        spans.into_iter().partition(|s| s.name == "transaction");
    assert_eq!(txns.len(), TXNS, "{who}");
    let got: Vec<(&str, &str)> = spans.iter().map(|s| (s.name.as_str(), s.text())).collect();
    let want: Vec<(&str, &str)> = WORKLOAD.iter().map(|w| (w.0, w.1)).collect();
    assert_eq!(
        got, want,
        "{who}: every statement, psycopg2's implicit BEGIN included"
    );
    for (s, (_, _, outcome)) in spans.iter().zip(WORKLOAD) {
        assert_eq!(
            s.str("code.function.name"),
            Some("PQexec"),
            "psycopg2 uses PQexec"
        );
        match outcome {
            Ok(rows) => assert_eq!(
                s.int("db.response.returned_rows"),
                Some(*rows),
                "{who}: {}",
                s.name
            ),
            Err(code) => {
                assert_eq!(s.str("db.response.status_code"), Some(*code));
                assert_eq!(s.status_code, 2);
            }
        }
        assert_eq!(
            s.resource_str("process.executable.name")
                .map(|n| n.starts_with("python")),
            Some(true)
        );
    }
    let sleep = &spans[8];
    assert!(
        sleep.duration() >= Duration::from_millis(200),
        "{:?}",
        sleep.duration()
    );
}

#[test]
fn traced_by_pid_untraced_twin_and_exit_of_one_traced_process() {
    require_root();
    let pg = Cluster::start();
    pg.psql(
        "postgres",
        "create table items (id int primary key, name text)",
    );
    pg.psql(
        "postgres",
        "insert into items select g, 'item ' || g from generate_series(1, 5) g",
    );
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();

    // A over the unix socket, B over TCP, C (untraced) the same workload as A.
    let mut a = App::start(&pg.dsn("postgres"));
    let mut b = App::start(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port
    ));
    let mut c = App::start(&pg.dsn("postgres"));
    let (ida, idb, idc) = (a.pid, b.pid, c.pid);
    let (pa, pb) = (ida.to_string(), idb.to_string());
    let mut agent = Agent::start(
        &["--otlp-endpoint", &endpoint, "--pid", &pa, "--pid", &pb],
        Stdio::null(),
    );
    assert!(agent
        .stderr_lines
        .iter()
        .any(|l| l.starts_with("dbtel: tracing") && l.contains(&pa) && l.contains(&pb)));

    a.go();
    c.go();
    assert_eq!(a.finish(), vec!["42P01", "done"]);
    assert_eq!(c.finish(), vec!["42P01", "done"]);
    // A has exited; the agent keeps tracing B.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        agent.running(),
        "the agent survives a traced process exiting"
    );
    b.go();
    assert_eq!(b.finish(), vec!["42P01", "done"]);
    // The last traced process is gone: the agent exits by itself.
    let run = agent.wait(Duration::from_secs(20));
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stderr.contains(&format!("process {pa} exited")),
        "{}",
        run.stderr
    );

    assert_workload(rx.spans_of(ida), "A");
    assert_workload(rx.spans_of(idb), "B");
    assert!(
        rx.spans_of(idc).is_empty(),
        "an untraced process using the same libpq yields nothing"
    );
    assert_eq!(rx.spans().len(), 2 * (WORKLOAD.len() + TXNS));

    let tcp = rx
        .spans_of(idb)
        .into_iter()
        .find(|s| s.name == "BEGIN")
        .unwrap();
    assert_eq!(tcp.str("server.address"), Some("127.0.0.1"));
    assert_eq!(tcp.int("server.port"), Some(pg.port as i64));
    assert_eq!(tcp.str("network.transport"), Some("tcp"));
    assert!(
        run.summary().starts_with(&format!(
            "dbtel: {} spans exported, 0 failed",
            2 * (WORKLOAD.len() + TXNS)
        )),
        "{}",
        run.summary()
    );
}
