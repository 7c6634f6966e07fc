//! The real drivers `cargo xtask setup` installs into `.drivers/`: Python
//! wheels (psycopg 3 binary, psycopg2-binary, asyncpg) in a virtual
//! environment, node-postgres, and Debian's pgjdbc.

use std::{path::PathBuf, process::Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(".drivers")
}

fn present(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: {what} is installed by cargo xtask setup",
        p.display()
    );
    p
}

/// The virtual environment's python: psycopg (3, binary wheel), psycopg2-binary, asyncpg.
pub fn python() -> Command {
    Command::new(present(dir().join("venv/bin/python"), "the driver venv"))
}

/// node with node-postgres (`require("pg")`) resolvable.
pub fn node() -> Command {
    let modules = present(dir().join("node/node_modules"), "node-postgres");
    let mut c = Command::new("node");
    c.env("NODE_PATH", modules);
    c
}

/// java with Debian's pgjdbc on the class path, running a single-file program.
pub fn java(source: &str) -> Command {
    let jar = present(
        PathBuf::from("/usr/share/java/postgresql.jar"),
        "pgjdbc (libpostgresql-jdbc-java)",
    );
    let mut c = Command::new("java");
    c.arg("-cp").arg(jar).arg(source);
    c
}

/// A program under tests/drivers.
pub fn program(name: &str) -> PathBuf {
    present(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("drivers")
            .join(name),
        "the test program",
    )
}
