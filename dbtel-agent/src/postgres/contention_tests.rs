use super::*;

fn b(
    pid: i32,
    state: &str,
    query: &str,
    xact: Option<f64>,
    q: Option<f64>,
    wait: Option<(&str, &str)>,
) -> Backend {
    Backend {
        pid,
        usename: Some("alice".into()),
        application_name: format!("app{pid}"),
        client_addr: (pid == 3).then(|| "10.1.2.3".to_string()),
        client_port: Some(if pid == 3 { 50000 } else { -1 }),
        datname: Some("shop".into()),
        state: Some(state.into()),
        backend_type: "client backend".into(),
        xact_age_ms: xact,
        query_age_ms: q,
        state_age_ms: q,
        backend_xid: None,
        wait_event_type: wait.map(|w| w.0.into()),
        wait_event: wait.map(|w| w.1.into()),
        query: query.into(),
    }
}

fn sample() -> Vec<Backend> {
    vec![
        b(
            1,
            "idle in transaction",
            "UPDATE accounts SET balance = balance - 100 WHERE id = 42",
            Some(20_000.0),
            Some(19_000.0),
            Some(("Client", "ClientRead")),
        ),
        b(
            2,
            "active",
            "UPDATE accounts SET balance = 0 WHERE id = 42",
            Some(15_000.0),
            Some(15_000.0),
            Some(("Lock", "transactionid")),
        ),
        b(
            3,
            "active",
            "DELETE FROM accounts WHERE id = 42",
            Some(9_000.0),
            Some(9_000.0),
            Some(("Lock", "tuple")),
        ),
        b(
            4,
            "active",
            "SELECT pg_sleep(30)",
            Some(7_000.0),
            Some(7_000.0),
            Some(("Timeout", "PgSleep")),
        ),
        b(
            5,
            "idle",
            "SELECT 'x'",
            None,
            Some(1e6),
            Some(("Client", "ClientRead")),
        ),
        b(
            6,
            "active",
            "LOCK TABLE accounts",
            Some(100.0),
            Some(100.0),
            Some(("Lock", "relation")),
        ),
    ]
}

fn graph() -> Vec<(i32, Vec<i32>)> {
    vec![(3, vec![2]), (2, vec![1]), (6, vec![1, 2, 3])]
}

fn report() -> Report {
    build_report(
        "host=/tmp port=5432 user=postgres dbname=postgres".into(),
        SystemTime::UNIX_EPOCH,
        sample(),
        &graph(),
        2,
        Duration::from_secs(5),
    )
}

fn shape(n: &ChainNode) -> String {
    if n.blocked.is_empty() {
        n.pid.to_string()
    } else {
        format!(
            "{}({})",
            n.pid,
            n.blocked.iter().map(shape).collect::<Vec<_>>().join(" ")
        )
    }
}

#[test]
fn chains_are_trees_rooted_at_non_waiting_blockers() {
    let r = report();
    let shapes: Vec<String> = r.chains.iter().map(shape).collect();
    assert_eq!(shapes, vec!["1(2(3) 6)"]);
    let root = &r.chains[0];
    assert_eq!(root.state.as_deref(), Some("idle in transaction"));
    assert_eq!(
        root.query.as_deref(),
        Some("UPDATE accounts SET balance = balance - ? WHERE id = ?")
    );
    assert!(root.waiting_for.is_empty() && !root.cycle);
    let six = &root.blocked[1];
    assert_eq!(six.waiting_for, vec![1, 2, 3]);
    assert_eq!(
        root.blocked[0].blocked[0].client.as_deref(),
        Some("10.1.2.3:50000")
    );
    assert_eq!(root.size(), 4);
}

#[test]
fn cycles_and_unknown_pids() {
    let backends: HashMap<i32, Backend> = sample().into_iter().map(|b| (b.pid, b)).collect();
    // 2 and 3 wait for each other; 4 waits for a backend gone from pg_stat_activity.
    let chains = build_chains(
        &backends,
        &[(2, vec![3]), (3, vec![2]), (4, vec![99]), (5, vec![])],
    );
    let shapes: Vec<String> = chains.iter().map(shape).collect();
    assert_eq!(shapes, vec!["99(4)", "2(3)"]);
    assert!(chains[0].unknown && !chains[0].cycle);
    assert!(chains[1].cycle && chains[1].waiting_for == vec![3]);
    let text = format_text(&Report { chains, ..report() });
    assert!(
        text.contains("pid 99 (no longer in pg_stat_activity)"),
        "{text}"
    );
    assert!(text.contains("waits in a cycle"), "{text}");
}

