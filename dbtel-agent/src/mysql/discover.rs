//! Finds a MySQL client library among the files a process maps and makes
//! its probe plan: a shared libmariadb / libmysqlclient, or an executable
//! with Connector/C linked in (the `mariadb` CLI).

use std::path::Path;

use dbtel_common::mycookie;

use super::{calls, layout, symbols};
use crate::engine::{ClaimError, Layout, Plan, Point};

/// The function whose presence makes a file a MySQL client library.
const MARKER: &str = "mysql_real_query";

/// Whether a file names a MySQL client library, from its symbol tables
/// alone (None: unreadable or not ELF).
fn defines_client(host: &Path) -> Option<bool> {
    let data = crate::host::elf::symbol_tables_only(host)?;
    Some(symbols::find(&data, &[MARKER]).ok()?.contains_key(MARKER))
}

/// A plan for `path` if it is a MySQL client library; an error names what
/// it lacks when it looks like one but cannot be traced.
pub fn claim(pid: u32, path: &str, host: &Path) -> Result<Option<Plan>, ClaimError> {
    let named = path.contains("libmariadb") || path.contains("libmysqlclient");
    match defines_client(host) {
        Some(true) => {}
        Some(false) => return Ok(None),
        None if !named => return Ok(None),
        None => {}
    }
    let data = crate::host::elf::read_bounded(host)
        .map_err(|e| ClaimError(format!("{path} (process {pid}): {e}")))?;
    claim_image(pid, path, host, &data)
}

/// As [`claim`], of the file's bytes, read already (`host` is only
/// recorded): what a fuzzer calls.
pub fn claim_image(
    pid: u32,
    path: &str,
    host: &Path,
    data: &[u8],
) -> Result<Option<Plan>, ClaimError> {
    let names: Vec<&'static str> = calls::symbols().collect();
    let found = symbols::find(data, &names)
        .map_err(|e| ClaimError(format!("{path} (process {pid}): {e}")))?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !found.contains_key(n))
        .collect();
    if !missing.is_empty() {
        return Err(ClaimError(format!(
            "{path} (process {pid}) has MySQL client symbols but lacks {}: unsupported MySQL client library",
            missing.join(", ")
        )));
    }
    let l = layout::decode(path, data).map_err(|e| ClaimError(format!("{e} (process {pid})")))?;
    let mut warnings = Vec::new();
    if let Err(e) = &l.endpoint {
        warnings.push(format!(
            "{path}: server address unknown ({e}); spans will lack server.address"
        ));
    }
    let mut points = Vec::new();
    for p in calls::PROBED {
        let offset = found[p.symbol].offset;
        let cookie = mycookie::make(p.call, p.flags) as u32;
        if p.flags & (mycookie::EMIT | mycookie::RETURN) != 0 {
            points.push(Point {
                program: "my_call",
                function: p.symbol,
                offset,
                cookie,
            });
        }
        if p.flags & mycookie::RETURN != 0 {
            points.push(Point {
                program: "my_return",
                function: p.symbol,
                offset,
                cookie,
            });
        }
    }
    Ok(Some(Plan {
        engine: dbtel_common::Engine::Mysql,
        pid,
        path: path.into(),
        host_path: host.into(),
        layout: Layout::Mysql(l.offsets()),
        points,
        warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_library_and_the_cli_are_claimed_libpq_and_libc_are_not() {
        for lib in [
            "/usr/lib/x86_64-linux-gnu/libmariadb.so.3",
            "/usr/bin/mariadb",
        ] {
            let plan = claim(1, lib, Path::new(lib))
                .unwrap()
                .unwrap_or_else(|| panic!("{lib}"));
            // Every call's entry (a record, or the handle kept for its return), 9 returns.
            let entries = plan
                .points
                .iter()
                .filter(|p| p.program == "my_call")
                .count();
            let returns = plan
                .points
                .iter()
                .filter(|p| p.program == "my_return")
                .count();
            assert_eq!((entries, returns), (11, 9), "{lib}");
            let Layout::Mysql(o) = plan.layout else {
                panic!()
            };
            assert_eq!(
                (
                    o.thread_id,
                    o.db,
                    o.stmt_field_count,
                    o.endpoint_valid,
                    o.valid
                ),
                (0x350, 0x2e8, 0x60, 1, 1)
            );
        }
        for other in [
            "/usr/lib/x86_64-linux-gnu/libpq.so.5",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(
                claim(1, other, Path::new(other)).unwrap().is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn a_library_named_like_the_client_that_cannot_be_read_is_an_error() {
        let e = claim(
            1,
            "/nonexistent/libmariadb.so.3",
            Path::new("/nonexistent/libmariadb.so.3"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/libmariadb.so.3 (process 1): "),
            "{e}"
        );
    }
}
