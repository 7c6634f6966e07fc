use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dbtel-mycfg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

const SOCK: &str = "/run/mysqld/mysqld.sock";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn resolve(
    sock: Option<&str>,
    tcp: Option<(IpAddr, u16)>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<MysqlCatalogConfig, ConfigError> {
    MysqlCatalogConfig::from_sources(sock.map(PathBuf::from), tcp, file, env, home)
}

#[test]
fn defaults_from_the_server_socket() {
    let c = resolve(Some(SOCK), Some((LOCAL, 3307)), None, &no_env, None).unwrap();
    assert_eq!(c.socket.as_deref(), Some(Path::new(SOCK)));
    assert_eq!(c.host, None);
    assert_eq!(c.port, 3307);
    assert_eq!(c.user, "root");
    assert_eq!(c.password(), None);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(
        c.describe(),
        "unix socket /run/mysqld/mysqld.sock as root (the traced server's socket)"
    );
    assert_eq!(c.opts().socket(), Some(SOCK));
    assert_eq!(c.opts().user(), Some("root"));
    assert!(!c.opts().prefer_socket());
    assert_eq!(c.opts().stmt_cache_size(), 0);
    assert!(c.opts().max_allowed_packet().is_some() && c.opts().wait_timeout().is_some());
}

#[test]
fn defaults_from_the_server_tcp_listener_or_builtin() {
    let wild = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let c = resolve(None, Some((wild, 3399)), None, &no_env, None).unwrap();
    assert_eq!(
        (c.socket.clone(), c.host.as_deref(), c.port),
        (None, Some("127.0.0.1"), 3399)
    );
    assert_eq!(
        c.describe(),
        "TCP 127.0.0.1:3399 as root (the traced server's TCP listener)"
    );
    assert_eq!(c.opts().ip_or_hostname(), "127.0.0.1");
    assert_eq!(c.opts().tcp_port(), 3399);
    assert_eq!(c.opts().socket(), None);
    let specific = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let c = resolve(None, Some((specific, 3306)), None, &no_env, None).unwrap();
    assert_eq!(c.host.as_deref(), Some("10.1.2.3"));
    let port = |k: &str| (k == "MYSQL_TCP_PORT").then(|| "4002".to_string());
    let c = resolve(None, Some((wild, 3399)), None, &port, None).unwrap();
    assert_eq!(
        c.describe(),
        "TCP 127.0.0.1:4002 as root (host from the traced server's TCP listener, port from MYSQL_TCP_PORT)"
    );
    let c = resolve(None, None, None, &no_env, None).unwrap();
    assert_eq!((c.host.as_deref(), c.port), (Some("127.0.0.1"), 3306));
    assert_eq!(c.describe(), "TCP 127.0.0.1:3306 as root (default)");
}

#[test]
fn precedence_server_env_file() {
    let env = |k: &str| match k {
        "MYSQL_UNIX_PORT" => Some("/env/sock".to_string()),
        "MYSQL_TCP_PORT" => Some("4000".to_string()),
        _ => None,
    };
    // Environment over the server.
    let c = resolve(Some(SOCK), Some((LOCAL, 3307)), None, &env, None).unwrap();
    assert_eq!(c.socket.as_deref(), Some(Path::new("/env/sock")));
    assert_eq!(c.port, 4000);
    assert_eq!(
        c.describe(),
        "unix socket /env/sock as root (MYSQL_UNIX_PORT)"
    );
    // The file over the environment; a host other than localhost means TCP.
    let d = TempDir::new();
    let f = d.write(
        "my.cnf",
        "[client]\nhost=db.example\nport=4001\nuser=dbtel\npassword=s3cret\n",
    );
    let c = resolve(Some(SOCK), Some((LOCAL, 3307)), Some(&f), &env, None).unwrap();
    assert_eq!(
        (c.socket.clone(), c.host.as_deref(), c.port),
        (None, Some("db.example"), 4001)
    );
    assert_eq!((c.user.as_str(), c.password()), ("dbtel", Some("s3cret")));
    let o = format!("{} [client]", f.display());
    assert_eq!(
        c.describe(),
        format!("TCP db.example:4001 as dbtel ({o}; user from {o}; password from {o})")
    );
    assert!(!c.describe().contains("s3cret"));
    assert_eq!(c.opts().pass(), Some("s3cret"));
    // MYSQL_HOST alone: TCP to it, on the server's port.
    let env = |k: &str| (k == "MYSQL_HOST").then(|| "10.9.9.9".to_string());
    let c = resolve(Some(SOCK), Some((LOCAL, 3307)), None, &env, None).unwrap();
    assert_eq!(
        (c.socket.clone(), c.host.as_deref(), c.port),
        (None, Some("10.9.9.9"), 3307)
    );
    assert_eq!(
        c.describe(),
        "TCP 10.9.9.9:3307 as root (host from MYSQL_HOST, port from the traced server's TCP listener)"
    );
    let bad = |k: &str| (k == "MYSQL_TCP_PORT").then(|| "x".to_string());
    let e = resolve(None, None, None, &bad, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "environment variable MYSQL_TCP_PORT: port: not a port number: \"x\""
    );
}

#[test]
fn localhost_means_the_socket() {
    let d = TempDir::new();
    let f = d.write("my.cnf", "[client]\nhost=localhost\nport=4001\n");
    let c = resolve(Some(SOCK), None, Some(&f), &no_env, None).unwrap();
    assert_eq!(
        (c.socket.as_deref(), c.host.as_deref()),
        (Some(Path::new(SOCK)), None)
    );
    // No socket known: TCP to the loopback address.
    let c = resolve(None, None, Some(&f), &no_env, None).unwrap();
    assert_eq!(
        (c.socket.clone(), c.host.as_deref(), c.port),
        (None, Some("127.0.0.1"), 4001)
    );
}

#[test]
fn home_my_cnf_is_read_when_present() {
    let d = TempDir::new();
    let c = resolve(Some(SOCK), None, None, &no_env, Some(&d.0)).unwrap();
    assert_eq!(c.user, "root");
    d.write(".my.cnf", "[client]\nuser=me\n");
    let c = resolve(Some(SOCK), None, None, &no_env, Some(&d.0)).unwrap();
    assert_eq!(c.user, "me");
    assert!(c
        .describe()
        .contains(&format!("user from {}/.my.cnf [client]", d.0.display())));
}

#[test]
fn groups_in_file_order() {
    let d = TempDir::new();
    let text = "# comment\n; comment\n[mysqld]\nuser=mysql\nsocket=/srv/sock\n\
                [client-mariadb]\nuser=a\n[CLIENT]\nuser=b\n[mysqldump]\nuser=c\n\
                [client-server]\nconnect_timeout=7\n";
    let f = d.write("my.cnf", text);
    let c = resolve(None, None, Some(&f), &no_env, None).unwrap();
    assert_eq!(c.user, "b");
    assert_eq!(c.socket, None);
    assert_eq!(c.connect_timeout, Duration::from_secs(7));
}

#[test]
fn quoting_comments_and_keys() {
    let text = "[client]\n\
        password = \"pa ss#word\"  # trailing comment\n\
        user='it\\'s'\n\
        socket=/a/b#c\n\
        connect-timeout=0\n\
        loose_default-character-set=utf8mb4\n\
        ssl\n\
        Port = 3310\n";
    let lines = parse_option_file(text, Path::new("/x.cnf")).unwrap();
    let kv: Vec<(String, Option<String>)> = lines
        .into_iter()
        .map(|l| match l {
            OptionLine::Setting(Setting {
                key, value, group, ..
            }) => {
                assert_eq!(group, "client");
                (key, value)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let s = |k: &str, v: Option<&str>| (k.to_string(), v.map(String::from));
    assert_eq!(
        kv,
        vec![
            s("password", Some("pa ss#word")),
            s("user", Some("it's")),
            s("socket", Some("/a/b")),
            s("connect-timeout", Some("0")),
            s("default-character-set", Some("utf8mb4")),
            s("ssl", None),
            s("port", Some("3310")),
        ]
    );
    let d = TempDir::new();
    let f = d.write("my.cnf", text);
    let c = resolve(None, None, Some(&f), &no_env, None).unwrap();
    assert_eq!(
        (c.password(), c.user.as_str(), c.port),
        (Some("pa ss#word"), "it's", 3310)
    );
    assert_eq!(c.connect_timeout, Duration::from_secs(30));
    assert_eq!(unquote(r"a\sb\tc\\d\xe"), "a b\tc\\d\\xe");
}

#[test]
fn include_is_followed_relative_to_the_file() {
    let d = TempDir::new();
    std::fs::create_dir(d.0.join("conf.d")).unwrap();
    d.write("conf.d/extra.cnf", "[client]\nuser=included\npassword=p\n");
    let f = d.write(
        "my.cnf",
        "[client]\nuser=before\n!include conf.d/extra.cnf\n!includedir /etc/mysql/conf.d/\n\
         !include missing.cnf\n[client]\nport=3311\n",
    );
    let c = resolve(None, None, Some(&f), &no_env, None).unwrap();
    assert_eq!(
        (c.user.as_str(), c.password(), c.port),
        ("included", Some("p"), 3311)
    );
    assert!(c.describe().contains("extra.cnf [client]"));
    // A later setting overrides the included one.
    let f = d.write(
        "my2.cnf",
        "!include conf.d/extra.cnf\n[client]\nuser=after\n",
    );
    let c = resolve(None, None, Some(&f), &no_env, None).unwrap();
    assert_eq!(c.user, "after");
    // An include that includes itself ends with an error, not a hang.
    let f = d.write("loop.cnf", "!include loop.cnf\n");
    let e = resolve(None, None, Some(&f), &no_env, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nested more than 10 deep"), "{e}");
}

#[test]
fn bare_password_is_refused() {
    let d = TempDir::new();
    let f = d.write("my.cnf", "[client]\nuser=u\npassword\n");
    let e = resolve(None, None, Some(&f), &no_env, None).unwrap_err();
    assert!(matches!(e, ConfigError::Line { line: 3, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "MySQL option file {}, line 3: a bare `password`",
            f.display()
        )),
        "{msg}"
    );
    // Elsewhere it is ignored, and an empty one is an empty password.
    let f = d.write("ok.cnf", "[mysql]\npassword\n[client]\npassword=\n");
    let c = resolve(None, None, Some(&f), &no_env, None).unwrap();
    assert_eq!(c.password(), Some(""));
}

#[test]
fn file_errors_name_file_and_line() {
    let missing = Path::new("/nonexistent/dbtel/my.cnf");
    let e = resolve(None, None, Some(missing), &no_env, None).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("cannot read MySQL option file /nonexistent/dbtel/my.cnf: "),
        "{e}"
    );
    let d = TempDir::new();
    for (text, msg) in [
        ("user=x\n", "line 1: option before any [group]"),
        ("[client\n", "line 1: group header without a closing ]"),
        (
            "[client]\n\nport=99999\n",
            "line 3: port: not a port number: \"99999\"",
        ),
        (
            "[client]\nconnect-timeout=soon\n",
            "line 2: connect-timeout: not a number of seconds",
        ),
        ("[client]\n!include\n", "line 2: !include without a file"),
    ] {
        let f = d.write("bad.cnf", text);
        let e = resolve(None, None, Some(&f), &no_env, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}, {msg}", f.display())), "{e}");
    }
}

#[test]
fn debug_redacts_the_password() {
    let d = TempDir::new();
    let f = d.write("my.cnf", "[client]\npassword=hunter2\n");
    let c = resolve(Some(SOCK), None, Some(&f), &no_env, None).unwrap();
    let dbg = format!("{c:?}");
    assert!(dbg.contains("password: Some(\"<redacted>\")"), "{dbg}");
    assert!(!dbg.contains("hunter2"));
    assert!(!c.describe().contains("hunter2"));
}

#[test]
fn proc_net_unix_listening_sockets() {
    let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
        000000004187ce15: 00000002 00000000 00010000 0001 01 1737722 /tmp/x y/mysqld.sock\n\
        00000000909f29a2: 00000003 00000000 00000000 0001 03  1057 /run/mysqld/mysqld.sock\n\
        00000000aaaaaaaa: 00000002 00000000 00010000 0001 01 2000 @abstract\n\
        00000000bbbbbbbb: 00000002 00000000 00010000 0002 01 3000 /dgram\n\
        00000000cccccccc: 00000002 00000000 00010000 0001 01 4000 /not/ours\n\
        00000000dddddddd: 00000002 00000000 00010000 0001 01   999\n";
    let ours: HashSet<u64> = [1737722, 1057, 2000, 3000, 999].into();
    assert_eq!(
        listening_unix(text, &ours),
        vec!["/tmp/x y/mysqld.sock".to_string()]
    );
    assert_eq!(socket_inode("socket:[1737722]"), Some(1737722));
    assert_eq!(socket_inode("pipe:[5]"), None);
    assert_eq!(socket_inode("/dev/null"), None);
}

#[test]
fn proc_net_tcp_listening_ports() {
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
        \x20  0: 0100007F:84CF 00000000:0000 0A 00000000:00000000 00:00000000 00000000   102        0 1737721 1 0000000000000000 100 0 0 10 0\n\
        \x20  1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 637 1 0000000000000000 100 0 0 10 0\n\
        \x20  2: 0100007F:84CF 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000   102        0 5555 1 0000000000000000 20 4 30 10 -1\n";
    let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
        \x20  0: 00000000000000000000000000000000:0CEA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 4242 1 0000000000000000 100 0 0 10 0\n\
        \x20  1: 00000000000000000000000001000000:0CEB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 4243 1 0000000000000000 100 0 0 10 0\n";
    let ours: HashSet<u64> = [1737721, 5555, 4242, 4243].into();
    assert_eq!(listening_tcp(tcp, &ours), vec![(LOCAL, 0x84CF)]);
    assert_eq!(
        listening_tcp(tcp6, &ours),
        vec![
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 3306),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 3307)
        ]
    );
    assert_eq!(
        connect_address(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        "127.0.0.1"
    );
    assert_eq!(
        connect_address("::ffff:10.0.0.1".parse().unwrap()),
        "10.0.0.1"
    );
}

#[test]
fn server_listening_of_a_process_without_sockets() {
    // This test process listens on nothing.
    assert_eq!(server_listening(std::process::id()), (None, None));
    assert_eq!(server_listening(u32::MAX), (None, None));
}
