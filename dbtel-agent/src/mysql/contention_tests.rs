use super::*;
use crate::mysql::catalog::blockers::{InnodbRow, MdlRow, ProcRow};

fn session(id: u64, command: &str, state: &str, info: Option<&str>, time_ms: u64) -> ProcRow {
    ProcRow {
        id,
        tid: 100 + id,
        user: "app".into(),
        host: "localhost".into(),
        db: Some("shop".into()),
        command: command.into(),
        state: Some(state.into()).filter(|s: &String| !s.is_empty()),
        info: info.map(Into::into),
        time_ms: Some(time_ms),
    }
}

fn row_wait(waiter: u64, blocker: u64) -> InnodbRow {
    InnodbRow {
        waiter,
        mode: Some("X".into()),
        lock_type: Some("RECORD".into()),
        table: Some("`shop`.`t`".into()),
        index: Some("PRIMARY".into()),
        blocker,
        blocker_mode: Some("X".into()),
        blocker_query: None,
        blocker_age_ms: Some(9000),
    }
}

fn trx(connection: u64, age_ms: i64, query: Option<&str>) -> TrxRow {
    TrxRow {
        connection,
        age_ms: Some(age_ms),
        state: Some("RUNNING".into()),
        query: query.map(Into::into),
    }
}

/// 5 idles in its transaction holding row 1; 6 waits for it, and 7 for 6
/// (which holds row 2); 9 runs ALTER TABLE behind 5's metadata lock; 8 runs long.
fn sample() -> (Snapshot, Vec<TrxRow>) {
    let snap = Snapshot {
        innodb: vec![row_wait(6, 5), row_wait(7, 6)],
        mdl: Some(vec![
            MdlRow {
                connection: 5,
                mode: "MDL_SHARED_WRITE".into(),
                lock_type: "Table metadata lock".into(),
                schema: "shop".into(),
                table: "t".into(),
            },
            MdlRow {
                connection: 9,
                mode: "MDL_SHARED_UPGRADABLE".into(),
                lock_type: "Table metadata lock".into(),
                schema: "shop".into(),
                table: "t".into(),
            },
        ]),
        sessions: vec![
            session(5, "Sleep", "", None, 9000),
            session(
                6,
                "Query",
                "Updating",
                Some("update t set v = 2 where id = 1"),
                3000,
            ),
            session(
                7,
                "Query",
                "Updating",
                Some("update t set v = 3 where id = 2"),
                2000,
            ),
            session(8, "Query", "User sleep", Some("select sleep(30)"), 12000),
            session(
                9,
                "Query",
                "Waiting for table metadata lock",
                Some("alter table t add w int"),
                1000,
            ),
        ],
    };
    let trx = vec![
        trx(5, 9000, None),
        trx(6, 3000, Some("update t set v = 2 where id = 1")),
        trx(7, 2500, None),
    ];
    (snap, trx)
}

#[test]
fn chains_of_row_and_metadata_locks() {
    let (snap, trx) = sample();
    let r = build_report(
        "socket".into(),
        "now".into(),
        &snap,
        &trx,
        3,
        Duration::from_secs(5),
        false,
    );
    assert_eq!(r.chains.len(), 1, "{r:#?}");
    let root = &r.chains[0];
    assert_eq!(
        (root.connection_id, root.state.as_deref(), root.cycle),
        (5, Some("Sleep"), false)
    );
    let under: Vec<u64> = root.blocked.iter().map(|n| n.connection_id).collect();
    assert_eq!(under, [6, 9]);
    assert_eq!(
        root.blocked[0].waiting_on.as_deref(),
        Some("row lock X on shop.t (PRIMARY)")
    );
    assert_eq!(
        root.blocked[0].query.as_deref(),
        Some("update t set v = ? where id = ?")
    );
    assert_eq!(root.blocked[0].blocked[0].connection_id, 7);
    assert_eq!(
        root.blocked[1].waiting_on.as_deref(),
        Some("metadata lock on shop.t")
    );
    assert_eq!(
        r.lock_waits,
        [
            WaitCount {
                lock_type: "row".into(),
                count: 2
            },
            WaitCount {
                lock_type: "metadata".into(),
                count: 1
            }
        ]
    );
    assert_eq!(
        (
            r.transactions.open,
            r.transactions.longest,
            r.transactions.deadlocks
        ),
        (3, Some((5, 9000)), 3)
    );
    assert_eq!(
        r.transactions
            .idle_in_transaction
            .iter()
            .map(|l| l.connection_id)
            .collect::<Vec<_>>(),
        [5]
    );
    assert_eq!(
        r.long_queries
            .iter()
            .map(|l| (l.connection_id, l.query.as_str()))
            .collect::<Vec<_>>(),
        [(8, "select sleep(?)")]
    );

    let text = format_text(&r);
    for want in [
        "Blocking chains: 1 (3 sessions waiting)",
        "  connection 5 [app@localhost] Sleep; transaction open 9.0 s",
        "  ├─ connection 6 [app@localhost] Query: Updating, waiting for a row lock X on shop.t (PRIMARY) held by 5; transaction open 3.0 s",
        "  │      query (running 3.0 s): update t set v = ? where id = ?",
        "  │  └─ connection 7 [app@localhost] Query: Updating, waiting for a row lock X on shop.t (PRIMARY) held by 6",
        "  └─ connection 9 [app@localhost] Query: Waiting for table metadata lock, waiting for a metadata lock on shop.t held by 5",
        "  row       2",
        "Transactions: 3 open, longest 9.0 s (connection 5); 1 idle in transaction; 3 deadlocks so far",
        "  connection 8 [app] 12.0 s: select sleep(?)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn a_cycle_is_a_chain_of_its_own() {
    let snap = Snapshot {
        innodb: vec![row_wait(6, 7), row_wait(7, 6)],
        mdl: None,
        sessions: vec![
            session(6, "Query", "Updating", None, 10),
            session(7, "Query", "Updating", None, 10),
        ],
    };
    let r = build_report(
        "s".into(),
        "now".into(),
        &snap,
        &[],
        0,
        Duration::from_secs(5),
        true,
    );
    assert_eq!(r.chains.len(), 1);
    assert!(r.chains[0].cycle);
    assert_eq!(r.chains[0].size(), 2);
    let text = format_text(&r);
    assert!(text.contains("** waits in a cycle (deadlock) **"), "{text}");
    assert!(text.contains("metadata lock holders unknown"), "{text}");
}

#[test]
fn nothing_waits() {
    let r = build_report(
        "s".into(),
        "now".into(),
        &Snapshot::default(),
        &[],
        0,
        Duration::from_secs(5),
        false,
    );
    let text = format_text(&r);
    assert!(
        text.contains("Blocking chains: none") && text.contains("Lock waits: none"),
        "{text}"
    );
    assert!(serde_json::to_string(&r).unwrap().contains("\"chains\":[]"));
}
