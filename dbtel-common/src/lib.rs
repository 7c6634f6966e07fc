//! Event and configuration types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]`, integers and byte arrays only, with explicit
//! padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Longest query text the kernel side can copy (bytes, NUL included).
/// The agent configures a smaller limit at load time (`MAX_TEXT` global).
pub const TEXT_CAP: usize = 16384;
/// Prepared statement names are identifiers: NAMEDATALEN (64) in PostgreSQL.
pub const NAME_CAP: usize = 64;
pub const CMD_STATUS_CAP: usize = 64;
/// Bytes of a PGresult's head read in one copy when its status, row count and
/// command tag all lie in them (see [`LibpqLayout::res_head`]).
pub const RES_HEAD_CAP: usize = 128;
pub const DB_CAP: usize = 64;
pub const HOST_CAP: usize = 128;
pub const PORT_CAP: usize = 16;
/// Maximum number of distinct libpq layouts (builds) one agent handles.
pub const MAX_LAYOUTS: u32 = 64;
/// The events ring buffer's size in bytes (a power of two, page multiple).
pub const RING_BYTES: u32 = 8 * 1024 * 1024;

/// Which engine's probes wrote a record ([`Header::engine`]): each engine's
/// records are decoded by that engine's code in the agent.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Process lifecycle and the dynamic loader: no engine's.
    Host = 0,
    Postgres = 1,
    Mysql = 2,
}

impl Engine {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => Engine::Host,
            1 => Engine::Postgres,
            2 => Engine::Mysql,
            _ => return None,
        })
    }
}

mod mysql;
pub use mysql::*;

/// Record kinds, in [`Header::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A query-issuing libpq call was entered ([`QueryEvent`]).
    Query = 1,
    /// `PQgetResult` returned ([`ResultEvent`]).
    Result = 2,
    /// First sight of a connection object in this process ([`ConnEvent`]).
    Conn = 3,
    /// `PQfinish` was entered ([`Header`] only).
    Finish = 4,
    /// A database server probe fired ([`ServerEvent`]); `Header::func`
    /// says which ([`site`]), `Header::conn` holds the postmaster's PID.
    Server = 5,
    /// A traced server process exited ([`Header`] only).
    ServerExit = 6,
    /// Host-wide tracing: a process exec'd a program ([`ExecEvent`]).
    Exec = 7,
    /// Host-wide tracing: a client process that hit a probe exited ([`Header`] only).
    ClientExit = 8,
    /// A libpq pipeline-mode call ([`PipelineEvent`]); `Header::func` says which.
    Pipeline = 9,
    /// The dynamic loader finished mapping new objects in a process (a
    /// dlopen, or the program's own libraries at start): [`Header`] only;
    /// `func` is 1 when the process was stopped for the agent (see
    /// [`loader`]), which then owes it a SIGCONT.
    Loaded = 10,
    /// A MySQL client call was entered ([`MyCallEvent`]); `Header::func` is its [`MyCall`].
    MyCall = 11,
    /// A MySQL client call returned ([`MyReturnEvent`]).
    MyReturn = 12,
    /// A MySQL connection first seen, or its database or connection id changed ([`MyConnEvent`]).
    MyConn = 13,
    /// A MySQL/MariaDB server probe fired ([`ServerEvent`]); `Header::func`
    /// says which ([`mysite`]), `Header::conn` holds the server's PID.
    MyServer = 14,
}

impl Kind {
    pub const fn from_u16(v: u16) -> Option<Self> {
        use Kind::*;
        Some(match v {
            1 => Query,
            2 => Result,
            3 => Conn,
            4 => Finish,
            5 => Server,
            6 => ServerExit,
            7 => Exec,
            8 => ClientExit,
            9 => Pipeline,
            10 => Loaded,
            11 => MyCall,
            12 => MyReturn,
            13 => MyConn,
            14 => MyServer,
            _ => return None,
        })
    }

