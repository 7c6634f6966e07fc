//! The catalog side of contention tracing against a real PostgreSQL: a blocking
//! chain A ← B ← C (A holds a row lock in an open transaction, B waits for
//! it, C queues behind B), reported by `dbtel-agent contention`, and the
//! catalog API the agent's main loop uses.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    sync::Arc,
    time::{Duration, Instant},
};

use dbtel_agent::postgres::catalog::{server_defaults, Catalog, CatalogConfig, Relation};
use dbtel_tests::{require_root, run_agent_env, Cluster};
use tokio_postgres::{Client, NoTls};

const PASSWORD: &str = "Pw-never-printed-7319";

/// A cluster where TCP connections need a password (scram) and the unix
/// socket is trusted (the harness's psql), with a monitoring role `mon`.
fn cluster() -> (Cluster, tempfile::TempDir) {
    let hba_dir = tempfile::Builder::new()
        .prefix("dbtel-hba-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(hba_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hba = hba_dir.path().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pg = Cluster::start_with(&["fsync=off", &format!("hba_file={}", hba.display())]);
    pg.psql(
        "postgres",
        &format!("create role mon login password '{PASSWORD}'; grant pg_monitor to mon"),
    );
    pg.psql(
        "postgres",
        "create table items (id int primary key, name text)",
    );
    pg.psql(
        "postgres",
        "insert into items select g, 'item ' || g from generate_series(1, 5) g",
    );
    (pg, hba_dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A session as `postgres` over the unix socket; returns it and its backend pid.
async fn session(pg: &Cluster, db: &str, app: &str) -> (Client, i32) {
    let (c, conn) =
        tokio_postgres::connect(&format!("{} application_name={app}", pg.dsn(db)), NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let pid: i32 = c
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (c, pid)
}

/// Sessions A, B, C of the chain, A ← B ← C, with their pids. B and C are
/// left waiting (their clients live in spawned tasks).
struct Chain {
    a: Client,
    pids: [i32; 3],
}

fn start_chain(rt: &tokio::runtime::Runtime, pg: &Cluster) -> Chain {
    let chain = rt.block_on(async {
        let (a, pa) = session(pg, "postgres", "dbtel-test-A").await;
        let (b, pb) = session(pg, "postgres", "dbtel-test-B").await;
        let (c, pc) = session(pg, "postgres", "dbtel-test-C").await;
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute("UPDATE items SET name = 'secret-literal-a' WHERE id = 1")
            .await
            .unwrap();
        // B and C in autocommit: once A commits, both finish and the chain is gone.
        tokio::spawn(async move {
            b.batch_execute("UPDATE items SET name = 'secret-literal-b' WHERE id = 1")
                .await
        });
        // C queues behind B only once B holds the tuple lock and waits.
        wait_for_lock_waits(pg, &[pb]);
        tokio::spawn(async move {
            c.batch_execute("DELETE FROM items WHERE id = 1 AND name <> 'secret-literal-c'")
                .await
        });
        wait_for_lock_waits(pg, &[pb, pc]);
        Chain {
            a,
            pids: [pa, pb, pc],
        }
    });
    chain
}

fn wait_for_lock_waits(pg: &Cluster, pids: &[i32]) {
    let list = pids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = pg.psql("postgres", &format!("select count(*) from pg_stat_activity where pid in ({list}) and wait_event_type = 'Lock'"));
        if n.trim() == pids.len().to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backends {list} never waited on a lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tcp_env(pg: &Cluster) -> Vec<(String, String)> {
    vec![
        ("PGHOST".into(), "127.0.0.1".into()),
        ("PGPORT".into(), pg.port.to_string()),
        ("PGUSER".into(), "mon".into()),
        ("PGPASSWORD".into(), PASSWORD.into()),
        ("PGDATABASE".into(), "postgres".into()),
    ]
}

fn contention(args: &[&str], env: &[(String, String)]) -> dbtel_tests::AgentRun {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut all = vec!["contention"];
    all.extend_from_slice(args);
    let run = run_agent_env(&all, &env, b"", Duration::from_secs(60));
    assert!(
        !run.stdout.contains(PASSWORD) && !run.stderr.contains(PASSWORD),
        "the password was printed: {run:?}"
    );
    run
}

fn find(nodes: &[serde_json::Value], pid: i32) -> Option<&serde_json::Value> {
    nodes.iter().find(|n| n["pid"] == pid)
}

#[test]
fn report_shows_the_blocking_chain_with_obfuscated_queries() {
    require_root();
    let (pg, _hba) = cluster();
    let rt = runtime();
    let chain = start_chain(&rt, &pg);
    let [pa, pb, pc] = chain.pids;
    std::thread::sleep(Duration::from_millis(600));

    // Text, with the settings in the environment (password auth over TCP).
    let run = contention(&["--long-query", "0.5"], &tcp_env(&pg));
    assert!(run.status.success(), "{run:?}");
    let text = &run.stdout;
    println!("{text}");
    assert!(
        !text.contains("secret-literal"),
        "literals obfuscated:\n{text}"
    );
    let line = |pid: i32| {
        text.lines()
            .find(|l| l.contains(&format!("pid {pid} [")))
            .unwrap_or_else(|| panic!("no line for pid {pid}:\n{text}"))
    };
    let (la, lb, lc) = (line(pa), line(pb), line(pc));
    assert!(
        la.contains("app dbtel-test-A")
            && la.contains("idle in transaction")
            && la.contains("transaction open"),
        "{la}\n{text}"
    );
    assert!(
        lb.contains(&format!("waiting (Lock/transactionid) for pid {pa}")),
        "{lb}\n{text}"
    );
    assert!(
        lc.contains(&format!("waiting (Lock/tuple) for pid {pb}")),
        "{lc}\n{text}"
    );
    // Drawn as a tree: A at the root, B under it, C under B.
    let indent = |l: &str| l.find("pid ").unwrap();
    assert!(
        indent(la) < indent(lb) && indent(lb) < indent(lc),
        "tree:\n{text}"
    );
    let pos = |l: &str| text.find(l).unwrap();
    assert!(pos(la) < pos(lb) && pos(lb) < pos(lc), "order:\n{text}");
    assert!(
        text.contains("last query (started")
            && text.contains("UPDATE items SET name = ? WHERE id = ?"),
        "{text}"
    );
    assert!(
        text.contains("DELETE FROM items WHERE id = ? AND name <> ?"),
        "{text}"
    );
    assert!(
        text.contains("Lock/transactionid") && text.contains("Lock/tuple"),
        "lock waits by event:\n{text}"
    );
    assert!(
        text.contains(&format!("idle in transaction: pid {pa} ")),
        "{text}"
    );
    assert!(text.contains("deadlocks so far"), "{text}");
    let long = &text[text
        .find("Queries running longer than 0.5 s:")
        .expect("long query section")..];
    assert!(
        long.contains(&format!("pid {pb} ")) && long.contains(&format!("pid {pc} ")),
        "{long}"
    );

    // JSON, with the settings from a conninfo file (and a wrong password in
    // the environment, which the file overrides).
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("catalog.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(
        f,
        "# dbtel catalog\nhost=127.0.0.1 port={}\nuser=mon password='{PASSWORD}' dbname=postgres",
        pg.port
    )
    .unwrap();
    drop(f);
    let env = vec![
        ("PGPASSWORD".to_string(), "wrong".to_string()),
        ("PGHOST".to_string(), "/nonexistent".to_string()),
    ];
    let run = contention(
        &["--json", "--catalog-config", conf.to_str().unwrap()],
        &env,
    );
    assert!(run.status.success(), "{run:?}");
    let j: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    let root = find(j["chains"].as_array().unwrap(), pa)
        .unwrap_or_else(|| panic!("chain rooted at A {pa}: {j:#}"));
    assert_eq!(root["state"], "idle in transaction");
    assert_eq!(root["application_name"], "dbtel-test-A");
    assert_eq!(root["query"], "UPDATE items SET name = ? WHERE id = ?");
    let b = find(root["blocked"].as_array().unwrap(), pb)
        .unwrap_or_else(|| panic!("B under A: {root:#}"));
    assert_eq!(b["waiting_for"], serde_json::json!([pa]));
    assert_eq!(b["wait_event"], "transactionid");
    let c =
        find(b["blocked"].as_array().unwrap(), pc).unwrap_or_else(|| panic!("C under B: {b:#}"));
    assert_eq!(c["waiting_for"], serde_json::json!([pb]));
    assert_eq!(c["query"], "DELETE FROM items WHERE id = ? AND name <> ?");
    assert!(j["transactions"]["active"].as_u64().unwrap() >= 2, "{j:#}");
    assert!(!run.stdout.contains("secret-literal"));
    assert!(!j["server"].as_str().unwrap().contains("password"));

    // Once A commits, the chain is gone.
    rt.block_on(chain.a.batch_execute("COMMIT")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = contention(&[], &tcp_env(&pg));
        assert!(run.status.success(), "{run:?}");
        if run.stdout.contains("Blocking chains: none") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chain still reported after COMMIT:\n{}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unreachable_or_refused_catalog_is_a_clear_error() {
    require_root();
    let (pg, _hba) = cluster();

    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        ("PGHOST".to_string(), "127.0.0.1".to_string()),
        ("PGPORT".to_string(), port.to_string()),
        ("PGPASSWORD".to_string(), PASSWORD.to_string()),
    ];
    let run = contention(&[], &env);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains("cannot connect to PostgreSQL")
            && run.stderr.contains(&format!("port={port}")),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    // Wrong password: the server's refusal, not the password.
    let mut env = tcp_env(&pg);
    env.retain(|(k, _)| k != "PGPASSWORD");
    env.push(("PGPASSWORD".into(), format!("{PASSWORD}-wrong")));
    let run = contention(&[], &env);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains("password authentication failed"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("-wrong"), "{}", run.stderr);

    // A conninfo file with a key the catalog does not know.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(
        &conf,
        format!("host=127.0.0.1 password={PASSWORD} sslcert=/x\n"),
    )
    .unwrap();
    let run = contention(&["--catalog-config", conf.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains("unknown key \"sslcert\"") && run.stderr.contains("bad.conf"),
        "{}",
        run.stderr
    );
}

#[test]
fn catalog_api_against_a_real_server() {
    require_root();
    let (pg, _hba) = cluster();
    pg.psql("postgres", "create database shop");
    pg.psql(
        "shop",
        "create schema sales; create table sales.orders (id int)",
    );
    let oid = |db: &str, sql: &str| -> u32 { pg.psql(db, sql).trim().parse().unwrap() };
    let shop = oid(
        "postgres",
        "select oid from pg_database where datname = 'shop'",
    );
    let postgres = oid(
        "postgres",
        "select oid from pg_database where datname = 'postgres'",
    );
    let orders = oid("shop", "select 'sales.orders'::regclass::oid");
    let items = oid("postgres", "select 'items'::regclass::oid");

    // Defaults from the running postmaster: its socket directory and port.
    let postmaster: u32 = std::fs::read_to_string(pg.dir.path().join("data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let defaults = server_defaults(postmaster).expect("postmaster.pid readable");
    assert_eq!(defaults, (pg.socket_dir().display().to_string(), pg.port));

    let rt = runtime();
    let chain = start_chain(&rt, &pg);
    let [pa, pb, pc] = chain.pids;
    let env = |k: &str| match k {
        "PGAPPNAME" => Some("dbtel-catalog-test".to_string()),
        _ => None,
    };
    let cfg = CatalogConfig::from_sources(&env, None, Some(defaults), None).unwrap();
    let cat = Arc::new(Catalog::new(cfg).with_long_query(Duration::ZERO));
    rt.block_on(async {
        // Relation names: this database, another database (own connection), a shared catalog.
        let rel = |schema: &str, name: &str| {
            Some(Relation {
                schema: schema.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            cat.relation_name(postgres, items).await.unwrap(),
            rel("public", "items")
        );
        assert_eq!(
            cat.relation_name(shop, orders).await.unwrap(),
            rel("sales", "orders")
        );
        assert_eq!(
            cat.relation_name(0, 1262).await.unwrap(),
            rel("pg_catalog", "pg_database")
        );
        assert_eq!(
            cat.relation_name(postgres, 4_000_000_000).await.unwrap(),
            None
        );
        assert!(
            cat.relation_name(4_000_000_000, 1).await.is_err(),
            "unknown database"
        );
        assert_eq!(
            format!("{}", rel("sales", "orders").unwrap()),
            "sales.orders"
        );

        let blockers = cat.blockers(pb).await.unwrap();
        assert_eq!(blockers.iter().map(|b| b.pid).collect::<Vec<_>>(), vec![pa]);
        let a = &blockers[0];
        assert_eq!(a.state, "idle in transaction");
        assert_eq!(
            a.query, "UPDATE items SET name = 'secret-literal-a' WHERE id = 1",
            "raw text: the caller obfuscates"
        );
        assert_eq!(a.application_name, "dbtel-test-A");
        assert_eq!(a.usename.as_deref(), Some("postgres"));
        assert!(a.xact_age_ms.is_some_and(|x| x > 0.0) && a.query_age_ms.is_some());
        assert_eq!(a.client_addr, None, "unix socket");
        assert_eq!(
            cat.blockers(pc)
                .await
                .unwrap()
                .iter()
                .map(|b| b.pid)
                .collect::<Vec<_>>(),
            vec![pb]
        );
        assert!(cat.blockers(pa).await.unwrap().is_empty());

        let mut graph = cat.blocking_graph().await.unwrap();
        graph.sort();
        let mut expected = vec![(pb, vec![pa]), (pc, vec![pb])];
        expected.sort();
        assert_eq!(graph, expected);

        let b = cat.backend(pb).await.unwrap().expect("backend B");
        assert_eq!(b.state.as_deref(), Some("active"));
        assert_eq!(b.wait_event.as_deref(), Some("transactionid"));
        assert_eq!(b.datname.as_deref(), Some("postgres"));
        let a = cat.backend(pa).await.unwrap().expect("backend A");
        assert!(a.backend_xid.is_some(), "A wrote: it has an xid");
        assert_eq!(cat.backend(-1).await.unwrap(), None);
        let all = cat.backends().await.unwrap();
        for p in [pa, pb, pc] {
            assert!(all.iter().any(|b| b.pid == p), "{p} in backends");
        }
        assert!(
            all.iter()
                .all(|b| b.application_name != "dbtel-catalog-test"),
            "the catalog's own connection is left out"
        );

        let stats = cat.stats().await.unwrap();
        assert!(stats.active_transactions >= 3, "{stats:?}");
        assert!(
            stats.idle_in_transaction.iter().any(|i| i.pid == pa),
            "{stats:?}"
        );
        assert!(stats.long_queries.iter().any(|q| q.pid == pb), "{stats:?}");
        assert!(
            stats
                .lock_waits
                .iter()
                .any(|w| w.wait_event == "transactionid" && w.count == 1),
            "{stats:?}"
        );
        assert!(stats.deadlocks >= 0);

        // The poller publishes snapshots.
        let (task, mut rx) =
            dbtel_agent::postgres::catalog::spawn_poller(cat.clone(), Duration::from_millis(100));
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.taken_at.is_some()),
        )
        .await
        .unwrap()
        .unwrap();
        let snap = rx.borrow().clone();
        assert!(snap.backends.contains_key(&pa) && snap.backends.contains_key(&pc));
        assert!(snap.stats.idle_in_transaction.iter().any(|i| i.pid == pa));
        task.abort();
    });

    // The catalog's connection killed under it: the next calls reconnect.
    pg.psql("postgres", "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'dbtel-catalog-test'");
    rt.block_on(async {
        let mut ok = false;
        for _ in 0..5 {
            if cat.backend(pa).await.is_ok_and(|b| b.is_some()) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "the catalog reconnected");
        assert_eq!(
            cat.relation_name(shop, orders).await.unwrap().unwrap().name,
            "orders",
            "cached"
        );
    });
    drop(chain);
}
