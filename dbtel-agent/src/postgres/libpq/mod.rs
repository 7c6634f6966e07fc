//! libpq, PostgreSQL's client library: finding it in a process, its struct
//! offsets, the probe inside PQgetResult, and client queries rebuilt from
//! its calls.
pub mod attributes;
pub mod discover;
pub mod layout;
pub mod plan;
pub mod reconstruct;
pub mod resultpoint;
