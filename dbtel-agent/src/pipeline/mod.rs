//! Engine-neutral: span ids, events and links, the client transaction
//! tracker, SQL facts (obfuscation, summary, per-engine dialects) and their
//! literal-blind cache keys, sqlcommenter comments (the application's trace).
pub mod attr_block;
pub mod attr_pool;
pub mod dbspan;
pub mod gate;
pub mod group;
pub mod name;
pub mod retrace;
pub mod shape;
pub mod span;
pub mod sql;
pub mod sqlcomment;
pub mod txn;
pub mod typed;

/// Longest a finished span is held before it reaches the exporter: a
/// server's span waiting for the catalog's answer (postgres::server::side).
/// Here, engine-neutral, so the console's trees can wait for it without
/// importing an engine.
pub const FACTS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);
