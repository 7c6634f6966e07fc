//! The host the agent runs on: kernel filesystems it needs.
pub mod tracefs;
