//! `--exporter console`: a psql client started by the agent and its server
//! traced at once, printed as trees (client span, the server's statement and
//! the lock wait under it), as JSON, and as lines when stdout is no terminal.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, run_agent, Agent, AgentRun, Cluster};

fn setup() -> Cluster {
    let pg = Cluster::start();
    pg.psql("postgres", "create table t (id int primary key, v int)");
    pg.psql("postgres", "insert into t values (1, 0)");
    pg
}

/// `dbtel-agent --exporter console [--console-format F] --pid POSTMASTER -- psql ...`.
fn args(pg: &Cluster, format: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = ["--exporter", "console"].map(String::from).to_vec();
    if let Some(f) = format {
        a.extend(["--console-format".into(), f.into()]);
    }
    // psql's own output goes to /dev/null: stdout is the console's.
    a.extend([
        "--pid".into(),
        pg.postmaster_pid().to_string(),
        "--".into(),
        pg.bin("psql").display().to_string(),
    ]);
    a.extend(["-X", "-q", "-o", "/dev/null", "-d", "postgres"].map(String::from));
    a.extend(pg.conn_args());
    a
}

/// The agent on the server and on psql fed `script`, to its end.
fn trace_psql(pg: &Cluster, format: Option<&str>, script: &str) -> AgentRun {
    let args = args(pg, format);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_agent(&args, script.as_bytes(), Duration::from_secs(60));
    assert!(run.status.success(), "{run:?}");
    run
}

/// Lines from the one starting `head` to the next top-level line.
fn tree_of<'a>(stdout: &'a str, head: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(head))
        .unwrap_or_else(|| panic!("no {head:?} in:\n{stdout}"));
    // A trace's header line is followed by its root.
    let body = if lines[start].starts_with("trace ") {
        start + 1
    } else {
        start
    };
    let end = lines[body + 1..]
        .iter()
        .position(|l| !l.starts_with([' ', '│', '├', '└']))
        .map_or(lines.len(), |n| body + 1 + n);
    lines[start..end].to_vec()
}

#[test]
fn a_client_its_server_statement_and_its_lock_wait_print_as_one_tree() {
    require_root();
    let pg = setup();
    // psql pauses before its UPDATE, so that a session started once the agent
    // is in place (its transaction traced: the wait links to it) holds the row.
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "select v from t where id = 1;\nselect pg_sleep(1.5);\nupdate t set v = v + 1 where id = 1;\n").unwrap();
    let args = args(&pg, Some("tree"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(
        &args,
        Stdio::from(std::fs::File::open(script.path()).unwrap()),
    );
    let holder = Command::new(pg.bin("psql"))
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "postgres"])
        .args([
            "-c",
            "begin",
            "-c",
            "update t set v = v + 1 where id = 1",
            "-c",
            "select pg_sleep(2.5)",
            "-c",
            "commit",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(holder.success());
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{run:?}");
    let out = &run.stdout;

    let select = tree_of(out, "SELECT t  CLIENT  ");
    assert_eq!(select.len(), 2, "{out}");
    assert!(
        select[0].contains(" rows=1 db=postgres")
            && select[0].ends_with("\"select v from t where id = ?;\""),
        "{out}"
    );
    assert!(select[1].starts_with("└─ SELECT t  SERVER  "), "{out}");
    assert!(
        select[1].contains(" postgres pid="),
        "the server's service and backend: {out}"
    );

    // Client UPDATE > server UPDATE > the lock wait inside it.
    let update = tree_of(out, "UPDATE t  CLIENT  ");
    assert_eq!(update.len(), 4, "{out}");
    assert!(
        update[0].contains(" events=contention_detected,lock_contention_detected"),
        "{out}"
    );
    assert!(update[1].starts_with("└─ UPDATE t  SERVER  "), "{out}");
    assert!(
        update[2].starts_with("   └─ lock wait t  INTERNAL  "),
        "{out}"
    );
    assert!(
        update[2].contains(
            " lock=transactionid/ShareLock relation=public.t outcome=granted  blocker pid="
        ) && update[2].ends_with(" \"select pg_sleep(?)\""),
        "{out}"
    );
    // The link names the holder's transaction block, printed as a tree of its own.
    let link = update[3]
        .strip_prefix("        ↳ blocked by trace ")
        .unwrap_or_else(|| panic!("no link: {out}"));
    let holder_trace = tree_of(out, &format!("trace {}", &link[..32]));
    assert!(
        holder_trace[1].starts_with("transaction  SERVER  ")
            && holder_trace[1].contains(" outcome=committed statements=4"),
        "{out}"
    );
    assert!(
        link[32..].starts_with(" span ") && holder_trace.len() > 2,
        "{out}"
    );
    let ms = |l: &str| -> f64 {
        l.trim_start()
            .split("  ")
            .nth(2)
            .and_then(|d| d.strip_suffix(" ms"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        ms(update[2]) >= 500.0,
        "the wait lasted until the holder committed: {out}"
    );
    // Each trace printed once: none was cut in two by printing too early.
    let mut heads: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("trace ")?.split(' ').next())
        .collect();
    let n = heads.len();
    heads.sort();
    heads.dedup();
    assert_eq!(heads.len(), n, "{out}");
}

#[test]
fn json_lines_parse_and_link_the_server_statement_to_the_client_query() {
    require_root();
    let pg = setup();
    let run = trace_psql(&pg, Some("json"), "select v from t where id = 1;\n");
    let spans: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |kind: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == kind && s["name"] == "SELECT t")
            .unwrap_or_else(|| panic!("no {kind} SELECT t in {}", run.stdout))
    };
    let (client, server) = (find("CLIENT"), find("SERVER"));
    assert!(client["parent_span_id"].is_null());
    assert_eq!(server["parent_span_id"], client["span_id"]);
    assert_eq!(server["trace_id"], client["trace_id"]);
    assert_eq!(
        client["attributes"]["db.query.text"],
        "select v from t where id = ?;"
    );
    assert_eq!(client["attributes"]["db.response.returned_rows"], 1);
    assert_eq!(
        server["attributes"]["db.postgresql.backend.pid"],
        client["attributes"]["db.postgresql.backend.pid"]
    );
    assert_eq!(server["resource"]["process.pid"], pg.postmaster_pid());
    assert!(client["duration_ms"].as_f64().unwrap() > 0.0);

    // Not a terminal and no format asked for: one line per span, as before.
    let run = trace_psql(&pg, None, "select v from t where id = 1;\n");
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(" SELECT t ") && l.contains("rows=1"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        line.contains(" ms  pid=") && line.ends_with("\"select v from t where id = ?;\""),
        "{line}"
    );
}
