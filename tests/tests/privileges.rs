//! Least privilege, as a user would check it: a non-root agent given the
//! documented capabilities traces; after the attach every thread of the
//! agent holds the reduced set (CapEff in /proc/PID/task/*/status); the `--`
//! command holds no capability (CapEff, CapPrm, CapInh, CapAmb all 0) and
//! runs as the right user; a missing capability is one line naming it.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use dbtel_tests::{
    agent_binary, require_root, run_agent_env, run_agent_wrapped, Agent, Cluster, Receiver,
};

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_KILL: u64 = 1 << 5;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;
/// The documented set for a non-root agent (README, Privileges).
const DOCUMENTED: &str = "+bpf,+perfmon,+sys_admin,+sys_ptrace,+dac_read_search";

/// nobody's (uid, gid).
fn nobody() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the entry is read at once.
    let pw = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    assert!(!pw.is_null(), "no user 'nobody'");
    // SAFETY: non-null entry from getpwnam.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// The agent copied where any user may run it (the build directory may be closed to them).
/// One fixed directory per build, replaced on each run: a static is never dropped, so a
/// TempDir here would leave a copy of the agent in /tmp after every run.
fn agent_for_anyone() {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    let agent = COPY.get_or_init(|| {
        use std::{
            hash::{Hash, Hasher},
            os::unix::fs::PermissionsExt,
        };
        let source = agent_binary();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        let dir = std::env::temp_dir().join(format!("dbtel-priv-{:016x}", h.finish()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let agent = dir.join("dbtel-agent");
        std::fs::copy(source, &agent).unwrap();
        agent
    });
    std::env::set_var("DBTEL_AGENT", agent);
}

/// `setpriv` running the agent as nobody with `caps` (setpriv syntax) as
/// its ambient set: a non-root agent given capabilities, as systemd's
/// AmbientCapabilities= does.
fn as_nobody(caps: &str) -> Vec<String> {
    agent_for_anyone();
    let c = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{caps}")
    };
    [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        &format!("--inh-caps={c}"),
        &format!("--ambient-caps={c}"),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A status field as a number (hex for Cap*, the first of the list for Uid/Gid).
fn field(status: &str, name: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .split_whitespace()
        .next()
        .unwrap();
    if name.starts_with("Cap") {
        u64::from_str_radix(v, 16).unwrap()
    } else {
        v.parse().unwrap()
    }
}

/// Every thread's status of process `pid`.
fn thread_statuses(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("status")).unwrap())
        .collect()
}

/// A shell script for the command: prints its own credentials, then becomes psql.
fn report_then_psql(pg: &Cluster, statements: &[&str]) -> Vec<String> {
    let conn = pg.conn_args().join(" ");
    let psql = pg.bin("psql").display().to_string();
    let sql: String = statements.iter().map(|s| format!(" -c '{s}'")).collect();
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb):' /proc/self/status; echo HOME=$HOME; exec {psql} -X -q -A -t {conn} -d postgres{sql}"
        ),
    ]
}

/// The command's own report (its stdout) shows no capability at all and `uid`/`gid`.
fn assert_command_unprivileged(stdout: &str, uid: u32, gid: u32) {
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(stdout, cap), 0, "the command's {cap}:\n{stdout}");
    }
    assert_eq!(field(stdout, "Uid"), uid as u64, "{stdout}");
    assert_eq!(field(stdout, "Gid"), gid as u64, "{stdout}");
}

