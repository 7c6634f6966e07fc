//! `--config FILE`, `--print-config` and `--http-address` with the real agent.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dbtel_tests::{
    agent_binary, http_get, otlp::Value, require_root, run_agent, run_agent_env, Agent, Cluster,
    Receiver,
};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// `GET path` over HTTP/1.0: (status, body), or None when nothing answers.
/// Polls /healthz every 10 ms on a thread until `done`; returns the distinct
/// answers in the order they came (None: nothing listening).
fn watch_health(
    addr: SocketAddr,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Option<(u16, String)>>> {
    std::thread::spawn(move || {
        let mut seen: Vec<Option<(u16, String)>> = Vec::new();
        while !done.load(Ordering::Relaxed) {
            let a = http_get(addr, "/healthz");
            if seen.last() != Some(&a) {
                seen.push(a);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    })
}

/// A TCP port that accepts connections and never answers: a catalog or a
/// collector that hangs.
fn black_hole() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming() {
            held.push(c);
        }
    });
    addr
}

fn ok() -> Option<(u16, String)> {
    Some((200, "ok\n".into()))
}

fn status(body: &str) -> Option<(u16, String)> {
    Some((503, format!("{body}\n")))
}

#[test]
fn print_config_flag_over_environment_over_file_over_default_secrets_redacted() {
    require_root(); // to run the agent as nobody: printing the configuration needs no privilege
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = dir.path().join("dbtel-agent");
    std::fs::copy(agent_binary(), &agent).unwrap();
    let catalog = dir.path().join("catalog.conf");
    std::fs::write(&catalog, "host=db\npassword=catalogs3cret\n").unwrap();
    std::fs::set_permissions(&catalog, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = write(
        dir.path(),
        "dbtel.yaml",
        &format!(
            "# all three set exporter; environment and file set the protocol and the endpoint\n\
             exporter: console\n\
             otlp_protocol: grpc\n\
             otlp-endpoint: http://file-collector:4318\n\
             service_name: from-file\n\
             max_query_length: 1024\n\
             catalog_config: {}\n\
             http_address: 127.0.0.1:9464\n\
             all: true\n",
            catalog.display()
        ),
    );
    let out = Command::new(&agent)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--print-config",
            "--exporter",
            "otlp",
            "--exe",
            "psql",
        ])
        .env_clear()
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://alice:urls3cret@env-collector:4318",
        )
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20t0ps3cret,x-tenant=acme",
        )
        .env("PGPASSWORD", "pgs3cret")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stderr, "", "nothing loaded, nothing logged");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key}:\n{stdout}"))
    };
    assert_eq!(
        line("exporter"),
        "exporter: otlp  # flag",
        "flag over environment over file"
    );
    assert_eq!(
        line("otlp_protocol"),
        "otlp_protocol: http/protobuf  # env OTEL_EXPORTER_OTLP_PROTOCOL",
        "environment over file"
    );
    assert_eq!(
        line("otlp_endpoint"),
        "otlp_endpoint: http://<redacted>@env-collector:4318  # env OTEL_EXPORTER_OTLP_ENDPOINT"
    );
    assert_eq!(line("service_name"), "service_name: from-file  # file");
    assert_eq!(
        line("max_query_length"),
        "max_query_length: 1024  # file",
        "file over default"
    );
    assert_eq!(line("catalog_period"), "catalog_period: 2s  # default");
    assert_eq!(
        line("catalog_config"),
        format!("catalog_config: {}  # file", catalog.display())
    );
    assert_eq!(line("http_address"), "http_address: 127.0.0.1:9464  # file");
    // The file's `all: true` satisfies what --exe requires.
    assert_eq!(line("all"), "all: true  # file");
    assert_eq!(line("exe"), "exe: [psql]  # flag");
    assert!(
        stdout.contains(
            "\n#   OTEL_EXPORTER_OTLP_HEADERS=authorization=<redacted>,x-tenant=<redacted>\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("\n#   PGPASSWORD=<set>\n"), "{stdout}");
    for secret in [
        "urls3cret",
        "alice",
        "t0ps3cret",
        "acme",
        "pgs3cret",
        "catalogs3cret",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
}

#[test]
fn unknown_key_or_wrong_type_is_refused_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "dbtel.yaml",
        "exporter: none\notlp_endpoit: http://x:4318\n",
    );
    let run = run_agent(
        &["--config", config.to_str().unwrap(), "--", "true"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "dbtel-agent: config {}: unknown key `otlp_endpoit`",
            config.display()
        )
    );
    let config = write(dir.path(), "types.yaml", "raw_query_text: \"yes\"\n");
    let run = run_agent(
        &["--config", config.to_str().unwrap(), "--print-config"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "dbtel-agent: config {}: `raw_query_text`: expected true or false, not yes",
            config.display()
        )
    );
}

