//! Offsets of the MYSQL, MYSQL_RES and MYSQL_STMT fields dbtel reads, learnt
//! by decoding the client library's own accessors (`mysql_thread_id` is
//! `mov rax, [rdi + 0x350]; ret`), never from a table of builds. A library
//! whose accessors do not decode is refused, naming the accessor.
//!
//! Where no accessor reads a field:
//! - the current database `MYSQL.db`: mysql_select_db stores the `strdup`ed
//!   name into it (`mov [mysql + db], rax` right after the call);
//! - `MYSQL.server_status`: mysql_more_results reads it, and
//!   mysql_stmt_more_results reads it through `MYSQL_STMT.mysql` (which is
//!   how that back-pointer is found too);
//! - `MYSQL_STMT.stmt_id`: mysql_stmt_reset compares it with 0 and -1;
//! - host, unix_socket and port have no accessor at all (mysql_get_host_info
//!   returns a description, "127.0.0.1 via TCP/IP"). MYSQL is a public struct
//!   (applications read it directly, so its order is part of the ABI):
//!   `char *host, *user, *passwd, *unix_socket, *server_version, *host_info,
//!   *info, *db` and `unsigned long thread_id, packet_length; unsigned int
//!   port; unsigned long client_flag, server_capabilities; unsigned int
//!   protocol_version`, in MariaDB's and Oracle's headers alike. They are
//!   placed from the decoded neighbours on both sides of each run, and left
//!   unknown when the neighbours disagree with that order.

use iced_x86::Instruction;

use super::symbols;
use crate::host::x86::{self, Access, Use};

/// Offsets (bytes from the struct's start) of the fields read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlLayout {
    /// MYSQL.thread_id (unsigned long): the server's CONNECTION_ID(). mysql_thread_id.
    pub thread_id: u32,
    /// MYSQL.net.last_errno (unsigned int): the server's error number. mysql_errno.
    pub last_errno: u32,
    /// MYSQL.net.sqlstate (char[6]). mysql_sqlstate.
    pub sqlstate: u32,
    /// MYSQL.affected_rows (unsigned long long). mysql_affected_rows.
    pub affected_rows: u32,
    /// MYSQL.field_count (unsigned int): columns of the pending result, 0 for none. mysql_field_count.
    pub field_count: u32,
    /// MYSQL.server_status (unsigned int): SERVER_STATUS_IN_TRANS 1, AUTOCOMMIT 2, MORE_RESULTS 8. mysql_more_results.
    pub server_status: u32,
    /// MYSQL.server_version (char *): "10.11.19-MariaDB-..." tells MariaDB from MySQL. mysql_get_server_info.
    pub server_version: u32,
    /// MYSQL.host_info (char *). mysql_get_host_info.
    pub host_info: u32,
    /// MYSQL.db (char *): the current database. mysql_select_db's store.
    pub db: u32,
    /// MYSQL_RES.row_count (unsigned long long). mysql_num_rows.
    pub res_row_count: u32,
    /// MYSQL_STMT.mysql (MYSQL *): the statement's connection. mysql_stmt_more_results.
    pub stmt_mysql: u32,
    /// MYSQL_STMT.stmt_id (unsigned long): the server's statement id. mysql_stmt_reset.
    pub stmt_id: u32,
    /// MYSQL_STMT.last_errno (unsigned int). mysql_stmt_errno.
    pub stmt_last_errno: u32,
    /// MYSQL_STMT.sqlstate (char[6]). mysql_stmt_sqlstate.
    pub stmt_sqlstate: u32,
    /// MYSQL_STMT's affected rows (unsigned long long). mysql_stmt_affected_rows.
    pub stmt_affected_rows: u32,
    /// MYSQL_STMT's buffered row count (unsigned long long). mysql_stmt_num_rows.
    pub stmt_row_count: u32,
    /// MYSQL_STMT.field_count (unsigned int): columns of its result, 0 for none. mysql_stmt_field_count.
    pub stmt_field_count: u32,
    /// Where the connection goes, placed by the public struct's order (see the module doc).
    pub endpoint: Result<Endpoint, LayoutError>,
}