    pub const fn engine(self) -> Engine {
        use Kind::*;
        match self {
            Query | Result | Conn | Finish | Server | Pipeline => Engine::Postgres,
            MyCall | MyReturn | MyConn | MyServer => Engine::Mysql,
            ServerExit | Exec | ClientExit | Loaded => Engine::Host,
        }
    }
}

/// libpq functions, carried in the attach cookie and in [`Header::func`].
pub mod func {
    pub const PQEXEC: u32 = 1;
    pub const PQEXEC_PARAMS: u32 = 2;
    pub const PQPREPARE: u32 = 3;
    pub const PQEXEC_PREPARED: u32 = 4;
    pub const PQSEND_QUERY: u32 = 5;
    pub const PQSEND_QUERY_PARAMS: u32 = 6;
    pub const PQSEND_PREPARE: u32 = 7;
    pub const PQSEND_QUERY_PREPARED: u32 = 8;
    pub const PQGET_RESULT: u32 = 9;
    pub const PQFINISH: u32 = 10;
    /// A result seen inside PQgetResult (no NULL results are seen then).
    pub const PQGET_RESULT_POINT: u32 = 11;
    /// Pipeline mode (libpq 14+; PQsendPipelineSync 17+): probed where present.
    /// Entering and leaving are reported at return, with the call's result.
    pub const PQENTER_PIPELINE_MODE: u32 = 12;
    pub const PQEXIT_PIPELINE_MODE: u32 = 13;
    /// A sync point queued (at entry: it fails only on a broken connection).
    pub const PQPIPELINE_SYNC: u32 = 14;
    pub const PQSEND_PIPELINE_SYNC: u32 = 15;
}

/// Attach cookie layout: which arguments hold the text and the statement name,
/// and which layout entry describes the library's private structs. The kernel
/// side follows these numbers and knows nothing else about libpq.
pub mod cookie {
    pub const fn make(func: u32, text_arg: u32, name_arg: u32, layout: u32) -> u64 {
        (func as u64)
            | ((text_arg as u64) << 8)
            | ((name_arg as u64) << 12)
            | ((layout as u64) << 32)
    }
    pub const fn func(c: u64) -> u32 {
        (c & 0xff) as u32
    }
    /// 0 = none, else argument index + 1.
    pub const fn text_arg(c: u64) -> u32 {
        ((c >> 8) & 0xf) as u32
    }
    /// 0 = none, else argument index + 1.
    pub const fn name_arg(c: u64) -> u32 {
        ((c >> 12) & 0xf) as u32
    }
    pub const fn layout(c: u64) -> u32 {
        (c >> 32) as u32
    }
    /// A probe inside PQgetResult: the pt_regs byte offsets of the registers
    /// holding the PGresult* and the PGconn* there.
    pub const fn make_result_point(res_reg: u32, conn_reg: u32, layout: u32) -> u64 {
        make(super::func::PQGET_RESULT_POINT, 0, 0, layout)
            | ((res_reg as u64 & 0xff) << 16)
            | ((conn_reg as u64 & 0xff) << 24)
    }
    pub const fn res_reg(c: u64) -> u32 {
        ((c >> 16) & 0xff) as u32
    }
    pub const fn conn_reg(c: u64) -> u32 {
        ((c >> 24) & 0xff) as u32
    }
}

/// Flags in [`QueryEvent::flags`].
pub mod qflags {
    /// The text was longer than the configured limit and was cut.
    pub const TRUNCATED: u32 = 1;
    /// The text could not be read from user memory.
    pub const TEXT_FAULT: u32 = 2;
    /// Server events: the string argument was not NULL (an empty text is a text).
    pub const TEXT_PRESENT: u32 = 4;
}

