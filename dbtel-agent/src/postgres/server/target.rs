//! A PostgreSQL server to trace: its postmaster, its backends, and the probe
//! sites on its executable, each with where its arguments live (from the
//! binary's USDT notes, or its symbols and code where it has no USDT probes:
//! nothing here is specific to one build).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use dbtel_common::{argkind, repeat, site, ArgSpec, SiteSpec, NO_INDEX, USDT_MAX_ARGS};
use object::{Object, ObjectSymbol};

use crate::{
    host::process::vaddr_to_offset,
    host::usdt::{self, UsdtError},
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read {path}: {source}{}", crate::host::privileges::denied_hint(.source, .path.starts_with("/proc/")))]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Usdt { path: String, source: UsdtError },
    #[error("{path} is a PostgreSQL server without the USDT probe {probe} (needed for {why})")]
    MissingProbe {
        path: String,
        probe: &'static str,
        why: &'static str,
    },
    #[error("{path} is a PostgreSQL server without USDT probes (built without --enable-dtrace) and without the function {functions} that stands in for the probe {probe} (needed for {why}): a stripped build without .dynsym?")]
    MissingFunction {
        path: String,
        probe: &'static str,
        functions: String,
        why: &'static str,
    },
    #[error("{path} has no USDT probes, and --pg-server-probes usdt was given: it was built without --enable-dtrace (use --pg-server-probes auto)")]
    NoUsdt { path: String },
    #[error("{path}: {why}")]
    Layout { path: String, why: String },
    #[error("{path} is named postgres but has neither PostgreSQL's USDT probes nor its symbols (PostgresMain, pgstat_report_activity): dbtel cannot trace a build stripped of both")]
    Unrecognised { path: String },
    #[error("{path}: USDT probe {probe}: {why}")]
    BadProbe {
        path: String,
        probe: String,
        why: String,
    },
}

/// USDT probes the agent needs: (note name, site id, what for, string argument).
/// Never the lwlock probes: they fire on every buffer access.
const USDT_SITES: &[(&str, u32, &str, u32)] = &[
    (
        "statement__status",
        site::STATEMENT_STATUS,
        "query spans",
        1,
    ),
    (
        "transaction__abort",
        site::TRANSACTION_ABORT,
        "transactions",
        0,
    ),
    ("lock__wait__start", site::LOCK_WAIT_START, "lock waits", 0),
    ("lock__wait__done", site::LOCK_WAIT_DONE, "lock waits", 0),
    ("deadlock__found", site::DEADLOCK_FOUND, "deadlocks", 0),
];

/// Where the server's statement, transaction and lock facts come from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProbeSource {
    /// USDT probes where the build has them, else uprobes on its functions.
    #[default]
    Auto,
    /// USDT probes only: a build without them is refused.
    Usdt,
    /// Uprobes on the server's functions even where USDT probes exist.
    Uprobes,
}

/// `--pg-server-probes`: the agent's and `check`'s flag (flattened into both).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct ProbeSourceArg {
    /// Where a PostgreSQL server's statement, transaction and lock facts come from:
    /// auto (its USDT probes where it was built with --enable-dtrace, else uprobes on its
    /// functions, found in .dynsym/.symtab), usdt (refuse a build without them), uprobes.
    #[arg(
        long = "pg-server-probes",
        value_enum,
        value_name = "SOURCE",
        env = "DBTEL_PG_SERVER_PROBES",
        default_value = "auto"
    )]
    pub source: ProbeSource,
}

/// Chosen once, at startup, before any server is inspected (--pg-server-probes).
static PROBE_SOURCE: std::sync::OnceLock<ProbeSource> = std::sync::OnceLock::new();

/// Sets where server facts come from; the first call wins.
pub fn choose_probe_source(s: ProbeSource) {
    let _ = PROBE_SOURCE.set(s);
}

fn probe_source() -> ProbeSource {
    PROBE_SOURCE.get().copied().unwrap_or_default()
}