/// MYSQL.host (char *), MYSQL.unix_socket (char *), MYSQL.port (unsigned int).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub host: u32,
    pub unix_socket: u32,
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{library}: not a readable x86-64 ELF file")]
    NotElf { library: String },
    #[error("{library} lacks {accessor}: not a MySQL client library dbtel can read")]
    Missing {
        library: String,
        accessor: &'static str,
    },
    #[error("{library}: cannot decode {accessor}: {why}")]
    Undecodable {
        library: String,
        accessor: &'static str,
        why: &'static str,
    },
}

/// The accessors decoded, all required (mysql_get_proto_info and mysql_info
/// only check the endpoint's placement).
pub const ACCESSORS: &[&str] = &[
    "mysql_thread_id",
    "mysql_errno",
    "mysql_sqlstate",
    "mysql_affected_rows",
    "mysql_field_count",
    "mysql_more_results",
    "mysql_get_server_info",
    "mysql_get_host_info",
    "mysql_get_proto_info",
    "mysql_info",
    "mysql_select_db",
    "mysql_num_rows",
    "mysql_stmt_more_results",
    "mysql_stmt_reset",
    "mysql_stmt_errno",
    "mysql_stmt_sqlstate",
    "mysql_stmt_affected_rows",
    "mysql_stmt_num_rows",
    "mysql_stmt_field_count",
];

/// Bytes decoded when a symbol has no size (up to the first `ret`).
const UNSIZED: usize = 256;

/// Decodes the layout of the client library (or executable with it linked
/// in) whose bytes are `data`; `library` names it in errors.
pub fn decode(library: &str, data: &[u8]) -> Result<MysqlLayout, LayoutError> {
    let found = symbols::find(data, ACCESSORS).map_err(|_| LayoutError::NotElf {
        library: library.into(),
    })?;
    let body = |name: &'static str| {
        let s = found.get(name)?;
        let code = s.code(data, UNSIZED)?;
        Some(if s.size > 0 {
            x86::decode_body(code, s.address)
        } else {
            x86::decode(code, s.address)
        })
    };
    from_accessors(library, &body)
}

