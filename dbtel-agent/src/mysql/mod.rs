//! MySQL and MariaDB client libraries (MariaDB Connector/C, libmariadb.so.3,
//! which Debian also installs as libmysqlclient; Oracle's libmysqlclient;
//! Connector/C linked into an executable such as the `mariadb` CLI): the
//! calls dbtel probes, where they are in a file, and the struct offsets
//! their probes read.

pub mod attributes;
pub mod calls;
pub mod layout;
pub mod reconstruct;
pub mod records;
pub mod statements;
pub mod symbols;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod machine_tests;
