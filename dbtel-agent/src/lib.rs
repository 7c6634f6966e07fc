//! dbtel agent library: everything between the kernel's ring buffer and OTLP.
pub mod attach;
pub mod batch;
pub mod discover;
pub mod events;
pub mod export;
pub mod layout;
pub mod placement;
pub mod reconstruct;
pub mod run;
pub mod span;
pub mod sql;
pub mod txn;
pub mod usdt;

/// The eBPF object built from dbtel-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dbtel"));
