//! Processes coming and going: a `-- command` that starts other programs
//! (each traced from its first statement), a traced PID given to another
//! process after its exit (not followed).

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, run_agent, Agent, Cluster, Receiver};

#[test]
fn programs_the_command_starts_are_traced_from_their_first_statement() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let psql = format!(
        "{} -X -q -d postgres {}",
        pg.bin("psql").display(),
        pg.conn_args().join(" ")
    );
    let script = format!(
        "{psql} -c 'select 1 as first'; \
         sh -c \"{psql} -c 'select 2 as nested'\"; \
         {psql} -c 'select 3 as background' & wait"
    );
    let run = run_agent(
        &["--otlp-endpoint", &endpoint, "--", "sh", "-c", &script],
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run:?}");
    assert!(
        !run.stderr.contains("made no call"),
        "the descendants' calls count: {}",
        run.stderr
    );

    // Ground truth: what the server ran.
    let logged: Vec<String> = pg
        .logged_statements()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.starts_with("select "))
        .collect();
    let mut want = vec![
        "select 1 as first",
        "select 2 as nested",
        "select 3 as background",
    ];
    let mut got = logged.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the server ran them");

    let spans = rx.spans();
    let mut texts: Vec<&str> = spans.iter().map(|s| s.text()).collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "select ? as background",
            "select ? as first",
            "select ? as nested"
        ],
        "one span per statement, none lost"
    );
    let mut pids: Vec<i64> = spans
        .iter()
        .map(|s| s.resource_int("process.pid").expect("process.pid"))
        .collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "three psql processes");
    for s in &spans {
        assert_eq!(s.resource_str("process.executable.name"), Some("psql"));
        assert_eq!(s.resource_str("service.name"), Some("psql"));
    }
    let started = run
        .stderr
        .lines()
        .filter(|l| l.contains("started by the command, runs") && l.ends_with("/psql"))
        .count();
    assert_eq!(started, 3, "{}", run.stderr);
    assert!(
        run.summary()
            .starts_with("dbtel: 3 spans exported, 0 failed to export, 0 lost in the export queue"),
        "{}",
        run.summary()
    );
}

/// A psql traced by PID exits and its PID goes at once to an unrelated
/// process (ns_last_pid): the agent sees the exit (pidfd) and stops, rather
/// than following the newcomer.
#[test]
fn a_pid_reused_after_the_exit_is_not_followed() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let mut psql = Command::new(pg.bin("psql"))
        .args(["-X", "-q", "-d", "postgres"])
        .args(pg.conn_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = psql.id();
    let mut stdin = psql.stdin.take().unwrap();
    stdin.write_all(b"select 1;\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid_arg = pid.to_string();
    let agent = Agent::start(
        &["--otlp-endpoint", &endpoint, "--pid", &pid_arg],
        Stdio::null(),
    );
    stdin.write_all(b"select 2 as traced;\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Killed and reaped, and its PID handed out again, while the agent is
    // stopped: it cannot have looked in between.
    let stop = |sig| {
        // SAFETY: kill(2) on the agent the test started.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, sig) }, 0);
    };
    stop(libc::SIGSTOP);
    psql.kill().unwrap();
    psql.wait().unwrap();
    let mut newcomer = None;
    // Other processes fork too: tried until the PID is won (the agent waits).
    for _ in 0..100 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = Command::new("sleep").arg("120").spawn().unwrap();
        if child.id() == pid {
            newcomer = Some(child);
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut newcomer = newcomer.expect("PID handed out again");
    stop(libc::SIGCONT);

    let run = agent.wait(Duration::from_secs(30));
    let still = newcomer.try_wait().unwrap().is_none();
    newcomer.kill().unwrap();
    newcomer.wait().unwrap();
    assert!(run.status.success(), "{run:?}");
    assert!(still, "the newcomer runs on");
    assert!(
        run.stderr.contains(&format!("process {pid} exited")),
        "{}",
        run.stderr
    );
    let texts: Vec<String> = rx.spans().iter().map(|s| s.text().to_string()).collect();
    assert_eq!(texts, ["select ? as traced;"]);
}
