//! The MySQL/MariaDB server (mariadbd): its statements, transactions and
//! lock waits rebuilt from the server probe sites' hits (reconstruct: pure),
//! and how their spans are named and described (spans).
pub mod reconstruct;
pub mod spans;