/// Offsets into libpq's private structs for one build, discovered at attach
/// time by decoding libpq's accessor functions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibpqLayout {
    /// PGconn: `char *dbName` (PQdb).
    pub conn_db: u32,
    /// PGconn: `pg_conn_host *connhost` (PQhost/PQport).
    pub conn_connhost: u32,
    /// PGconn: `int whichhost`.
    pub conn_whichhost: u32,
    /// PGconn: `int be_pid` (PQbackendPID).
    pub conn_be_pid: u32,
    /// sizeof(pg_conn_host).
    pub connhost_size: u32,
    /// pg_conn_host: `char *host`.
    pub connhost_host: u32,
    /// pg_conn_host: `char *port`.
    pub connhost_port: u32,
    /// PGresult: `int ntups` (PQntuples).
    pub res_ntups: u32,
    /// PGresult: `ExecStatusType resultStatus` (PQresultStatus).
    pub res_status: u32,
    /// PGresult: `char cmdStatus[]` (PQcmdStatus).
    pub res_cmd_status: u32,
    /// PGresult: `PGMessageField *errFields` (PQresultErrorField).
    pub res_err_fields: u32,
    /// PGMessageField: `next`, `code`, `contents[]`.
    pub field_next: u32,
    pub field_code: u32,
    pub field_contents: u32,
    /// Non-zero once the PGresult offsets are filled in.
    pub valid: u32,
    /// Non-zero once the PGconn offsets are filled in (optional: spans then
    /// lack database and server details, nothing else).
    pub conn_valid: u32,
    /// Where the [`RES_HEAD_CAP`] bytes holding `ntups`, `resultStatus` and
    /// `cmdStatus` start: one user-memory copy instead of three (each copy
    /// is a helper call, most of a result probe's cost).
    pub res_head: u32,
    /// Non-zero when those three fit in the head at 4-byte steps from it
    /// (else they are read one by one).
    pub res_head_fits: u32,
}

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// [`Kind`].
    pub kind: u16,
    /// [`Engine`]: the kind's.
    pub engine: u16,
    pub func: u32,
    /// Thread group id (the process id as users see it).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// The connection (PGconn*, MYSQL*) or statement handle (MYSQL_STMT*)
    /// in the traced process; a server record's postmaster PID.
    pub conn: u64,
}

/// Variable-length: only `TEXT_OFFSET + text_len` bytes are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QueryEvent {
    pub hdr: Header,
    /// Bytes in `text`, NUL excluded.
    pub text_len: u32,
    /// Bytes in `name`, NUL excluded.
    pub name_len: u32,
    pub flags: u32,
    pub _pad: u32,
    pub name: [u8; NAME_CAP],
    pub text: [u8; TEXT_CAP],
}

impl QueryEvent {
    pub const TEXT_OFFSET: usize = core::mem::size_of::<Header>() + 16 + NAME_CAP;
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ResultEvent {
    pub hdr: Header,
    /// PGresult pointer; 0 means "no more results for this query".
    pub result: u64,
    pub status: i32,
    pub ntuples: i32,
    pub cmd_status: [u8; CMD_STATUS_CAP],
    /// SQLSTATE (5 chars) when the result carries one.
    pub sqlstate: [u8; 8],
}

/// A pipeline-mode call ([`Kind::Pipeline`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PipelineEvent {
    pub hdr: Header,
    /// The call's return value, when `returned` is non-zero (reported at return).
    pub ret: i32,
    pub returned: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnEvent {
    pub hdr: Header,
    pub backend_pid: i32,
    pub _pad: u32,
    pub db: [u8; DB_CAP],
    pub host: [u8; HOST_CAP],
    pub port: [u8; PORT_CAP],
}

/// Longest exec'd path sent (longer ones are cut; the agent then reads /proc).
pub const EXEC_PATH_CAP: usize = 256;

/// Variable-length: only `PATH_OFFSET + path_len` bytes are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: Header,
    /// The new program's cgroup (v2 id: the inode of its cgroup directory).
    pub cgroup_id: u64,
    pub path_len: u32,
    pub _pad: u32,
    pub path: [u8; EXEC_PATH_CAP],
}

impl ExecEvent {
    pub const PATH_OFFSET: usize = core::mem::size_of::<Header>() + 16;
}

/// Host-wide tracing: what the agent decided about a client process, in the
/// kernel's CLIENT_PIDS map (absent: not yet seen, traced until decided).
pub mod verdict {
    pub const TRACED: u8 = 1;
    pub const EXCLUDED: u8 = 2;
}

