//! The host the agent runs on: kernel filesystems it needs, and (with --all)
//! which of its processes are traced.
pub mod pidns;
pub mod select;
pub mod tracefs;
