//! The MariaDB harness itself: a throwaway server whose general log records
//! what clients send, connection by connection (no agent involved).

use std::path::Path;

use dbtel_tests::{require_root, MariaDb};

#[test]
fn general_log_records_each_statement_with_its_connection() {
    require_root();
    let db = MariaDb::start();
    let server = db.pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{server}/exe")).unwrap(),
        Path::new("/usr/sbin/mariadbd")
    );
    assert!(db.socket().exists());

    let first: u64 = db.cli("select connection_id()").trim().parse().unwrap();
    let out = db.cli("create database shop;\nuse shop;\ncreate table t (a int, b text);\ninsert into t values (1, 'x'), (2, \"y\");\nselect a, b\n  from t\n order by a;");
    assert_eq!(out, "1\tx\n2\ty\n");
    // Over TCP, a connection of its own.
    let tcp = std::process::Command::new("mariadb")
        .args(db.tcp_client_args())
        .args([
            "--batch",
            "--skip-column-names",
            "-e",
            "select connection_id(), @@port",
        ])
        .output()
        .unwrap();
    assert!(
        tcp.status.success(),
        "{}",
        String::from_utf8_lossy(&tcp.stderr)
    );
    let tcp = String::from_utf8(tcp.stdout).unwrap();
    let (second, port) = tcp.trim().split_once('\t').unwrap();
    let second: u64 = second.parse().unwrap();
    assert_eq!(port, db.port.to_string());

    // The harness's readiness pings connected before `first`.
    let connects: Vec<u64> = db
        .general_log()
        .iter()
        .filter(|e| e.command == "Connect" && e.connection >= first)
        .map(|e| e.connection)
        .collect();
    assert_eq!(connects.len(), 3, "{:?}", db.general_log());
    db.wait_quit(&connects);
    let log = db.general_log_statements();
    let of = |conn: u64| -> Vec<(String, String)> {
        log.iter()
            .filter(|e| e.0 == conn)
            .map(|e| (e.1.clone(), e.2.clone()))
            .collect()
    };
    let q = |t: &str| ("Query".to_string(), t.to_string());
    assert_eq!(
        of(first),
        vec![
            ("Connect".into(), "root@localhost on  using Socket".into()),
            q("select connection_id()"),
            ("Quit".into(), "".into()),
        ]
    );
    // The CLI asks for the database after `use`, then sends Init DB.
    let third = log
        .iter()
        .map(|e| e.0)
        .find(|&c| c != first && c != second && c > first)
        .unwrap();
    assert_eq!(
        of(third),
        vec![
            ("Connect".into(), "root@localhost on  using Socket".into()),
            q("create database shop"),
            q("SELECT DATABASE()"),
            ("Init DB".into(), "shop".into()),
            q("create table t (a int, b text)"),
            q("insert into t values (1, 'x'), (2, \"y\")"),
            q("select a, b\n  from t\n order by a"),
            ("Quit".into(), "".into()),
        ]
    );
    assert_eq!(
        of(second),
        vec![
            ("Connect".into(), "root@127.0.0.1 on  using TCP/IP".into()),
            q("select connection_id(), @@port"),
            ("Quit".into(), "".into()),
        ]
    );

    drop(db);
    assert!(
        !Path::new(&format!("/proc/{server}")).exists(),
        "mariadbd {server} still runs after drop"
    );
}