/// The probe on the dynamic loader's debugger hook (glibc's `_dl_debug_state`,
/// called with `_r_debug.r_state` = RT_ADD before a load maps objects and
/// RT_CONSISTENT once they are mapped, before their constructors run and
/// before dlopen returns).
pub mod loader {
    /// `r_debug.r_state` values (<link.h>).
    pub const RT_CONSISTENT: i32 = 0;
    pub const RT_ADD: i32 = 1;
    pub const RT_DELETE: i32 = 2;
    /// Offset of `r_state` in `struct r_debug` (LP64: int, pointer, address, then the enum).
    pub const R_STATE_OFFSET: i64 = 24;
    /// `Header::func` of a LOADED event whose process is held stopped.
    pub const HELD: u32 = 1;

    /// Attach cookie: where `r_state` is, relative to the probed instruction
    /// (the loader's load address cancels out), and whether to hold the process.
    pub const fn make(state_delta: i32, hold: bool) -> u64 {
        (state_delta as u32 as u64) | ((hold as u64) << 32)
    }
    pub const fn state_delta(c: u64) -> i64 {
        c as u32 as i32 as i64
    }
    pub const fn hold(c: u64) -> bool {
        (c >> 32) & 1 != 0
    }
}

/// Server probe points the agent attaches, in [`Header::func`] of server events.
pub mod site {
    /// USDT statement__status(const char *cmd): text = running, NULL = idle.
    pub const STATEMENT_STATUS: u32 = 1;
    // 2 and 3 were transaction__start/commit: blocks now come from statement texts.
    /// USDT transaction__abort(LocalTransactionId).
    pub const TRANSACTION_ABORT: u32 = 4;
    /// USDT lock__wait__start(field1..4, locktag_type, lockmethod, lockmode).
    pub const LOCK_WAIT_START: u32 = 5;
    /// USDT lock__wait__done(same arguments).
    pub const LOCK_WAIT_DONE: u32 = 6;
    /// USDT deadlock__found().
    pub const DEADLOCK_FOUND: u32 = 7;
    /// uprobe errcode(int sqlerrcode): an error report is being built.
    pub const ERRCODE: u32 = 8;
    /// uprobe errmsg(const char *fmt): its untranslated format string.
    pub const ERRMSG: u32 = 9;
    /// uprobe errstart_cold(int elevel, ...) and errstart(int elevel, ...) with
    /// elevel >= ERROR (the kernel side drops lesser ones): a report of ERROR
    /// or worse begins. errstart_cold is ereport(ERROR) with a constant level;
    /// a variable one (PL/pgSQL RAISE, lookups with missing_ok) goes to errstart.
    pub const ERRSTART: u32 = 10;
    /// uprobe EmitErrorReport(): the pending report reaches the log and client.
    pub const ERROR_EMITTED: u32 = 11;
    /// uprobe FlushErrorState(): the pending report is discarded; one never
    /// emitted was caught (a PL/pgSQL EXCEPTION block) and fails nothing.
    pub const ERROR_FLUSHED: u32 = 12;
    // Once per session, so that a session too short for the catalog to see
    // still says whom it served.
    /// uprobe InitPostgres(const char *in_dbname, …): the database connected to.
    pub const SESSION_DATABASE: u32 = 20;
    /// uprobe InitPostgres(…, const char *username, …): the user.
    pub const SESSION_USER: u32 = 21;
    /// uprobe pgstat_report_appname(const char *appname): at connection and on SET.
    pub const APPLICATION_NAME: u32 = 22;
    /// uprobe unpack_sql_state(int sql_state): the SQLSTATE as it goes to the
    /// log and the client. The first one after EmitErrorReport is the emitted
    /// error's final code, also where no errcode() call set it
    /// (errcode_for_file_access, an error rethrown from a parallel worker).
    pub const ERROR_SENT: u32 = 23;
    /// uprobe EndCommand(const QueryCompletion *qc, ...): a top-level
    /// statement completed (simple protocol: each statement of a text;
    /// extended: each Execute that ran its portal to the end; never SPI, PL
    /// or parallel workers). args[0] = qc->commandTag, args[1] = qc->nprocessed.
    pub const COMMAND_DONE: u32 = 24;
}

