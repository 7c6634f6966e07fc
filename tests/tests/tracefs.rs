//! A fresh host has no tracefs mounted. The agent, started in a private mount
//! namespace where tracefs was unmounted, mounts it itself and follows the
//! server's forks; without the privilege to mount it, it says in one line
//! what to do.

use std::{process::Stdio, time::Duration};

use dbtel_tests::{require_root, run_agent_wrapped, Agent, Cluster, Receiver};

const SERVER: i32 = 2;

/// Runs the agent in a new mount namespace with every tracefs (and debugfs,
/// whose tracing/ is tracefs too) unmounted; exits 97 if one is still there,
/// so a test can never pass with tracefs present. `then` runs the agent
/// (`"$@"`), e.g. under setpriv.
fn without_tracefs(then: &str) -> Vec<String> {
    let script = format!(
        "umount -l /sys/kernel/debug/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         while umount -l /sys/kernel/tracing 2>/dev/null; do :; done; \
         if grep -qE ' (tracefs|debugfs) ' /proc/self/mounts || [ -n \"$(ls -A /sys/kernel/tracing)\" ]; then \
           echo 'tracefs still mounted' >&2; exit 97; fi; \
         exec {then} \"$@\""
    );
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn agent_mounts_tracefs_and_follows_forks() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let pm = pg.postmaster_pid().to_string();
    let wrapper = without_tracefs("");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(
        &wrapper,
        &["--otlp-endpoint", &rx.http_endpoint(), "--pid", &pm],
        &[],
        Stdio::null(),
    );
    assert!(
        agent
            .stderr_lines
            .iter()
            .any(|l| l.contains("mounted tracefs at /sys/kernel/tracing (it was not mounted)")),
        "{:?}",
        agent.stderr_lines
    );
    // A backend forked after the attach: followed only through sched_process_fork.
    pg.psql("postgres", "create table tracefs_probe (id int)");
    pg.psql("postgres", "insert into tracefs_probe values (1), (2)");
    std::thread::sleep(Duration::from_millis(700));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");

    // Ground truth: the statements the server logged, each with the backend that ran it.
    let logged: Vec<(u32, String)> = pg
        .logged_statements()
        .into_iter()
        .filter(|(_, t)| t.contains("tracefs_probe"))
        .collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
    let spans = rx.spans();
    for (backend, text) in &logged {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| {
                s.kind == SERVER && s.int("db.postgresql.backend.pid") == Some(*backend as i64)
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one span for `{text}` from backend {backend}: {found:?}"
        );
        let name = if text.starts_with("create") {
            "CREATE tracefs_probe"
        } else {
            "INSERT tracefs_probe"
        };
        assert_eq!(found[0].name, name);
    }
}

#[test]
fn without_the_privilege_to_mount_it_says_what_to_do() {
    require_root();
    let pg = Cluster::start();
    let pm = pg.postmaster_pid().to_string();
    // CAP_SYS_ADMIN gone from the bounding set: root may no longer mount.
    let wrapper = without_tracefs("setpriv --bounding-set -sys_admin --inh-caps -sys_admin");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let run = run_agent_wrapped(
        &wrapper,
        &["--exporter", "none", "--no-catalog", "--pid", &pm],
        &[],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    // Where the kernel opens uprobes to CAP_PERFMON, tracefs is what fails;
    // where it wants CAP_SYS_ADMIN for them too (6.18 here), the preflight
    // names that first. Either way: one line saying what to do.
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        [
            "dbtel-agent: cannot follow server forks: tracefs is not mounted and the agent could not mount it at \
             /sys/kernel/tracing: Operation not permitted (os error 1); mount it first: `mount -t tracefs tracefs /sys/kernel/tracing`",
            "dbtel-agent: missing CAP_SYS_ADMIN: this kernel opens uprobe perf events only with it (CAP_PERFMON is not enough)",
        ]
        .contains(&last),
        "{}",
        run.stderr
    );
}
