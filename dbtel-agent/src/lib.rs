//! dbtel agent library: everything between the kernel's ring buffer and OTLP.
pub mod attach;
pub mod backend;
pub mod batch;
pub mod blocks;
pub mod catalog;
pub mod check;
pub mod clock;
pub mod config;
pub mod console;
pub mod contention;
pub mod discover;
pub mod events;
pub mod export;
pub mod host;
pub mod hostwide;
pub mod http;
pub mod layout;
pub mod loader;
pub mod mysql;
pub mod otlp;
pub mod placement;
pub mod reconstruct;
pub mod resultpoint;
pub mod run;
pub mod span;
pub mod server;
pub mod servers;
pub mod serverspans;
pub mod shape;
pub mod sql;
pub mod txn;
pub mod usdt;
pub mod x86;

/// The maps looked up for every event: std's HashMap with foldhash, seeded
/// per map (query texts come from traced programs, so not a fixed hash).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The eBPF object built from dbtel-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dbtel"));