/// The layout from the accessors' decoded bodies (`None`: no such symbol).
pub fn from_accessors(
    library: &str,
    body: &dyn Fn(&'static str) -> Option<Vec<Instruction>>,
) -> Result<MysqlLayout, LayoutError> {
    let undecodable = |accessor, why| LayoutError::Undecodable {
        library: library.into(),
        accessor,
        why,
    };
    let accesses = |accessor: &'static str| {
        body(accessor)
            .map(|b| x86::arg0_accesses(&b))
            .ok_or_else(|| LayoutError::Missing {
                library: library.into(),
                accessor,
            })
    };
    // The first direct access of this kind and width in the accessor.
    let field = |accessor: &'static str,
                 use_: Use,
                 sizes: &[u32],
                 why: &'static str|
     -> Result<u32, LayoutError> {
        accesses(accessor)?
            .iter()
            .find(|a| a.via.is_none() && a.use_ == use_ && sizes.contains(&a.size))
            .map(|a| a.disp)
            .ok_or(undecodable(accessor, why))
    };
    const PTR: &[u32] = &[8];
    const U64: &[u32] = &[8];
    const U32: &[u32] = &[4];
    const FLAGS: &[u32] = &[1, 2, 4];
    const ARRAY: &[u32] = &[0];

    let thread_id = field(
        "mysql_thread_id",
        Use::Read,
        U64,
        "no 8-byte load of thread_id",
    )?;
    let last_errno = field(
        "mysql_errno",
        Use::Read,
        U32,
        "no 4-byte load of net.last_errno",
    )?;
    let sqlstate = field(
        "mysql_sqlstate",
        Use::Address,
        ARRAY,
        "no address of net.sqlstate",
    )?;
    let affected_rows = field(
        "mysql_affected_rows",
        Use::Read,
        U64,
        "no 8-byte load of affected_rows",
    )?;
    let field_count = field(
        "mysql_field_count",
        Use::Read,
        U32,
        "no 4-byte load of field_count",
    )?;
    let server_status = field(
        "mysql_more_results",
        Use::Read,
        FLAGS,
        "no load of server_status",
    )?;
    let server_version = field(
        "mysql_get_server_info",
        Use::Read,
        PTR,
        "no load of server_version",
    )?;
    let host_info = field(
        "mysql_get_host_info",
        Use::Read,
        PTR,
        "no load of host_info",
    )?;
    let protocol_version = field(
        "mysql_get_proto_info",
        Use::Read,
        U32,
        "no load of protocol_version",
    )?;
    let info = field("mysql_info", Use::Read, PTR, "no load of info")?;
    let db = accesses("mysql_select_db")?
        .iter()
        .find(|a| {
            a.via.is_none()
                && a.use_ == Use::Write
                && a.size == 8
                && a.after_call
                && a.reg == iced_x86::Register::RAX
        })
        .map(|a| a.disp)
        .ok_or(undecodable(
            "mysql_select_db",
            "no store of the copied name into db",
        ))?;
    let res_row_count = field(
        "mysql_num_rows",
        Use::Read,
        U64,
        "no 8-byte load of row_count",
    )?;

    let f = "mysql_stmt_more_results";
    let stmt_more: Vec<Access> = accesses(f)?;
    let stmt_mysql = stmt_more
        .iter()
        .find(|a| a.via.is_none() && a.use_ == Use::Read && a.size == 8)
        .map(|a| a.disp)
        .ok_or(undecodable(f, "no load of stmt->mysql"))?;
    // It tests stmt->mysql->server_status: the same field mysql_more_results reads.
    let through = stmt_more
        .iter()
        .find(|a| a.via == Some(stmt_mysql))
        .ok_or(undecodable(f, "no read through stmt->mysql"))?;
    if !(server_status..server_status + 4).contains(&through.disp) {
        return Err(undecodable(
            f,
            "reads another field than mysql_more_results's server_status",
        ));
    }
    let stmt_id = field(
        "mysql_stmt_reset",
        Use::Read,
        U64,
        "no 8-byte load of stmt_id",
    )?;
    let stmt_last_errno = field(
        "mysql_stmt_errno",
        Use::Read,
        U32,
        "no 4-byte load of last_errno",
    )?;
    let stmt_sqlstate = field(
        "mysql_stmt_sqlstate",
        Use::Address,
        ARRAY,
        "no address of sqlstate",
    )?;
    let stmt_affected_rows = field(
        "mysql_stmt_affected_rows",
        Use::Read,
        U64,
        "no 8-byte load of affected_rows",
    )?;
    let stmt_row_count = field(
        "mysql_stmt_num_rows",
        Use::Read,
        U64,
        "no 8-byte load of the row count",
    )?;
    let stmt_field_count = field(
        "mysql_stmt_field_count",
        Use::Read,
        U32,
        "no 4-byte load of field_count",
    )?;

    let endpoint = endpoint(
        server_version,
        host_info,
        info,
        db,
        thread_id,
        protocol_version,
    )
    .map_err(|(accessor, why)| undecodable(accessor, why));
    Ok(MysqlLayout {
        thread_id,
        last_errno,
        sqlstate,
        affected_rows,
        field_count,
        server_status,
        server_version,
        host_info,
        db,
        res_row_count,
        stmt_mysql,
        stmt_id,
        stmt_last_errno,
        stmt_sqlstate,
        stmt_affected_rows,
        stmt_row_count,
        stmt_field_count,
        endpoint,
    })
}

