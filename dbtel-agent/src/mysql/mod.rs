//! MySQL and MariaDB client libraries (MariaDB Connector/C, libmariadb.so.3,
//! which Debian also installs as libmysqlclient; Oracle's libmysqlclient;
//! Connector/C linked into an executable such as the `mariadb` CLI): the
//! calls dbtel probes, where they are in a file, the struct offsets their
//! probes read, their records, and the spans made of them; and the server
//! (mariadbd), whose spans join the client's.

pub mod attributes;
pub mod calls;
pub mod catalog;
mod client;
pub mod conns;
pub mod contention;
pub mod discover;
pub mod layout;
pub mod reconstruct;
pub mod records;
pub mod server;
pub mod statements;
pub mod symbols;

pub use client::Client;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod machine_tests;