#[test]
fn stats_sections() {
    let r = report();
    assert_eq!(r.transactions.active, 5);
    assert_eq!(
        r.transactions.longest,
        Some(LongestTransaction {
            pid: 1,
            age_ms: 20_000.0
        })
    );
    assert_eq!(
        r.transactions
            .idle_in_transaction
            .iter()
            .map(|s| s.pid)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(r.transactions.deadlocks, 2);
    assert_eq!(
        r.long_queries.iter().map(|s| s.pid).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(r.long_queries[2].query, "SELECT pg_sleep(?)");
    let waits: Vec<String> = r
        .lock_waits
        .iter()
        .map(|w| format!("{}/{}={}", w.wait_event_type, w.wait_event, w.count))
        .collect();
    assert_eq!(
        waits,
        vec!["Lock/relation=1", "Lock/transactionid=1", "Lock/tuple=1"]
    );
}

#[test]
fn text_report() {
    let text = format_text(&report());
    let expected = "\
dbtel contention report, 1970-01-01T00:00:00.000Z (host=/tmp port=5432 user=postgres dbname=postgres)

Blocking chains: 1 (3 backends waiting)
  pid 1 [user alice, app app1] idle in transaction; transaction open 20.0 s
      last query (started 19.0 s ago): UPDATE accounts SET balance = balance - ? WHERE id = ?
  ├─ pid 2 [user alice, app app2] active, waiting (Lock/transactionid) for pid 1; transaction open 15.0 s
  │      query (started 15.0 s ago): UPDATE accounts SET balance = ? WHERE id = ?
  │  └─ pid 3 [user alice, app app3, from 10.1.2.3:50000] active, waiting (Lock/tuple) for pid 2; transaction open 9.0 s
  │         query (started 9.0 s ago): DELETE FROM accounts WHERE id = ?
  └─ pid 6 [user alice, app app6] active, waiting (Lock/relation) for pid 1, 2, 3; transaction open 100 ms
         query (started 100 ms ago): LOCK TABLE accounts

Lock waits:
  Lock/relation       1
  Lock/transactionid  1
  Lock/tuple          1

Transactions: 5 open, longest 20.0 s (pid 1); 1 idle in transaction; 2 deadlocks so far
  idle in transaction: pid 1 [user alice, app app1] for 19.0 s: last query: UPDATE accounts SET balance = balance - ? WHERE id = ?

Queries running longer than 5 s:
  pid 2 [user alice, app app2] 15.0 s: UPDATE accounts SET balance = ? WHERE id = ?
  pid 3 [user alice, app app3] 9.0 s: DELETE FROM accounts WHERE id = ?
  pid 4 [user alice, app app4] 7.0 s: SELECT pg_sleep(?)
";
    assert_eq!(text, expected, "\n{text}");
}

#[test]
fn empty_report() {
    let r = build_report(
        "s".into(),
        SystemTime::UNIX_EPOCH,
        vec![],
        &[],
        0,
        Duration::from_secs(5),
    );
    let text = format_text(&r);
    assert!(
        text.contains("Blocking chains: none") && text.contains("Lock waits: none"),
        "{text}"
    );
    assert!(
        text.contains("Transactions: 0 open; 0 idle in transaction; 0 deadlocks so far"),
        "{text}"
    );
    assert!(
        text.contains("Queries running longer than 5 s: none"),
        "{text}"
    );
}

#[test]
fn json_report_has_no_literals() {
    let j = serde_json::to_value(report()).unwrap();
    assert_eq!(j["chains"][0]["pid"], 1);
    assert_eq!(j["chains"][0]["blocked"][0]["blocked"][0]["pid"], 3);
    assert_eq!(j["transactions"]["deadlocks"], 2);
    let s = j.to_string();
    assert!(
        !s.contains("42") && !s.contains("100 ") && !s.contains("'x'"),
        "{s}"
    );
}

#[test]
fn durations() {
    assert_eq!(fmt_ms(12.4), "12 ms");
    assert_eq!(fmt_ms(1500.0), "1.5 s");
    assert_eq!(fmt_ms(245_000.0), "4 min 05 s");
    assert_eq!(fmt_ms(7_380_000.0), "2 h 03 min");
    assert_eq!(clip(&"x".repeat(300)).chars().count(), TEXT_QUERY_MAX + 1);
}
