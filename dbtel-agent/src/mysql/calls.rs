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

/// What a call does, for reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends a statement and reads its first result header (OK, error or columns).
    Query,
    /// Sends a statement only (mysql_send_query).
    Send,
    /// Reads the result header of a statement sent before (mysql_read_query_result).
    ReadResult,
    /// Fetches a result set: all rows (store) or a streaming handle (use).
    StoreResult,
    UseResult,
    /// Moves to the next result of a multi-statement text or a CALL.
    NextResult,
    /// Server-side prepared statements: text learnt at prepare, executions by handle.
    Prepare,
    Execute,
    StmtStoreResult,
    StmtClose,
    /// Changes the current database (a database name argument).
    SelectDb,
    /// Changes user and database (COM_CHANGE_USER).
    ChangeUser,
    Commit,
    Rollback,
    /// Sets autocommit on (non-zero flag) or off.
    Autocommit,
    Connect,
    Close,
}

/// The handle a call's first argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    /// `MYSQL *`: a connection.
    Mysql,
    /// `MYSQL_STMT *`: a prepared statement (its `mysql` field is its connection).
    Stmt,
}

/// How a call says it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    /// `int` or `my_bool`: 0 is success.
    ZeroOk,
    /// A pointer: NULL is failure, or no result set (then `mysql_field_count` is 0).
    Pointer,
    /// mysql_next_result: 0 another result follows, -1 no more, > 0 error.
    NextResult,
    Void,
}

/// A text argument: a pointer, with its length in another argument or NUL-terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    None,
    /// NUL-terminated, at this argument.
    Nul(u8),
    /// (pointer argument, length argument): not NUL-terminated in general.
    Counted(u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub symbol: &'static str,
    pub role: Role,
    pub handle: Handle,
    /// SQL for Query/Send/Prepare; the database name for SelectDb, ChangeUser, Connect.
    pub text: Text,
    /// An integer argument that matters (mysql_autocommit's mode).
    pub flag: Option<u8>,
    pub returns: Returns,
}

const fn call(symbol: &'static str, role: Role, handle: Handle, text: Text, returns: Returns) -> Call {
    Call { symbol, role, handle, text, flag: None, returns }
}

use Handle::{Mysql, Stmt};
use Returns::{Pointer, Void, ZeroOk};
use Role::*;

/// Every probed call. Passwords (mysql_change_user's and mysql_real_connect's
/// third/fourth arguments) are never read.
pub const CALLS: &[Call] = &[
    // int mysql_real_query(MYSQL *, const char *q, unsigned long length)
    call("mysql_real_query", Query, Mysql, Text::Counted(2, 3), ZeroOk),
    // int mysql_query(MYSQL *, const char *q): strlen + mysql_real_query (nested).
    call("mysql_query", Query, Mysql, Text::Nul(2), ZeroOk),
    // int mysql_send_query(MYSQL *, const char *q, unsigned long length)
    call("mysql_send_query", Send, Mysql, Text::Counted(2, 3), ZeroOk),
    // my_bool mysql_read_query_result(MYSQL *)
    call("mysql_read_query_result", ReadResult, Mysql, Text::None, ZeroOk),
    // MYSQL_RES *mysql_store_result(MYSQL *) / mysql_use_result(MYSQL *)
    call("mysql_store_result", StoreResult, Mysql, Text::None, Pointer),
    call("mysql_use_result", UseResult, Mysql, Text::None, Pointer),
    // int mysql_next_result(MYSQL *)
    call("mysql_next_result", NextResult, Mysql, Text::None, Returns::NextResult),
    // int mysql_stmt_prepare(MYSQL_STMT *, const char *q, unsigned long length)
    call("mysql_stmt_prepare", Prepare, Stmt, Text::Counted(2, 3), ZeroOk),
    // int mysql_stmt_execute(MYSQL_STMT *)
    call("mysql_stmt_execute", Execute, Stmt, Text::None, ZeroOk),
    // int mysql_stmt_store_result(MYSQL_STMT *)
    call("mysql_stmt_store_result", StmtStoreResult, Stmt, Text::None, ZeroOk),
    // my_bool mysql_stmt_close(MYSQL_STMT *): frees the handle (its address may be reused).
    call("mysql_stmt_close", StmtClose, Stmt, Text::None, ZeroOk),
    // int mysql_select_db(MYSQL *, const char *db)
    call("mysql_select_db", SelectDb, Mysql, Text::Nul(2), ZeroOk),
    // my_bool mysql_change_user(MYSQL *, const char *user, const char *passwd, const char *db)
    call("mysql_change_user", ChangeUser, Mysql, Text::Nul(4), ZeroOk),
    // my_bool mysql_commit(MYSQL *) / mysql_rollback(MYSQL *): nest mysql_real_query.
    call("mysql_commit", Commit, Mysql, Text::None, ZeroOk),
    call("mysql_rollback", Rollback, Mysql, Text::None, ZeroOk),
    // my_bool mysql_autocommit(MYSQL *, my_bool mode): nests mysql_real_query.
    Call { symbol: "mysql_autocommit", role: Autocommit, handle: Mysql, text: Text::None, flag: Some(2), returns: ZeroOk },
    // MYSQL *mysql_real_connect(MYSQL *, host, user, passwd, const char *db, unsigned int port,
    //                           const char *unix_socket, unsigned long flags): NULL on failure.
    // The 7th and 8th arguments are on the stack; host, port and socket are read from the
    // MYSQL struct after it returns instead (see layout).
    call("mysql_real_connect", Connect, Mysql, Text::Nul(5), Pointer),
    // void mysql_close(MYSQL *)
    call("mysql_close", Close, Mysql, Text::None, Void),
];

/// The probed symbol names, in table order.
pub fn symbols() -> impl Iterator<Item = &'static str> {
    CALLS.iter().map(|c| c.symbol)
}

pub fn by_symbol(symbol: &str) -> Option<&'static Call> {
    CALLS.iter().find(|c| c.symbol == symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_argument_is_in_the_register_arguments() {
        // The kernel side reads the first six arguments from registers only.
        for c in CALLS {
            let args = match c.text {
                Text::None => vec![],
                Text::Nul(a) => vec![a],
                Text::Counted(p, l) => vec![p, l],
            };
            assert!(args.iter().chain(c.flag.iter()).all(|&a| (2..=6).contains(&a)), "{c:?}");
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = symbols().collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CALLS.len());
        assert_eq!(by_symbol("mysql_stmt_prepare").unwrap().text, Text::Counted(2, 3));
    }
}