/// Where a probed function's argument is, at its entry (System V ABI: the
/// first argument in %rdi), or its return value.
#[derive(Debug, Clone, Copy)]
pub(super) enum FnArg {
    /// The first argument itself: (size, signed).
    First(u8, bool),
    /// A field of the struct the first argument points to: (offset, size).
    FieldOfFirst(i64, u8),
    /// A pointer passed in this argument register (a string to copy).
    Pointer(usdt::Gpr),
    /// At a function's return: its return value (%rax) of this size.
    Return(u8),
}

/// An exported function probed at entry.
struct FunctionSite {
    symbol: &'static str,
    site: u32,
    args: &'static [FnArg],
    /// The argument (index + 1) that points at a C string to copy; 0: none.
    text_arg: u32,
    /// Hits whose first argument is below this are not sent; where the
    /// function begins by testing that argument against it, the probe goes
    /// past the test instead (see error_path).
    min_arg0: u32,
    /// [`repeat`] flags: the hit ends the kernel's "same text again"
    /// suppression, completes the statement (see SiteSpec).
    repeat: u32,
    /// Used only if the executable also has this symbol (what the arguments'
    /// layout depends on).
    requires: Option<&'static str>,
    /// What is lost without it.
    without: &'static str,
}

const ERRORS: &str = "server spans will lack SQLSTATEs or take warnings for errors";

const SESSIONS: &str = "sessions too short for the catalog go without user and application names";

/// Runs once per session (and on SET application_name): who the session serves.
const fn session_site(symbol: &'static str, site: u32, args: &'static [FnArg]) -> FunctionSite {
    FunctionSite {
        symbol,
        site,
        args,
        text_arg: 1,
        min_arg0: 0,
        repeat: 0,
        requires: None,
        without: SESSIONS,
    }
}

const fn error_site(
    symbol: &'static str,
    site: u32,
    args: &'static [FnArg],
    min_arg0: u32,
) -> FunctionSite {
    let text_arg = (site == site::ERRMSG) as u32;
    FunctionSite {
        symbol,
        site,
        args,
        text_arg,
        min_arg0,
        repeat: 0,
        requires: None,
        without: ERRORS,
    }
}

/// Exported functions probed at entry: the error reports (SQLSTATE and the
/// untranslated message format, which carries no user data; they run only
/// when a message is reported), statement completion, and session start.
const FUNCTION_SITES: &[FunctionSite] = &[
    error_site("errcode", site::ERRCODE, &[FnArg::First(4, true)], 0),
    error_site("errmsg", site::ERRMSG, &[FnArg::First(8, false)], 0),
    error_site("errstart_cold", site::ERRSTART, &[FnArg::First(4, true)], 0),
    // Every ereport goes through errstart (DEBUG ones too: Bind's and Parse's,
    // one or two per extended-protocol statement); only ERROR (21) and worse
    // are wanted.
    error_site("errstart", site::ERRSTART, &[FnArg::First(4, true)], ERROR_LEVEL),
    error_site("EmitErrorReport", site::ERROR_EMITTED, &[], 0),
    error_site("FlushErrorState", site::ERROR_FLUSHED, &[], 0),
    error_site("unpack_sql_state", site::ERROR_SENT, &[FnArg::First(4, true)], 0),
    // EndCommand(const QueryCompletion *qc, CommandDest, bool): one hit per
    // completed top-level statement, in both protocols; QueryCompletion is
    // {CommandTag commandTag; uint64 nprocessed} since PostgreSQL 13, which
    // brought GetCommandTagName (before, EndCommand took the tag's text).
    FunctionSite {
        symbol: "EndCommand",
        site: site::COMMAND_DONE,
        args: &[FnArg::FieldOfFirst(0, 4), FnArg::FieldOfFirst(8, 8)],
        text_arg: 0,
        min_arg0: 0,
        repeat: repeat::ONCE | repeat::COMPLETES,
        requires: Some("GetCommandTagName"),
        without: "statements run without a Sync between them (batches, pipelines) merge into one span, and server spans carry no row counts",
    },
    // InitPostgres(const char *in_dbname, Oid, const char *username, ...).
    session_site("InitPostgres", site::SESSION_DATABASE, &[FnArg::Pointer(usdt::Gpr::Rdi)]),
    session_site("InitPostgres", site::SESSION_USER, &[FnArg::Pointer(usdt::Gpr::Rdx)]),
    session_site("pgstat_report_appname", site::APPLICATION_NAME, &[FnArg::Pointer(usdt::Gpr::Rdi)]),
];

