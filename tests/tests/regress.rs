//! A regression-style suite: SQL files (tests/regress/*.sql) run by psql,
//! traced on both sides, checked statement by statement against the server's
//! csvlog (log_statement=all): one client span and one server span per
//! statement, errors equal by SQLSTATE, texts equal after literal replacement,
//! the server span a child of its client span, catalog attributes on every
//! server span, nothing from parallel workers.

use std::{path::PathBuf, time::Duration};

use dbtel_tests::{expected_text, require_root, run_agent, Cluster, Logged, Receiver, Span};

const CLIENT: i32 = 3;
const SERVER: i32 = 2;
const MAX_TEXT: usize = 2048;

struct Traced {
    pg: Cluster,
    logged: Vec<Logged>,
    client: Vec<Span>,
    server: Vec<Span>,
    all: Vec<Span>,
    stdout: String,
}

fn is_query(s: &Span) -> bool {
    s.attrs.contains_key("db.query.text")
}

/// Runs tests/regress/NAME under psql (-f, errors do not stop it), traced on
/// both sides (`--pid POSTMASTER -- psql`).
fn trace_file(
    name: &str,
    settings: &[&str],
    prepare: &[&str],
    replace: &[(&str, String)],
) -> Traced {
    require_root();
    let pg = Cluster::start_logged_with(settings);
    for sql in prepare {
        pg.psql("postgres", sql);
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("regress")
        .join(name);
    let mut sql = std::fs::read_to_string(&src).unwrap();
    for (from, to) in replace {
        sql = sql.replace(from, to);
    }
    let file = pg.dir.path().join(name);
    std::fs::write(&file, sql).unwrap();

    let rx = Receiver::start();
    let psql = pg.bin("psql").display().to_string();
    let max = MAX_TEXT.to_string();
    let pm = pg.postmaster_pid().to_string();
    let mut args = vec![
        "--otlp-endpoint".to_string(),
        rx.http_endpoint(),
        "--max-query-length".into(),
        max,
        "--pid".into(),
        pm,
    ];
    args.extend(["--".into(), psql]);
    args.extend(pg.conn_args());
    args.extend(["-X", "-q", "-d", "postgres", "-f", file.to_str().unwrap()].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_agent(&args, b"", Duration::from_secs(120));
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary().contains(" 0 lost in the ring buffer"),
        "{}",
        run.summary()
    );

    let logged = pg.logged_outcomes();
    // psql's backend ran the file: the last statement logged is its own.
    let backend = logged.last().expect("statements logged").pid;
    let logged: Vec<Logged> = logged.into_iter().filter(|l| l.pid == backend).collect();
    let all = rx.spans();
    let mut client: Vec<Span> = all
        .iter()
        .filter(|s| s.kind == CLIENT && is_query(s))
        .cloned()
        .collect();
    let mut server: Vec<Span> = all
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && is_query(s)
                && s.int("db.postgresql.backend.pid") == Some(backend as i64)
        })
        .cloned()
        .collect();
    client.sort_by_key(|s| s.start_ns);
    server.sort_by_key(|s| s.start_ns);
    Traced {
        pg,
        logged,
        client,
        server,
        all,
        stdout: run.stdout,
    }
}

/// For `EXECUTE name(...)`, the body of the `PREPARE name ... AS body` logged before it.
fn prepared_body(before: &[Logged], text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let name = lower
        .strip_prefix("execute ")?
        .split(|c: char| c == '(' || c == ';' || c.is_whitespace())
        .next()?
        .to_string();
    before.iter().rev().find_map(|l| {
        let p = l.text.to_ascii_lowercase();
        let rest = p.strip_prefix("prepare ")?.strip_prefix(name.as_str())?;
        let at = rest.find(" as ")?;
        Some(l.text[l.text.len() - rest.len() + at + 4..].to_string())
    })
}

