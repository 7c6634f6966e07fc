//! The sysbench lines' peers: bpftrace scripts equivalent to dbtel's MySQL
//! probes (xtask/peers/: mysql-client.bt on sysbench's libmariadb,
//! mysql-server.bt on mariadbd's dispatch_command, both together where
//! dbtel traces both sides), run in the same rounds as dbtel's off / on /
//! probes-only and checked like the pgbench lines' peers.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use dbtel_tests::MariaDb;

use super::{check_counted, client_run, Figures, Tracer};
use crate::bench::{median, Target};

const CLIENT: &str = include_str!("../peers/mysql-client.bt");
const SERVER: &str = include_str!("../peers/mysql-server.bt");

/// The scripts written out for this machine.
pub(in crate::bench) struct MyPeers {
    dir: PathBuf,
}

impl MyPeers {
    /// Writes the scripts into `dir` for `sysbench`'s client library and the
    /// server `db` runs.
    pub(in crate::bench) fn new(db: &MariaDb, sysbench: &Path, dir: &Path) -> Result<MyPeers> {
        std::fs::create_dir_all(dir)?;
        let lib = library(sysbench)?;
        let execute = versioned_address(&lib, "mysql_stmt_execute")?;
        let mariadbd = std::fs::read_link(format!("/proc/{}/exe", db.pid()))?;
        for (name, text) in [("mysql-client.bt", CLIENT), ("mysql-server.bt", SERVER)] {
            let text = text
                .replace("@LIBMYSQL@", &lib.display().to_string())
                .replace("@STMT_EXECUTE@", &format!("0x{execute:x}"))
                .replace("@MARIADBD@", &mariadbd.display().to_string());
            std::fs::write(dir.join(name), text)?;
        }
        eprintln!(
            "bench: MySQL peers on {} and {}",
            lib.display(),
            mariadbd.display()
        );
        Ok(MyPeers {
            dir: dir.to_path_buf(),
        })
    }

    /// The peer runs of a line; None where no peer traces that way.
    pub(in crate::bench) fn line(&self, target: Target) -> Option<MyLine> {
        (target != Target::ServerUprobes).then(|| MyLine {
            target,
            dir: self.dir.clone(),
            tps: Vec::new(),
            counted: 0,
            expected: 0,
        })
    }
}

/// The client library sysbench loads (ldd).
fn library(sysbench: &Path) -> Result<PathBuf> {
    let ldd = crate::output(Command::new("ldd").arg(sysbench));
    let lib = ldd
        .lines()
        .filter(|l| l.contains("libmariadb.so") || l.contains("libmysqlclient.so"))
        .find_map(|l| {
            Some(PathBuf::from(
                l.split("=>").nth(1)?.split_whitespace().next()?,
            ))
        })
        .with_context(|| format!("ldd {}: no MySQL client library\n{ldd}", sysbench.display()))?;
    Ok(lib.canonicalize()?)
}

/// A function's address from its default-versioned symbol: libmariadb
/// exports mysql_stmt_execute twice, and bpftrace takes the alias of size 0
/// and refuses it ("Offset outside the function bounds").
fn versioned_address(lib: &Path, name: &str) -> Result<u64> {
    let nm = crate::output(Command::new("nm").args(["-D", "--defined-only"]).arg(lib));
    let (plain, versioned) = (format!(" {name}"), format!(" {name}@@"));
    let line = nm
        .lines()
        .find(|l| l.contains(&versioned))
        .or_else(|| nm.lines().find(|l| l.ends_with(&plain)))
        .with_context(|| format!("{}: no {name}", lib.display()))?;
    let hex = line.split_whitespace().next().unwrap_or("");
    u64::from_str_radix(hex, 16).with_context(|| format!("nm: {line}"))
}

/// One sysbench line's peer runs, gathered round by round.
pub(in crate::bench) struct MyLine {
    target: Target,
    dir: PathBuf,
    tps: Vec<f64>,
    counted: u64,
    expected: u64,
}

impl MyLine {
    /// One round: `workload` (sysbench, by its full path: bpftrace -c wants
    /// one) under the client's script, the server's, or both; `run` parses
    /// its output into (TPS, statements).
    pub(in crate::bench) fn round(
        &mut self,
        db: &MariaDb,
        workload: &Command,
        threads: u64,
        run: &dyn Fn(&str) -> Result<(f64, u64)>,
    ) -> Result<()> {
        let server = match self.target {
            Target::Server | Target::Both => Some(Tracer::start(
                Command::new("bpftrace")
                    .arg(self.dir.join("mysql-server.bt"))
                    .arg(db.pid().to_string()),
            )?),
            _ => None,
        };
        let stdout = if matches!(self.target, Target::Client | Target::Both) {
            client_run(&self.dir.join("mysql-client.bt"), workload)?
        } else {
            let mut w = Command::new(workload.get_program());
            w.args(workload.get_args());
            let out = w.output()?;
            if !out.status.success() {
                bail!("sysbench: {}", String::from_utf8_lossy(&out.stderr));
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (tps, statements) = run(&stdout)?;
        let server_out = server.map(Tracer::stop).transpose()?;
        let mut sides = Vec::new();
        if self.target != Target::Server {
            sides.push(("mysql-client.bt", stdout.as_str()));
        }
        if let Some(out) = &server_out {
            sides.push(("mysql-server.bt", out.as_str()));
        }
        // Slack: each thread's prepares and closes, the server's logins and quits.
        for (name, out) in sides {
            self.counted += check_counted(name, out, statements, threads * 8)?;
            self.expected += statements;
        }
        self.tps.push(tps);
        Ok(())
    }

    pub(in crate::bench) fn figures(&self) -> Figures {
        Figures {
            what: match self.target {
                Target::Client => "bpftrace mysql-client.bt",
                Target::Both => "bpftrace mysql-client.bt + mysql-server.bt",
                _ => "bpftrace mysql-server.bt",
            },
            tps: median(self.tps.clone()),
            rounds: self.tps.clone(),
            counted: self.counted,
            expected: self.expected,
            query_tps: None,
            dbslower: None,
            dbslower_note: String::new(),
        }
    }
}
