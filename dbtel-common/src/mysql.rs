//! MySQL/MariaDB: the client API's calls, attach cookies, struct offsets and
//! records, and the server's probe sites. Re-exported at the crate's root.

use crate::{Header, DB_CAP, TEXT_CAP};

/// MySQL C API calls probed (MariaDB Connector/C, libmysqlclient), in
/// [`Header::func`] of MySQL records and in their attach cookies.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MyCall {
    /// mysql_real_query(MYSQL *, const char *, unsigned long): also what
    /// mysql_query, mysql_commit, mysql_rollback and mysql_autocommit call.
    RealQuery = 1,
    SendQuery = 2,
    ReadQueryResult = 3,
    StoreResult = 4,
    UseResult = 5,
    NextResult = 6,
    StmtPrepare = 7,
    StmtExecute = 8,
    StmtStoreResult = 9,
    StmtClose = 10,
    Close = 11,
}

impl MyCall {
    pub const fn from_u32(v: u32) -> Option<Self> {
        use MyCall::*;
        Some(match v {
            1 => RealQuery,
            2 => SendQuery,
            3 => ReadQueryResult,
            4 => StoreResult,
            5 => UseResult,
            6 => NextResult,
            7 => StmtPrepare,
            8 => StmtExecute,
            9 => StmtStoreResult,
            10 => StmtClose,
            11 => Close,
            _ => return None,
        })
    }
}

/// Attach cookie of a MySQL client probe: the call, what the entry probe
/// does, and the layout slot (bits 32..) the executor fills in.
pub mod mycookie {
    /// Arguments 2 and 3 are the statement text (pointer, length): copy it.
    pub const TEXT: u64 = 1 << 8;
    /// The first argument is a MYSQL_STMT* (its connection is `stmt->mysql`).
    pub const STMT: u64 = 1 << 9;
    /// The entry sends a record (text calls and closes).
    pub const EMIT: u64 = 1 << 10;
    /// The return is probed: the entry keeps the handle for it.
    pub const RETURN: u64 = 1 << 11;
    pub const fn make(call: super::MyCall, flags: u64) -> u64 {
        call as u64 | flags
    }
    pub const fn call(c: u64) -> u32 {
        (c & 0xff) as u32
    }
    pub const fn layout(c: u64) -> u32 {
        (c >> 32) as u32
    }
}

/// Offsets into one MySQL client build's MYSQL, MYSQL_RES and MYSQL_STMT,
/// decoded at attach time from the library's own accessors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MysqlOffsets {
    pub thread_id: u32,
    pub last_errno: u32,
    pub sqlstate: u32,
    pub affected_rows: u32,
    pub field_count: u32,
    pub server_status: u32,
    pub server_version: u32,
    pub db: u32,
    /// `host`, `unix_socket`, `port`: valid when `endpoint_valid` is non-zero.
    pub host: u32,
    pub unix_socket: u32,
    pub port: u32,
    pub res_row_count: u32,
    pub stmt_mysql: u32,
    pub stmt_id: u32,
    pub stmt_last_errno: u32,
    pub stmt_sqlstate: u32,
    pub stmt_affected_rows: u32,
    pub stmt_row_count: u32,
    pub stmt_field_count: u32,
    pub endpoint_valid: u32,
    pub valid: u32,
    /// One copy of `head_len` bytes of the MYSQL from `head` holds the fields
    /// of it that lie in that window (0: none; at most [`MY_HEAD_CAP`]).
    pub head: u32,
    pub head_len: u32,
    /// The same for the MYSQL_STMT.
    pub stmt_head: u32,
    pub stmt_head_len: u32,
    pub _pad: u32,
}

/// Longest window of a MYSQL or MYSQL_STMT copied in one read (a user-memory
/// read costs far more than the bytes it copies).
pub const MY_HEAD_CAP: usize = 256;

/// A MySQL call entered ([`crate::Kind::MyCall`]). Variable-length: only
/// `TEXT_OFFSET + text_len` bytes are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MyCallEvent {
    /// `conn`: the handle (MYSQL* or MYSQL_STMT*).
    pub hdr: Header,
    /// The connection: the handle, or a statement's `mysql`.
    pub mysql: u64,
    pub text_len: u32,
    /// [`crate::qflags`].
    pub flags: u32,
    pub text: [u8; TEXT_CAP],
}