impl FnArg {
    pub(super) fn spec(self) -> ArgSpec {
        let rdi = usdt::Gpr::Rdi.pt_regs_offset();
        match self {
            FnArg::First(size, signed) => ArgSpec {
                kind: argkind::REGISTER,
                size,
                signed: signed as u8,
                reg_off: rdi,
                index_off: NO_INDEX,
                ..Default::default()
            },
            FnArg::FieldOfFirst(offset, size) => ArgSpec {
                kind: argkind::MEMORY,
                size,
                reg_off: rdi,
                index_off: NO_INDEX,
                value: offset,
                ..Default::default()
            },
            FnArg::Return(size) => ArgSpec {
                kind: argkind::REGISTER,
                size,
                reg_off: usdt::Gpr::Rax.pt_regs_offset(),
                index_off: NO_INDEX,
                ..Default::default()
            },
            FnArg::Pointer(reg) => ArgSpec {
                kind: argkind::REGISTER,
                size: 8,
                reg_off: reg.pt_regs_offset(),
                index_off: NO_INDEX,
                ..Default::default()
            },
        }
    }
}

/// elog.h's ERROR.
const ERROR_LEVEL: u32 = 21;

/// One place to attach `server_site`, with the spec the kernel side follows.
#[derive(Debug, Clone)]
pub struct Site {
    pub name: &'static str,
    /// Offset in the executable file.
    pub offset: u64,
    pub spec: SiteSpec,
    /// A uretprobe at the function's return, not a probe at `offset` itself.
    pub at_return: bool,
    /// A USDT site with a semaphore: the kernel keeps one semaphore setting
    /// per site, so a tracer attached with it (bpftrace) shuts dbtel out.
    pub semaphore: bool,
}

#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// The postmaster: every backend is its child.
    pub postmaster: u32,
    /// The executable as the process sees it.
    pub exe: String,
    /// The same file from the agent's mount namespace.
    pub host_path: PathBuf,
    /// (device, inode): probes are placed once per executable file.
    pub file_id: (u64, u64),
    pub sites: Vec<Site>,
    /// Probes that could not be used (the feature is degraded, not refused).
    pub warnings: Vec<String>,
}

/// `Some` if `pid` runs a PostgreSQL server executable (it has `postgresql`
/// USDT notes); the target names its postmaster.
pub fn inspect(pid: u32) -> Result<Option<ServerTarget>, ServerError> {
    let (exe, host_path) = process_exe(pid)?;
    let t = inspect_file(exe, host_path)?;
    Ok(t.map(|t| ServerTarget {
        postmaster: postmaster_of(pid),
        ..t
    }))
}

/// A server file read before ([`inspect_file`]) as process `pid` runs it:
/// what [`inspect`] would say, without reading the file again.
pub fn run_by(pid: u32, file: ServerTarget) -> Result<ServerTarget, ServerError> {
    let (exe, host_path) = process_exe(pid)?;
    Ok(ServerTarget {
        postmaster: postmaster_of(pid),
        exe,
        host_path,
        ..file
    })
}

/// A process's executable as it sees it, and as the agent reaches it.
fn process_exe(pid: u32) -> Result<(String, PathBuf), ServerError> {
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| ServerError::Read {
            path: format!("/proc/{pid}/exe"),
            source,
        })?;
    let host_path = PathBuf::from(format!("/proc/{pid}/root{exe}"));
    Ok((exe, host_path))
}