#[test]
fn config_file_exporter_and_http_address_take_effect_healthz_ok_while_tracing() {
    require_root();
    let pg = Cluster::start();
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "dbtel.yaml",
        &format!("exporter: none\nhttp_address: {addr}\n"),
    );
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let mut args: Vec<&str> = vec![
        "--config",
        config.to_str().unwrap(),
        "--",
        &psql,
        "-X",
        "-d",
        "postgres",
        "-c",
        "select pg_sleep(3)",
    ];
    args.extend(conn.iter().map(String::as_str));
    let agent = Agent::start(&args, Stdio::null());
    // Every probe is attached once `dbtel: tracing` is out.
    assert_eq!(http_get(addr, "/healthz"), ok());
    assert_eq!(http_get(addr, "/readyz"), ok());
    assert_eq!(http_get(addr, "/nothing-here").map(|a| a.0), Some(404));
    let run = agent.wait(Duration::from_secs(60));
    assert!(run.status.success(), "{run:?}");
    // exporter: none — no console lines, and no failed export to a default localhost:4318.
    assert!(!run.stdout.contains("pid="), "{}", run.stdout);
    assert!(
        run.summary()
            .starts_with("dbtel: 1 spans exported, 0 failed"),
        "{}",
        run.summary()
    );
}

#[test]
fn config_file_export_options_take_effect() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "dbtel.yaml",
        &format!(
            "otlp_protocol: grpc\notlp_endpoint: {}\nservice_name: from-the-file\nraw_query_text: true\nmax_query_length: 64\n",
            rx.grpc_endpoint()
        ),
    );
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let long = format!("select '{}' as padding, 42 as answer;", "x".repeat(200));
    let mut args: Vec<&str> = vec![
        "--config",
        config.to_str().unwrap(),
        "--",
        &psql,
        "-X",
        "-q",
        "-d",
        "postgres",
    ];
    args.extend(conn.iter().map(String::as_str));
    let stdin = format!("select 'kept literal';\n{long}\n");
    // OTEL_SERVICE_NAME would win over the file: make sure it is not inherited.
    let run = run_agent_env(
        &args,
        &[("OTEL_SERVICE_NAME", "")],
        stdin.as_bytes(),
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run:?}");
    let mut spans = rx.spans();
    spans.sort_by_key(|s| s.start_ns);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0].resource_str("service.name"), Some("from-the-file"));
    assert_eq!(
        spans[0].text(),
        "select 'kept literal';",
        "raw_query_text: true"
    );
    assert_eq!(spans[1].text(), &long[..64], "max_query_length: 64");
    assert_eq!(
        spans[1].attrs.get("dbtel.query.text_truncated"),
        Some(&Value::Bool(true))
    );
}

#[test]
fn healthz_starting_until_every_probe_is_attached() {
    require_root();
    let pg = Cluster::start();
    // A catalog that never answers holds the agent in its start-up (it waits
    // up to 5 s for the catalog before attaching the server's probes).
    let catalog_addr = black_hole();
    let dir = tempfile::tempdir().unwrap();
    let catalog = write(
        dir.path(),
        "catalog.conf",
        &format!(
            "host=127.0.0.1\nport={}\nuser=postgres\n",
            catalog_addr.port()
        ),
    );
    let addr = free_addr();
    let config = write(
        dir.path(),
        "dbtel.yaml",
        &format!(
            "exporter: none\nhttp_address: {addr}\ncatalog_config: {}\n",
            catalog.display()
        ),
    );
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_health(addr, done.clone());
    let pid = pg.postmaster_pid().to_string();
    let agent = Agent::start(
        &["--config", config.to_str().unwrap(), "--pid", &pid],
        Stdio::null(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(addr, "/healthz") != ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200)); // for the watcher to see it too
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stderr.contains("catalog"),
        "the catalog held the start-up: {}",
        run.stderr
    );
    let seen: Vec<_> = seen.into_iter().filter(Option::is_some).collect();
    assert_eq!(
        seen,
        [status("starting"), ok()],
        "503 while attaching, 200 once attached"
    );
}

