//! Harness for dbtel's end-to-end tests: a throwaway PostgreSQL cluster or
//! MariaDB server, an OTLP receiver (gRPC and HTTP/protobuf, real protocol),
//! and the real agent binary. Everything here needs root and the packages `cargo xtask setup`
//! installs; a missing piece fails loudly, it never skips.

pub mod agent;
pub mod drivers;
pub mod fake;
pub mod http;
pub mod mariadb;
pub mod mysql_spans;
pub mod otlp;
pub mod otlp_metrics;
pub mod pg;
pub mod prometheus;
pub mod promql;
pub mod py;
pub mod sqltext;

pub use agent::{
    agent_binary, run_agent, run_agent_env, run_agent_wrapped, Agent, AgentRun, RSS_BUDGET_MIB,
};
pub use fake::FakeLibpq;
pub use http::http_get;
pub use mariadb::{GeneralLog, MariaDb};
pub use otlp::{Receiver, Span};
pub use pg::{Cluster, Logged};
pub use promql::{dashboard_exprs, rule_exprs};
pub use py::PyProgram;
pub use sqltext::{expected_mysql_text, expected_text};

/// `d` times DBTEL_TEST_TIME_SCALE (default 1): how long a scenario holds a
/// lock or lets the server wait before its deadlock check, on a slow machine
/// (`cargo xtask test --kernel` sets it in its emulated VMs, where a psql
/// takes a second to start). Only the scenario stretches: assertions are lower
/// bounds on what it guarantees and stay as they are.
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    let scale = std::env::var("DBTEL_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s >= 1.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}

/// Panics unless running as root: these tests load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests load eBPF and must run as root (cargo xtask test)"
    );
}
