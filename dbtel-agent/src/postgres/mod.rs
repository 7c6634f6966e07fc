//! PostgreSQL: its client library (libpq/), its server (server/), the
//! catalog queries that name what spans refer to, and the contention report.
pub mod catalog;
pub mod contention;
pub mod libpq;
pub mod server;
