//! Bad input gets a clear one-line error and a non-zero exit.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, run_agent};

fn refused(args: &[&str]) -> String {
    let run = run_agent(args, b"", Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(!run.stderr.contains("dbtel: tracing"), "{}", run.stderr);
    run.stderr.lines().last().unwrap_or("").to_string()
}

#[test]
fn pid_that_does_not_exist() {
    require_root();
    let pid = (4_000_000..)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
        .to_string();
    // The contention report, given such a server PID, says the same.
    assert_eq!(
        refused(&["contention", "--server-pid", &pid]),
        format!("dbtel-agent: no process with PID {pid}")
    );
    assert_eq!(
        refused(&["--pid", &pid]),
        format!("dbtel-agent: no process with PID {pid}")
    );
}

#[test]
fn process_without_libpq() {
    require_root();
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleep.id().to_string();
    let msg = refused(&["--pid", &pid]);
    sleep.kill().unwrap();
    let _ = sleep.wait();
    assert_eq!(
        msg,
        format!("dbtel-agent: process {pid} (sleep) uses no client library dbtel traces (libpq, libmariadb, libmysqlclient): a driver written in its program's own language (PyMySQL, asyncpg, node-postgres) is seen only from the server (PostgreSQL: --pid POSTMASTER)")
    );
}

#[test]
fn libpq_lacking_the_expected_symbols() {
    require_root();
    let fake = dbtel_tests::FakeLibpq::start();
    let msg = refused(&["--pid", &fake.pid().to_string()]);
    assert_eq!(msg, format!("dbtel-agent: {}", fake.refusal()));
}

#[test]
fn nothing_to_trace() {
    require_root();
    assert_eq!(
        refused(&[]),
        "dbtel-agent: nothing to trace: give --pid <PID>, --all or -- <command>"
    );
}

#[test]
fn command_that_cannot_run() {
    require_root();
    let run = run_agent(
        &["--exporter", "none", "--", "/nonexistent/program"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(127), "{run:?}");
    assert!(
        run.stderr
            .contains("dbtel-agent: cannot run /nonexistent/program"),
        "{}",
        run.stderr
    );
}

#[test]
fn not_enough_privilege() {
    require_root();
    use std::os::unix::process::CommandExt;
    // The agent run as 'nobody': loading eBPF is refused by the kernel.
    let out = Command::new(dbtel_tests::agent_binary())
        .args(["--exporter", "none", "--", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // One line, naming the first capability missing.
    assert_eq!(
        stderr.trim_end(),
        "dbtel-agent: missing CAP_BPF: needed to load the eBPF programs and maps",
        "{stderr}"
    );
}

#[test]
fn postgresql_server_build_lacking_probes_is_refused_by_name() {
    require_root();
    // A "postgres" whose USDT notes hold statement__status only (tests/c/fake_postgres.c).
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("postgres");
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/fake_postgres.c");
    assert!(Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("cc")
        .success());
    let mut server = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let msg = refused(&["--pid", line.trim()]);
    server.kill().unwrap();
    let _ = server.wait();
    assert_eq!(
        msg,
        format!(
            "dbtel-agent: {} is a PostgreSQL server without the USDT probe transaction__abort (needed for transactions)",
            exe.display()
        )
    );
}

#[test]
fn of_several_targets_those_that_can_be_traced_are() {
    require_root();
    let pg = dbtel_tests::Cluster::start_logged();
    let rx = dbtel_tests::Receiver::start();
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let (app, pm) = (sleep.id(), pg.postmaster_pid());
    let agent = dbtel_tests::Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &app.to_string(),
            "--pid",
            &pm.to_string(),
        ],
        Stdio::null(),
    );
    let reason = format!(
        "dbtel-agent: not traced: process {app} (sleep) uses no client library dbtel traces (libpq, libmariadb, libmysqlclient): a driver written in its program's own language (PyMySQL, asyncpg, node-postgres) is seen only from the server (PostgreSQL: --pid POSTMASTER)"
    );
    assert!(
        agent.stderr_lines.contains(&reason),
        "{:?}",
        agent.stderr_lines
    );
    pg.psql("postgres", "select 'the server is traced' as marker");
    std::thread::sleep(Duration::from_millis(700));
    let run = agent.interrupt();
    sleep.kill().unwrap();
    let _ = sleep.wait();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let logged = pg
        .logged_statements()
        .into_iter()
        .filter(|(_, t)| t.contains("the server is traced"))
        .count();
    let spans = rx.spans();
    assert_eq!(logged, 1);
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.text() == "select ? as marker")
            .count(),
        logged,
        "{spans:?}"
    );
}

#[test]
fn when_nothing_can_be_traced_every_reason_is_given() {
    require_root();
    let mut a = Command::new("sleep").arg("30").spawn().unwrap();
    let missing = (4_000_000..)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let run = run_agent(
        &["--pid", &a.id().to_string(), "--pid", &missing.to_string()],
        b"",
        Duration::from_secs(30),
    );
    a.kill().unwrap();
    let _ = a.wait();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("dbtel-agent: "))
        .collect();
    assert_eq!(
        lines,
        [
            format!("dbtel-agent: process {} (sleep) uses no client library dbtel traces (libpq, libmariadb, libmysqlclient): a driver written in its program's own language (PyMySQL, asyncpg, node-postgres) is seen only from the server (PostgreSQL: --pid POSTMASTER)", a.id()),
            format!("dbtel-agent: no process with PID {missing}"),
        ]
    );
}