/// [`SiteSpec::repeat_once`] flags.
pub mod repeat {
    pub const ONCE: u32 = 1;
    /// The statement ran to its end (EndCommand). If this site's record is
    /// the last the process sent, its next NULL report (idle) is not sent:
    /// the agent closes a completed statement at the next one, or when the
    /// backend has been quiet a while. One ring record fewer per statement.
    /// Nor is the hit's own record: it is held ([`super::Held`]) and sent
    /// with the process's next one. One more record fewer per statement.
    pub const COMPLETES: u32 = 2;
}

/// [`SiteSpec::pair`] values.
pub mod pair {
    pub const NONE: u32 = 0;
    pub const OPENS: u32 = 1;
    pub const CLOSES: u32 = 2;
}

/// Arguments a probe site reads (USDT notes have up to 12; PostgreSQL's use 6, MariaDB's end of statement 10).
pub const USDT_MAX_ARGS: usize = 10;
/// Probe sites (one spec each) the agent can describe to the kernel side.
pub const MAX_SITES: u32 = 512;

/// Where one probe argument is, for the kernel side to read it without
/// knowing the build: decoded from USDT notes (or a function's ABI registers).
pub mod argkind {
    pub const NONE: u8 = 0;
    /// `value` is the argument.
    pub const IMMEDIATE: u8 = 1;
    /// The register at `reg_off` in pt_regs.
    pub const REGISTER: u8 = 2;
    /// Memory at reg(`reg_off`) + reg(`index_off`) * `scale` + `value`.
    pub const MEMORY: u8 = 3;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgSpec {
    pub kind: u8,
    /// Bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub signed: u8,
    pub scale: u8,
    pub reg_off: u16,
    /// [`NO_INDEX`]: no index register.
    pub index_off: u16,
    /// %ah-style register: the value is bits 8..16.
    pub high_byte: u8,
    /// MEMORY only: that many more loads, each of 8 bytes at the last
    /// value + `hops_at[i]`, before the final one of `size` bytes
    /// (`thd->stmt_da->errno`: a field of a struct a field points to).
    pub hops: u8,
    pub _pad: [u8; 6],
    pub value: i64,
    pub hops_at: [i32; 2],
}

pub const NO_INDEX: u16 = 0xffff;

/// A traced server process, as the kernel side keeps it (SERVER_PIDS, by
/// tgid): its postmaster, and the head of the last text it reported for a
/// site that reports a text once until a NULL (in the same entry: the
/// lookup every hit makes anyway finds it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerProc {
    pub owner: u32,
    /// Non-zero: the last hit this process recorded was a [`repeat::COMPLETES`]
    /// site's (EndCommand, held): the idle report that follows is not sent.
    pub completed: u32,
    /// The first 31 bytes and a NUL (or before) of the last text; NO_TEXT
    /// when none.
    pub last_head: [u64; 4],
    /// A completion held back: [`Held`]. Sent with this process's next record
    /// (the next statement's text, most often), alone before a second one or
    /// at its exit; the agent reads it here once the process is quiet.
    pub held: Held,
}

/// A [`repeat::COMPLETES`] hit (EndCommand) not sent as a record of its own:
/// one record per statement instead of two. `ts_ns` 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub ts_ns: u64,
    /// The site's first two arguments (command tag, rows).
    pub args: [u64; 2],
}

impl ServerProc {
    /// Byte 31 of a head read from a string is always its NUL or before it:
    /// no text matches this one.
    pub const NO_TEXT: [u64; 4] = [0, 0, 0, 0xff << 56];