#[test]
fn healthz_stopping_while_the_last_spans_are_flushed() {
    require_root();
    let pg = Cluster::start();
    // A collector that never answers: the final flush waits out the 3 s timeout.
    let collector = black_hole();
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "dbtel.yaml",
        &format!("otlp_endpoint: http://{collector}\nhttp_address: {addr}\n"),
    );
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let mut args: Vec<&str> = vec![
        "--config",
        config.to_str().unwrap(),
        "--",
        &psql,
        "-X",
        "-d",
        "postgres",
        "-c",
        "select 1",
    ];
    args.extend(conn.iter().map(String::as_str));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_health(addr, done.clone());
    let run = run_agent_env(
        &args,
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "3000")],
        b"",
        Duration::from_secs(60),
    );
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary()
            .starts_with("dbtel: 0 spans exported, 1 failed"),
        "{}",
        run.summary()
    );
    let seen: Vec<_> = seen.into_iter().filter(Option::is_some).collect();
    // `starting` lasts a few milliseconds here: it may be missed.
    let from_ok = seen
        .iter()
        .position(|a| *a == ok())
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(seen[from_ok..], [ok(), status("stopping")], "{seen:?}");
}

#[test]
fn http_address_in_use_is_refused_before_anything_is_attached() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run_agent(
        &["--http-address", &addr, "--exporter", "none", "--", "true"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(run.stderr.trim_end(), format!("dbtel-agent: --http-address {addr}: cannot listen: Address already in use (os error 98)"));
}

/// Each bad setting: one line naming it (never a header's value), exit 2,
/// before anything is attached (the command never runs).
#[test]
fn each_bad_setting_is_one_line_naming_it_and_exit_2() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", ran.display());
    let cases: &[(&[(&str, &str)], &[&str], &str)] = &[
        (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318")], &[], "OTEL_EXPORTER_OTLP_ENDPOINT=\"ftp://collector:4318\": not an http:// or https:// URL"),
        (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")], &[], "OTEL_EXPORTER_OTLP_ENDPOINT=\"\": empty"),
        (&[], &["--otlp-endpoint", "garbage"], "--otlp-endpoint=\"garbage\": not a URL (relative URL without a base); expected http://host:port or https://host:port"),
        (&[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=7,Bearer s3cret")], &[], "OTEL_EXPORTER_OTLP_HEADERS: header 2 is not key=value"),
        (&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret\r\nx-evil: 1")], &[], "OTEL_EXPORTER_OTLP_HEADERS: the value of api-key holds a control character (CR, LF, …)"),
        (&[("OTEL_TRACES_SAMPLER", "sometimes")], &[], "OTEL_TRACES_SAMPLER=\"sometimes\": not a sampler dbtel offers (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"),
        (&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")], &[], "OTEL_TRACES_SAMPLER_ARG=\"1.5\": a ratio between 0 and 1"),
        (&[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")], &[], "OTEL_EXPORTER_OTLP_TIMEOUT=\"0\": a timeout in milliseconds, more than 0"),
        (&[], &["--catalog-period", "0s"], "--catalog-period: must be longer than 0 s"),
        // A variable clap reads for a flag is named as the variable, not the flag.
        (&[("OTEL_TRACES_EXPORTER", "bogus")], &[], "OTEL_TRACES_EXPORTER=\"bogus\": not one of otlp, console, none"),
        (&[("SLOW_QUERY_TIME", "soon")], &[], "SLOW_QUERY_TIME=\"soon\": milliseconds (500) or a duration such as 250ms or 2s"),
        (&[], &["--catalog-config", "/nonexistent/dbtel.conf"], "--catalog-config /nonexistent/dbtel.conf: No such file or directory (os error 2)"),
    ];
    for (env, flags, want) in cases {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["--", "sh", "-c", &touch]);
        let run = dbtel_tests::run_agent_env(&args, env, b"", Duration::from_secs(30));
        assert_eq!(run.status.code(), Some(2), "{env:?} {flags:?}: {run:?}");
        assert_eq!(
            run.stderr.trim_end(),
            format!("dbtel-agent: {want}"),
            "{env:?} {flags:?}"
        );
        assert!(
            !run.stderr.contains("s3cret"),
            "a header's value is never shown"
        );
        assert!(!ran.exists(), "nothing ran");
    }
}