/// `Some` if the file is a PostgreSQL server executable (`exe`: its path as
/// its processes see it), read before any process of it is known
/// (postmaster 0).
pub fn inspect_file(exe: String, host_path: PathBuf) -> Result<Option<ServerTarget>, ServerError> {
    let path = host_path.to_string_lossy().into_owned();
    // Its headers, notes and symbol tables are all it takes (probe sites are
    // addresses): a few MiB of a server, read once per file and process exec.
    let data =
        crate::host::elf::symbols_and_notes(&host_path).map_err(|source| ServerError::Read {
            path: path.clone(),
            source,
        })?;
    let code = |at: u64, len: usize| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        let f = fs::File::open(&host_path).ok()?;
        f.read_exact_at(&mut buf, at).ok().map(|()| buf)
    };
    let Some((sites, warnings)) = sites_of_image(&data, &exe, &code)? else {
        return Ok(None);
    };
    let meta = fs::metadata(&host_path).map_err(|source| ServerError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(Some(ServerTarget {
        postmaster: 0,
        exe,
        host_path,
        file_id: (meta.dev(), meta.ino()),
        sites,
        warnings,
    }))
}

/// Where to attach, and what could not be probed (warnings).
pub type Sites = (Vec<Site>, Vec<String>);

/// Reads `len` bytes of the executable at a file offset (function code).
pub type CodeReader<'a> = &'a dyn Fn(u64, usize) -> Option<Vec<u8>>;

/// The probe sites of a server executable, of its headers, notes and
/// symbols (`None`: not a PostgreSQL server), code read through `code`:
/// [`inspect`]'s part that a fuzzer calls.
pub fn sites_of_image(
    data: &[u8],
    exe: &str,
    code: CodeReader,
) -> Result<Option<Sites>, ServerError> {
    let probes = match usdt::probes(data) {
        Ok(p) => p,
        Err(UsdtError::Elf(_)) => return Ok(None),
        Err(source) => {
            return Err(ServerError::Usdt {
                path: exe.into(),
                source,
            })
        }
    };
    let file = object::File::parse(data).map_err(|e| ServerError::Usdt {
        path: exe.into(),
        source: UsdtError::Elf(e.to_string()),
    })?;
    let has_usdt = probes.iter().any(|p| p.provider == "postgresql");
    let has_symbols = || {
        ["PostgresMain", "pgstat_report_activity"]
            .iter()
            .all(|s| symbol_address(&file, s).is_some())
    };
    if !has_usdt && !has_symbols() {
        if Path::new(exe).file_name() == Some("postgres".as_ref()) {
            return Err(ServerError::Unrecognised { path: exe.into() });
        }
        return Ok(None);
    }
    let mut sites = match (probe_source(), has_usdt) {
        (ProbeSource::Usdt, false) => return Err(ServerError::NoUsdt { path: exe.into() }),
        (ProbeSource::Auto | ProbeSource::Usdt, true) => usdt_sites(&file, &probes, exe)?,
        (ProbeSource::Uprobes, _) | (ProbeSource::Auto, false) => {
            super::uprobe_sites::sites(&file, exe, code)?
        }
    };
    let (more, warnings) = function_sites(&file, exe, code);
    sites.extend(more);
    Ok(Some((sites, warnings)))
}

impl ServerTarget {
    /// Which way its statements are seen, for log lines: USDT probe names
    /// have a double underscore, the C functions probed here none.
    pub fn source(&self) -> &'static str {
        if self.sites.iter().any(|s| s.name.contains("__")) {
            "USDT"
        } else {
            "uprobes on functions (no USDT)"
        }
    }
}

/// The USDT probes' sites.
fn usdt_sites(
    file: &object::File,
    probes: &[usdt::Probe],
    exe: &str,
) -> Result<Vec<Site>, ServerError> {
    let exe = exe.to_string();
    let mut sites = Vec::new();
    for &(name, id, why, text_arg) in USDT_SITES {
        let found: Vec<_> = probes
            .iter()
            .filter(|p| p.provider == "postgresql" && p.name == name)
            .collect();
        if found.is_empty() {
            return Err(ServerError::MissingProbe {
                path: exe,
                probe: name,
                why,
            });
        }
        for p in found {
            let bad = |why: String| ServerError::BadProbe {
                path: exe.clone(),
                probe: name.to_string(),
                why,
            };
            if p.args.len() > USDT_MAX_ARGS {
                return Err(bad(format!(
                    "{} arguments, at most {USDT_MAX_ARGS} supported",
                    p.args.len()
                )));
            }
            let repeat_once = if id == site::STATEMENT_STATUS {
                repeat::ONCE
            } else {
                0
            };
            let mut spec = SiteSpec {
                probe: id,
                text_arg,
                repeat_once,
                ..Default::default()
            };
            for (i, a) in p.args.iter().enumerate() {
                spec.args[i] =
                    usdt::arg_spec(a).map_err(|w| bad(format!("argument {}: {w}", i + 1)))?;
            }
            let offset = vaddr_to_offset(file, p.address)
                .ok_or_else(|| bad(format!("address {:#x} is in no segment", p.address)))?;
            sites.push(Site {
                name,
                offset,
                spec,
                at_return: false,
                semaphore: p.semaphore != 0,
            });
        }
    }
    Ok(sites)
}

