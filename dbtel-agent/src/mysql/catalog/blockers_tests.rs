use super::*;

fn session(id: u64, tid: u64, command: &str, state: &str, info: Option<&str>) -> ProcRow {
    ProcRow {
        id,
        tid,
        user: "root".into(),
        host: "localhost".into(),
        db: Some("d".into()),
        command: command.into(),
        state: Some(state.into()).filter(|s: &String| !s.is_empty()),
        info: info.map(Into::into),
        time_ms: Some(10),
    }
}

fn ask(connection: u64, tid: u32, lock: LockType) -> Ask {
    Ask {
        server: 1,
        tid,
        connection,
        start_ns: 5,
        lock,
    }
}

fn mdl(connection: u64, mode: &str, table: &str) -> MdlRow {
    MdlRow {
        connection,
        mode: mode.into(),
        lock_type: "Table metadata lock".into(),
        schema: "d".into(),
        table: table.into(),
    }
}

#[test]
fn a_row_lock_waits_on_the_transactions_holding_it() {
    // As measured on 10.11: 6 updates the row 5 holds (5 sleeps in its transaction).
    let snap = Snapshot {
        innodb: vec![InnodbRow {
            waiter: 6,
            mode: Some("X".into()),
            lock_type: Some("RECORD".into()),
            table: Some("`d`.`t`".into()),
            index: Some("PRIMARY".into()),
            blocker: 5,
            blocker_mode: Some("X".into()),
            blocker_query: None,
            blocker_age_ms: Some(2000),
        }],
        mdl: None,
        sessions: vec![
            session(5, 100, "Sleep", "", None),
            session(
                6,
                101,
                "Query",
                "Updating",
                Some("update t set v=11 where id=1"),
            ),
        ],
    };
    let f = snap.facts(&ask(6, 101, LockType::Row)).unwrap();
    assert_eq!(
        f,
        WaitFacts {
            waiter: 6,
            mode: Some("X".into()),
            table: Some("d.t".into()),
            index: Some("PRIMARY".into()),
            granularity: Some("RECORD".into()),
            blockers: vec![Blocker {
                connection_id: 5,
                query: None,
                state: "Sleep".into(),
                transaction_age_ms: Some(2000),
                mode: Some("X".into()),
            }],
        }
    );
    // A wait already over (or another connection's): nothing.
    assert_eq!(snap.facts(&ask(7, 102, LockType::Row)), None);
}

#[test]
fn a_running_blocker_s_statement_is_its_query() {
    let row = |blocker, q: Option<&str>| InnodbRow {
        waiter: 6,
        blocker,
        blocker_query: q.map(Into::into),
        ..InnodbRow::default()
    };
    let snap = Snapshot {
        innodb: vec![
            row(5, Some("select sleep(4)")),
            row(5, Some("select sleep(4)")),
            row(7, None),
        ],
        mdl: None,
        sessions: vec![
            session(5, 100, "Query", "User sleep", Some("select sleep(4)")),
            session(
                7,
                102,
                "Query",
                "Sending data",
                Some("select * from t for update"),
            ),
        ],
    };
    let f = snap.facts(&ask(6, 101, LockType::Table)).unwrap();
    let got: Vec<(u64, Option<&str>, &str)> = f
        .blockers
        .iter()
        .map(|b| (b.connection_id, b.query.as_deref(), b.state.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (5, Some("select sleep(4)"), "Query: User sleep"),
            (7, Some("select * from t for update"), "Query: Sending data"),
        ],
        "one per blocker, its statement from PROCESSLIST when INNODB_TRX has none"
    );
}

#[test]
fn ddl_waits_on_every_session_holding_a_lock_on_its_table() {
    // Measured: ALTER TABLE t (8) behind 5 and 6 (writers) and 7 (a reader in a transaction).
    let snap = Snapshot {
        innodb: vec![],
        mdl: Some(vec![
            MdlRow {
                connection: 8,
                mode: "MDL_INTENTION_EXCLUSIVE".into(),
                lock_type: "Schema metadata lock".into(),
                schema: "d".into(),
                table: String::new(),
            },
            mdl(5, "MDL_SHARED_WRITE", "t"),
            mdl(7, "MDL_SHARED_READ", "t"),
            mdl(8, "MDL_SHARED_UPGRADABLE", "t"),
            mdl(9, "MDL_SHARED_READ", "other"),
        ]),
        sessions: vec![
            session(5, 100, "Sleep", "", None),
            session(7, 102, "Query", "User sleep", Some("select sleep(6)")),
            session(
                8,
                103,
                "Query",
                "Waiting for table metadata lock",
                Some("alter table t add column w int"),
            ),
            session(9, 104, "Sleep", "", None),
        ],
    };
    // The probe names no THD for MDL: the waiter is found by its thread.
    let f = snap.facts(&ask(0, 103, LockType::Metadata)).unwrap();
    assert_eq!(
        (f.waiter, f.table.as_deref(), f.granularity.as_deref()),
        (8, Some("d.t"), Some("metadata"))
    );
    let got: Vec<(u64, Option<&str>)> = f
        .blockers
        .iter()
        .map(|b| (b.connection_id, b.mode.as_deref()))
        .collect();
    assert_eq!(
        got,
        [(5, Some("MDL_SHARED_WRITE")), (7, Some("MDL_SHARED_READ"))]
    );
    assert_eq!(f.blockers[1].state, "Query: User sleep");
}

#[test]
fn a_statement_waiting_for_its_first_lock_on_a_table_is_blocked_by_the_holders_of_the_table_it_names(
) {
    let snap = Snapshot {
        innodb: vec![],
        mdl: Some(vec![
            mdl(8, "MDL_EXCLUSIVE", "t"),
            mdl(9, "MDL_SHARED_READ", "t2"),
        ]),
        sessions: vec![
            session(
                8,
                103,
                "Query",
                "altering table",
                Some("alter table t add column w int"),
            ),
            session(
                10,
                105,
                "Query",
                "Waiting for table metadata lock",
                Some("SELECT * FROM `t` WHERE id = 1"),
            ),
        ],
    };
    let f = snap.facts(&ask(0, 105, LockType::Metadata)).unwrap();
    assert_eq!(f.table.as_deref(), Some("d.t"));
    assert_eq!(
        f.blockers
            .iter()
            .map(|b| b.connection_id)
            .collect::<Vec<_>>(),
        [8]
    );
}

#[test]
fn without_the_plugin_an_mdl_wait_is_known_but_its_blockers_are_not() {
    let snap = Snapshot {
        innodb: vec![],
        mdl: None,
        sessions: vec![session(
            8,
            103,
            "Query",
            "Waiting for table metadata lock",
            Some("alter table t add w int"),
        )],
    };
    let f = snap.facts(&ask(0, 103, LockType::Metadata)).unwrap();
    assert!(f.blockers.is_empty());
    // A session not waiting for a metadata lock (the wait is over): nothing.
    let over = Snapshot {
        sessions: vec![session(8, 103, "Query", "altering table", None)],
        ..Snapshot::default()
    };
    assert_eq!(over.facts(&ask(0, 103, LockType::Metadata)), None);
}

#[test]
fn table_names() {
    assert_eq!(unquote_table("`d`.`t`"), "d.t");
    assert_eq!(unquote_table("`my``db`.`t`"), "my`db.t");
    assert!(names("select * from `t` where", "t"));
    assert!(!names("select * from tt where", "t"));
    assert!(names("alter table t add", "T"));
}