fn dump(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {} {:?}",
                s.name,
                s.text(),
                s.status_code,
                s.str("error.type")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every check the suite makes on one traced file.
fn check(t: &Traced) {
    let logged_dump = t
        .logged
        .iter()
        .map(|l| format!("{:?} {:?}", l.text, l.sqlstate))
        .collect::<Vec<_>>()
        .join("\n");
    for (side, spans) in [("client", &t.client), ("server", &t.server)] {
        assert_eq!(
            spans.len(),
            t.logged.len(),
            "{side}: one span per logged statement\nlogged:\n{logged_dump}\nspans:\n{}",
            dump(spans)
        );
        for (i, (s, l)) in spans.iter().zip(&t.logged).enumerate() {
            let want = match prepared_body(&t.logged[..i], &l.text) {
                // EXECUTE name: described by the statement it runs.
                Some(body) => expected_text(&body),
                None => expected_text(&l.text),
            };
            if s.attrs.contains_key("dbtel.query.text_truncated") {
                assert!(
                    l.text.len() > MAX_TEXT,
                    "{side}: only long texts are cut: {:?}",
                    s.text()
                );
                assert!(
                    want.starts_with(s.text()) && s.text().len() > 16,
                    "{side}: a cut text keeps what precedes the cut: {:?} of {want:?}",
                    s.text()
                );
            } else {
                assert_eq!(s.text(), want, "{side}: text of {:?}", l.text);
            }
            match &l.sqlstate {
                Some(code) => {
                    assert_eq!(s.status_code, 2, "{side}: {:?} failed with {code}", l.text);
                    assert_eq!(
                        s.str("db.response.status_code"),
                        Some(code.as_str()),
                        "{side}: {:?}",
                        l.text
                    );
                }
                None => assert_eq!(
                    s.status_code,
                    0,
                    "{side}: {:?} succeeded, span says {:?}",
                    l.text,
                    s.str("error.type")
                ),
            }
        }
    }
    for (c, s) in t.client.iter().zip(&t.server) {
        assert_eq!(
            s.parent_span_id,
            c.span_id,
            "server span of {:?} under its client span",
            c.text()
        );
        assert_eq!(s.trace_id, c.trace_id);
        // Every client backend's span says who it served (pg_stat_activity).
        assert_eq!(
            s.str("db.postgresql.backend_type"),
            Some("client backend"),
            "{:?}",
            s.text()
        );
        assert_eq!(s.str("user.name"), Some("postgres"), "{:?}", s.text());
        assert_eq!(
            s.str("db.postgresql.application_name"),
            Some("psql"),
            "{:?}",
            s.text()
        );
        assert_eq!(s.str("db.namespace"), Some("postgres"), "{:?}", s.text());
    }
    // Nothing else failed: no background process or parallel worker exported
    // an error, and no worker repeated the leader's statements.
    let failed: Vec<&Span> = t.all.iter().filter(|s| s.status_code == 2).collect();
    let expected_failures = t.logged.iter().filter(|l| l.sqlstate.is_some()).count();
    let failed_queries = failed.iter().filter(|s| is_query(s)).count();
    assert_eq!(
        failed_queries,
        2 * expected_failures,
        "failed query spans: client + server per error:\n{}",
        dump(&t.all)
    );
    let texts: Vec<&str> = t.client.iter().map(|s| s.text()).collect();
    let echoes: Vec<&Span> = t
        .all
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && is_query(s)
                && !t.server.iter().any(|o| o.span_id == s.span_id)
                && texts.contains(&s.text())
        })
        .collect();
    assert!(
        echoes.is_empty(),
        "statements repeated by other processes:\n{}",
        dump(&echoes.into_iter().cloned().collect::<Vec<_>>())
    );
}

#[test]
fn plpgsql_errors_caught_and_uncaught() {
    let t = trace_file("plpgsql.sql", &[], &[], &[]);
    let codes: Vec<&str> = t
        .logged
        .iter()
        .filter_map(|l| l.sqlstate.as_deref())
        .collect();
    assert_eq!(
        codes,
        ["P0001", "22012", "22023", "P0002", "P0004", "23505", "P0003"],
        "the file's own errors"
    );
    check(&t);
    // The caught division by zero left its audit rows: the statements did run.
    assert_eq!(
        t.pg.psql(
            "postgres",
            "select count(*) from audit where note = 'caught'"
        )
        .trim(),
        "1"
    );
}

#[test]
fn ddl_on_missing_objects_and_bad_settings() {
    let t = trace_file("ddl.sql", &[], &[], &[]);
    let codes: Vec<&str> = t
        .logged
        .iter()
        .filter_map(|l| l.sqlstate.as_deref())
        .collect();
    assert_eq!(
        codes,
        [
            "42P01", "42P01", "42P01", "42P01", "42701", "42703", "22023", "22023", "58P01",
            "58P01", "22P02", "42883"
        ],
        "the file's own errors"
    );
    check(&t);
}

#[test]
fn parallel_queries_with_workers_forced() {
    let t = trace_file("parallel.sql", &[], &[], &[]);
    assert!(
        t.stdout.contains("Workers Launched: 2"),
        "workers ran:\n{}",
        t.stdout
    );
    check(&t);
}

#[test]
fn operators_strings_comments_and_long_literals() {
    let long = format!("'{}'", "x".repeat(3 * MAX_TEXT));
    let t = trace_file(
        "texts.sql",
        &[],
        &["create table t_long (v text)"],
        &[("'LONGLITERAL'", long)],
    );
    check(&t);
    let cut: Vec<&Span> = t
        .client
        .iter()
        .chain(&t.server)
        .filter(|s| s.attrs.contains_key("dbtel.query.text_truncated"))
        .collect();
    assert_eq!(cut.len(), 2, "the long INSERT, cut on both sides");
    assert!(
        cut.iter()
            .all(|s| s.text() == "insert into t_long values (?"),
        "{:?}",
        cut.iter().map(|s| s.text()).collect::<Vec<_>>()
    );
    assert!(
        t.all.iter().all(|s| !s.text().contains("inline comment")),
        "comments are dropped"
    );
}

#[test]
fn prepared_transactions_and_sql_level_prepare() {
    let t = trace_file(
        "prepared_xacts.sql",
        &["max_prepared_transactions=5"],
        &[],
        &[],
    );
    check(&t);
    let mut txns: Vec<&Span> = t
        .all
        .iter()
        .filter(|s| s.kind == CLIENT && s.name == "transaction")
        .collect();
    txns.sort_by_key(|s| s.start_ns);
    let outcomes: Vec<Option<&str>> = txns
        .iter()
        .map(|s| s.str("db.transaction.outcome"))
        .collect();
    assert_eq!(
        outcomes,
        [Some("prepared"), Some("prepared"), Some("rolled_back")]
    );
    let counts: Vec<Option<i64>> = txns
        .iter()
        .map(|s| s.int("db.transaction.statement_count"))
        .collect();
    assert_eq!(counts, [Some(3), Some(3), Some(3)]);
    let execute = t
        .client
        .iter()
        .find(|s| s.str("db.postgresql.statement.name") == Some("ins"))
        .expect("EXECUTE ins span");
    assert_eq!(
        (execute.name.as_str(), execute.str("db.collection.name")),
        ("INSERT px", Some("px"))
    );
}
