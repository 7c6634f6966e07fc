//! `dbtel-agent check`: a good setup passes with a line per finding; a
//! missing capability, a library without the probed symbols and an
//! unreachable endpoint each fail with one line naming the problem.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{
    require_root, run_agent, run_agent_wrapped, AgentRun, Cluster, FakeLibpq, Receiver,
};

fn lines(run: &AgentRun, tag: &str) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with(tag))
        .map(|l| l[tag.len()..].trim_start().to_string())
        .collect()
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_good_setup_passes_for_a_server_and_a_client() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let mut client = Command::new(pg.bin("psql"))
        .args(pg.conn_args())
        .args(["-X", "-q", "-d", "postgres", "-c", "select pg_sleep(30)"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (pm, psql) = (pg.postmaster_pid(), client.id());
    let run = run_agent(
        &[
            "check",
            "--pid",
            &pm.to_string(),
            "--pid",
            &psql.to_string(),
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        b"",
        Duration::from_secs(30),
    );
    let _ = client.kill();
    let _ = client.wait();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(lines(&run, "FAIL"), Vec::<String>::new());
    let ok = lines(&run, "ok");
    let has = |prefix: &str| ok.iter().any(|l| l.starts_with(prefix));
    assert!(has("kernel "), "{ok:?}");
    assert!(has("eBPF programs load"), "{ok:?}");
    assert!(
        has(&format!(
            "PostgreSQL server {pm} (/usr/lib/postgresql/15/bin/postgres): 16 probe sites, USDT"
        )),
        "{ok:?}"
    );
    assert!(
        has(&format!("PID {psql} (psql): libpq /usr/lib/x86_64-linux-gnu/libpq.so.5.15: 10 functions found, 3 of pipeline mode, results read at 1 point(s) inside PQgetResult, connection layout decoded")),
        "{ok:?}"
    );
    assert!(has(&format!("server {pm}: catalog reachable")), "{ok:?}");
    assert!(
        has(&format!(
            "OTLP endpoint 127.0.0.1:{} reachable",
            rx.http_endpoint().rsplit(':').next().unwrap()
        )),
        "{ok:?}"
    );
    assert!(
        run.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("ready to trace in "),
        "{}",
        run.stdout
    );
}

#[test]
fn all_with_selectors_lists_what_would_be_traced() {
    require_root();
    let chosen = Cluster::start();
    let other = Cluster::start();
    let port = chosen.port.to_string();
    let run = run_agent(
        &["check", "--all", "--port", &port, "--no-otlp"],
        b"",
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{run:?}");
    let ok = lines(&run, "ok");
    assert!(
        ok.iter().any(|l| l
            .starts_with(&format!("PostgreSQL server {} (", chosen.postmaster_pid()))
            && l.ends_with("probe sites, USDT")),
        "{ok:?}"
    );
    assert!(
        ok.iter().any(|l| *l
            == format!(
                "PostgreSQL server {} (/usr/lib/postgresql/15/bin/postgres): not selected",
                other.postmaster_pid()
            )),
        "{ok:?}"
    );
    assert!(
        ok.iter()
            .any(|l| l.starts_with("host: libpq /usr/lib/x86_64-linux-gnu/libpq.so.5.15")),
        "{ok:?}"
    );
}

#[test]
fn missing_capabilities_are_named() {
    require_root();
    let wrapper = [
        "setpriv",
        "--bounding-set",
        "-bpf,-perfmon,-sys_admin",
        "--inh-caps",
        "-bpf,-perfmon,-sys_admin",
    ];
    let run = run_agent_wrapped(
        &wrapper,
        &["check", "--no-otlp"],
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let fail = lines(&run, "FAIL");
    assert!(
        fail.iter()
            .any(|l| l.starts_with("missing CAP_BPF: needed to load the eBPF programs and maps;")),
        "{fail:?}"
    );
    assert!(
        fail.iter().any(
            |l| l.starts_with("missing CAP_PERFMON: needed to attach uprobes and tracepoints;")
        ),
        "{fail:?}"
    );
    assert!(
        fail.iter()
            .any(|l| l.starts_with("cannot load the eBPF programs:")),
        "{fail:?}"
    );
    assert!(run
        .stdout
        .lines()
        .last()
        .unwrap()
        .starts_with("tracing would fail in "));
}

#[test]
fn a_library_without_the_symbols_is_refused_by_name() {
    require_root();
    let fake = FakeLibpq::start();
    let run = run_agent(
        &["check", "--pid", &fake.pid().to_string(), "--no-otlp"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(lines(&run, "FAIL"), vec![fake.refusal()]);
}

#[test]
fn an_unreachable_endpoint_fails() {
    require_root();
    let port = closed_port();
    let run = run_agent(
        &[
            "check",
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
        ],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(
        lines(&run, "FAIL"),
        vec![format!("OTLP endpoint 127.0.0.1:{port} unreachable: spans would be lost; start the collector or set --otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT")]
    );
}
