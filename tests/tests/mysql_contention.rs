//! `dbtel-agent contention --server-pid PID` on a MariaDB server while
//! sessions block each other: A holds row 1 in its transaction, B's UPDATE
//! waits for it, C holds a read of t in its transaction, D's ALTER TABLE
//! waits for the metadata locks of A, B and C. Each session tells its own
//! connection id; the report must draw B and D under A, name the locks, and
//! count the waits and open transactions.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, run_agent, MariaDb};

/// A mariadb CLI session in the background, running `sql` (its first
/// statement prints its connection id).
fn session(db: &MariaDb, sql: &str) -> (Child, u64) {
    let mut child = Command::new("mariadb")
        .args(db.client_args())
        .args([
            "--batch",
            "--unbuffered",
            "--skip-column-names",
            "shop",
            "-e",
        ])
        .arg(format!("select connection_id(); {sql}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (
        child,
        line.trim().parse().unwrap_or_else(|_| panic!("{line:?}")),
    )
}

#[test]
fn blocking_chains_of_row_and_metadata_locks() {
    require_root();
    let db = MariaDb::start_with(&["--plugin-load-add=metadata_lock_info"]);
    db.cli("create database shop; create table shop.t (id int primary key, v int); insert into shop.t values (1, 0), (2, 0)");
    let (mut a, a_id) = session(
        &db,
        "begin; update t set v = 1 where id = 1; select sleep(4); commit",
    );
    std::thread::sleep(Duration::from_millis(300));
    let (mut b, b_id) = session(&db, "update t set v = 2 where id = 1");
    let (mut c, c_id) = session(
        &db,
        "begin; select v from t where id = 2; select sleep(4); commit",
    );
    std::thread::sleep(Duration::from_millis(300));
    let (mut d, d_id) = session(&db, "alter table t add column w int");
    std::thread::sleep(Duration::from_millis(500));

    let pid = db.pid().to_string();
    let json = run_agent(
        &["contention", "--server-pid", &pid, "--json"],
        b"",
        Duration::from_secs(30),
    );
    let text = run_agent(
        &["contention", "--server-pid", &pid, "--long-query", "0.2"],
        b"",
        Duration::from_secs(30),
    );
    for s in [&mut a, &mut b, &mut c, &mut d] {
        assert!(s.wait().unwrap().success());
    }
    assert!(json.status.success(), "{json:?}");
    let r: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.stdout));

    let chains = r["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{}", json.stdout);
    let root = &chains[0];
    assert_eq!(root["connection_id"], a_id);
    assert_eq!(root["query"], "select sleep(?)");
    assert_eq!(root["state"], "Query: User sleep");
    let under: Vec<&serde_json::Value> = root["blocked"].as_array().unwrap().iter().collect();
    let ids: Vec<u64> = under
        .iter()
        .map(|n| n["connection_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [b_id, d_id], "{}", json.stdout);
    assert_eq!(under[0]["waiting_on"], "row lock X on shop.t (PRIMARY)");
    assert_eq!(under[0]["waiting_for"], serde_json::json!([a_id]));
    assert_eq!(under[0]["query"], "update t set v = ? where id = ?");
    assert_eq!(under[1]["waiting_on"], "metadata lock on shop.t");
    let mut d_waits_for: Vec<u64> = under[1]["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    d_waits_for.sort();
    assert_eq!(
        d_waits_for,
        [a_id, b_id, c_id],
        "every session with a lock on t"
    );
    assert_eq!(
        r["lock_waits"],
        serde_json::json!([{"lock_type": "row", "count": 1}, {"lock_type": "metadata", "count": 1}])
    );
    // A, B and C have InnoDB transactions (D's ALTER has none yet).
    assert_eq!(r["transactions"]["open"], 3);
    assert_eq!(r["transactions"]["longest"][0], a_id);
    assert_eq!(r["transactions"]["deadlocks"], 0);

    assert!(text.status.success(), "{text:?}");
    for want in [
        "Blocking chains: 1 (2 sessions waiting)".to_string(),
        format!("  connection {a_id} [root@localhost] Query: User sleep; transaction open "),
        format!("  ├─ connection {b_id} [root@localhost] Query: Updating, waiting for a row lock X on shop.t (PRIMARY) held by {a_id}"),
        format!("  └─ connection {d_id} [root@localhost] Query: Waiting for table metadata lock, waiting for a metadata lock on shop.t held by "),
        "Transactions: 3 open, longest ".to_string(),
        "Queries running longer than 0.2 s:".to_string(),
    ] {
        assert!(text.stdout.contains(&want), "missing {want:?} in\n{}", text.stdout);
    }
    assert!(
        !text.stdout.contains("dbtel catalog"),
        "the report's own session is not in it"
    );
}
