//! The MySQL C API calls dbtel probes and what their arguments mean
//! (MariaDB Connector/C 3.x and Oracle's libmysqlclient share these
//! signatures). Arguments are numbered from 1 as in the C prototypes.
//!
//! Nested calls, measured on Debian 12's libmariadb.so.3 (Connector/C
//! 3.3.20) and the `mariadb` CLI (the same code linked in) with a tracefs
//! uprobe on each function below, counting hits per client call (a C
//! program doing one call per run, MySQLdb 2.3.2, the CLI fed statements on
//! stdin), and read from the disassembly:
//! - mysql_query = strlen + tail jump to mysql_real_query (through the PLT in
//!   the .so, direct in the CLI): both probes fire, one statement.
//! - mysql_commit, mysql_rollback, mysql_autocommit call mysql_real_query
//!   ("COMMIT", "ROLLBACK", "SET autocommit=0|1"): both fire, one statement.
//! - mysql_real_connect runs MYSQL_INIT_COMMAND through mysql_real_query,
//!   mysql_use_result and mysql_next_result, nested inside it.
//! - mysql_real_query does NOT go through mysql_send_query or
//!   mysql_read_query_result (it calls the internal ma_simple_command and
//!   `mysql->methods->db_read_query_result`): send + read is a separate
//!   path (1 hit each), never nested in real_query.
//! - mysql_stmt_prepare/execute/store_result/close, mysql_select_db,
//!   mysql_change_user, mysql_store_result, mysql_use_result,
//!   mysql_next_result, mysql_close call no other probed function
//!   (mysql_close does not close open statements through mysql_stmt_close).
//!
//! Per statement, as clients call them: MySQLdb's cursor.execute is
//! mysql_real_query + mysql_store_result + mysql_next_result (3 calls; its
//! connect adds mysql_real_query for SET NAMES, and autocommit(False) and
//! commit() each nest a mysql_real_query). The CLI: mysql_real_query +
//! mysql_store_result + mysql_next_result per statement; `use db` is
//! mysql_query("SELECT DATABASE()") + mysql_use_result + mysql_select_db.
//! A prepared execution: mysql_stmt_execute (+ mysql_stmt_store_result if
//! the client buffers). So a query costs 2 traps on mysql_real_query (entry,
//! return) plus those of the result calls it is followed by; probing
//! mysql_query, commit, rollback and autocommit adds one nested trap each.
//!
//! So dbtel probes mysql_real_query, not the four calls around it (one
//! statement, one span, two traps fewer); and mysql_select_db and
//! mysql_change_user not at all: the kernel side reads MYSQL.db (and the
//! connection id) at each statement and reports a change.

use dbtel_common::{mycookie, MyCall};

/// One probed function: its call id and what its probes do (see
/// dbtel_common::mycookie): TEXT reads (pointer, length) from arguments 2
/// and 3, STMT says the first argument is a MYSQL_STMT*, EMIT sends a record
/// at entry, RETURN probes the return. Passwords (mysql_change_user's and
/// mysql_real_connect's arguments) are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    pub symbol: &'static str,
    pub call: MyCall,
    pub flags: u64,
}

const fn p(symbol: &'static str, call: MyCall, flags: u64) -> Probed {
    Probed {
        symbol,
        call,
        flags,
    }
}

use mycookie::{EMIT, RETURN, STMT, TEXT};

pub const PROBED: &[Probed] = &[
    // int mysql_real_query(MYSQL *, const char *q, unsigned long length)
    p("mysql_real_query", MyCall::RealQuery, TEXT | EMIT | RETURN),
    // int mysql_send_query(MYSQL *, const char *q, unsigned long length)
    p("mysql_send_query", MyCall::SendQuery, TEXT | EMIT | RETURN),
    // my_bool mysql_read_query_result(MYSQL *)
    p("mysql_read_query_result", MyCall::ReadQueryResult, RETURN),
    // MYSQL_RES *mysql_store_result(MYSQL *) / mysql_use_result(MYSQL *)
    p("mysql_store_result", MyCall::StoreResult, RETURN),
    p("mysql_use_result", MyCall::UseResult, RETURN),
    // int mysql_next_result(MYSQL *): 0 another result, -1 none, > 0 error
    p("mysql_next_result", MyCall::NextResult, RETURN),
    // int mysql_stmt_prepare(MYSQL_STMT *, const char *q, unsigned long length)
    p(
        "mysql_stmt_prepare",
        MyCall::StmtPrepare,
        TEXT | STMT | EMIT | RETURN,
    ),
    // int mysql_stmt_execute(MYSQL_STMT *)
    p(
        "mysql_stmt_execute",
        MyCall::StmtExecute,
        STMT | EMIT | RETURN,
    ),
    // int mysql_stmt_store_result(MYSQL_STMT *)
    p(
        "mysql_stmt_store_result",
        MyCall::StmtStoreResult,
        STMT | RETURN,
    ),
    // my_bool mysql_stmt_close(MYSQL_STMT *): frees the handle (its address may be reused)
    p("mysql_stmt_close", MyCall::StmtClose, STMT | EMIT),
    // void mysql_close(MYSQL *)
    p("mysql_close", MyCall::Close, EMIT),
];

/// The probed symbol names, in table order.
pub fn symbols() -> impl Iterator<Item = &'static str> {
    PROBED.iter().map(|c| c.symbol)
}

pub fn name(call: MyCall) -> &'static str {
    PROBED
        .iter()
        .find(|p| p.call == call)
        .map_or("mysql", |p| p.symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_once_and_texts_only_where_the_prototype_has_them() {
        let mut calls: Vec<u32> = PROBED.iter().map(|p| p.call as u32).collect();
        calls.sort();
        calls.dedup();
        assert_eq!(calls.len(), PROBED.len());
        for p in PROBED {
            // A text is (pointer, length) in arguments 2 and 3 of exactly these.
            let texts = matches!(
                p.call,
                MyCall::RealQuery | MyCall::SendQuery | MyCall::StmtPrepare
            );
            assert_eq!(p.flags & TEXT != 0, texts, "{p:?}");
            assert_eq!(
                p.flags & STMT != 0,
                p.symbol.starts_with("mysql_stmt_"),
                "{p:?}"
            );
            // A record at entry or at return: never a probe that sends nothing.
            assert!(p.flags & (EMIT | RETURN) != 0, "{p:?}");
        }
        assert_eq!(name(MyCall::StmtExecute), "mysql_stmt_execute");
    }
}
