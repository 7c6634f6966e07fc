//! Libraries loaded after start. A Python driver's wheel bundles its own
//! libpq, loaded by `import`; a script that queries right after the import
//! is traced from its first query, run after run: the `--` command is held at
//! each library load until a libpq among the new objects is probed, and the
//! agent names the libpq it loaded, not the system's. And a client without
//! libpq (node-postgres) beside its server: the server's spans, the client's
//! reason in one line.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use dbtel_tests::{drivers, require_root, run_agent, Agent, Cluster, Receiver, Span};

/// Runs in a row per driver: a lost first query shows in a few of them.
const RUNS: usize = 20;
/// Statements per run (tests/drivers/*_burst.*): `select N as qN`.
const QUERIES: usize = 20;

/// The one libpq a driver's wheel bundles (`<site-packages>/<dir>/libpq-*.so*`),
/// as the traced process maps it.
fn bundled_libpq(dir: &str) -> PathBuf {
    let site = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.drivers/venv/lib/python3.11/site-packages")
        .join(dir);
    let found: Vec<PathBuf> = std::fs::read_dir(&site)
        .unwrap_or_else(|e| panic!("{}: {e} (installed by cargo xtask setup)", site.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("libpq-")
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    std::fs::canonicalize(&found[0]).unwrap()
}

fn expected_texts(raw: bool) -> Vec<String> {
    (1..=QUERIES)
        .map(|n| {
            if raw {
                format!("select {n} as q{n}")
            } else {
                format!("select ? as q{n}")
            }
        })
        .collect()
}

/// The server's log of one backend, once it holds `n` statements (the
/// logging collector writes on its own schedule).
fn logged_by(pg: &Cluster, backend: u32, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<String> = pg
            .logged_queries()
            .into_iter()
            .filter(|(p, _, _)| *p == backend)
            .map(|(_, t, _)| t)
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dbtel-agent -- <venv python> tests/drivers/<script> DSN`, RUNS times: every
/// run exactly QUERIES client spans, statement by statement as the server
/// logged them, and the bundled libpq named on stderr.
fn every_query_of_every_run(script: &str, libs_dir: &str) {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let python = drivers::python()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let script = drivers::program(script).display().to_string();
    let libpq = bundled_libpq(libs_dir);
    let system = std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libpq.so.5").unwrap();
    let dsn = pg.dsn("postgres");
    let started = Instant::now();
    let mut lost = Vec::new();
    for run in 1..=RUNS {
        let out = run_agent(
            &[
                "--exporter",
                "otlp",
                "--otlp-endpoint",
                &endpoint,
                "--",
                &python,
                &script,
                &dsn,
            ],
            b"",
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "run {run}: {out:?}");
        let first = out
            .stderr
            .lines()
            .find(|l| l.starts_with("dbtel: tracing pid "))
            .unwrap_or_else(|| panic!("run {run}: {}", out.stderr));
        let pid: u32 = first["dbtel: tracing pid ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // What it loaded is named once, as loaded: the wheel's libpq, never the system's.
        let named: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with(&format!("dbtel: tracing {pid} (")))
            .collect();
        assert_eq!(named.len(), 1, "run {run}: {}", out.stderr);
        assert!(
            named[0].ends_with(&format!(") {}", libpq.display())),
            "run {run}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(&system.display().to_string()),
            "run {run}: the system's libpq is not what it loads: {}",
            out.stderr
        );
        assert!(
            !out.stderr
                .contains("made no call into a database client library"),
            "run {run}: {}",
            out.stderr
        );

        let mut spans: Vec<Span> = rx.spans_of(pid);
        spans.sort_by_key(|s| s.start_ns);
        assert!(
            spans.iter().all(|s| s.kind == 3),
            "run {run}: client spans only: {spans:?}"
        );
        let texts: Vec<&str> = spans.iter().map(|s| s.text()).collect();
        if texts.len() != QUERIES {
            lost.push((run, texts.len()));
            continue;
        }
        assert_eq!(texts, expected_texts(false), "run {run}");
        let backend = spans[0]
            .int("db.postgresql.backend.pid")
            .expect("backend pid") as u32;
        assert!(
            spans
                .iter()
                .all(|s| s.int("db.postgresql.backend.pid") == Some(backend as i64)),
            "run {run}: one connection"
        );
        assert_eq!(
            logged_by(&pg, backend, QUERIES),
            expected_texts(true),
            "run {run}: the server's log of its backend {backend}"
        );
        assert!(
            out.summary()
                .starts_with(&format!("dbtel: {QUERIES} spans exported, 0 failed")),
            "run {run}: {}",
            out.summary()
        );
    }
    assert!(
        lost.is_empty(),
        "(run, spans) of the runs short of {QUERIES} spans: {lost:?}"
    );
    eprintln!(
        "{RUNS} runs of {script} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn psycopg3_binary_wheel_queries_right_after_import_every_run() {
    every_query_of_every_run("psycopg3_burst.py", "psycopg_binary.libs");
}

#[test]
fn psycopg2_binary_queries_right_after_import_every_run() {
    every_query_of_every_run("psycopg2_burst.py", "psycopg2_binary.libs");
}

/// The hold itself: a program that counts its SIGCONTs imports psycopg in one
/// thread and extension modules in another; each load the agent held it at
/// ends in a SIGCONT (the first, at exec, comes before its handler is set:
/// uncounted; two close together may be counted once), every thread goes on,
/// and its query is traced.
#[test]
fn held_at_each_load_and_always_continued_threads_too() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let python = drivers::python()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let script = drivers::program("holds.py").display().to_string();
    let out = run_agent(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--",
            &python,
            &script,
            &pg.dsn("postgres"),
        ],
        b"",
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    let conts: u64 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"));
    let held_line = out
        .stderr
        .lines()
        .find(|l| l.contains("] held "))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    let held: u64 = held_line
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    // psycopg's extension modules and its libpq's dependencies, and the other thread's five.
    assert!(held >= 6, "{held_line}");
    assert!(
        (1..held).contains(&conts),
        "{conts} SIGCONTs seen for {held} holds: {held_line}"
    );
    let texts: Vec<String> = rx.spans().iter().map(|s| s.text().to_string()).collect();
    assert_eq!(texts, ["select ? as marker"]);
}

/// `--pid` of a libpq client that loads another libpq later: the load is
/// reported at once and the new libpq named and probed, without a hold (the
/// process is never stopped: unlike `--`, a query made right after the load
/// may go by before the probes are placed, so here it waits for the line).
#[test]
fn by_pid_a_libpq_loaded_later_is_probed_at_its_load_without_a_hold() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let mut py = drivers::python()
        .arg(drivers::program("later_libpq.py"))
        .arg(pg.dsn("postgres"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("later_libpq.py did not start: {line:?}"));
    let mut agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &pid.to_string(),
        ],
        Stdio::null(),
    );
    let first = bundled_libpq("psycopg2_binary.libs");
    assert!(
        agent
            .stderr_lines
            .iter()
            .any(|l| l.starts_with(&format!("dbtel: tracing pid {pid} ("))
                && l.ends_with(&first.display().to_string())),
        "{:?}",
        agent.stderr_lines
    );
    let mut say = |what: &str| {
        py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), what);
    };
    say("imported");
    let later = bundled_libpq("psycopg_binary.libs");
    agent.wait_for_line(
        &format!("dbtel: tracing {pid} (python3.11) {}", later.display()),
        Duration::from_secs(5),
    );
    say("0"); // SIGCONTs: --pid never holds
    assert!(py.wait().unwrap().success());
    // The traced process gone, the agent ends by itself.
    let run = agent.wait(Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    let mut spans = rx.spans_of(pid);
    spans.sort_by_key(|s| s.start_ns);
    let texts: Vec<&str> = spans.iter().map(|s| s.text()).collect();
    let want: Vec<String> = (1..=5).map(|n| format!("select ? as later{n}")).collect();
    assert_eq!(texts, want);
    let backend = spans[0].int("db.postgresql.backend.pid").unwrap() as u32;
    assert_eq!(
        logged_by(&pg, backend, 5),
        (1..=5)
            .map(|n| format!("select {n} as later{n}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn node_postgres_beside_its_server_one_reason_line_and_the_servers_spans() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let url = format!(
        "postgresql://postgres@/postgres?host={}&port={}",
        pg.socket_dir().display(),
        pg.port
    );
    let mut node = drivers::node()
        .arg(drivers::program("node_burst.js"))
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let node_pid: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("node_burst.js did not start: {line:?}"));
    let pm = pg.postmaster_pid();
    let agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &node_pid.to_string(),
            "--pid",
            &pm.to_string(),
        ],
        Stdio::null(),
    );
    let reasons: Vec<&String> = agent
        .stderr_lines
        .iter()
        .filter(|l| l.contains(&format!("process {node_pid} ")))
        .collect();
    assert_eq!(
        reasons,
        [&format!("dbtel-agent: not traced: process {node_pid} (node) uses no client library dbtel traces (libpq, libmariadb, libmysqlclient): a driver written in its program's own language (PyMySQL, asyncpg, node-postgres) is seen only from the server (PostgreSQL: --pid POSTMASTER)")],
        "{:?}",
        agent.stderr_lines
    );
    let tracing = agent
        .stderr_lines
        .iter()
        .find(|l| l.starts_with("dbtel: tracing"))
        .unwrap();
    assert!(
        tracing.contains(&format!("PostgreSQL server {pm} ")),
        "{tracing}"
    );

    node.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    assert!(node.wait().unwrap().success());

    // The server's spans of node's statements, as its log has them.
    let backend = pg
        .logged_queries()
        .into_iter()
        .find(|(_, t, _)| t == "select 1 as q1")
        .map(|(p, _, _)| p)
        .expect("node's first statement logged");
    assert_eq!(logged_by(&pg, backend, QUERIES), expected_texts(true));
    let deadline = Instant::now() + Duration::from_secs(10);
    let of_node = || -> Vec<Span> {
        let mut s: Vec<Span> = rx
            .spans()
            .into_iter()
            .filter(|s| {
                s.kind == 2
                    && s.int("db.postgresql.backend.pid") == Some(backend as i64)
                    && s.name != "transaction"
            })
            .collect();
        s.sort_by_key(|s| s.start_ns);
        s
    };
    while of_node().len() < QUERIES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = agent.interrupt();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let spans = of_node();
    let texts: Vec<&str> = spans.iter().map(|s| s.text()).collect();
    assert_eq!(texts, expected_texts(false), "{spans:?}");
    assert!(
        rx.spans()
            .iter()
            .all(|s| s.resource_int("process.pid") != Some(node_pid as i64)),
        "nothing of node itself"
    );
}
