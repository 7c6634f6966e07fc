//! Peers: what a user would reach for instead of dbtel, run in the same
//! rounds as dbtel's off / on / probes-only: bpftrace scripts equivalent to
//! dbtel's probes (xtask/peers/: client.bt on the pgbench client's libpq,
//! server.bt on the server's USDT probes, both together where dbtel traces
//! both sides), and on the server's -M simple lines two extras: the query__start/done script
//! a user would write first (server-query.bt) and BCC's `dbslower -m 0`
//! (every query printed). Each bpftrace run is checked: probes attached and
//! its histogram counting about the statements pgbench ran (a peer that
//! traced nothing would look free).

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use dbtel_tests::Cluster;

use super::{median, paired, parse_pgbench, pgbench_args, Options, Row, Script, Target};

#[path = "bench_dbslower.rs"]
mod dbslower;
#[path = "bench_mypeers.rs"]
pub(super) mod mysql;

const CLIENT: &str = include_str!("../peers/client.bt");
const SERVER: &str = include_str!("../peers/server.bt");
const SERVER_QUERY: &str = include_str!("../peers/server-query.bt");
/// What each script prints once bpftrace has attached every probe (its BEGIN).
const ATTACHED: &str = "peer: attached";

/// The peers' scripts written out for this machine, and whether dbslower runs.
pub(super) struct Peers {
    dir: PathBuf,
    /// Ok: the BCC_KERNEL_SOURCE dbslower needs (None: the kernel's own
    /// headers do); Err: why it cannot run here.
    dbslower: Result<Option<PathBuf>, String>,
    pub(super) dbslower_note: String,
}

impl Peers {
    /// Writes the scripts into `dir` (to be run again by hand) and tries
    /// dbslower on the server when a server line is wanted.
    pub(super) fn new(pg: &Cluster, dir: &Path, server_wanted: bool) -> Result<Peers> {
        let version = crate::output(Command::new("bpftrace").arg("--version"));
        if !version.starts_with("bpftrace") {
            bail!("no bpftrace (cargo xtask setup installs it; --no-peers skips the peers)");
        }
        std::fs::create_dir_all(dir)?;
        let libpq = libpq(&pg.bin("pgbench"));
        let postgres = std::fs::canonicalize(pg.bin("postgres"))?;
        for (name, text) in [
            ("client.bt", CLIENT),
            ("server.bt", SERVER),
            ("server-query.bt", SERVER_QUERY),
        ] {
            let text = text
                .replace("@LIBPQ@", &libpq.display().to_string())
                .replace("@POSTGRES@", &postgres.display().to_string());
            std::fs::write(dir.join(name), text)?;
        }
        let (dbslower, dbslower_note) = if server_wanted {
            dbslower::status(pg.postmaster_pid())
        } else {
            (Err("no server line".into()), String::new())
        };
        eprintln!(
            "bench: peers: {} on {} and {}; {dbslower_note}",
            version.trim(),
            libpq.display(),
            postgres.display()
        );
        Ok(Peers {
            dir: dir.to_path_buf(),
            dbslower,
            dbslower_note,
        })
    }

    /// The peer runs of a line; None where no peer traces that way (the
    /// server's uprobe stand-ins: the peers use its USDT probes).
    pub(super) fn line(&self, target: Target, mode: &str) -> Option<Line> {
        (target != Target::ServerUprobes).then(|| Line {
            target: Some(target),
            // query__start/done fire in exec_simple_query alone: queries of
            // the extended protocol (and so prepared ones) pass unseen.
            extras: target == Target::Server && mode == "simple",
            dbslower_note: self.dbslower_note.clone(),
            ..Default::default()
        })
    }

