//! Traced programs that try to blow up the agent's memory: executable
//! mappings of /dev/zero and of a 1 GiB sparse file, and a flood of
//! PQexec(NULL, 4 KB text) (nothing sent, 100k+ calls a second). The agent's
//! RSS stays within its budget; the flood's losses are counted and warned
//! about while they happen.

use std::time::Duration;

use dbtel_tests::{require_root, run_agent, Agent, RSS_BUDGET_MIB};

fn program() -> String {
    dbtel_tests::drivers::program("hostile.py")
        .display()
        .to_string()
}

#[test]
fn executable_mappings_of_a_device_and_a_huge_sparse_file_are_not_read() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &["--all", "--exporter", "none"],
        std::process::Stdio::null(),
    );
    let out = std::process::Command::new("python3")
        .args([program().as_str(), "maps", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with("done\n"),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let rss = run.max_rss_mib();
    assert!(rss < RSS_BUDGET_MIB, "max rss {rss} MiB\n{}", run.stderr);
}

#[test]
fn a_flood_of_calls_degrades_into_counted_drops_not_memory() {
    require_root();
    let run = run_agent(
        &[
            "--exporter",
            "none",
            "--",
            "python3",
            &program(),
            "flood",
            "8",
        ],
        b"",
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{run:?}");
    let calls: u64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("calls "))
        .expect("calls")
        .parse()
        .unwrap();
    assert!(calls > 100_000, "a flood: {calls} calls");
    let rss = run.max_rss_mib();
    assert!(rss < RSS_BUDGET_MIB, "max rss {rss} MiB\n{}", run.stderr);
    // Every call is a span or a counted loss.
    let summary = run.summary();
    let num = |label: &str| -> u64 {
        let at = summary
            .find(label)
            .unwrap_or_else(|| panic!("{label}: {summary}"));
        summary[..at]
            .trim_end()
            .rsplit([' ', ';', ','])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (spans, lost) = (num(" spans exported"), num(" lost in the ring buffer"));
    assert!(lost > 0, "{summary}");
    // Each call is one record; a span is closed per call by the next one.
    assert!(
        spans + lost >= calls - 1 && spans + lost <= calls + 1,
        "{spans} + {lost} vs {calls} calls: {summary}"
    );
    // Said while it happened (before the program's exit), not only at the end.
    let pid = run.stdout.lines().next().expect("its PID");
    let warned = run.stderr.find("ring buffer full: ").expect("a warning");
    let exited = run
        .stderr
        .find(&format!("process {pid} exited"))
        .unwrap_or(usize::MAX);
    assert!(warned < exited, "{}", run.stderr);
    let warnings = run.stderr.matches("ring buffer full: ").count();
    assert!(warnings <= 3, "rate-limited: {warnings} lines in 8 s");
}

/// A program that leaks 20,000 connection handles (never PQfinish), each
/// used once: the agent keeps at most its bound of them, counts the rest as
/// forgotten, and stays within its memory budget.
#[test]
fn leaked_connection_handles_are_held_to_the_bound() {
    require_root();
    let program = program();
    let run = run_agent(
        &[
            "--exporter",
            "none",
            "--",
            "python3",
            &program,
            "conns",
            "20000",
        ],
        b"",
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{run:?}");
    assert!(run.stdout.contains("done"), "{}", run.stdout);
    // Every call is a span, however far behind the agent was at the exit
    // (a debug build's last records were once dropped with the process).
    assert!(
        run.stderr.contains("dbtel: 20000 spans exported, 0 failed"),
        "{}",
        run.stderr
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("dbtel: bounds: "))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let evicted: u64 = line["dbtel: bounds: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // 4,096 per process; a quarter goes at once past it.
    assert!(
        (20_000 - 4_096..=20_000 - 3_072).contains(&evicted),
        "{line}"
    );
    let rss = run.max_rss_mib();
    assert!(rss < RSS_BUDGET_MIB, "max rss {rss} MiB\n{}", run.stderr);
}
