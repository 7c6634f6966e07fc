//! Engine-neutral: span ids, events and links, the client transaction
//! tracker, SQL facts (obfuscation, summary, per-engine dialects) and their
//! literal-blind cache keys.
pub mod dbspan;
pub mod shape;
pub mod span;
pub mod sql;
pub mod txn;
