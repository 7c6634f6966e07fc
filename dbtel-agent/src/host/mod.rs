//! The host the agent runs on, engine-neutral: processes and their mapped
//! ELF files, the dynamic loader's hook, USDT notes, x86 decoding and probe
//! placement, kernel filesystems, PID namespaces, (with --all) which
//! processes are traced, the agent's capabilities and the `--` command's user.
pub mod command_user;
pub mod elf;
pub mod kernel;
pub mod listening;
pub mod loader;
pub mod pidfd;
pub mod pidns;
pub mod placement;
pub mod privileges;
mod privileges_drop;
pub mod process;
pub mod select;
pub mod tracefs;
pub mod usdt;
pub mod x86;
