//! The dynamic loader's debugger hook. glibc's ld.so calls `_dl_debug_state`
//! (the address debuggers find in `_r_debug.r_brk`) with `_r_debug.r_state`
//! set to RT_ADD before a load maps anything and to RT_CONSISTENT once the
//! new objects are mapped, before their constructors run and before dlopen
//! returns — also for the program's own libraries at start. A probe there
//! tells the agent of a libpq loaded later (a Python wheel's bundled libpq,
//! say) before the program can call it.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Read},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use dbtel_common::loader::R_STATE_OFFSET;
use object::{
    read::elf::{FileHeader, ProgramHeader},
    Object, ObjectSymbol,
};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{path}: {error}{}", super::privileges::denied_hint(.error, true))]
    Read { path: String, error: io::Error },
    #[error("{path}: not a readable ELF file: {error}")]
    Elf { path: String, error: object::Error },
    #[error("{path}: `{what}` lies outside the file")]
    Outside { path: String, what: &'static str },
}

/// glibc's loader in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderTarget {
    /// Path as the process sees it.
    pub path: String,
    /// The same file as the agent reaches it.
    pub host_path: PathBuf,
    /// File offset of `_dl_debug_state` (where the probe goes).
    pub offset: u64,
    /// Address of `_r_debug.r_state` minus that of `_dl_debug_state`: the
    /// same in every process, wherever the loader is mapped.
    pub state_delta: i32,
}

/// A loader's file name: `ld-linux-x86-64.so.2`, `ld-2.31.so`, `ld-musl-x86_64.so.1`.
pub fn looks_like_loader(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-") && name.contains(".so")
}

/// The loader a dynamically linked program names (PT_INTERP), if it is an
/// ELF file that names one. Only the file's head is read.
pub fn interpreter(program: &Path) -> Option<PathBuf> {
    let mut head = Vec::with_capacity(64 * 1024);
    fs::File::open(program)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    let data = &*head;
    let hdr = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
    let endian = hdr.endian().ok()?;
    let phdrs = hdr.program_headers(endian, data).ok()?;
    phdrs
        .iter()
        .find_map(|ph| ph.interpreter(endian, data).ok().flatten())
        .map(|p| PathBuf::from(OsStr::from_bytes(p)))
}

/// The system's default loader for this architecture.
pub fn system_loader() -> Option<PathBuf> {
    fs::canonicalize("/lib64/ld-linux-x86-64.so.2").ok()
}

/// Looks at one file: `None` when it is not a loader with the hook (musl's
/// ld.so, say, or not a loader at all).
pub fn inspect(path: &str, host_path: &Path) -> Result<Option<LoaderTarget>, LoaderError> {
    let data = super::elf::read_bounded(host_path).map_err(|error| LoaderError::Read {
        path: path.into(),
        error,
    })?;
    let file = object::File::parse(&*data).map_err(|error| LoaderError::Elf {
        path: path.into(),
        error,
    })?;
    let (mut hook, mut r_debug) = (None, None);
    for sym in file.dynamic_symbols() {
        if sym.is_undefined() {
            continue;
        }
        match sym.name().map(|n| n.split('@').next().unwrap_or(n)) {
            Ok("_dl_debug_state") => hook = Some(sym.address()),
            Ok("_r_debug") => r_debug = Some(sym.address()),
            _ => {}
        }
    }
    let (Some(hook), Some(r_debug)) = (hook, r_debug) else {
        return Ok(None);
    };
    let offset =
        crate::host::process::vaddr_to_offset(&file, hook).ok_or(LoaderError::Outside {
            path: path.into(),
            what: "_dl_debug_state",
        })?;
    let delta = (r_debug as i64 + R_STATE_OFFSET) - hook as i64;
    let state_delta = i32::try_from(delta).map_err(|_| LoaderError::Outside {
        path: path.into(),
        what: "_r_debug",
    })?;
    Ok(Some(LoaderTarget {
        path: path.into(),
        host_path: host_path.into(),
        offset,
        state_delta,
    }))
}

/// The loaders a command will run under, known before it runs: the one its
/// program names and the system's (a script's interpreter uses that one).
pub fn for_command(program: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = program
        .and_then(interpreter)
        .and_then(|p| fs::canonicalize(p).ok())
        .into_iter()
        .collect();
    if let Some(p) = system_loader() {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_loader_has_the_hook() {
        let ld = system_loader().expect("/lib64/ld-linux-x86-64.so.2");
        let p = ld.to_string_lossy().into_owned();
        let t = inspect(&p, &ld)
            .unwrap()
            .expect("glibc's loader defines _dl_debug_state and _r_debug");
        // r_state is inside the loader's data, after its code.
        assert!(t.state_delta > 0, "{t:?}");
        // The hook is a function doing nothing: `ret`, or `endbr64; ret`.
        let code = fs::read(&ld).unwrap();
        let at = t.offset as usize;
        assert!(
            code[at] == 0xc3 || code[at..at + 5] == [0xf3, 0x0f, 0x1e, 0xfa, 0xc3],
            "{:x?}",
            &code[at..at + 5]
        );
    }

    #[test]
    fn a_program_names_its_loader() {
        let me = std::env::current_exe().unwrap();
        let ld = interpreter(&me).expect("a test binary is dynamically linked");
        assert!(looks_like_loader(&ld.to_string_lossy()), "{}", ld.display());
        assert_eq!(fs::canonicalize(&ld).ok(), system_loader());
        assert_eq!(for_command(Some(&me)), vec![system_loader().unwrap()]);
        // A text file (a script) has none: its interpreter's loader is the system's.
        assert_eq!(
            interpreter(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
            None
        );
    }

    #[test]
    fn loader_names() {
        for yes in [
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "/lib/ld-2.31.so",
            "/lib/ld-musl-x86_64.so.1",
        ] {
            assert!(looks_like_loader(yes), "{yes}");
        }
        for no in [
            "/usr/lib/x86_64-linux-gnu/libpq.so.5.15",
            "/usr/bin/ld-wrapper",
            "/usr/lib/x86_64-linux-gnu/libld-x.so",
        ] {
            assert!(!looks_like_loader(no), "{no}");
        }
    }

    #[test]
    fn a_library_is_no_loader() {
        let libc = PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(
            inspect("/lib/x86_64-linux-gnu/libc.so.6", &libc).unwrap(),
            None
        );
    }
}
