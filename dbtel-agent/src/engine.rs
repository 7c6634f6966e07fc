//! The boundary between the engine-neutral agent and one database engine's
//! client library: an engine claims a library mapped in a process, gives
//! the probes to place as data (a [`Plan`], which `attach` carries out
//! knowing no engine), turns its own ring-buffer records into [`DbSpan`]s,
//! and forgets a process that is gone. The main loop holds engines as
//! `Box<dyn Engine>` and sends each record to the engine its header names.
//! Adding an engine adds its folder and one line in run.rs (`engines`).

use std::path::{Path, PathBuf};

use dbtel_common::{LibpqLayout, MysqlOffsets, SiteSpec};

use crate::{events::DecodeError, pipeline::dbspan::DbSpan};

/// Where one probe goes and what its program is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The eBPF program (a uprobe or uretprobe in dbtel-ebpf).
    pub program: &'static str,
    /// The function probed, for messages.
    pub function: &'static str,
    /// File offset of the probed instruction.
    pub offset: u64,
    /// The attach cookie's low 32 bits; the executor puts the layout's slot
    /// in the high 32 bits.
    pub cookie: u32,
}

/// The struct offsets a library's probes read, stored once per distinct
/// build in the engine's kernel-side array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Libpq(LibpqLayout),
    Mysql(MysqlOffsets),
    /// A server's probe sites: each point's cookie is the index of its
    /// spec here (the executor stores them in the kernel's site array), and
    /// the process is one of those the site program emits for.
    Sites(Vec<SiteSpec>),
}

/// A client library found in a process, and how to probe it: all of these
/// points or none (a half-probed library would make wrong spans).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The engine whose plan it is (told when it is carried out).
    pub engine: dbtel_common::Engine,
    pub pid: u32,
    /// As the process maps it, and as the agent reaches it (/proc/PID/root/…).
    pub path: String,
    pub host_path: PathBuf,
    pub layout: Layout,
    pub points: Vec<Point>,
    /// What the user should know about this library (logged once at attach).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClaimError(pub String);

pub trait Engine {
    /// For messages: "MySQL/MariaDB client library".
    fn name(&self) -> &'static str;
    /// The engine its records' headers name.
    fn id(&self) -> dbtel_common::Engine;
    /// A file mapped executable in process `pid` (`path` as the process
    /// sees it, `host` as the agent reaches it): a plan if it holds this
    /// engine's client library; an error names a library it cannot trace.
    fn claim(&self, pid: u32, path: &str, host: &Path) -> Result<Option<Plan>, ClaimError>;
    /// One of its records: spans finished by it go to `out`. Returns the
    /// record's process.
    fn on_record(&mut self, data: &[u8], out: &mut Vec<DbSpan>) -> Result<u32, DecodeError>;
    /// Its plan is carried out: every probe is in place.
    fn attached(&mut self, _plan: &Plan) {}
    /// Called every few hundred milliseconds.
    fn tick(&mut self, now_ns: u64, out: &mut Vec<DbSpan>);
    /// The process exited (or exec'd) at `ts_ns`: what it left open ends.
    fn forget(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<DbSpan>);
    /// Transactions that joined an application's trace since the last call.
    fn take_retraces(&mut self, _out: &mut Vec<crate::pipeline::txn::Retrace>) {}
    /// Transactions open now, per db.system.name (clients: as the
    /// application began them; servers: as the server runs them).
    fn open_transactions(&self, _out: &mut Vec<(&'static str, u64)>) {}
    /// Statements begun and not yet ended (the exit report counts those cut short).
    fn in_flight(&self) -> usize;
}

/// Said of a process that maps no client library any engine traces.
pub fn no_client_library(pid: u32) -> String {
    format!(
        "process {pid} ({}) uses no client library dbtel traces (libpq, libmariadb, libmysqlclient): \
         a driver written in its program's own language (PyMySQL, asyncpg, node-postgres) is seen only \
         from the server (PostgreSQL: --pid POSTMASTER)",
        crate::host::process::exe_name(pid)
    )
}
