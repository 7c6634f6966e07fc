//! A MariaDB server (mariadbd) in a process: its probe sites and the THD
//! offsets they read, decoded from the server's own exported accessors
//! (`thd_get_thread_id` is `mov rax, [rdi + 0x3f18]; ret`), never from a
//! table of builds. A build whose accessors do not decode is refused,
//! naming the accessor. See /work/notes/mariadb-server-probes.md (the
//! research behind these points) and README's server section.
//!
//! One trap per statement: `Protocol::end_statement()` runs once per
//! top-level statement, after the statement and before its reply, with the
//! statement's own text, outcome, server status and start time still in the
//! THD. Lock waits: `thd_wait_begin` / `thd_wait_end`, sent for lock wait
//! types only (the kernel side drops the others, e.g. a network read that
//! would block: at most a pair of traps per command, measured). Deadlocks:
//! `thd_deadlock_victim_preference`, called by the detector with two members
//! of the cycle (only when there is one).

use std::path::Path;

use dbtel_common::{argkind, mysite, pair, ArgSpec, Engine, SiteSpec, NO_INDEX};
use iced_x86::Register;

use crate::{
    engine::{ClaimError, Layout, Plan, Point},
    host::{
        usdt::Gpr,
        x86::{self, Access, Use},
    },
    mysql::symbols,
};

use super::session_sites;

const DISPATCH: &str = "_Z16dispatch_command19enum_server_commandP3THDPcjb";
pub const END_STATEMENT: &str = "_ZN8Protocol13end_statementEv";
const WAIT_BEGIN: &str = "thd_wait_begin";
const WAIT_END: &str = "thd_wait_end";
const UNLINK: &str = "_Z10unlink_thdP3THD";
const DEADLOCK: &str = "thd_deadlock_victim_preference";

/// The exported functions whose code says where the fields are.
pub const ACCESSORS: &[&str] = &[
    "thd_get_thread_id",
    "thd_query_string",
    "thd_get_error_number",
    "thd_current_status",
    "thd_current_command",
    "thd_storage_lock_wait",
    "_ZN3THD24set_status_no_index_usedEv",
    "_ZN3THD18set_sent_row_countEy",
    "_ZN16Diagnostics_area13set_ok_statusEyyPKc",
];

/// THD_WAIT_* lock types (service_thd_wait.h): ROW_LOCK 3, META_DATA_LOCK 5, TABLE_LOCK 6.
pub const LOCK_WAIT_TYPES: u64 = (1 << 3) | (1 << 5) | (1 << 6);

/// Offsets read by the sites (bytes from the start of their struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThdLayout {
    /// Protocol::thd.
    pub protocol_thd: u32,
    /// THD::thread_id (the connection id).
    pub thread_id: u32,
    /// THD::query_string (str; its length follows).
    pub query: u32,
    /// THD::m_stmt_da (Diagnostics_area*), and in it the errno, status and affected rows.
    pub stmt_da: u32,
    pub da_errno: u32,
    pub da_status: u32,
    pub da_affected_rows: u32,
    pub server_status: u32,
    /// THD::start_utime (CLOCK_MONOTONIC µs): the field before utime_after_lock.
    pub start_utime: u32,
    pub command: u32,
    pub sent_row_count: u32,
}

/// Whether a file is a MariaDB server, from its symbol tables alone.
pub fn is_server(host: &Path) -> bool {
    crate::host::elf::symbol_tables_only(host)
        .and_then(|d| symbols::find(&d, &[DISPATCH]).ok())
        .is_some_and(|f| f.contains_key(DISPATCH))
}

fn refuse(path: &str, what: String) -> ClaimError {
    ClaimError(format!(
        "{path}: {what}: not a MariaDB server build dbtel can trace"
    ))
}

