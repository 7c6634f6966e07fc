//! Finds libpq in a process: /proc/<pid>/maps → the ELF files it maps (read
//! through /proc/<pid>/root so containers work) → libpq's symbols and layout.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use dbtel_common::LibpqLayout;
use object::{Object, ObjectSymbol};

use crate::{
    host::placement::{self, Placement},
    host::process::{exe_name, executable_mappings, vaddr_to_offset, ProcessError},
    postgres::libpq::layout::{self, Accessors},
    postgres::libpq::resultpoint::{self, ResultPoint},
};

/// The libpq entry points dbtel probes; a libpq lacking any of them is refused.
pub const PROBED: &[&str] = &[
    "PQexec",
    "PQexecParams",
    "PQprepare",
    "PQexecPrepared",
    "PQsendQuery",
    "PQsendQueryParams",
    "PQsendPrepare",
    "PQsendQueryPrepared",
    "PQgetResult",
    "PQfinish",
];

/// Pipeline-mode functions, probed where the libpq has them (14+; the send
/// form of the sync 17+): an older libpq simply has no pipeline mode.
pub const PIPELINE_CALLS: &[(&str, u32)] = &[
    (
        "PQenterPipelineMode",
        dbtel_common::func::PQENTER_PIPELINE_MODE,
    ),
    (
        "PQexitPipelineMode",
        dbtel_common::func::PQEXIT_PIPELINE_MODE,
    ),
    ("PQpipelineSync", dbtel_common::func::PQPIPELINE_SYNC),
    (
        "PQsendPipelineSync",
        dbtel_common::func::PQSEND_PIPELINE_SYNC,
    ),
];

/// Pipeline calls whose result matters (they can fail on a healthy
/// connection): an entry and a return probe, which share the first instruction.
pub fn returns_probed(f: u32) -> bool {
    matches!(
        f,
        dbtel_common::func::PQENTER_PIPELINE_MODE | dbtel_common::func::PQEXIT_PIPELINE_MODE
    )
}

/// (text argument, statement-name argument), 1-based, 0 = none.
pub fn args_of(f: u32) -> (u32, u32) {
    match f {
        dbtel_common::func::PQEXEC
        | dbtel_common::func::PQEXEC_PARAMS
        | dbtel_common::func::PQSEND_QUERY
        | dbtel_common::func::PQSEND_QUERY_PARAMS => (2, 0),
        dbtel_common::func::PQPREPARE | dbtel_common::func::PQSEND_PREPARE => (3, 2),
        dbtel_common::func::PQEXEC_PREPARED | dbtel_common::func::PQSEND_QUERY_PREPARED => (0, 2),
        _ => (0, 0),
    }
}

pub const QUERY_CALLS: &[(&str, u32)] = &[
    ("PQexec", dbtel_common::func::PQEXEC),
    ("PQexecParams", dbtel_common::func::PQEXEC_PARAMS),
    ("PQprepare", dbtel_common::func::PQPREPARE),
    ("PQexecPrepared", dbtel_common::func::PQEXEC_PREPARED),
    ("PQsendQuery", dbtel_common::func::PQSEND_QUERY),
    ("PQsendQueryParams", dbtel_common::func::PQSEND_QUERY_PARAMS),
    ("PQsendPrepare", dbtel_common::func::PQSEND_PREPARE),
    (
        "PQsendQueryPrepared",
        dbtel_common::func::PQSEND_QUERY_PREPARED,
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("process {pid} ({exe}) does not use libpq: trace its server (--pid POSTMASTER) to see its queries")]
    NoLibpq { pid: u32, exe: String },
    #[error(
        "{path} (process {pid}) has libpq symbols but lacks {missing}: unsupported libpq build"
    )]
    MissingSymbols {
        pid: u32,
        path: String,
        missing: String,
    },
    #[error("{path}: {error}{}", crate::host::privileges::denied_hint(.error, true))]
    Read { path: String, error: io::Error },
    #[error("{path}: not a readable ELF file: {error}")]
    Elf { path: String, error: object::Error },
    #[error("{path}: unexpected libpq build: {error}")]
    Layout {
        path: String,
        error: layout::LayoutError,
    },
}

/// libpq found in one process.
#[derive(Debug, Clone)]
pub struct LibpqTarget {
    pub pid: u32,
    /// Path as the process sees it (from its maps).
    pub path: String,
    /// The same file as the agent reaches it.
    pub host_path: PathBuf,
    /// File offsets of the probed functions.
    pub offsets: BTreeMap<&'static str, u64>,
    /// Where each function's entry probe goes (see placement): PQgetResult's
    /// stays at its first instruction, which its return probe needs.
    pub placements: BTreeMap<&'static str, Placement>,
    pub layout: LibpqLayout,
    /// Where PQgetResult holds a result it returns (one probe per result), or
    /// why it was not found (then an entry and a return probe are used).
    pub result_points: Result<Vec<ResultPoint>, String>,
    /// Why the PGconn offsets are unknown, if they are (spans then lack
    /// database and server details).
    pub conn_layout_error: Option<String>,
}

