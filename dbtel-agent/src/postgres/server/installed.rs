//! PostgreSQL server executables installed on the host, read before any of
//! them runs. With --all, a server started later is then traced from its
//! exec without reading its file first: that read (about 50 ms) was long
//! enough for a client's first query, sent as soon as the postmaster
//! accepted connections, to reach a backend forked before the postmaster
//! was traced.

use std::path::{Path, PathBuf};

/// Where packages and source builds put the server: Debian's
/// /usr/lib/postgresql/<version>/bin, PGDG's /usr/pgsql-<version>/bin, the
/// source build's /usr/local/pgsql/bin, and every directory of `path_var`
/// (a `PATH`). `root` is `/` but for tests. Each file once, canonical.
pub fn installed_servers(root: &Path, path_var: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    let versions = |dir: &str, prefix: &str| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(under(dir)) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path().join("bin/postgres"))
            .collect();
        v.sort();
        v
    };
    let mut candidates = versions("/usr/lib/postgresql", "");
    candidates.extend(versions("/usr", "pgsql-"));
    candidates.push(under("/usr/local/pgsql/bin/postgres"));
    if let Some(path) = path_var {
        candidates.extend(std::env::split_paths(path).map(|d| {
            let d = d.to_string_lossy().into_owned();
            under(&d).join("postgres")
        }));
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for c in candidates {
        if let Ok(real) = std::fs::canonicalize(&c) {
            if real.is_file() && !found.contains(&real) {
                found.push(real);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, p: &str) -> PathBuf {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"x").unwrap();
        f.canonicalize().unwrap()
    }

    #[test]
    fn packaged_source_built_and_path_servers_are_found_once_each() {
        let dir = std::env::temp_dir().join(format!("dbtel-installed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let debian15 = touch(&dir, "usr/lib/postgresql/15/bin/postgres");
        let debian17 = touch(&dir, "usr/lib/postgresql/17/bin/postgres");
        let pgdg = touch(&dir, "usr/pgsql-16/bin/postgres");
        let source = touch(&dir, "usr/local/pgsql/bin/postgres");
        let in_path = touch(&dir, "opt/pg/bin/postgres");
        // Not a server: another program, a version without bin/postgres.
        touch(&dir, "usr/lib/postgresql/14/bin/psql");
        touch(&dir, "usr/pgsqlx/bin/postgres");
        // The same file twice through a link in PATH.
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink(&debian17, dir.join("usr/bin/postgres")).unwrap();
        let path = std::ffi::OsString::from("/opt/pg/bin:/usr/bin:/nowhere");
        let found = installed_servers(&dir, Some(&path));
        assert_eq!(found, vec![debian15, debian17, pgdg, source, in_path]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_installed_finds_nothing() {
        let dir = std::env::temp_dir().join(format!("dbtel-installed-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(installed_servers(&dir, Some(std::ffi::OsStr::new("/bin"))).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
