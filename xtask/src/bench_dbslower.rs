//! BCC's dbslower (`dbslower-bpfcc postgres -m 0`: every query printed), a
//! peer of dbtel on the server's -M simple lines (bench_peers.rs).

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dbtel_tests::Cluster;

use super::{interrupt, parse_pgbench, pgbench_args, Options, Script};

const DBSLOWER: &str = "/usr/sbin/dbslower-bpfcc";
/// Seconds dbslower's pgbench runs beyond --seconds: dbslower attaches to
/// pgbench's backends once they exist, and only the seconds after count.
const LEAD: u32 = 3;

/// Whether dbslower runs here: tried on the postmaster alone (a few
/// seconds). BCC compiles against the kernel's headers; where the kernel has
/// none (no package, no kheaders module), Debian 12's own kernel headers are
/// fetched and given as BCC_KERNEL_SOURCE: dbslower's uprobes need nothing
/// of a given kernel version. Returns that source and a note for the report.
pub(super) fn status(postmaster: u32) -> (Result<Option<PathBuf>, String>, String) {
    let first = match try_start(postmaster, None) {
        Ok(()) => return (Ok(None), "dbslower: runs".into()),
        Err(e) => e,
    };
    let retry = if first.contains("kernel headers") {
        match debian_headers() {
            Ok((package, source)) => match try_start(postmaster, Some(&source)) {
                Ok(()) => {
                    let note = format!("dbslower: runs with Debian's {package} as BCC_KERNEL_SOURCE; on its own: {first}");
                    return (Ok(Some(source)), note);
                }
                Err(e) => format!("; with Debian's {package} as BCC_KERNEL_SOURCE: {e}"),
            },
            Err(e) => format!("; no Debian headers to try: {e:#}"),
        }
    } else {
        String::new()
    };
    let e = format!("{first}{retry}");
    (Err(e.clone()), format!("dbslower: cannot run here: {e}"))
}

/// dbslower, a Python program, stops on SIGINT; a bench started in the
/// background by a script (a shell's `&` ignores SIGINT, and children
/// inherit that) would otherwise wait for it forever.
fn dbslower_command() -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(DBSLOWER);
    // SAFETY: signal(2) is async-signal-safe, run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