    fn script(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The libpq pgbench loads (ldd), else Debian's.
fn libpq(pgbench: &Path) -> PathBuf {
    let ldd = crate::output(Command::new("ldd").arg(pgbench));
    ldd.lines()
        .filter(|l| l.contains("libpq.so"))
        .find_map(|l| Some(l.split("=>").nth(1)?.split_whitespace().next()?.into()))
        .unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/libpq.so.5"))
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("/usr/lib/x86_64-linux-gnu/libpq.so.5"))
}

/// One line's peer runs, gathered round by round.
#[derive(Default)]
pub(super) struct Line {
    target: Option<Target>,
    /// The query__start/done script and dbslower run too.
    extras: bool,
    tps: Vec<f64>,
    counted: u64,
    expected: u64,
    query_tps: Vec<f64>,
    dbslower_tps: Vec<f64>,
    dbslower_printed: u64,
    dbslower_ran: u64,
    dbslower_lost: u64,
    dbslower_error: Option<String>,
    dbslower_note: String,
}

/// A line's peer figures, for the table.
#[derive(Clone)]
pub(super) struct Figures {
    pub(super) what: &'static str,
    pub(super) tps: f64,
    /// Its TPS round by round.
    pub(super) rounds: Vec<f64>,
    /// Statements the peer's histogram(s) counted, against those pgbench ran.
    pub(super) counted: u64,
    pub(super) expected: u64,
    /// Server lines of -M simple: the query__start/done script's TPS.
    pub(super) query_tps: Option<f64>,
    /// Server lines of -M simple: dbslower's TPS, queries printed, queries pgbench ran
    /// (from before dbslower attached), samples lost; or why it did not run.
    pub(super) dbslower: Option<Result<(f64, u64, u64, u64), String>>,
    /// How dbslower ran, or why not.
    pub(super) dbslower_note: String,
}

impl Line {
    /// One round: the peer, and on server lines the two extras.
    pub(super) fn round(
        &mut self,
        peers: &Peers,
        pg: &Cluster,
        script: &Script,
        mode: &str,
        o: &Options,
    ) -> Result<()> {
        let target = self.target.context("a line without target")?;
        let duration = ["-T".to_string(), o.seconds.to_string()];
        let mut workload = Command::new(pg.bin("pgbench"));
        workload.args(pgbench_args(pg, script.name, mode, o, &duration));
        let pm = pg.postmaster_pid().to_string();
        let stmts = script.statements.len() as u64;
        // The server's script runs beside the workload, attached first.
        let server = match target {
            Target::Server | Target::Both => Some(Tracer::start(
                Command::new("bpftrace")
                    .arg(peers.script("server.bt"))
                    .arg(&pm),
            )?),
            _ => None,
        };
        let stdout = if matches!(target, Target::Client | Target::Both) {
            client_run(&peers.script("client.bt"), &workload)?
        } else {
            let out = workload.stderr(Stdio::null()).output()?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let run = parse_pgbench(&stdout)?;
        let expected = run.txns * stmts;
        let mut sides = Vec::new();
        if target != Target::Server {
            sides.push(("client.bt", stdout.as_str()));
        }
        let server_out = server.map(Tracer::stop).transpose()?;
        if let Some(out) = &server_out {
            sides.push(("server.bt", out.as_str()));
        }
        for (name, out) in sides {
            let counted = check_counted(name, out, expected, o.clients as u64 * stmts)?;
            self.counted += counted;
            self.expected += expected;
        }
        self.tps.push(run.tps);
        if self.extras {
            let tracer = Tracer::start(
                Command::new("bpftrace")
                    .arg(peers.script("server-query.bt"))
                    .arg(&pm),
            )?;
            let out = workload.stderr(Stdio::null()).output()?;
            let run = parse_pgbench(&String::from_utf8_lossy(&out.stdout))?;
            check_counted(
                "server-query.bt",
                &tracer.stop()?,
                run.txns * stmts,
                o.clients as u64 * stmts,
            )?;
            self.query_tps.push(run.tps);
            match &peers.dbslower {
                Ok(source) => match dbslower::run(source, &peers.dir, pg, script, mode, o) {
                    Ok((tps, printed, ran, lost)) => {
                        self.dbslower_tps.push(tps);
                        self.dbslower_printed += printed;
                        self.dbslower_ran += ran;
                        self.dbslower_lost += lost;
                    }
                    Err(e) => self.dbslower_error = Some(format!("{e:#}")),
                },
                Err(e) => self.dbslower_error = Some(e.clone()),
            }
        }
        Ok(())
    }

    pub(super) fn figures(&self) -> Figures {
        let target = self.target.unwrap_or(Target::Client);
        let server = self.extras;
        Figures {
            what: match target {
                Target::Client => "bpftrace client.bt",
                Target::Both => "bpftrace client.bt + server.bt",
                _ => "bpftrace server.bt",
            },
            tps: median(self.tps.clone()),
            rounds: self.tps.clone(),
            counted: self.counted,
            expected: self.expected,
            query_tps: server.then(|| median(self.query_tps.clone())),
            dbslower: server.then(|| match &self.dbslower_error {
                Some(e) => Err(e.clone()),
                None => Ok((
                    median(self.dbslower_tps.clone()),
                    self.dbslower_printed,
                    self.dbslower_ran,
                    self.dbslower_lost,
                )),
            }),
            dbslower_note: self.dbslower_note.clone(),
        }
    }
}

/// A row's peer, its TPS over off's and dbtel's TPS over its (medians of
/// the per-round ratios).
fn peer(r: &Row) -> Option<(&Figures, f64, f64)> {
    let p = r.peer.as_ref()?;
    Some((
        p,
        paired(&p.rounds, &r.off_tps),
        paired(&r.on_tps, &p.rounds),
    ))
}

/// The peer's cells in the results table: its TPS, over off, dbtel's over it.
pub(super) fn cells(r: &Row) -> String {
    peer(r).map_or(" – | – | – |".into(), |(p, over_off, dbtel_over)| {
        format!(" {:.0} | {over_off:.3} | {dbtel_over:.3} |", p.tps)
    })
}

/// The row's `,"peer":…` in results.json.
pub(super) fn json(r: &Row) -> String {
    let Some((p, over_off, dbtel_over)) = peer(r) else {
        return ",\"peer\":null".into();
    };
    let query = p.query_tps.map_or("null".into(), |v| format!("{v:.1}"));
    let dbslower = match &p.dbslower {
        None => "null".into(),
        Some(Ok((tps, printed, ran, lost))) => format!(
            "{{\"tps\":{tps:.1},\"ratio\":{:.4},\"printed\":{printed},\"pgbench_ran\":{ran},\"lost\":{lost}}}",
            tps / r.tps_off
        ),
        Some(Err(e)) => format!("{{\"error\":{e:?}}}"),
    };
    format!(
        ",\"peer\":{{\"what\":{:?},\"tps\":{:.1},\"peer_over_off\":{over_off:.4},\"dbtel_over_peer\":{dbtel_over:.4},\"counted\":{},\"statements\":{},\"query_start_tps\":{query},\"dbslower\":{dbslower}}}",
        p.what, p.tps, p.counted, p.expected
    )
}

/// The peers' section under the table: what each ran, and the extras.
pub(super) fn notes(rows: &[Row]) -> String {
    let with: Vec<(&Row, (&Figures, f64, f64))> =
        rows.iter().filter_map(|r| Some((r, peer(r)?))).collect();
    let Some((_, (first, ..))) = with.first() else {
        return String::new();
    };
    let mut md = NOTE.to_string();
    if !first.dbslower_note.is_empty() {
        md.push_str(&format!("\n{}\n", first.dbslower_note));
    }
    md.push_str("\n| script | mode | traced | peer | peer / off | dbtel / peer | counted / statements | query__start/done / off | dbslower / off | dbslower printed / pgbench ran (lost) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (r, (p, over_off, dbtel_over)) in with {
        let (slower, printed) = match &p.dbslower {
            None => ("–".to_string(), "–".to_string()),
            Some(Ok((tps, printed, ran, lost))) => (
                format!("{:.3}", tps / r.tps_off),
                format!("{printed} / {ran} ({lost})"),
            ),
            Some(Err(_)) => ("cannot run".into(), "–".into()),
        };
        let query = p
            .query_tps
            .map_or("–".into(), |t| format!("{:.3}", t / r.tps_off));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {over_off:.3} | {dbtel_over:.3} | {} / {} | {query} | {slower} | {printed} |\n",
            r.script, r.mode, r.target, p.what, p.counted, p.expected
        ));
    }
    md
}

