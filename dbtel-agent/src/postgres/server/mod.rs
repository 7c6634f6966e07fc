//! The PostgreSQL server: postmaster and backends found by their USDT sites
//! or their stand-ins on functions (target, uprobe_sites), server statements, blocks and lock waits rebuilt from them
//! (backend, blocks: pure), the server side of the main loop (side), and
//! server span attributes (spans).
pub mod backend;
pub mod blocks;
mod error_path;
pub mod installed;
pub mod side;
pub mod spans;
pub mod target;
pub mod uprobe_sites;