/// The layout from the accessors' code (`code(name)`: the decoded body, None if absent).
pub fn decode(
    path: &str,
    code: &dyn Fn(&'static str) -> Option<Vec<iced_x86::Instruction>>,
) -> Result<ThdLayout, ClaimError> {
    let accesses = |f: &'static str| -> Result<Vec<Access>, ClaimError> {
        code(f)
            .map(|b| x86::arg0_accesses(&b))
            .ok_or_else(|| refuse(path, format!("no {f}")))
    };
    let find =
        |f: &'static str, why: &str, pick: &dyn Fn(&Access) -> bool| -> Result<u32, ClaimError> {
            accesses(f)?
                .iter()
                .find(|a| pick(a))
                .map(|a| a.disp)
                .ok_or_else(|| refuse(path, format!("cannot decode {f}: {why}")))
        };
    let direct =
        |a: &Access, use_: Use, size: u32| a.via.is_none() && a.use_ == use_ && a.size == size;
    let thread_id = find("thd_get_thread_id", "no 8-byte load of thread_id", &|a| {
        direct(a, Use::Read, 8)
    })?;
    let query = find("thd_query_string", "no address of query_string", &|a| {
        direct(a, Use::Address, 0)
    })?;
    let stmt_da = find("thd_get_error_number", "no load of m_stmt_da", &|a| {
        direct(a, Use::Read, 8)
    })?;
    let da_errno = find("thd_get_error_number", "no load of sql_errno", &|a| {
        a.via == Some(stmt_da) && a.size == 4
    })?;
    let da_status = find("thd_current_status", "no test of the status", &|a| {
        a.via == Some(stmt_da) && a.size == 4 && a.disp != da_errno
    })?;
    let command = find("thd_current_command", "no load of command", &|a| {
        direct(a, Use::Read, 4)
    })?;
    let after_lock = find(
        "thd_storage_lock_wait",
        "no update of utime_after_lock",
        &|a| a.via.is_none() && a.size == 8,
    )?;
    let server_status = find(
        "_ZN3THD24set_status_no_index_usedEv",
        "no update of server_status",
        &|a| a.via.is_none() && a.size == 4,
    )?;
    let sent_row_count = find(
        "_ZN3THD18set_sent_row_countEy",
        "no store of sent_row_count",
        &|a| direct(a, Use::Write, 8) && a.reg == Register::RSI,
    )?;
    // set_ok_status(affected_rows, last_insert_id, message) stores the two
    // counts side by side (its registers shuffled first): the first 8-byte store.
    let ok_status = "_ZN16Diagnostics_area13set_ok_statusEyyPKc";
    let stores: Vec<u32> = accesses(ok_status)?
        .iter()
        .filter(|a| direct(a, Use::Write, 8))
        .map(|a| a.disp)
        .collect();
    let da_affected_rows = match stores[..] {
        [affected, last_id, ..] if last_id == affected + 8 => affected,
        _ => {
            return Err(refuse(
                path,
                format!("cannot decode {ok_status}: no stores of affected_rows and last_insert_id"),
            ))
        }
    };
    let protocol_thd = find(END_STATEMENT, "no load of Protocol::thd", &|a| {
        direct(a, Use::Read, 8)
    })?;
    // start_utime, utime_after_lock: consecutive ulonglongs in THD (sql_class.h).
    let start_utime = after_lock
        .checked_sub(8)
        .ok_or_else(|| refuse(path, "utime_after_lock at offset 0".into()))?;
    Ok(ThdLayout {
        protocol_thd,
        thread_id,
        query,
        stmt_da,
        da_errno,
        da_status,
        da_affected_rows,
        server_status,
        start_utime,
        command,
        sent_row_count,
    })
}

/// [rdi + first] then each hop's field; `size` bytes at the end.
pub(super) fn via_rdi(first: u32, hops: &[u32], size: u8) -> ArgSpec {
    let mut a = ArgSpec {
        kind: argkind::MEMORY,
        size,
        reg_off: Gpr::Rdi.pt_regs_offset(),
        index_off: NO_INDEX,
        value: first.into(),
        ..Default::default()
    };
    a.hops = hops.len() as u8;
    for (i, h) in hops.iter().enumerate() {
        a.hops_at[i] = *h as i32;
    }
    a
}

fn register(g: Gpr, size: u8) -> ArgSpec {
    ArgSpec {
        kind: argkind::REGISTER,
        size,
        reg_off: g.pt_regs_offset(),
        index_off: NO_INDEX,
        ..Default::default()
    }
}

