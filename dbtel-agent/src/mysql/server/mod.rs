//! The MariaDB server side.
pub mod target;