#[test]
fn a_non_root_agent_with_the_documented_capabilities_traces_and_keeps_the_reduced_set() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let wrapper = as_nobody(DOCUMENTED);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let command = report_then_psql(&pg, &["select pg_sleep(1.5)", "select 42"]);
    let mut args = vec!["--otlp-endpoint", &endpoint, "--"];
    args.extend(command.iter().map(String::as_str));
    let mut agent = Agent::start_wrapped(&wrapper, &args, &[], Stdio::null());
    // psql's libpq is probed at its exec, after the drop: attaching later works with the kept set.
    agent.wait_for_text("(psql) /", Duration::from_secs(20));
    let statuses = thread_statuses(agent.pid());
    let (uid, gid) = nobody();
    let main = &std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert_eq!(field(main, "Uid"), uid as u64, "the agent runs as nobody");
    let eff = field(main, "CapEff");
    // CAP_SYS_ADMIN is kept where the kernel opens uprobes only with it (6.18: yes).
    let base = CAP_BPF | CAP_PERFMON | CAP_SYS_PTRACE;
    assert!(
        eff == base || eff == base | CAP_SYS_ADMIN,
        "agent CapEff after attach {eff:016x}: only what later attaching needs"
    );
    assert_eq!(
        eff & CAP_DAC_READ_SEARCH,
        0,
        "client tracing needs no CAP_DAC_READ_SEARCH once attached"
    );
    assert!(statuses.len() > 1, "the agent runs threads");
    for s in &statuses {
        let name = s.lines().next().unwrap_or("");
        assert_eq!(field(s, "CapEff"), eff, "thread {name}");
        assert_eq!(field(s, "CapPrm"), eff, "thread {name}");
        assert_eq!(field(s, "CapInh"), 0, "thread {name}");
        assert_eq!(field(s, "CapAmb"), 0, "thread {name}");
    }
    let run = agent.wait(Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    let kept = run
        .stderr
        .find("capabilities kept after attach")
        .expect("the kept set is logged");
    let probed = run.stderr.find("(psql) /").expect("psql's libpq probed");
    assert!(
        kept < probed,
        "libpq was probed after the drop:\n{}",
        run.stderr
    );
    assert_command_unprivileged(&run.stdout, uid, gid);
    assert!(run.stdout.contains("42"), "{}", run.stdout);
    let names: Vec<String> = rx.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 2, "both statements traced: {names:?}");
}

#[test]
fn under_sudo_the_command_runs_as_the_invoking_user_without_capabilities() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let (uid, gid) = nobody();
    let command = report_then_psql(&pg, &["select 42"]);
    let mut args = vec!["--otlp-endpoint", &endpoint, "--"];
    args.extend(command.iter().map(String::as_str));
    let (u, g) = (uid.to_string(), gid.to_string());
    let run = run_agent_env(
        &args,
        &[
            ("SUDO_UID", &u),
            ("SUDO_GID", &g),
            ("SUDO_USER", "nobody"),
            ("HOME", "/root"),
        ],
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run:?}");
    assert_command_unprivileged(&run.stdout, uid, gid);
    assert!(
        !run.stdout.contains("HOME=/root"),
        "the user's HOME, not root's: {}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains(&format!("sh runs as nobody (uid {uid}) with no capability")),
        "{}",
        run.stderr
    );
    // A root agent keeps CAP_KILL for a command of another user (signals forwarded to it).
    assert!(
        run.stderr
            .contains("capabilities kept after attach: CAP_KILL, CAP_SYS_PTRACE,"),
        "{}",
        run.stderr
    );
    assert_eq!(
        rx.spans().len(),
        1,
        "its query traced through its maps: {}",
        run.stderr
    );
}

#[test]
fn with_user_the_command_runs_as_that_user_and_signals_still_reach_it() {
    require_root();
    let (uid, gid) = nobody();
    let agent = Agent::start(
        &[
            "--exporter",
            "none",
            "--user",
            "nobody",
            "--",
            "sh",
            "-c",
            "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb):' /proc/self/status; exec sleep 30",
        ],
        Stdio::null(),
    );
    let eff = field(
        &std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap(),
        "CapEff",
    );
    assert_ne!(eff & CAP_KILL, 0, "CAP_KILL kept: {eff:016x}");
    let kept_expected = CAP_BPF | CAP_PERFMON | CAP_SYS_PTRACE | CAP_SYS_ADMIN | CAP_KILL;
    assert_eq!(eff & !kept_expected, 0, "nothing else kept: {eff:016x}");
    // Interrupted once the command has reported and become `sleep`.
    let child: u32 = agent
        .stderr_lines
        .iter()
        .find_map(|l| l.strip_prefix("dbtel: tracing pid "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("the command's pid in the tracing line");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{child}/comm"))
        .map(|c| c.trim() != "sleep")
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never became sleep"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = agent.interrupt();
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGINT),
        "the command got SIGINT: {run:?}"
    );
    assert!(
        !run.stderr.contains("did not exit after the signal"),
        "{}",
        run.stderr
    );
    assert_command_unprivileged(&run.stdout, uid, gid);
}