const NOTE: &str = "\nPeers, run in the same rounds (scripts in target/bench/peers/): client.bt, bpftrace uprobes on the libpq calls dbtel probes, each query's text read at its call and its latency (to PQexec*'s return or PQgetResult's NULL) into a histogram, the pgbench process only (bpftrace -c); server.bt, bpftrace on the USDT probes dbtel uses (statement__status with its text, transaction__abort, lock__wait__start/done, deadlock__found), each statement's time to the backend's idle report into a histogram, the postmaster's backends only; both: the two at once. Each run is checked: probes attached, and its histograms count the statements pgbench ran. Server lines of -M simple also (query__start/done fire in exec_simple_query alone: the extended protocol's queries, prepared or not, pass unseen, by these two as by any script on them): query__start/done (server-query.bt, what a user would write first) and BCC's dbslower -m 0 (every query printed, to a file), attached to pgbench's backends once connected (it follows no fork: on the postmaster alone it sees nothing), TPS over pgbench's seconds after (-P 1), queries printed against all pgbench ran. sysbench lines (MariaDB has no USDT probes): mysql-client.bt, bpftrace uprobes on the libmariadb calls dbtel probes (mysql_real_query and mysql_send_query with their text, mysql_stmt_execute), each statement's latency to its call's return (or mysql_read_query_result's) into a histogram, sysbench only (bpftrace -c); mysql-server.bt, bpftrace on mariadbd's dispatch_command (entry with the command's text, return), each command's time into a histogram, that server's threads only; both: the two at once.\n";