    pub const fn of(owner: u32) -> Self {
        ServerProc {
            owner,
            completed: 0,
            last_head: Self::NO_TEXT,
            held: Held {
                ts_ns: 0,
                args: [0, 0],
            },
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteSpec {
    /// [`site`] id (PostgreSQL) or [`mysite`] id (MySQL/MariaDB).
    pub probe: u32,
    /// [`Engine`] whose record a hit makes ([`Kind::Server`] or [`Kind::MyServer`]).
    pub engine: u32,
    /// 0: the text is NUL-terminated; else the argument (index + 1) holding its length.
    pub text_len_arg: u32,
    /// 0: no filter; else only hits whose argument (index + 1) is below 64
    /// with its bit set in `arg_mask` are sent (thd_wait_begin's wait type).
    pub mask_arg: u32,
    /// [`pair`]: a site that opens a pair on its thread, or one sent only
    /// to close a pair opened there (thd_wait_end after a lock's thd_wait_begin).
    pub pair: u32,
    /// 0: no text; else the argument (index + 1) that points at a C string to copy.
    pub text_arg: u32,
    /// [`repeat`] flags. ONCE: a text is reported once per process until a
    /// NULL comes (statement__status: Parse, Bind and Execute each report the
    /// statement). On a site without a text (`text_arg` 0) it acts as that
    /// NULL: the next text is reported even if it repeats the last
    /// (EndCommand: the next Bind of the same statement is another execution).
    pub repeat_once: u32,
    /// Non-zero: report only hits whose first argument (signed) is at least
    /// this (errstart's level: ERROR and worse).
    pub min_arg0: u32,
    pub arg_mask: u64,
    pub args: [ArgSpec; USDT_MAX_ARGS],
}

/// Variable-length: only `TEXT_OFFSET + text_len` bytes are sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ServerEvent {
    pub hdr: Header,
    pub args: [u64; USDT_MAX_ARGS],
    /// The process's held completion, which came before this hit.
    pub held: Held,
    pub text_len: u32,
    /// [`qflags`].
    pub flags: u32,
    pub text: [u8; TEXT_CAP],
}

impl ServerEvent {
    pub const HELD_OFFSET: usize = core::mem::size_of::<Header>() + 8 * USDT_MAX_ARGS;
    pub const TEXT_OFFSET: usize = Self::HELD_OFFSET + core::mem::size_of::<Held>() + 8;
}

/// Counters kept by the kernel side, one per-CPU array slot each.
pub mod counter {
    /// Ring buffer output failed (full): one event lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// PQgetResult returned without a recorded entry (map full or evicted).
    pub const RESULT_UNMATCHED: u32 = 1;
    /// A MySQL call returned without a recorded entry (map full or evicted).
    pub const MY_RETURN_UNMATCHED: u32 = 2;
    pub const COUNT: u32 = 3;
}

const _: () = assert!(core::mem::size_of::<Header>() == 32);
const _: () = assert!(core::mem::size_of::<LibpqLayout>() == 72);
const _: () = assert!(core::mem::size_of::<QueryEvent>() == QueryEvent::TEXT_OFFSET + TEXT_CAP);
const _: () = assert!(core::mem::size_of::<ResultEvent>() == 32 + 16 + CMD_STATUS_CAP + 8);
const _: () = assert!(core::mem::size_of::<ArgSpec>() == 32);
const _: () = assert!(core::mem::size_of::<ServerProc>() == 64);
const _: () = assert!(core::mem::size_of::<Held>() == 24);
const _: () = assert!(core::mem::size_of::<SiteSpec>() == 40 + 32 * USDT_MAX_ARGS);
const _: () = assert!(core::mem::size_of::<ServerEvent>() == ServerEvent::TEXT_OFFSET + TEXT_CAP);
const _: () = assert!(core::mem::size_of::<PipelineEvent>() == 32 + 8);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 32 + 8 + DB_CAP + HOST_CAP + PORT_CAP);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == ExecEvent::PATH_OFFSET + EXEC_PATH_CAP);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::LibpqLayout {}
    unsafe impl aya::Pod for super::SiteSpec {}
    unsafe impl aya::Pod for super::ServerProc {}
    unsafe impl aya::Pod for super::MysqlOffsets {}
}