/// Exported functions probed at entry whatever the build (errors, statement
/// completion, sessions), and what could not be probed.
fn function_sites(file: &object::File, exe: &str, code: CodeReader) -> Sites {
    let mut sites = Vec::new();
    let mut warnings = Vec::new();
    for f in FUNCTION_SITES {
        if let Some(r) = f.requires.filter(|r| symbol_offset(file, r).is_none()) {
            warnings.push(format!(
                "{exe}: no {r} symbol (PostgreSQL before 13?), {} not probed: {}",
                f.symbol, f.without
            ));
            continue;
        }
        // The address once: the symbol tables are searched end to end.
        let found =
            symbol_address(file, f.symbol).and_then(|ip| Some((ip, vaddr_to_offset(file, ip)?)));
        match found {
            Some((ip, offset)) => {
                let mut spec = SiteSpec {
                    probe: f.site,
                    text_arg: f.text_arg,
                    min_arg0: f.min_arg0,
                    repeat_once: f.repeat,
                    ..Default::default()
                };
                for (i, a) in f.args.iter().enumerate() {
                    spec.args[i] = a.spec();
                }
                let mut offset = offset;
                let past = (f.min_arg0 != 0)
                    .then(|| super::error_path::past_test(ip, f.min_arg0, offset, code))
                    .flatten();
                if let Some(at) = past.and_then(|past| offset.checked_add(past)) {
                    // Only the filtered-for calls get there: no filter, and
                    // no arguments (their registers may hold other values).
                    offset = at;
                    spec.min_arg0 = 0;
                    spec.args = Default::default();
                }
                sites.push(Site {
                    name: f.symbol,
                    offset,
                    spec,
                    at_return: false,
                    semaphore: false,
                });
            }
            None => warnings.push(format!("{exe}: no {} symbol: {}", f.symbol, f.without)),
        }
    }
    (sites, warnings)
}

/// Address of a function defined in the executable (.dynsym or .symtab).
pub(super) fn symbol_address(file: &object::File, symbol: &str) -> Option<u64> {
    file.dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(symbol) && !s.is_undefined() && s.address() != 0)
        .map(|s| s.address())
}

/// File offset of a function defined in the executable (.dynsym or .symtab).
pub(super) fn symbol_offset(file: &object::File, symbol: &str) -> Option<u64> {
    vaddr_to_offset(file, symbol_address(file, symbol)?)
}

/// (parent PID, state) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, char)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, state))
}

fn same_exe(a: u32, b: u32) -> bool {
    let id = |p: u32| crate::host::process::file_id(Path::new(&format!("/proc/{p}/exe")));
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// A backend's postmaster is its parent running the same executable; a
/// postmaster is its own.
pub fn postmaster_of(pid: u32) -> u32 {
    let mut p = pid;
    while let Some((ppid, _)) = stat(p) {
        if ppid <= 1 || !same_exe(p, ppid) {
            break;
        }
        p = ppid;
    }
    p
}

/// The postmaster and its living children (backends and auxiliary processes).
pub fn processes_of(postmaster: u32) -> Vec<u32> {
    let mut out = vec![postmaster];
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if matches!(stat(pid), Some((ppid, st)) if ppid == postmaster && st != 'Z') {
            out.push(pid);
        }
    }
    out
}

/// SQLSTATE from PostgreSQL's packed form (MAKE_SQLSTATE: 6 bits a character).
pub fn unpack_sqlstate(code: u64) -> String {
    (0..5)
        .map(|i| (((code >> (6 * i)) & 0x3f) as u8 + b'0') as char)
        .collect()
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
