//! The MariaDB/MySQL catalog: where the agent connects (config), the
//! connection's worker thread (worker), and who blocks a lock wait, read
//! from the server's own tables (blockers: pure).
pub mod blockers;
pub mod config;
pub mod queries;
pub mod worker;
