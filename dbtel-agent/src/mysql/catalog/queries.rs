//! The catalog's statements, shared by the tracing worker and the
//! contention report. Each starts with [`MARKER`]: the server side drops
//! the spans of the session that sends them, so the agent never traces
//! itself.

use mysql_async::{prelude::*, Conn};

use super::blockers::{InnodbRow, MdlRow, ProcRow, Snapshot};

/// Every catalog statement starts with this.
pub const MARKER: &str = "/* dbtel catalog */";

/// Said when METADATA_LOCK_INFO is missing.
pub const NO_MDL_TABLE: &str = "the server has no information_schema.METADATA_LOCK_INFO \
    (INSTALL SONAME 'metadata_lock_info', or plugin-load-add=metadata_lock_info)";

/// One InnoDB transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrxRow {
    pub connection: u64,
    /// trx_started has second resolution.
    pub age_ms: Option<i64>,
    pub state: Option<String>,
    pub query: Option<String>,
}

/// The lock tables (InnoDB's when `innodb`, METADATA_LOCK_INFO's when
/// `mdl`) and PROCESSLIST, read one after the other. The flag says
/// METADATA_LOCK_INFO was asked for and is missing.
pub async fn lock_snapshot(
    conn: &mut Conn,
    innodb: bool,
    mdl: bool,
) -> Result<(Snapshot, bool), mysql_async::Error> {
    let mut snap = Snapshot::default();
    if innodb {
        let q = format!(
            "{MARKER} SELECT r.trx_mysql_thread_id, rl.lock_mode, rl.lock_type, rl.lock_table, rl.lock_index, \
             b.trx_mysql_thread_id, bl.lock_mode, b.trx_query, TIMESTAMPDIFF(MICROSECOND, b.trx_started, NOW(6)) DIV 1000 \
             FROM information_schema.INNODB_LOCK_WAITS w \
             JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id \
             JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id \
             JOIN information_schema.INNODB_LOCKS rl ON rl.lock_id = w.requested_lock_id \
             JOIN information_schema.INNODB_LOCKS bl ON bl.lock_id = w.blocking_lock_id"
        );
        type Row = (
            u64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            u64,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        snap.innodb = conn
            .query_map(q, |r: Row| InnodbRow {
                waiter: r.0,
                mode: r.1,
                lock_type: r.2,
                table: r.3,
                index: r.4,
                blocker: r.5,
                blocker_mode: r.6,
                blocker_query: r.7,
                blocker_age_ms: r.8,
            })
            .await?;
    }
    let mut mdl_missing = false;
    if mdl {
        let q = format!(
            "{MARKER} SELECT THREAD_ID, LOCK_MODE, LOCK_TYPE, TABLE_SCHEMA, TABLE_NAME FROM information_schema.METADATA_LOCK_INFO"
        );
        type Row = (
            u64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let got = conn
            .query_map(q, |r: Row| MdlRow {
                connection: r.0,
                mode: r.1.unwrap_or_default(),
                lock_type: r.2.unwrap_or_default(),
                schema: r.3.unwrap_or_default(),
                table: r.4.unwrap_or_default(),
            })
            .await;
        match got {
            Ok(rows) => snap.mdl = Some(rows),
            // 1109 ER_UNKNOWN_TABLE: the metadata_lock_info plugin is not loaded.
            Err(mysql_async::Error::Server(e)) if e.code == 1109 => mdl_missing = true,
            Err(e) => return Err(e),
        }
    }
    let q = format!(
        "{MARKER} SELECT ID, TID, USER, HOST, DB, COMMAND, STATE, INFO, CAST(TIME_MS AS UNSIGNED) FROM information_schema.PROCESSLIST"
    );
    type Row = (
        u64,
        u64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<u64>,
    );
    snap.sessions = conn
        .query_map(q, |r: Row| ProcRow {
            id: r.0,
            tid: r.1,
            user: r.2.unwrap_or_default(),
            host: r.3.unwrap_or_default(),
            db: r.4,
            command: r.5.unwrap_or_default(),
            state: r.6,
            info: r.7,
            time_ms: r.8,
        })
        .await?;
    Ok((snap, mdl_missing))
}

/// Every open InnoDB transaction.
pub async fn transactions(conn: &mut Conn) -> Result<Vec<TrxRow>, mysql_async::Error> {
    let q = format!(
        "{MARKER} SELECT trx_mysql_thread_id, TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) DIV 1000, trx_state, trx_query \
         FROM information_schema.INNODB_TRX"
    );
    conn.query_map(
        q,
        |(connection, age_ms, state, query): (u64, Option<i64>, Option<String>, Option<String>)| {
            TrxRow {
                connection,
                age_ms,
                state,
                query,
            }
        },
    )
    .await
}

/// Deadlocks InnoDB detected since the server started.
pub async fn deadlocks(conn: &mut Conn) -> Result<u64, mysql_async::Error> {
    let q = format!("{MARKER} SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_DEADLOCKS'");
    let v: Option<String> = conn.query_first(q).await?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}