/// The progress line's peer part.
pub(super) fn said(r: &Row) -> String {
    let Some((p, over_off, dbtel_over)) = peer(r) else {
        return String::new();
    };
    let mut s = format!(
        "; peer ({}) {over_off:.3} of off, dbtel / peer {dbtel_over:.3}",
        p.what
    );
    if let Some(q) = p.query_tps {
        s.push_str(&format!(", query__start/done {:.3}", q / r.tps_off));
    }
    match &p.dbslower {
        Some(Ok((tps, printed, ran, lost))) => s.push_str(&format!(
            ", dbslower {:.3} ({printed} queries printed, pgbench ran {ran}, {lost} lost)",
            tps / r.tps_off
        )),
        Some(Err(e)) => s.push_str(&format!(", dbslower: cannot run here: {e}")),
        None => {}
    }
    s
}

/// The statements a script's @query_us histogram counted, checked against
/// those run (plus `slack`: pgbench's prepares and its scale query; and 1 %:
/// statements of the transactions -T cut short ran but are not counted by pgbench).
fn check_counted(name: &str, out: &str, expected: u64, slack: u64) -> Result<u64> {
    let probes = attached_probes(out).unwrap_or(0);
    let counted = hist_total(out, "query_us").unwrap_or(0);
    if probes == 0
        || counted * 100 < expected * 95
        || counted > expected + slack + 10 + expected / 100
    {
        bail!("peer {name} attached {probes} probes and counted {counted} statements of {expected}: it did not trace the run\n{out}");
    }
    Ok(counted)
}

/// `bpftrace -c WORKLOAD client.bt`: the workload started by bpftrace once
/// every probe is attached, traced from its first call (`cpid` filters).
/// Returns both's stdout (pgbench's report, then the maps).
fn client_run(script: &Path, workload: &Command) -> Result<String> {
    let mut line = workload.get_program().to_string_lossy().into_owned();
    for a in workload.get_args() {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) {
            bail!("bpftrace -c splits at spaces: {a:?}");
        }
        line.push(' ');
        line.push_str(&a);
    }
    let out = Command::new("bpftrace")
        .arg("-c")
        .arg(&line)
        .arg(script)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "bpftrace -c {line} {}: {stdout}{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A bpftrace running beside the workload.
