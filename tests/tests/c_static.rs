//! A C program with libpq linked into the executable itself (no libpq.so
//! mapped): the agent finds the functions in the executable's symbol table.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, Agent, Cluster, Receiver};

fn build_static_app(dir: &std::path::Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/static_app.c");
    let out = dir.join("static_app");
    let pglib = "/usr/lib/postgresql/15/lib";
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args([
            "-I/usr/include/postgresql",
            "/usr/lib/x86_64-linux-gnu/libpq.a",
        ])
        .arg(format!("{pglib}/libpgcommon_shlib.a"))
        .arg(format!("{pglib}/libpgport_shlib.a"))
        .args([
            "-l:libgssapi_krb5.so.2",
            "-l:libldap-2.5.so.0",
            "-l:libssl.so.3",
            "-l:libcrypto.so.3",
            "-lm",
            "-ldl",
            "-pthread",
        ])
        .status()
        .expect("cc");
    assert!(
        status.success(),
        "linking libpq statically needs libpq-dev and postgresql-server-dev-15 (cargo xtask setup)"
    );
    let maps_libpq = Command::new("ldd").arg(&out).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&maps_libpq.stdout).contains("libpq"),
        "libpq must not be a shared dependency"
    );
    out
}

#[test]
fn libpq_linked_into_the_executable() {
    require_root();
    let pg = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let app = build_static_app(dir.path());
    let mut child = Command::new(&app)
        .arg(pg.dsn("postgres"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let pid = child.id().to_string();
    let agent = Agent::start(
        &["--otlp-endpoint", &endpoint, "--pid", &pid],
        Stdio::null(),
    );
    assert!(
        agent
            .stderr_lines
            .iter()
            .any(|l| l.contains("probes on") && l.contains("static_app")),
        "{:?}",
        agent.stderr_lines
    );
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    assert!(child.wait().unwrap().success());
    let run = agent.wait(Duration::from_secs(20));
    assert!(run.status.success(), "{run:?}");

    let mut spans = rx.spans();
    spans.sort_by_key(|s| s.start_ns);
    let got: Vec<(&str, &str, Option<&str>)> = spans
        .iter()
        .map(|s| {
            (
                s.str("code.function.name").unwrap(),
                s.text(),
                s.str("db.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("PQexec", "select ?", None),
            ("PQexecParams", "select $1::int + ?", None),
            ("PQprepare", "select $1::int * ?", None),
            ("PQexecPrepared", "select $1::int * ?", None),
            ("PQexec", "select * from missing", Some("42P01")),
        ]
    );
    assert_eq!(spans[2].name, "PREPARE SELECT");
    assert_eq!(spans[3].str("db.postgresql.statement.name"), Some("s1"));
    assert_eq!(spans[3].int("db.response.returned_rows"), Some(1));
    assert!(spans
        .iter()
        .all(|s| s.str("db.namespace") == Some("postgres")));
    assert!(spans
        .iter()
        .all(|s| s.resource_str("process.executable.name") == Some("static_app")));
}