impl MysqlLayout {
    /// What the kernel side reads, in its array's form.
    pub fn offsets(&self) -> dbtel_common::MysqlOffsets {
        let ep = self.endpoint.as_ref().ok();
        let mut o = dbtel_common::MysqlOffsets {
            thread_id: self.thread_id,
            last_errno: self.last_errno,
            sqlstate: self.sqlstate,
            affected_rows: self.affected_rows,
            field_count: self.field_count,
            server_status: self.server_status,
            server_version: self.server_version,
            db: self.db,
            host: ep.map_or(0, |e| e.host),
            unix_socket: ep.map_or(0, |e| e.unix_socket),
            port: ep.map_or(0, |e| e.port),
            res_row_count: self.res_row_count,
            stmt_mysql: self.stmt_mysql,
            stmt_id: self.stmt_id,
            stmt_last_errno: self.stmt_last_errno,
            stmt_sqlstate: self.stmt_sqlstate,
            stmt_affected_rows: self.stmt_affected_rows,
            stmt_row_count: self.stmt_row_count,
            stmt_field_count: self.stmt_field_count,
            endpoint_valid: ep.is_some() as u32,
            valid: 1,
            head: 0,
            head_len: 0,
            stmt_head: 0,
            stmt_head_len: 0,
            _pad: 0,
        };
        // What the probes read of each struct: the entry (db, thread_id),
        // the return (the rest); each field the window leaves out is read alone.
        (o.head, o.head_len) = window(&[
            (o.db, 8),
            (o.thread_id, 8),
            (o.affected_rows, 8),
            (o.field_count, 4),
            (o.server_status, 4),
        ]);
        (o.stmt_head, o.stmt_head_len) = window(&[
            (o.stmt_mysql, 8),
            (o.stmt_id, 8),
            (o.stmt_last_errno, 4),
            (o.stmt_affected_rows, 8),
            (o.stmt_row_count, 8),
            (o.stmt_field_count, 4),
        ]);
        o
    }
}

/// The window of a struct that one copy of at most MY_HEAD_CAP bytes reads
/// for the most of these (offset, size) fields at word steps from its start:
/// (start, length), or (0, 0) when no window holds two of them (the fields
/// are then read one by one, as a window would save nothing).
pub fn window(fields: &[(u32, u32)]) -> (u32, u32) {
    let cap = dbtel_common::MY_HEAD_CAP as u32;
    let held = |start: u32| {
        fields
            .iter()
            .filter(move |&&(off, size)| {
                off >= start && (off - start).is_multiple_of(4) && off - start + size <= cap
            })
            .copied()
    };
    fields
        .iter()
        .map(|&(start, _)| (held(start).count(), start))
        // The most fields; of equals, the lowest start.
        .max_by_key(|&(n, start)| (n, std::cmp::Reverse(start)))
        .filter(|&(n, _)| n >= 2)
        .map_or((0, 0), |(_, start)| {
            let end = held(start)
                .map(|(off, size)| off + size)
                .max()
                .unwrap_or(start);
            (start, end - start)
        })
}

/// host, unix_socket and port from the public struct's order, when the
/// decoded fields around them are where that order puts them.
fn endpoint(
    server_version: u32,
    host_info: u32,
    info: u32,
    db: u32,
    thread_id: u32,
    protocol_version: u32,
) -> Result<Endpoint, (&'static str, &'static str)> {
    const P: u32 = 8;
    if host_info != server_version + P || info != host_info + P || db != info + P {
        return Err((
            "mysql_get_host_info",
            "server_version, host_info, info and db are not consecutive pointers",
        ));
    }
    // thread_id, packet_length (8 each), port (4, padded), client_flag, server_capabilities (8 each), protocol_version.
    if protocol_version != thread_id + 40 {
        return Err((
            "mysql_get_proto_info",
            "protocol_version is not 40 bytes after thread_id",
        ));
    }
    let host = server_version
        .checked_sub(4 * P)
        .ok_or(("mysql_get_server_info", "server_version too near the start"))?;
    Ok(Endpoint {
        host,
        unix_socket: server_version - P,
        port: thread_id + 16,
    })
}
