//! The MYSQL / MYSQL_RES / MYSQL_STMT offsets dbtel decodes from
//! libmariadb's accessors, checked on live handles: a C program on
//! libmariadb.so.3 connects to a throwaway MariaDB (TCP and unix socket) and
//! prints, field by field, what the public API says and what is at the
//! decoded offset; and Connector/C's own offsetof for each.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use dbtel_agent::mysql::layout::{self, MysqlLayout};
use dbtel_tests::{require_root, MariaDb};

const LIBMARIADB: &str = "/usr/lib/x86_64-linux-gnu/libmariadb.so.3";

fn build(dir: &std::path::Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/mysql_layout.c");
    let out = dir.join("mysql_layout");
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libmariadb"])
        .output()
        .expect("pkg-config");
    assert!(
        flags.status.success(),
        "pkg-config libmariadb: install libmariadb-dev (cargo xtask setup)"
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags.split_whitespace())
        .status()
        .expect("cc");
    assert!(status.success());
    let ldd = String::from_utf8(Command::new("ldd").arg(&out).output().unwrap().stdout).unwrap();
    assert!(
        ldd.contains(LIBMARIADB) || ldd.contains("/lib/x86_64-linux-gnu/libmariadb.so.3"),
        "{ldd}"
    );
    out
}

fn offsets(l: &MysqlLayout) -> Vec<(&'static str, u32)> {
    let e = l
        .endpoint
        .clone()
        .expect("the endpoint places on Debian's libmariadb");
    vec![
        ("thread_id", l.thread_id),
        ("last_errno", l.last_errno),
        ("sqlstate", l.sqlstate),
        ("affected_rows", l.affected_rows),
        ("field_count", l.field_count),
        ("server_status", l.server_status),
        ("server_version", l.server_version),
        ("host_info", l.host_info),
        ("db", l.db),
        ("host", e.host),
        ("unix_socket", e.unix_socket),
        ("port", e.port),
        ("res_row_count", l.res_row_count),
        ("stmt_mysql", l.stmt_mysql),
        ("stmt_id", l.stmt_id),
        ("stmt_last_errno", l.stmt_last_errno),
        ("stmt_sqlstate", l.stmt_sqlstate),
        ("stmt_affected_rows", l.stmt_affected_rows),
        ("stmt_row_count", l.stmt_row_count),
        ("stmt_field_count", l.stmt_field_count),
    ]
}

#[test]
fn decoded_offsets_read_what_the_api_returns() {
    require_root();
    let lib = layout::decode(LIBMARIADB, &std::fs::read(LIBMARIADB).unwrap()).unwrap();
    // The CLI has the same Connector/C linked in: the same layout.
    assert_eq!(
        layout::decode(
            "/usr/bin/mariadb",
            &std::fs::read("/usr/bin/mariadb").unwrap()
        )
        .unwrap(),
        lib
    );

    let db = MariaDb::start();
    db.cli("create database shop; create table shop.t (a int primary key, b text)");
    let dir = tempfile::tempdir().unwrap();
    let prog = build(dir.path());
    let offs = offsets(&lib);
    let out = Command::new(&prog)
        .arg(db.socket())
        .arg(db.port.to_string())
        .args(offs.iter().map(|(n, o)| format!("{n}={o}")))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut checks: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut offsetof: BTreeMap<String, u32> = BTreeMap::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[..] {
            ["check", name, api, raw] => {
                checks.insert(name.into(), (api.into(), raw.into()));
            }
            ["offsetof", name, n] => {
                offsetof.insert(name.into(), n.parse().unwrap());
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    // Every decoded offset is Connector/C's own.
    for (name, o) in &offs {
        assert_eq!(offsetof.get(*name), Some(o), "{name}");
    }
    // Every field read at its offset on live handles is what the API says.
    let differ: Vec<_> = checks.iter().filter(|(_, (api, raw))| api != raw).collect();
    assert!(differ.is_empty(), "API != raw: {differ:?}\n{stdout}");
    let names: Vec<&str> = checks.keys().map(String::as_str).collect();
    for want in [
        "tcp.host",
        "tcp.port",
        "tcp.unix_socket",
        "tcp.db",
        "tcp.thread_id",
        "tcp.host_info",
        "tcp.server_status",
        "socket.unix_socket",
        "socket.db",
        "select_db.db",
        "in_transaction.server_status",
        "server_version",
        "affected_rows",
        "field_count",
        "res_row_count",
        "more_results",
        "no_more_results",
        "last_errno",
        "sqlstate",
        "stmt_mysql",
        "stmt_id.first",
        "stmt_id.second",
        "stmt_row_count",
        "stmt_affected_rows",
        "stmt_last_errno",
        "stmt_sqlstate",
    ] {
        assert!(names.contains(&want), "{want} not checked: {names:?}");
    }
    // And the values are the ones a span needs.
    let api = |n: &str| checks[n].0.as_str();
    assert_eq!(
        (api("tcp.host"), api("tcp.port"), api("tcp.unix_socket")),
        ("127.0.0.1", db.port.to_string().as_str(), "(null)")
    );
    assert_eq!(api("socket.unix_socket"), db.socket().to_str().unwrap());
    assert_eq!(
        (api("tcp.db"), api("socket.db"), api("select_db.db")),
        ("shop", "(null)", "shop")
    );
    assert!(
        api("server_version").contains("MariaDB"),
        "{}",
        api("server_version")
    );
    assert_eq!(
        (
            api("affected_rows"),
            api("field_count"),
            api("res_row_count")
        ),
        ("3", "2", "2")
    );
    assert_eq!((api("more_results"), api("no_more_results")), ("1", "0"));
    assert_eq!((api("last_errno"), api("sqlstate")), ("1146", "42S02"));
    assert_eq!(
        (
            api("stmt_row_count"),
            api("stmt_affected_rows"),
            api("stmt_last_errno"),
            api("stmt_sqlstate")
        ),
        ("2", "1", "1062", "23000")
    );
    // SERVER_STATUS_IN_TRANS (1) inside BEGIN, not outside.
    let status = |n: &str| api(n).parse::<u32>().unwrap();
    assert_eq!(
        (
            status("socket.server_status") & 1,
            status("in_transaction.server_status") & 1
        ),
        (0, 1)
    );

    // The thread id is the server's connection id: the general log's, for both connections.
    let log = db.general_log();
    let connected: Vec<(u64, &str)> = log
        .iter()
        .filter(|e| e.command == "Connect")
        .map(|e| (e.connection, e.text.as_str()))
        .collect();
    let tcp: u64 = api("tcp.thread_id").parse().unwrap();
    let socket: u64 = api("socket.thread_id").parse().unwrap();
    assert!(
        connected
            .iter()
            .any(|c| c.0 == tcp && c.1.contains("TCP/IP")),
        "{connected:?}"
    );
    assert!(
        connected
            .iter()
            .any(|c| c.0 == socket && c.1.contains("Socket")),
        "{connected:?}"
    );
    assert!(
        log.iter().any(|e| e.connection == socket
            && e.command == "Prepare"
            && e.text == "select a from t where a >= ?"),
        "{log:?}"
    );
}