#[test]
fn a_root_agent_without_sudo_gives_its_command_uid_0_and_no_capability() {
    require_root();
    let run = run_agent_env(
        &[
            "--exporter",
            "none",
            "--",
            "sh",
            "-c",
            // `grep` is an exec by uid 0 after the command's own: SECBIT_NOROOT keeps its sets empty.
            "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb):' /proc/self/status",
        ],
        &[("SUDO_UID", "")],
        b"",
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{run:?}");
    assert_command_unprivileged(&run.stdout, 0, 0);
}

/// The agent's own lines (log lines begin with `[`).
fn own_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.starts_with('[')).collect()
}

fn refused_as_nobody(caps: &str, args: &[&str]) -> String {
    let wrapper = as_nobody(caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let run = run_agent_wrapped(&wrapper, args, &[], b"", Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let lines = own_lines(&run.stderr);
    assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
    lines[0].to_string()
}

#[test]
fn a_missing_capability_is_one_line_naming_it() {
    require_root();
    let cmd = ["--exporter", "none", "--", "true"];
    assert_eq!(
        refused_as_nobody("", &cmd),
        "dbtel-agent: missing CAP_BPF: needed to load the eBPF programs and maps"
    );
    assert_eq!(
        refused_as_nobody("+bpf", &cmd),
        "dbtel-agent: missing CAP_PERFMON: needed to attach uprobes and tracepoints"
    );
    // Where the kernel opens uprobes only with CAP_SYS_ADMIN (6.18), CAP_BPF and CAP_PERFMON are not enough.
    let wrapper = as_nobody("+bpf,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let run = run_agent_wrapped(&wrapper, &cmd, &[], b"", Duration::from_secs(30));
    if !run.status.success() {
        assert_eq!(
            own_lines(&run.stderr),
            ["dbtel-agent: missing CAP_SYS_ADMIN: this kernel opens uprobe perf events only with it (CAP_PERFMON is not enough)"],
            "{run:?}"
        );
    }
    // Another user's process (root's) without CAP_SYS_PTRACE.
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleep.id().to_string();
    let msg = refused_as_nobody(
        "+bpf,+perfmon,+sys_admin",
        &["--exporter", "none", "--pid", &pid],
    );
    sleep.kill().unwrap();
    let _ = sleep.wait();
    assert_eq!(
        msg,
        format!("dbtel-agent: process {pid} (sleep) belongs to uid 0: missing CAP_SYS_PTRACE: needed to read another user's processes")
    );
}

#[test]
fn pid_1_as_root_gets_a_message_that_is_true() {
    require_root();
    let run = run_agent_env(
        &["--exporter", "none", "--pid", "1"],
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let lines = own_lines(&run.stderr);
    assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
    let line = lines[0];
    assert!(
        !line.contains("must run as root"),
        "root was told to be root: {line}"
    );
    // What root itself can see of PID 1 decides what is true.
    match std::fs::read_to_string("/proc/1/maps") {
        Ok(_) => assert!(line.contains("process 1 (") && line.contains("uses no client library"), "{line}"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => assert_eq!(
            line,
            "dbtel-agent: cannot read /proc/1/maps: Permission denied (os error 13) (refused even with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: the process is out of the agent's reach, in another user namespace or guarded by a security module)"
        ),
        Err(e) => panic!("/proc/1/maps: {e}"),
    }
}