/// The sites, in the order of the plan's points.
pub fn sites(l: &ThdLayout) -> Vec<(&'static str, SiteSpec)> {
    let spec = |probe: u32| SiteSpec {
        probe,
        engine: Engine::Mysql as u32,
        ..Default::default()
    };
    let p = l.protocol_thd;
    let mut end = spec(mysite::STATEMENT_DONE);
    let args = [
        via_rdi(p, &[l.thread_id], 8),
        via_rdi(p, &[l.query], 8),
        via_rdi(p, &[l.query + 8], 8),
        via_rdi(p, &[l.stmt_da, l.da_errno], 4),
        via_rdi(p, &[l.stmt_da, l.da_status], 4),
        via_rdi(p, &[l.server_status], 4),
        via_rdi(p, &[l.start_utime], 8),
        via_rdi(p, &[l.command], 4),
        via_rdi(p, &[l.stmt_da, l.da_affected_rows], 8),
        via_rdi(p, &[l.sent_row_count], 8),
    ];
    end.args = args;
    end.text_arg = 2;
    end.text_len_arg = 3;
    // The THD's connection id, where the caller names the THD (InnoDB's
    // lock waits do; MDL and thr_lock pass NULL, which reads as 0).
    let connection_id = ArgSpec {
        kind: argkind::MEMORY,
        size: 8,
        reg_off: Gpr::Rdi.pt_regs_offset(),
        index_off: NO_INDEX,
        value: l.thread_id.into(),
        ..Default::default()
    };
    let mut begin = spec(mysite::WAIT_BEGIN);
    begin.args[0] = register(Gpr::Rdi, 8);
    begin.args[1] = register(Gpr::Rsi, 4);
    begin.args[2] = connection_id;
    begin.mask_arg = 2;
    begin.arg_mask = LOCK_WAIT_TYPES;
    begin.pair = pair::OPENS;
    let mut done = spec(mysite::WAIT_END);
    done.args[0] = register(Gpr::Rdi, 8);
    done.args[1] = connection_id;
    done.pair = pair::CLOSES;
    let mut gone = spec(mysite::CONN_END);
    gone.args[0] = connection_id;
    let mut deadlock = spec(mysite::DEADLOCK);
    deadlock.args[0] = gone.args[0];
    deadlock.args[1] = ArgSpec {
        reg_off: Gpr::Rsi.pt_regs_offset(),
        ..gone.args[0]
    };
    vec![
        (END_STATEMENT, end),
        (WAIT_BEGIN, begin),
        (WAIT_END, done),
        (UNLINK, gone),
        (DEADLOCK, deadlock),
    ]
}

/// The plan for the server `pid` runs from `path` (None: not a MariaDB server).
pub fn claim(pid: u32, path: &str, host: &Path) -> Result<Option<Plan>, ClaimError> {
    if !is_server(host) {
        return Ok(None);
    }
    let data = crate::host::elf::read_bounded(host)
        .map_err(|e| ClaimError(format!("{path} (process {pid}): {e}")))?;
    claim_image(pid, path, host, &data)
}