/// The system's libpq per the loader cache (what a dynamically linked
/// program or a Python extension will load).
pub fn system_libpq() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(o) = std::process::Command::new("/sbin/ldconfig")
        .arg("-p")
        .output()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some((name, path)) = line.split_once("=>") {
                if name.trim_start().starts_with("libpq.so") {
                    if let Ok(real) = std::fs::canonicalize(path.trim()) {
                        if !out.contains(&real) {
                            out.push(real);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every mapped ELF object of `pid` that defines libpq's functions: a shared
/// libpq, or an executable or library with libpq linked in.
pub fn find_libpq(pid: u32) -> Result<Vec<LibpqTarget>, DiscoverError> {
    let mut found = Vec::new();
    for path in executable_mappings(pid)? {
        let host_path = PathBuf::from(format!("/proc/{pid}/root{path}"));
        if let Some(t) = inspect(pid, &path, &host_path)? {
            found.push(t);
        }
    }
    if found.is_empty() {
        return Err(DiscoverError::NoLibpq {
            pid,
            exe: exe_name(pid),
        });
    }
    Ok(found)
}

/// Whether a file defines libpq's entry points, from its headers and symbol
/// tables alone (None: not a readable 64-bit ELF file). Most files a process
/// maps are not libpq, some are large, and a held process waits for this.
fn defines_libpq(host_path: &Path) -> Option<bool> {
    let data = crate::host::elf::symbol_tables_only(host_path)?;
    let file = object::File::parse(&*data).ok()?;
    let symbols = defined_symbols(&file);
    Some(symbols.contains_key("PQgetResult") || symbols.contains_key("PQexec"))
}

/// Looks at one file; `None` if it has nothing of libpq.
pub fn inspect(
    pid: u32,
    path: &str,
    host_path: &Path,
) -> Result<Option<LibpqTarget>, DiscoverError> {
    match defines_libpq(host_path) {
        Some(true) => {}
        Some(false) => return Ok(None),
        // Not a readable ELF file (a device, a file too large): only a file
        // named like libpq is worth an error.
        None if !path.contains("libpq") => return Ok(None),
        None => {}
    }
    let data = match crate::host::elf::read_bounded(host_path) {
        Ok(d) => d,
        // Files that vanished or that we may not read are not libpq candidates
        // worth failing over, unless they are named like libpq.
        Err(error) if !path.contains("libpq") => {
            log::debug!("skipping {path}: {error}");
            return Ok(None);
        }
        Err(error) => {
            return Err(DiscoverError::Read {
                path: path.into(),
                error,
            })
        }
    };
    inspect_image(pid, path, host_path, &data)
}

/// As [`inspect`], of the file's bytes, read already (`host_path` is only
/// recorded): what a fuzzer calls.
pub fn inspect_image(
    pid: u32,
    path: &str,
    host_path: &Path,
    data: &[u8],
) -> Result<Option<LibpqTarget>, DiscoverError> {
    let file = match object::File::parse(data) {
        Ok(f) => f,
        Err(_) if !path.contains("libpq") => return Ok(None),
        Err(error) => {
            return Err(DiscoverError::Elf {
                path: path.into(),
                error,
            })
        }
    };
    let symbols = defined_symbols(&file);
    if !symbols.contains_key("PQgetResult") && !symbols.contains_key("PQexec") {
        return Ok(None);
    }
    let missing: Vec<&str> = PROBED
        .iter()
        .copied()
        .filter(|s| !symbols.contains_key(*s))
        .collect();
    if !missing.is_empty() {
        return Err(DiscoverError::MissingSymbols {
            pid,
            path: path.into(),
            missing: missing.join(", "),
        });
    }
    let to_offset = |addr: u64| vaddr_to_offset(&file, addr);
    let mut offsets = BTreeMap::new();
    for name in PROBED {
        let off = to_offset(symbols[*name]).ok_or_else(|| DiscoverError::MissingSymbols {
            pid,
            path: path.into(),
            missing: format!("a file offset for {name}"),
        })?;
        offsets.insert(*name, off);
    }
    for (name, _) in PIPELINE_CALLS {
        if let Some(off) = symbols.get(*name).and_then(|a| to_offset(*a)) {
            offsets.insert(*name, off);
        }
    }
    let get = |name: &'static str| {
        let addr = *symbols.get(name)?;
        let off = to_offset(addr)? as usize;
        let code = data.get(off..(off + 256).min(data.len()))?;
        Some(crate::host::x86::decode(code, addr))
    };
    let mut placements = BTreeMap::new();
    for name in offsets.keys() {
        let insns = get(name).unwrap_or_default();
        let returns = PIPELINE_CALLS
            .iter()
            .any(|&(n, f)| n == *name && returns_probed(f));
        let p = if *name == "PQgetResult" || returns {
            // Entry and return probe share the entry breakpoint.
            placement::at_entry(&insns)
        } else {
            // The probe reads the connection and, for query calls, the text and name arguments.
            let nargs = QUERY_CALLS
                .iter()
                .find(|(n, _)| n == name)
                .map_or(1, |&(_, f)| {
                    let (text, stmt) = args_of(f);
                    text.max(stmt).max(1) as usize
                });
            placement::entry_probe(&insns, placement::arg_registers(nargs))
        };
        placements.insert(*name, p);
    }
    let (layout, conn_err) =
        layout::libpq_layout(&Accessors { get: &get }).map_err(|error| DiscoverError::Layout {
            path: path.into(),
            error,
        })?;
    let result_points = result_points(&file, data, &symbols).map_err(|e| e.to_string());
    Ok(Some(LibpqTarget {
        pid,
        path: path.into(),
        host_path: host_path.into(),
        offsets,
        placements,
        layout,
        result_points,
        conn_layout_error: conn_err.map(|e| e.to_string()),
    }))
}

/// PQgetResult's result points (see resultpoint), with calls resolved
/// through the PLT or GOT to PQfireResultCreateEvents.
fn result_points(
    file: &object::File<'_>,
    data: &[u8],
    symbols: &BTreeMap<String, u64>,
) -> Result<Vec<ResultPoint>, resultpoint::NotFound> {
    use object::{ObjectSymbolTable, RelocationTarget};
    const FIRE: &str = "PQfireResultCreateEvents";
    let not_found = resultpoint::NotFound;
    let addr = symbols["PQgetResult"];
    let size = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.address() == addr && s.size() > 0)
        .map(|s| s.size())
        .ok_or(not_found("PQgetResult's size is unknown"))?;
    let off =
        vaddr_to_offset(file, addr).ok_or(not_found("PQgetResult is outside the file"))? as usize;
    let code = off
        .checked_add(size as usize)
        .and_then(|end| data.get(off..end))
        .ok_or(not_found("PQgetResult is outside the file"))?;
    // GOT slots whose dynamic relocation names the events function.
    let dynsyms = file.dynamic_symbol_table();
    let fire_slots: Vec<u64> = file
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| match r.target() {
            RelocationTarget::Symbol(i) => dynsyms
                .as_ref()
                .and_then(|t| t.symbol_by_index(i).ok())
                .is_some_and(|s| s.name().is_ok_and(|n| n.split('@').next() == Some(FIRE))),
            _ => false,
        })
        .map(|(slot, _)| slot)
        .collect();
    let fire_addr = symbols.get(FIRE).copied();
    let is_fire = |target: u64, via_got: bool| {
        if via_got {
            return fire_slots.contains(&target);
        }
        if Some(target) == fire_addr {
            return true;
        }
        // A PLT stub: [endbr64;] jmp [rip+slot].
        let Some(code) = vaddr_to_offset(file, target)
            .and_then(|o| data.get(o as usize..(o as usize + 16).min(data.len())))
        else {
            return false;
        };
        crate::host::x86::decode(code, target)
            .iter()
            .take(2)
            .any(|i| {
                i.mnemonic() == iced_x86::Mnemonic::Jmp
                    && i.is_ip_rel_memory_operand()
                    && fire_slots.contains(&i.ip_rel_memory_address())
            })
    };
    resultpoint::find(code, addr, &is_fire)
}

/// Defined function symbols (dynamic first, then the full table if present).
fn defined_symbols<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        if let Ok(name) = sym.name() {
            // Strip a version suffix if the reader left one (name@@VERS).
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with("PQ") {
                out.entry(name.to_string()).or_insert(sym.address());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_libpq_has_one_result_point() {
        // The libpq the integration tests use (installed by `cargo xtask setup`).
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libpq.so.5");
        assert!(
            path.exists(),
            "{} missing: install libpq5 (cargo xtask setup does)",
            path.display()
        );
        let t = inspect(1, "libpq.so.5", path).unwrap().unwrap();
        let points = t.result_points.unwrap();
        assert_eq!(points.len(), 1, "{points:?}");
        assert!(points[0].instruction.starts_with('j'), "{points:?}");
    }

    #[test]
    fn libpq_is_told_from_its_symbol_tables_alone() {
        let libpq = Path::new("/usr/lib/x86_64-linux-gnu/libpq.so.5");
        let full = std::fs::read(libpq).unwrap();
        let sparse = crate::host::elf::symbol_tables_only(libpq).unwrap();
        assert_eq!(sparse.len(), full.len());
        let names = |d: &[u8]| defined_symbols(&object::File::parse(d).unwrap());
        assert_eq!(names(&sparse), names(&full));
        assert_eq!(defines_libpq(libpq), Some(true));
        assert_eq!(
            defines_libpq(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            Some(false)
        );
        // Not ELF: said by the full read (which names the error for a libpq).
        assert_eq!(
            defines_libpq(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
            None
        );
    }

    #[test]
    fn file_without_libpq_is_not_a_target() {
        let me = std::env::current_exe().unwrap();
        let got = inspect(std::process::id(), me.to_str().unwrap(), &me).unwrap();
        assert!(got.is_none());
    }
}
