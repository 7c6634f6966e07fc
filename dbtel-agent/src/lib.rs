//! dbtel agent library: everything between the kernel's ring buffer and OTLP.
pub mod attach;
pub mod check;
pub mod config;
pub mod detect;
pub mod engine;
pub mod events;
pub mod export;
pub mod host;
pub mod http;
pub mod metrics;
pub mod mysql;
pub mod pipeline;
pub mod postgres;
pub mod report;
pub mod run;
pub mod settings;
#[cfg(test)]
pub(crate) mod test_rng;

/// The maps looked up for every event: std's HashMap with foldhash, seeded
/// per map (query texts come from traced programs, so not a fixed hash).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The eBPF object built from dbtel-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dbtel"));