struct Tracer {
    child: Child,
    stdout: BufReader<ChildStdout>,
    text: String,
}

impl Tracer {
    /// Starts it and returns once it has attached every probe (its BEGIN
    /// prints after "Attaching N probes..."), and a short settle.
    fn start(cmd: &mut Command) -> Result<Tracer> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("bpftrace")?;
        let mut t = Tracer {
            stdout: BufReader::new(child.stdout.take().context("stdout")?),
            child,
            text: String::new(),
        };
        loop {
            let mut line = String::new();
            if t.stdout.read_line(&mut line)? == 0 {
                let mut err = String::new();
                if let Some(mut e) = t.child.stderr.take() {
                    e.read_to_string(&mut err)?;
                }
                let _ = t.child.wait();
                bail!("bpftrace exited before attaching: {}{err}", t.text);
            }
            t.text.push_str(&line);
            if line.trim_end() == ATTACHED {
                break;
            }
        }
        if attached_probes(&t.text).unwrap_or(0) == 0 {
            let _ = t.stop();
            bail!("bpftrace attached no probe");
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(t)
    }

    /// SIGINT; its whole stdout (the maps printed at exit).
    fn stop(mut self) -> Result<String> {
        interrupt(&self.child);
        self.stdout.read_to_string(&mut self.text)?;
        let status = self.child.wait()?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                e.read_to_string(&mut err)?;
            }
            bail!("bpftrace failed ({status}): {}{err}", self.text);
        }
        Ok(std::mem::take(&mut self.text))
    }
}

/// A run that failed midway leaves no bpftrace behind.
impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            interrupt(&self.child);
            let _ = self.child.wait();
        }
    }
}

/// SIGINT, as a user's Ctrl-C: the tools print their report and exit.
fn interrupt(child: &Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// N of bpftrace's "Attaching N probes..." (or "1 probe").
fn attached_probes(out: &str) -> Option<u32> {
    out.lines()
        .find_map(|l| l.strip_prefix("Attaching "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The sum of a histogram's buckets as bpftrace prints it at exit: `@name:`,
/// then one line a bucket (`[16, 32)   1417 |@@@  |`, `[0]`, `(..., 0)`).
fn hist_total(out: &str, name: &str) -> Option<u64> {
    let head = format!("@{name}:");
    let mut lines = out.lines().skip_while(|l| l.trim_end() != head);
    lines.next()?;
    let mut total = 0;
    for l in lines {
        if !l.starts_with(['[', '(']) {
            break;
        }
        let end = l.find([')', ']'])?;
        total += l[end + 1..]
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftrace_output() {
        let out = "number of transactions actually processed: 2000/2000\nAttaching 16 probes...\npeer: attached\n\n\n@aborts: 0\n@lock_wait_us: \n[16, 32)              13 |@@@        |\n[32, 64)             171 |@@@@@@@@@@@|\n\n@query_us: \n[0]                    1 |           |\n[2, 4)                 1 |           |\n[8, 16)                0 |           |\n[16, 32)            1417 |@@@@@@@@@@@|\n[1K, 2K)             581 |@@@@       |\n";
        assert_eq!(attached_probes(out), Some(16));
        assert_eq!(attached_probes("Attaching 1 probe...\n"), Some(1));
        assert_eq!(attached_probes("ERROR: no such file\n"), None);
        assert_eq!(hist_total(out, "query_us"), Some(2000));
        assert_eq!(hist_total(out, "lock_wait_us"), Some(184));
        assert_eq!(hist_total(out, "other"), None);
        assert_eq!(hist_total("@query_us: \n", "query_us"), Some(0));
        assert!(check_counted("x", out, 2000, 2).is_ok());
        assert!(check_counted("x", out, 4000, 2).is_err());
        assert!(check_counted("x", "@query_us: \n[1] 5 |@|\n", 5, 0).is_err());
    }
}
