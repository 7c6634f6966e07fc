//! The MySQL/MariaDB server (mariadbd): where its probe sites are and the THD
//! offsets they read (target), its statements, transactions and lock waits
//! rebuilt from the sites' hits (reconstruct: pure; waits: lock waits held
//! until their statement ends), and how their spans are named and described
//! (spans).
pub mod blocked;
pub mod errmsg;
pub mod reconstruct;
pub mod session_sites;
pub mod spans;
pub mod target;
pub mod waits;