#[test]
fn a_command_that_makes_no_libpq_call_is_reported_at_exit() {
    require_root();
    let run = run_agent(
        &[
            "--exporter",
            "none",
            "--",
            "python3",
            "-c",
            "import sys; sys.exit(3)",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(3), "the command's status: {run:?}");
    let tracing: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("dbtel: tracing "))
        .collect();
    assert_eq!(
        tracing.len(),
        1,
        "no libpq loaded, none named: {}",
        run.stderr
    );
    assert!(tracing[0].ends_with(" (python3): from its start, each client library it loads is probed before its first call"), "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l
            == "dbtel: python3 made no call into a database client library (libpq, libmariadb, libmysqlclient): nothing of it was traced (a driver written in its program's own language, such as asyncpg, node-postgres or PyMySQL, is seen only from the server: PostgreSQL's --pid POSTMASTER)"),
        "{}",
        run.stderr
    );
    // A command that queries is not told so.
    let pg = dbtel_tests::Cluster::start();
    let psql = pg.bin("psql").display().to_string();
    let mut args = vec!["--exporter".to_string(), "none".into(), "--".into(), psql];
    args.extend(pg.conn_args());
    args.extend(["-X", "-q", "-d", "postgres", "-c", "select 1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_agent(&args, b"", Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    assert!(
        !run.stderr
            .contains("made no call into a database client library"),
        "{}",
        run.stderr
    );
    // The libpq it loaded is named, once it is loaded (psql links Debian's).
    let libpq = std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libpq.so.5").unwrap();
    let named: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| {
            l.starts_with("dbtel: tracing ") && l.ends_with(&format!(" (psql) {}", libpq.display()))
        })
        .collect();
    assert_eq!(named.len(), 1, "{}", run.stderr);
}

#[test]
fn a_server_without_usdt_probes_when_usdt_is_required() {
    require_root();
    let pg = dbtel_tests::Cluster::start_logged_build(dbtel_tests::pg::Build::Wheel16, &[]);
    let pm = pg.postmaster_pid();
    let msg = refused(&["--pg-server-probes", "usdt", "--pid", &pm.to_string()]);
    let exe = std::fs::read_link(format!("/proc/{pm}/exe")).unwrap();
    assert_eq!(
        msg,
        format!("dbtel-agent: {} has no USDT probes, and --pg-server-probes usdt was given: it was built without --enable-dtrace (use --pg-server-probes auto)", exe.display())
    );
}

#[test]
fn a_postgres_executable_with_neither_usdt_probes_nor_symbols() {
    require_root();
    // Any program named postgres that has neither: what a build stripped of both would be.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("postgres");
    std::fs::copy("/usr/bin/sleep", &fake).unwrap();
    let mut child = Command::new(&fake)
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let msg = refused(&["--pid", &child.id().to_string()]);
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        msg,
        format!("dbtel-agent: {} is named postgres but has neither PostgreSQL's USDT probes nor its symbols (PostgresMain, pgstat_report_activity): dbtel cannot trace a build stripped of both", fake.display())
    );
}

/// bpftrace, stopped however the test ends: left running, its probe would
/// shut later tests out of the site.
struct Tracer(std::process::Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another tracer on a USDT site with its semaphore (bpftrace attaches so)
/// shuts dbtel out of that site: the kernel keeps one semaphore setting per
/// site. dbtel says so and names the way around, which works beside it.
#[test]
fn a_usdt_site_another_tracer_holds_with_its_semaphore() {
    require_root();
    let pg = dbtel_tests::Cluster::start();
    let pm = pg.postmaster_pid().to_string();
    let exe = std::fs::read_link(format!("/proc/{pm}/exe")).unwrap();
    let script = format!(
        "BEGIN {{ printf(\"attached\\n\"); }} usdt:{}:postgresql:statement__status {{ @n = count(); }}",
        exe.display()
    );
    let mut child = Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bpftrace (cargo xtask setup installs it)");
    let (stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let tracer = Tracer(child);
    // bpftrace runs BEGIN once every probe is attached.
    let (tx, attached) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        for line in lines.map_while(Result::ok) {
            if line.contains("attached") {
                let _ = tx.send(());
            }
        }
    });
    if attached.recv_timeout(Duration::from_secs(60)).is_err() {
        drop(tracer);
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        panic!("bpftrace did not attach: {err}");
    }

    let msg = refused(&["--pid", &pm]);
    let head = format!(
        "dbtel-agent: cannot attach to USDT probe statement__status in {} (process {pm}): ",
        exe.display()
    );
    let tail = "; the kernel refuses it so when another tracer (bpftrace, BCC) already probes this site with its semaphore: stop that tracer, or trace this server through its functions instead: --pg-server-probes uprobes";
    assert!(msg.starts_with(&head) && msg.ends_with(tail), "{msg}");
    assert!(msg.contains("os error 22"), "{msg}");

    // The way around: the same statements through the functions' uprobes.
    let rx = dbtel_tests::Receiver::start();
    let agent = dbtel_tests::Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pg-server-probes",
            "uprobes",
            "--pid",
            &pm,
        ],
        Stdio::null(),
    );
    pg.psql("postgres", "select 42 as beside_bpftrace");
    let run = agent.interrupt();
    drop(tracer);
    let found: Vec<_> = rx
        .spans()
        .into_iter()
        .filter(|s| s.kind == 2 && s.text().contains("beside_bpftrace"))
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(found, vec!["SELECT".to_string()], "{}", run.stderr);
}
