//! `--all`: every server and client on the host, including those started
//! after the agent, narrowed by selectors. Spans are checked against the
//! server's own statement log.

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, Agent, Cluster, Receiver, Span};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// psql running `sql`, spawned (its PID is the client's), output discarded.
fn psql(pg: &Cluster, sql: &str) -> Command {
    let mut c = Command::new(pg.bin("psql"));
    c.args(pg.conn_args()).args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "postgres",
        "-c",
        sql,
    ]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(cmd: &mut Command) -> u32 {
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    finish(child);
    pid
}

/// The backends whose logged statements contain `needle` (the csvlog is
/// written a little after the statement: waited for, up to 5 s).
fn backends_that_ran(pg: &Cluster, needle: &str) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<u32> = pg
            .logged_statements()
            .into_iter()
            .filter(|(_, t)| t.contains(needle))
            .map(|(pid, _)| pid)
            .collect();
        if !found.is_empty() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn server_spans_of(spans: &[Span], backend: u32) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.kind == SERVER && s.int("db.postgresql.backend.pid") == Some(backend as i64))
        .collect()
}

#[test]
fn a_server_and_client_started_after_the_agent_are_traced_from_their_first_query() {
    require_root();
    let pg = Cluster::init_logged();
    let rx = Receiver::start();
    let port = pg.port.to_string();
    let agent = Agent::start(
        &[
            "--all",
            "--port",
            &port,
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    pg.start_server();
    // The client's very first statement, as soon as the server accepts connections.
    let client = run(&mut psql(&pg, "select 'first' as first_query"));
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    let backends = backends_that_ran(&pg, "first_query");
    assert_eq!(backends.len(), 1, "the server logged it once");
    let clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.resource_int("process.pid") == Some(client as i64))
        .collect();
    assert_eq!(clients.len(), 1, "psql {client}: {spans:?}\n{}", run.stderr);
    let c = clients[0];
    assert_eq!(
        (c.kind, c.name.as_str(), c.text()),
        (CLIENT, "SELECT", "select ? as first_query")
    );
    assert_eq!(c.resource_str("process.executable.name"), Some("psql"));
    let servers = server_spans_of(&spans, backends[0]);
    assert_eq!(
        servers.len(),
        1,
        "backend {}: {spans:?}\n{}",
        backends[0],
        run.stderr
    );
    let s = servers[0];
    assert_eq!(
        (s.name.as_str(), s.text()),
        ("SELECT", "select ? as first_query")
    );
    assert_eq!(
        s.resource_int("process.pid"),
        Some(pg.postmaster_pid() as i64)
    );
    assert_eq!(
        (&s.trace_id, &s.parent_span_id),
        (&c.trace_id, &c.span_id),
        "the server's span is the client's child"
    );
}

#[test]
fn selectors_choose_servers_by_port_and_clients_by_executable_and_connection() {
    require_root();
    let chosen = Cluster::start_logged();
    let other = Cluster::start_logged();
    chosen.pgbench_init(1);
    let rx = Receiver::start();
    let port = chosen.port.to_string();
    let agent = Agent::start(
        &[
            "--all",
            "--port",
            &port,
            "--exclude-exe",
            "pgbench",
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    let traced = run(&mut psql(&chosen, "select 'chosen' as marker"));
    let elsewhere = run(&mut psql(&other, "select 'other port' as marker"));
    let bench = run(Command::new(chosen.bin("pgbench"))
        .args(chosen.conn_args())
        .args(["-n", "-S", "-t", "7", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped()));
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    // psql on the chosen port: both sides.
    let of = |pid: u32| {
        spans
            .iter()
            .filter(|s| s.resource_int("process.pid") == Some(pid as i64))
            .count()
    };
    assert_eq!(of(traced), 1);
    assert_eq!(
        server_spans_of(&spans, backends_that_ran(&chosen, "'chosen'")[0]).len(),
        1
    );
    // The other port: neither the client's connection nor that server.
    assert_eq!(of(elsewhere), 0);
    assert_eq!(of(other.postmaster_pid()), 0);
    assert!(spans.iter().all(|s| !s.text().contains("other port")));
    // pgbench excluded by executable; its statements still seen by the chosen server.
    assert_eq!(of(bench), 0);
    let selects = chosen
        .logged_statements()
        .into_iter()
        .filter(|(_, t)| t.starts_with("SELECT abalance"))
        .count();
    assert_eq!(selects, 7);
    let server_selects = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.text().starts_with("SELECT abalance"))
        .count();
    assert_eq!(server_selects, selects);
}

#[test]
fn exe_selector_chooses_only_matching_programs() {
    require_root();
    let pg = Cluster::start_logged();
    pg.pgbench_init(1);
    let rx = Receiver::start();
    let agent = Agent::start(
        &[
            "--all",
            "--exe",
            "psql",
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    let traced = run(&mut psql(&pg, "select 'by name' as marker"));
    let bench = run(Command::new(pg.bin("pgbench"))
        .args(pg.conn_args())
        .args(["-n", "-S", "-t", "3", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped()));
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    let of = |pid: u32| {
        spans
            .iter()
            .filter(|s| s.resource_int("process.pid") == Some(pid as i64))
            .count()
    };
    assert_eq!(of(traced), 1, "{spans:?}");
    assert_eq!(of(bench), 0);
    // The server's executable is postgres, not psql: not traced either.
    assert!(spans.iter().all(|s| s.kind == CLIENT), "{spans:?}");
    assert_eq!(
        pg.logged_statements()
            .iter()
            .filter(|(_, t)| t.contains("'by name'"))
            .count(),
        1
    );
}

/// The cgroup v2 mount (a hybrid host has it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("cgroup2"))
        .expect("a cgroup2 mount");
    PathBuf::from(line.split(' ').nth(1).unwrap())
}

/// A cgroup named as Docker names a container's, removed on drop.
struct ContainerCgroup {
    dir: PathBuf,
    id: String,
}

impl ContainerCgroup {
    fn new() -> Self {
        let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xdb7e1);
        let dir = cgroup2_root().join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&dir).unwrap();
        ContainerCgroup { dir, id }
    }

    /// `cmd` run inside the cgroup (a shell moves itself in, then execs it).
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.dir.display()
            ))
            .arg("sh");
        c.arg(cmd.get_program()).args(cmd.get_args());
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn cgroup_selector_and_container_id() {
    require_root();
    let pg = Cluster::start();
    let cg = ContainerCgroup::new();
    let rx = Receiver::start();
    let glob = format!("{}*", &cg.id[..12]);
    let agent = Agent::start(
        &[
            "--all",
            "--cgroup",
            &glob,
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    let inside = run(&mut cg.wrap(&psql(&pg, "select 'in the container' as marker")));
    let outside = run(&mut psql(&pg, "select 'on the host' as marker"));
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    let inside_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| s.resource_int("process.pid") == Some(inside as i64))
        .collect();
    assert_eq!(inside_spans.len(), 1, "{spans:?}");
    assert_eq!(inside_spans[0].text(), "select ? as marker");
    assert_eq!(
        inside_spans[0].resource_str("container.id"),
        Some(cg.id.as_str())
    );
    assert!(
        spans
            .iter()
            .all(|s| s.resource_int("process.pid") != Some(outside as i64)),
        "the host's psql is not in the cgroup"
    );
    assert!(
        spans.iter().all(|s| s.kind != SERVER),
        "the server is not in the cgroup either"
    );
}

#[test]
fn a_client_in_its_own_pid_namespace_is_traced_with_its_host_pid() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let agent = Agent::start(
        &["--all", "--otlp-endpoint", &rx.http_endpoint()],
        Stdio::null(),
    );
    let inner = psql(&pg, "select 'namespaced' as marker");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(&mut cmd);
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    let clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.text() == "select ? as marker")
        .collect();
    assert_eq!(clients.len(), 1, "{spans:?}");
    let host_pid = clients[0].resource_int("process.pid").unwrap();
    assert!(
        host_pid > 1,
        "the host's PID, not the namespace's 1: {host_pid}"
    );
    let backend = backends_that_ran(&pg, "namespaced");
    let servers = server_spans_of(&spans, backend[0]);
    assert_eq!(servers.len(), 1);
    assert_eq!(
        servers[0].parent_span_id, clients[0].span_id,
        "joined through libpq's backend PID"
    );
}

#[test]
fn a_server_in_its_own_pid_namespace_is_joined_to_its_clients_by_its_own_pids() {
    require_root();
    let mut pg = Cluster::init_logged();
    let postmaster = pg.start_in_pid_namespace();
    let rx = Receiver::start();
    // Long enough for the catalog to see the session (a lookup is asked at its first statement).
    let client = psql(
        &pg,
        "select 'server in a namespace' as marker, pg_sleep(0.3)",
    );
    let pm = postmaster.to_string();
    let mut args = vec![
        "--otlp-endpoint".to_string(),
        rx.http_endpoint(),
        "--pid".into(),
        pm,
        "--".into(),
    ];
    args.push(client.get_program().to_string_lossy().into_owned());
    args.extend(client.get_args().map(|a| a.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dbtel_tests::run_agent(&args, b"", Duration::from_secs(60));
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    // The server logs its own PIDs: the namespace's.
    let backends = backends_that_ran(&pg, "server in a namespace");
    assert_eq!(backends.len(), 1);
    let client_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.text() == "select ? as marker, pg_sleep(?)")
        .collect();
    assert_eq!(client_spans.len(), 1, "{spans:?}");
    assert_eq!(
        client_spans[0].int("db.postgresql.backend.pid"),
        Some(backends[0] as i64),
        "libpq's backend PID"
    );
    let servers = server_spans_of(&spans, backends[0]);
    assert_eq!(
        servers.len(),
        1,
        "the server span carries the PID the server knows: {spans:?}"
    );
    let s = servers[0];
    assert_eq!(
        s.resource_int("process.pid"),
        Some(postmaster as i64),
        "the resource has the host's PID"
    );
    assert_eq!(
        s.parent_span_id, client_spans[0].span_id,
        "joined through the translated backend PID"
    );
    // The catalog (pg_stat_activity, by the namespace's PID) knew the backend.
    assert_eq!(s.str("db.postgresql.application_name"), Some("psql"));
}

#[test]
fn a_libpq_first_seen_in_a_new_process_is_probed() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    // A copy of libpq no process maps yet: a new file, as a wheel's bundled libpq is.
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libpq.so.5");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libpq.so.5", &lib).unwrap();
    let mut agent = Agent::start(
        &[
            "--all",
            "--port",
            &pg.port.to_string(),
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    // Loads it, then queries once told to: host-wide, a load is looked at
    // without holding the process, so the query waits for the agent's line
    // (a fixed sleep here failed under a concurrent build: the agent took
    // longer than the sleep).
    let script = "import ctypes, sys\n\
        pq = ctypes.CDLL(sys.argv[1])\n\
        pq.PQconnectdb.restype = ctypes.c_void_p\n\
        pq.PQexec.restype = ctypes.c_void_p\n\
        pq.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]\n\
        pq.PQfinish.argtypes = [ctypes.c_void_p]\n\
        pq.PQclear.argtypes = [ctypes.c_void_p]\n\
        sys.stdin.readline()\n\
        conn = pq.PQconnectdb(sys.argv[2].encode())\n\
        pq.PQclear(pq.PQexec(conn, b\"select 'bundled' as marker\"))\n\
        pq.PQfinish(conn)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(&lib)
        .arg(pg.dsn("postgres"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let py = child.id();
    agent.wait_for_text(
        &format!(
            "process {py} mapped a new client library: 15 probes on {} (all processes)",
            lib.display()
        ),
        Duration::from_secs(30),
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    finish(child);
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    let client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.resource_int("process.pid") == Some(py as i64))
        .collect();
    assert_eq!(client.len(), 1, "{spans:?}");
    assert_eq!(
        (client[0].kind, client[0].text()),
        (CLIENT, "select ? as marker")
    );
    let backend = backends_that_ran(&pg, "'bundled'");
    assert_eq!(
        server_spans_of(&spans, backend[0])[0].parent_span_id,
        client[0].span_id
    );
}

#[test]
fn every_server_gets_its_own_catalog() {
    require_root();
    let a = Cluster::start_logged();
    let b = Cluster::start_logged();
    b.psql(
        "postgres",
        "create table t (id int primary key, v int); insert into t values (1, 0)",
    );
    let rx = Receiver::start();
    let (pa, pb) = (a.port.to_string(), b.port.to_string());
    let agent = Agent::start(
        &[
            "--all",
            "--port",
            &pa,
            "--port",
            &pb,
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    // On A: a session the catalog can see (it lasts 300 ms).
    run(&mut psql(&a, "select 'on a' as marker, pg_sleep(0.3)"));
    // On B: a lock wait, whose blocker only B's catalog can name.
    let holder = psql(
        &b,
        "begin; update t set v = 1 where id = 1; select pg_sleep(0.6); commit;",
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    run(&mut psql(&b, "update t set v = 2 where id = 1"));
    finish(holder);
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    let on_a = server_spans_of(&spans, backends_that_ran(&a, "'on a'")[0]);
    assert_eq!(on_a.len(), 1, "{spans:?}");
    assert_eq!(
        on_a[0].str("db.postgresql.application_name"),
        Some("psql"),
        "A's catalog"
    );
    let waits: Vec<&Span> = spans.iter().filter(|s| s.name == "lock wait t").collect();
    assert_eq!(waits.len(), 1, "{spans:?}");
    let w = waits[0];
    assert_eq!(
        w.resource_int("process.pid"),
        Some(b.postmaster_pid() as i64)
    );
    let holder_backend = backends_that_ran(&b, "pg_sleep(0.6)")[0];
    assert_eq!(
        w.int("db.postgresql.blocker.pid"),
        Some(holder_backend as i64),
        "B's catalog named the blocker: {}",
        run.stderr
    );
    assert_eq!(w.str("db.postgresql.lock.relation"), Some("public.t"));
}

/// MySQL clients host-wide: the `mariadb` CLI (Connector/C in its own
/// executable) started after the agent is chosen by `--exe` and traced; a
/// MySQLdb program on the shared libmariadb beside it is not chosen and
/// yields nothing. Checked against the general log.
#[test]
fn mysql_clients_started_after_the_agent_are_traced_and_chosen_by_executable() {
    use dbtel_tests::{mysql_spans::logged_statements, MariaDb};
    use std::io::{BufRead, BufReader, Write};
    require_root();
    let db = MariaDb::start();
    db.cli("create database shop; create table shop.accounts (id int primary key, balance int, note varchar(64)); insert into shop.accounts values (1, 100, 'one'), (2, 200, 'two')");
    let rx = Receiver::start();
    let agent = Agent::start(
        &[
            "--all",
            "--exe",
            "mariadb",
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    let mut cli = Command::new("mariadb")
        .args(db.client_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let socket = db.socket().display().to_string();
    let mut py = dbtel_tests::drivers::python()
        .arg(dbtel_tests::drivers::program("mysqldb_app.py"))
        .args([socket.as_str(), "shop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut py_out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    py_out.read_line(&mut line).unwrap();
    let py_pid: i64 = line.trim().parse().unwrap();
    // Host-wide, a new program is looked at by the loader's hook and 0.1 s and 1 s after its exec (no hold).
    std::thread::sleep(Duration::from_millis(1200));
    writeln!(py.stdin.as_mut().unwrap(), "go").unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    stdin
        .write_all(
            b"select 'host wide' as marker;\nselect count(*) from shop.accounts where id > 0;\n",
        )
        .unwrap();
    drop(stdin);
    assert!(cli.wait().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut py_out, &mut rest).unwrap();
    assert!(
        py.wait().unwrap().success() && rest.contains("done"),
        "{rest}"
    );
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");

    let spans = rx.spans();
    let cli_pid = cli.id() as i64;
    let of_cli: Vec<&Span> = spans
        .iter()
        .filter(|s| s.resource_int("process.pid") == Some(cli_pid))
        .collect();
    let texts: Vec<&str> = of_cli.iter().map(|s| s.text()).collect();
    assert_eq!(
        texts,
        [
            "select ? as marker",
            "select count(*) from shop.accounts where id > ?"
        ],
        "{spans:?}"
    );
    let conn = of_cli[0]
        .int("db.mysql.connection_id")
        .expect("db.mysql.connection_id") as u64;
    let logged: Vec<String> = logged_statements(&db.general_log(), conn)
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(
        logged,
        [
            "select 'host wide' as marker",
            "select count(*) from shop.accounts where id > 0"
        ]
    );
    assert!(of_cli
        .iter()
        .all(|s| s.kind == CLIENT && s.str("db.system.name") == Some("mariadb")));
    assert_eq!(of_cli[1].int("db.response.returned_rows"), Some(1));
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.resource_int("process.pid") == Some(py_pid))
            .count(),
        0,
        "python is not chosen"
    );
}
