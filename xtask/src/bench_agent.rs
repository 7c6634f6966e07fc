//! Running the agent in a bench: in the background on a server until the
//! workload is done, or around the workload (`-- command`); its exit report read.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use dbtel_tests::Receiver;

use super::{number_after, number_before, Drops, Run, Target};

/// Runs `workload` traced as `target` says: the agent on the server
/// (`--pid server`, started first, stopped with SIGINT after the workload),
/// on the workload (`-- workload`), or both. Returns the workload's stdout
/// and the agent's stderr.
pub(super) fn traced_run(
    agent: &Path,
    rx: &Receiver,
    extra: &[&str],
    target: Target,
    server: &str,
    workload: &mut Command,
) -> Result<(String, String)> {
    let mut cmd = Command::new(agent);
    cmd.args(["--otlp-endpoint", &rx.http_endpoint()])
        .args(extra);
    if target != Target::Client {
        cmd.args(["--pid", server]);
    }
    if target == Target::ServerUprobes {
        cmd.args(["--pg-server-probes", "uprobes"]);
    }
    if matches!(target, Target::Server | Target::ServerUprobes) {
        let agent = Tracing::start(&mut cmd)?;
        let out = workload.stderr(Stdio::null()).output()?;
        // Let the last spans through the ring buffer and the catalog lookups.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let text = agent.stop()?;
        return Ok((String::from_utf8_lossy(&out.stdout).into_owned(), text));
    }
    let out = cmd
        .arg("--")
        .arg(workload.get_program())
        .args(workload.get_args())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("agent run failed: {stderr}");
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), stderr))
}

/// An agent started in the background, tracing: its `dbtel: tracing` line read.
pub(super) struct Tracing {
    child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    /// Its stderr so far.
    text: String,
}

impl Tracing {
    pub(super) fn start(cmd: &mut Command) -> Result<Tracing> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let mut stderr = std::io::BufReader::new(child.stderr.take().context("stderr")?);
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut stderr, &mut line)? == 0 {
                bail!("agent exited before tracing: {text}");
            }
            text.push_str(&line);
            if line.starts_with("dbtel: tracing") {
                return Ok(Tracing {
                    child,
                    stderr,
                    text,
                });
            }
        }
    }

    /// SIGINT, then its whole stderr (the exit report); fails if it did.
    pub(super) fn stop(mut self) -> Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        std::io::Read::read_to_string(&mut self.stderr, &mut self.text)?;
        if !self.child.wait()?.success() {
            bail!("agent run failed: {}", self.text);
        }
        Ok(self.text)
    }
}

/// The agent's exit report: drops, CPU, RSS.
pub(super) fn read_report(run: &mut Run, stderr: &str) -> Result<()> {
    let summary = stderr
        .lines()
        .find(|l| l.contains("spans exported"))
        .context("no agent summary")?;
    run.drops = Drops {
        export_failed: number_before(summary, "failed to export"),
        export_queue: number_before(summary, "lost in the export queue"),
        ring_buffer: number_before(summary, "lost in the ring buffer"),
        undecodable: number_before(summary, "undecodable"),
        unmatched: number_before(summary, "unmatched results"),
        incomplete: number_before(summary, "queries incomplete"),
    };
    // While tracing: the one-time cost of loading and attaching the probes
    // is reported apart (a 5 s run made it a third of the figure).
    run.agent_cpu_s = number_after(stderr, "agent cpu").unwrap_or(f64::NAN)
        - number_after(stderr, "(attaching").unwrap_or(0.0);
    run.agent_rss_mib = number_after(stderr, "max rss").unwrap_or(f64::NAN);
    Ok(())
}