/// SIGINT until it exits. Python acts on a signal between bytecodes: one
/// that came after its last check and before dbslower's poll(2) leaves it
/// waiting for an event, and with pgbench gone none comes (a bench hung
/// there); each further SIGINT breaks the poll. Killed after 10 s.
fn stop(child: &mut Child) -> std::io::Result<()> {
    for _ in 0..20 {
        interrupt(child);
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    child.kill()?;
    child.wait().map(drop)
}

/// One dbslower start: Ok once it says it is tracing; else its error (the
/// lines of its stderr that are not the traceback's).
fn try_start(postmaster: u32, source: Option<&Path>) -> Result<(), String> {
    let mut cmd = dbslower_command();
    cmd.args(["postgres", "-p", &postmaster.to_string(), "-m", "0"])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = source {
        cmd.env("BCC_KERNEL_SOURCE", s);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{DBSLOWER}: {e}"))?;
    let mut out = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _ = stdout.read_line(&mut out);
    if out.starts_with("Tracing") {
        let _ = stop(&mut child);
        return Ok(());
    }
    // BCC says what it lacks on stdout, the rest goes to stderr.
    let _ = stdout.read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut out);
    let _ = child.wait();
    Err(python_error(&out))
}

/// A Python tool's stderr without its traceback: one line.
fn python_error(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']) && !l.starts_with("Traceback"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Debian 12's current kernel headers (linux-headers-amd64's), downloaded
/// and unpacked once into .kernels/ (never installed), the common and the
/// amd64 package merged into one tree as BCC wants it.
fn debian_headers() -> Result<(String, PathBuf)> {
    let depends = |p: &str, prefix: &str| {
        crate::output(Command::new("apt-cache").args(["depends", "--important", p]))
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|d| d.starts_with(prefix))
            .map(String::from)
    };
    let amd64 = depends("linux-headers-amd64", "linux-headers-")
        .context("apt knows no linux-headers-amd64")?;
    let common = depends(&amd64, "linux-headers-")
        .filter(|c| c.ends_with("-common"))
        .with_context(|| format!("{amd64} has no -common dependency"))?;
    let tree = crate::root().join(".kernels").join(&amd64);
    if !tree.join("include/linux").is_dir() {
        let partial = crate::root()
            .join(".kernels")
            .join(format!("{amd64}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        let unpacked = partial.join("tree");
        crate::kernel::unpack(
            &[amd64.clone(), common.clone()],
            &partial.join("debs"),
            &unpacked,
        )?;
        let src = unpacked.join("usr/src");
        crate::run(
            Command::new("cp")
                .arg("-a")
                .arg(src.join(&amd64).join("."))
                .arg(src.join(&common)),
        )?;
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::rename(src.join(&common), &tree)?;
        std::fs::remove_dir_all(&partial)?;
    }
    Ok((amd64, tree))
}

/// The server's backends (children of the postmaster) serving user postgres
/// on database postgres, as pgbench's do: "postgres: postgres postgres ...".
fn backends(postmaster: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(postmaster)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .starts_with(b"postgres: postgres postgres")
        })
        .collect()
}

/// dbslower -m 0 on pgbench's backends: BCC's USDT probes follow no fork,
/// so dbslower on the postmaster alone sees nothing; it is started on the
/// backends once pgbench has connected, and the TPS is pgbench's (-P 1) over
/// the whole seconds after dbslower printed its first queries. Its output
/// goes to a file as `> file` would (block-buffered). Returns the TPS, the
/// queries printed, those pgbench ran in all (from before dbslower attached)
/// and the samples dbslower says it lost.
pub(super) fn run(
    source: &Option<PathBuf>,
    dir: &Path,
    pg: &Cluster,
    script: &Script,
    mode: &str,
    o: &Options,
) -> Result<(f64, u64, u64, u64)> {
    let pm = pg.postmaster_pid();
    let before = backends(pm);
    let duration = [
        "-T".to_string(),
        (o.seconds + LEAD).to_string(),
        "-P".into(),
        "1".into(),
    ];
    let start = Instant::now();
    let mut pgbench = Command::new(pg.bin("pgbench"))
        .args(pgbench_args(pg, script.name, mode, o, &duration))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pids;
    loop {
        pids = backends(pm);
        pids.retain(|p| !before.contains(p));
        if pids.len() >= o.clients as usize {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = pgbench.kill();
            let _ = pgbench.wait();
            bail!("pgbench's {} backends did not appear", o.clients);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let printed_to = dir.join("dbslower.out");
    let mut cmd = dbslower_command();
    cmd.args(["postgres", "-m", "0", "-p"])
        .args(pids.iter().map(u32::to_string))
        .stdout(std::fs::File::create(&printed_to)?)
        .stderr(Stdio::piped());
    if let Some(s) = source {
        cmd.env("BCC_KERNEL_SOURCE", s);
    }
    let mut dbslower = cmd.spawn()?;
    // Tracing once its first buffer of printed queries reaches the file.
    let ready = loop {
        if std::fs::metadata(&printed_to)?.len() > 0 {
            break start.elapsed().as_secs_f64();
        }
        if pgbench.try_wait()?.is_some() {
            let _ = stop(&mut dbslower);
            bail!("dbslower printed nothing while pgbench ran");
        }
        if dbslower.try_wait()?.is_some() {
            let _ = pgbench.kill();
            let _ = pgbench.wait();
            let mut err = std::fs::read_to_string(&printed_to)?;
            dbslower.stderr.take().unwrap().read_to_string(&mut err)?;
            bail!("{}", python_error(&err));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = pgbench.wait_with_output()?;
    stop(&mut dbslower)?;
    let mut err = String::new();
    dbslower.stderr.take().unwrap().read_to_string(&mut err)?;
    let ran =
        parse_pgbench(&String::from_utf8_lossy(&out.stdout))?.txns * script.statements.len() as u64;
    let tps = progress(&String::from_utf8_lossy(&out.stderr), ready)
        .context("no pgbench progress after dbslower attached")?;
    let printed = std::fs::read(&printed_to)?
        .split(|&b| b == b'\n')
        .filter(|l| l.first().is_some_and(u8::is_ascii_digit))
        .count() as u64;
    let lost = err
        .lines()
        .filter_map(|l| l.strip_prefix("Possibly lost "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    if printed == 0 {
        bail!("dbslower printed no query: {}", python_error(&err));
    }
    Ok((tps, printed, ran, lost))
}

/// From pgbench's `-P 1` lines ("progress: 5.0 s, 31941.0 tps, ..."): the
/// mean TPS of the seconds wholly after `from` (pgbench counts from its own
/// start, a little after `from`'s).
fn progress(stderr: &str, from: f64) -> Option<f64> {
    let mut tps = Vec::new();
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix("progress: ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let end: f64 = f.next()?.parse().ok()?;
        let rate: f64 = f.nth(1)?.parse().ok()?;
        if end - 1.0 >= from {
            tps.push(rate);
        }
    }
    (!tps.is_empty()).then(|| tps.iter().sum::<f64>() / tps.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_progress_and_python_errors() {
        let p = "pgbench (15.20)\nprogress: 1.0 s, 100.0 tps, lat 0.062 ms stddev 0.249, 0 failed\nprogress: 2.0 s, 200.0 tps, lat 0.05 ms\nprogress: 3.0 s, 400.0 tps, lat 0.05 ms\n";
        assert_eq!(progress(p, 1.5), Some(400.0));
        assert_eq!(progress(p, 0.5), Some(300.0));
        assert_eq!(progress(p, 5.0), None);
        assert_eq!(
            python_error("modprobe: FATAL: Module kheaders not found\nTraceback (most recent call last):\n  File \"x\", line 1\n    raise\nException: Failed to compile BPF module <text>\n"),
            "modprobe: FATAL: Module kheaders not found / Exception: Failed to compile BPF module <text>"
        );
    }
}