impl MyCallEvent {
    pub const TEXT_OFFSET: usize = core::mem::size_of::<Header>() + 16;
}

/// A MySQL call returned ([`crate::Kind::MyReturn`]), with the handle's state then.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MyReturnEvent {
    pub hdr: Header,
    pub mysql: u64,
    /// The return value (a pointer for the result calls).
    pub ret: u64,
    /// MYSQL.thread_id: the server's connection id.
    pub thread_id: u64,
    /// The handle's affected rows (u64::MAX: none, e.g. after an error).
    pub affected_rows: u64,
    /// Rows buffered: the returned MYSQL_RES's or the statement's.
    pub rows: u64,
    pub stmt_id: u64,
    /// The handle's last error number (0: none).
    pub errno: u32,
    /// Columns of the pending result (0: none).
    pub field_count: u32,
    /// MYSQL.server_status (SERVER_STATUS_IN_TRANS 1, AUTOCOMMIT 2, MORE_RESULTS_EXISTS 8).
    pub server_status: u32,
    pub _pad: u32,
    pub sqlstate: [u8; 8],
}

pub const MY_HOST_CAP: usize = 128;
pub const MY_SOCKET_CAP: usize = 112;
pub const MY_VERSION_CAP: usize = 64;

/// A connection's details ([`crate::Kind::MyConn`]): sent when a process first
/// uses a MYSQL, and when its database or connection id changed since.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MyConnEvent {
    pub hdr: Header,
    pub thread_id: u64,
    pub port: u32,
    pub _pad: u32,
    pub db: [u8; DB_CAP],
    pub host: [u8; MY_HOST_CAP],
    pub socket: [u8; MY_SOCKET_CAP],
    pub version: [u8; MY_VERSION_CAP],
}

/// MySQL/MariaDB server probe points, in [`Header::func`] of [`crate::Kind::MyServer`] records.
pub mod mysite {
    // 4 is free (dispatch_command, its return, mysql_execute_command and
    // my_message_sql were considered: Protocol::end_statement has it all).
    /// end_connection(THD*): who the ending connection was, for one whose
    /// session the catalog could not read while it lasted (a short one).
    /// args[0] = its thread_id; the text: the user name.
    pub const SESSION_USER: u32 = 1;
    /// As SESSION_USER; the text: its current database (none: no database).
    pub const SESSION_DB: u32 = 2;
    /// As SESSION_USER; the text: the client's IP address (none: a unix socket).
    pub const SESSION_ADDRESS: u32 = 3;
    /// thd_wait_begin(THD*, type) for a lock type: a lock wait begins.
    pub const WAIT_BEGIN: u32 = 5;
    /// thd_wait_end(THD*): the wait ended (sent only after a WAIT_BEGIN on that thread).
    pub const WAIT_END: u32 = 6;
    /// Protocol::end_statement(): a top-level statement ended (its text,
    /// outcome, server status, start time and row counts; see mysql/server/target.rs).
    pub const STATEMENT_DONE: u32 = 7;
    /// unlink_thd(THD*): a connection's THD is let go (every teardown, failed
    /// handshakes and killed clients included); args[0] = its thread_id.
    pub const CONN_END: u32 = 8;
    /// thd_deadlock_victim_preference(THD*, THD*): the deadlock detector
    /// weighs two members of a cycle; args[0], args[1] = their thread_ids.
    pub const DEADLOCK: u32 = 9;
}

const _: () = assert!(core::mem::size_of::<MysqlOffsets>() == 104);
const _: () = assert!(core::mem::size_of::<MyCallEvent>() == MyCallEvent::TEXT_OFFSET + TEXT_CAP);
const _: () = assert!(core::mem::size_of::<MyReturnEvent>() == 32 + 8 * 6 + 16 + 8);
const _: () = assert!(
    core::mem::size_of::<MyConnEvent>()
        == 32 + 16 + DB_CAP + MY_HOST_CAP + MY_SOCKET_CAP + MY_VERSION_CAP
);