/// As [`claim`] once the file is known to be a server, of its bytes, read
/// already (`host` is only recorded): what a fuzzer calls.
pub fn claim_image(
    pid: u32,
    path: &str,
    host: &Path,
    data: &[u8],
) -> Result<Option<Plan>, ClaimError> {
    let mut wanted: Vec<&'static str> = ACCESSORS.to_vec();
    wanted.extend([END_STATEMENT, WAIT_BEGIN, WAIT_END, UNLINK, DEADLOCK]);
    wanted.extend(session_sites::ACCESSORS);
    wanted.push(session_sites::END_CONNECTION);
    let found = symbols::find(data, &wanted)
        .map_err(|e| ClaimError(format!("{path} (process {pid}): {e}")))?;
    let code = |name: &'static str| {
        let s = found.get(name)?;
        let c = s.code(data, 256)?;
        Some(if s.size > 0 {
            x86::decode_body(c, s.address)
        } else {
            x86::decode(c, s.address)
        })
    };
    let layout = decode(path, &code)?;
    let mut all = sites(&layout);
    let mut warnings = Vec::new();
    // Optional: without them only the catalog says who a connection is.
    match session_sites::decode(&code) {
        Ok(s) if found.contains_key(session_sites::END_CONNECTION) => {
            all.extend(session_sites::sites(&s, layout.thread_id))
        }
        Ok(_) => warnings.push(format!(
            "{path}: no {}: connections too short for the catalog to see will have no user.name or db.namespace",
            session_sites::END_CONNECTION
        )),
        Err(e) => warnings.push(format!(
            "{path}: {e}: connections too short for the catalog to see will have no user.name or db.namespace"
        )),
    }
    let mut points = Vec::new();
    let mut specs = Vec::new();
    for (i, (function, spec)) in all.into_iter().enumerate() {
        let s = found
            .get(function)
            .ok_or_else(|| refuse(path, format!("no {function}")))?;
        // Past a flags-only test at the entry: no single step per hit.
        let skip = s
            .code(data, 16)
            .map_or(0, |c| x86::emulated_entry_skip(c, s.address));
        points.push(Point {
            program: "server_site",
            function,
            offset: s.offset + skip,
            cookie: i as u32,
        });
        specs.push(spec);
    }
    Ok(Some(Plan {
        engine: dbtel_common::Engine::Mysql,
        pid,
        path: path.into(),
        host_path: host.into(),
        layout: Layout::Sites(specs),
        points,
        warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARIADBD: &str = "/usr/sbin/mariadbd";

    #[test]
    fn debian_mariadbd_decodes_to_its_headers_offsets() {
        // Offsets measured on 1:10.11.19-0+deb12u1 (see the research note).
        let plan = claim(1, MARIADBD, Path::new(MARIADBD))
            .unwrap()
            .expect("mariadbd is a server (cargo xtask setup installs it)");
        let Layout::Sites(specs) = &plan.layout else {
            panic!()
        };
        assert_eq!(plan.points.len(), 8);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let end = &specs[0];
        assert_eq!(end.probe, mysite::STATEMENT_DONE);
        assert_eq!(
            (end.args[0].value, end.args[0].hops_at[0]),
            (0x20, 0x3f18),
            "Protocol::thd, THD::thread_id"
        );
        assert_eq!(end.args[1].hops_at[0], 0x68, "query_string");
        assert_eq!(&end.args[3].hops_at, &[0x62e0, 8], "m_stmt_da, sql_errno");
        assert_eq!(&end.args[4].hops_at, &[0x62e0, 0x234], "status");
        assert_eq!(end.args[5].hops_at[0], 0x3f34, "server_status");
        assert_eq!(end.args[6].hops_at[0], 0x2810, "start_utime");
        assert_eq!(end.args[7].hops_at[0], 0x27d8, "command");
        assert_eq!(&end.args[8].hops_at, &[0x62e0, 0x220], "affected rows");
        assert_eq!(end.args[9].hops_at[0], 0x3b98, "sent rows");
        assert_eq!(specs[1].arg_mask, LOCK_WAIT_TYPES);
        assert_eq!(
            (
                specs[1].args[2].value,
                specs[2].args[1].value,
                specs[3].args[0].value
            ),
            (0x3f18, 0x3f18, 0x3f18),
            "the waiting THD's and the ending one's thread_id"
        );
        // end_connection: security_ctx's user and ip, THD::db (measured with
        // bpftrace on that build: root / NULL over the socket, 127.0.0.1 over TCP).
        let session: Vec<_> = specs[5..]
            .iter()
            .map(|s| {
                (
                    s.probe,
                    s.args[0].value,
                    s.args[1].value,
                    s.args[1].hops,
                    s.args[1].hops_at[0],
                    s.text_arg,
                )
            })
            .collect();
        assert_eq!(
            session,
            [
                (mysite::SESSION_USER, 0x3f18, 0x25f8, 1, 0x8, 2),
                (mysite::SESSION_DB, 0x3f18, 0xa0, 0, 0, 2),
                (mysite::SESSION_ADDRESS, 0x3f18, 0x25f8, 1, 0x10, 2),
            ]
        );
        assert!(plan.points[5..]
            .iter()
            .all(|p| p.function == session_sites::END_CONNECTION));
    }

    #[test]
    fn clients_and_other_programs_are_not_servers() {
        for other in [
            "/usr/bin/mariadb",
            "/usr/lib/x86_64-linux-gnu/libmariadb.so.3",
            "/usr/lib/postgresql/15/bin/postgres",
        ] {
            assert!(
                claim(1, other, Path::new(other)).unwrap().is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn an_accessor_that_does_not_decode_is_named() {
        let ret_only = |name: &'static str| {
            (name == "thd_get_thread_id").then(|| x86::decode_body(&[0x31, 0xc0, 0xc3], 0))
        };
        let e = decode("mysqld-odd", &ret_only).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "mysqld-odd: cannot decode thd_get_thread_id: no 8-byte load of thread_id"
            ),
            "{e}"
        );
        let e = decode("mysqld-odd", &|_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mysqld-odd: no thd_get_thread_id: not a MariaDB server build dbtel can trace"
        );
    }
}
