//! One VM: vng boots a kernel over the host's root filesystem, a generated
//! script runs the tests in it, one at a time, and reports each through a
//! shared writable directory. vng's own exit code cannot carry the result: on
//! a root filesystem without systemd-udevd its init finds no virtio-serial
//! port for the script's status and vng exits 255 whatever happened.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{Case, Kernel};
use crate::root;

/// Guest size: PostgreSQL clusters, Python clients and the agent at once;
/// /tmp is a tmpfs overlay, so memory is also the tests' disk.
const GUEST_MEMORY: &str = "3G";
const GUEST_CPUS: &str = "2";
/// The harness stretches its scenarios' lock holds and deadlock_timeout by
/// this (dbtel_tests::scaled): under TCG a psql takes about a second to start
/// and the agent reads the kernel's events later than natively, so a 0.5 s
/// hold is over before the waiter's wait is looked up. Assertions are not
/// loosened. Set DBTEL_TEST_TIME_SCALE to override.
const TIME_SCALE: &str = "DBTEL_TEST_TIME_SCALE";
const TCG_TIME_SCALE: u32 = 10;
/// Per test inside the guest (`timeout`), and the boot's allowance.
const TEST_TIMEOUT_S: u64 = 900;
const BOOT_TIMEOUT_S: u64 = 300;

/// What one test (or the agent's check) gave in the guest.
pub(super) struct Outcome {
    pub label: String,
    pub rc: i32,
    pub seconds: f64,
    log: String,
    /// Under TCG: the exit code of a first try that failed (its log kept as
    /// `<log>.try1`), this outcome being the second's.
    pub first_try: Option<i32>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.rc == 0
    }
}

/// Boots `k` under vng, runs the cases in it, reports them as they finish.
pub(super) fn boot_and_test(
    vng: &Path,
    tools: &Path,
    k: &Kernel,
    agent: &Path,
    cases: &[Case],
    kvm: bool,
) -> Result<Vec<Outcome>> {
    let dir = root().join(".kernels/runs").join(&k.release);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let script_path = dir.join("guest.sh");
    std::fs::write(&script_path, script(&dir, agent, cases, kvm))?;
    let console = std::fs::File::create(dir.join("console.log"))?;
    let mut cmd = Command::new(vng);
    // vng runs virtme-run and friends, QEMU and busybox from PATH: its venv's
    // bin and the unpacked tools first.
    let path = format!(
        "{}:{}:{}",
        vng.parent().unwrap().display(),
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .arg("--run")
        .arg(&k.vmlinuz)
        .args(["--memory", GUEST_MEMORY, "--cpus", GUEST_CPUS])
        .arg(format!("--rwdir={}", dir.display()))
        .arg("--exec")
        .arg(format!("sh {}", quote(&script_path.display().to_string())))
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        // Its own process group: a timeout ends vng and its QEMU together.
        .process_group(0);
    if kvm {
        // QEMU's `-cpu host` asks KVM for IA32_ARCH_CAPABILITIES (MSR 0x10a),
        // which some hosts (nested, PVM) refuse with an abort: leave it out.
        cmd.arg("--qemu-opts=-cpu host,-arch-capabilities");
    } else {
        // TCG: QEMU emulates the CPU. Slow, but it boots anywhere. On this
        // project's test machine /dev/kvm is kvm_pvm (software nested
        // virtualisation) and neither Debian kernel gets past its decompressor
        // under it: an emulation failure on a VEX instruction in 6.12's zstd,
        // a crawl of minutes in 6.1's xz.
        cmd.arg("--disable-kvm");
    }
    eprintln!(
        "xtask: booting {} ({}) under {}; logs in {}",
        k.release,
        k.package,
        if kvm {
            "KVM"
        } else {
            "TCG (an emulated CPU: 10-20 s to boot, tests ~5-15x slower than natively; --kvm to use KVM)"
        },
        dir.display()
    );
    crate::announce(&format!("{cmd:?}"));
    let started = Instant::now();
    let allowance = BOOT_TIMEOUT_S + TEST_TIMEOUT_S * (cases.len() as u64 + 1);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", vng.display()))?;
    let (mut seen, mut booted, mut done) = (0, false, false);
    let mut outcomes = Vec::new();
    let mut retried: Vec<(String, i32)> = Vec::new();
    loop {
        let exited = child.try_wait()?.is_some();
        if !booted && dir.join("facts").exists() {
            booted = true;
            eprintln!(
                "xtask: {} booted in {:.1} s",
                k.release,
                started.elapsed().as_secs_f64()
            );
            for l in std::fs::read_to_string(dir.join("facts"))?.lines() {
                eprintln!("xtask:   guest {l}");
            }
        }
        let text = std::fs::read_to_string(dir.join("results")).unwrap_or_default();
        for line in text.lines().skip(seen) {
            seen += 1;
            done |= line == "DONE";
            if let Some((label, rc)) = parse_retry(line) {
                eprintln!(
                    "xtask: [{}] RETRY  {label}: its first try failed (exit {rc}{}), trying once more (log {})",
                    k.release,
                    if rc == 124 { ": timed out" } else { "" },
                    dir.display()
                );
                retried.push((label, rc));
                continue;
            }
            let Some(mut o) = parse_result(line) else {
                continue;
            };
            o.first_try = retried
                .iter()
                .find(|(l, _)| *l == o.label)
                .map(|(_, rc)| *rc);
            eprintln!(
                "xtask: [{}] {} {} ({:.1} s){}",
                k.release,
                if o.passed() { "ok    " } else { "FAILED" },
                o.label,
                o.seconds,
                if o.rc == 124 { ": timed out" } else { "" }
            );
            outcomes.push(o);
        }
        if exited {
            break;
        }
        if !booted && started.elapsed() > Duration::from_secs(BOOT_TIMEOUT_S) {
            stop(&mut child);
            bail!(
                "{}: the guest did not reach its script within {BOOT_TIMEOUT_S} s{}; console:\n{}",
                k.release,
                if kvm {
                    " (under nested or PVM KVM the Debian kernels stall in their decompressor: try without --kvm)"
                } else {
                    ""
                },
                tail(&dir.join("console.log"), 40)
            );
        }
        if started.elapsed() > Duration::from_secs(allowance) {
            stop(&mut child);
            bail!(
                "{}: the VM ran past its {allowance} s allowance; see {}",
                k.release,
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "xtask: {} done in {:.1} s",
        k.release,
        started.elapsed().as_secs_f64()
    );
    for o in outcomes.iter().filter(|o| !o.passed()) {
        let log = dir.join(&o.log);
        eprintln!("xtask: --- {} on {}: {}", o.label, k.release, log.display());
        eprintln!("{}", tail(&log, 60));
    }
    if !done {
        bail!(
            "{}: the guest did not finish its tests ({} of {} reported); console:\n{}{}",
            k.release,
            outcomes.len(),
            cases.len() + 1,
            tail(&dir.join("console.log"), 40),
            tail(&dir.join("guest.log"), 20)
        );
    }
    Ok(outcomes)
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on the process group made for vng (process_group(0)).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's script: the kernel's facts the agent depends on, the agent's
/// own `check` (loads every program through this kernel's verifier), then
/// each test alone, its output in a log of its own and one RESULT line each.
fn script(dir: &Path, agent: &Path, cases: &[Case], kvm: bool) -> String {
    let d = quote(&dir.display().to_string());
    let mut s = format!(
        "# written by cargo xtask test --kernel: runs inside the guest\n\
         exec >{d}/guest.log 2>&1\n\
         export DBTEL_AGENT={}\n",
        quote(&agent.display().to_string())
    );
    // The host's environment the tests rely on (python3 may be a pyenv shim).
    for var in [
        "PATH",
        "HOME",
        "LANG",
        "PYENV_ROOT",
        "RUST_BACKTRACE",
        "DBTEL_TEST_LOG",
        TIME_SCALE,
    ] {
        if let Ok(v) = std::env::var(var) {
            s += &format!("export {var}={}\n", quote(&v));
        }
    }
    if std::env::var_os(TIME_SCALE).is_none() && !kvm {
        s += &format!("export {TIME_SCALE}={TCG_TIME_SCALE}\n");
    }
    s += &format!("cd {}\n", quote(&root().display().to_string()));
    // virtme-ng's init mounts tracefs and brings lo up; another init might not.
    s += "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing\n\
          ip link set lo up\n";
    s += &format!(
        "{{ echo \"kernel $(uname -r)\"\n\
         \x20 [ -e /sys/kernel/btf/vmlinux ] && echo 'BTF: /sys/kernel/btf/vmlinux' || echo 'BTF: absent'\n\
         \x20 echo \"sched_process_fork: $(grep -o '[^;]*parent_comm[^;]*;' /sys/kernel/tracing/events/sched/sched_process_fork/format)\"\n\
         }} >{d}/facts\n"
    );
    // t LABEL LOG COMMAND...: runs COMMAND into LOG, appends `RESULT rc ms LOG LABEL`.
    // Under TCG a failed test gets a second try (`RETRY rc LABEL` first, the
    // first log kept as LOG.try1): an emulated CPU's pauses run to seconds,
    // past what the agent waits for a catalog's answer (a CI run lost a
    // server span's application_name so). The host reports both tries.
    let tries = if kvm { 1 } else { 2 };
    s += &format!(
        "t() {{ label=$1; log=$2; shift 2; n=1\n\
         \x20 while :; do start=$(date +%s%N)\n\
         \x20   timeout {TEST_TIMEOUT_S} \"$@\" >{d}/\"$log\" 2>&1; rc=$?\n\
         \x20   if [ $rc = 0 ] || [ $n -ge {tries} ]; then break; fi\n\
         \x20   mv {d}/\"$log\" {d}/\"$log.try$n\"; echo \"RETRY $rc $label\" >>{d}/results; n=$((n + 1))\n\
         \x20 done\n\
         \x20 echo \"RESULT $rc $(( ($(date +%s%N) - start) / 1000000 )) $log $label\" >>{d}/results\n\
         }}\n"
    );
    s += "t 'dbtel-agent check' check.log \"$DBTEL_AGENT\" check --no-otlp --no-catalog\n";
    for (i, c) in cases.iter().enumerate() {
        s += &format!(
            "t {} {i}-{}.log {} --exact {} --test-threads=1\n",
            quote(&c.label()),
            c.file,
            quote(&c.exe.display().to_string()),
            quote(&c.name),
        );
    }
    s += &format!("echo DONE >>{d}/results\n");
    s
}

/// `RETRY <rc> <label>`: a first try failed with rc.
fn parse_retry(line: &str) -> Option<(String, i32)> {
    let (rc, label) = line.strip_prefix("RETRY ")?.split_once(' ')?;
    Some((label.to_string(), rc.parse().ok()?))
}

/// `RESULT <rc> <ms> <log> <label>`.
fn parse_result(line: &str) -> Option<Outcome> {
    let mut f = line.strip_prefix("RESULT ")?.splitn(4, ' ');
    let rc = f.next()?.parse().ok()?;
    let ms: f64 = f.next()?.parse().ok()?;
    Some(Outcome {
        log: f.next()?.to_string(),
        label: f.next()?.to_string(),
        rc,
        seconds: ms / 1000.0,
        first_try: None,
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        let o = parse_result("RESULT 0 1500 0-psql.log psql::x").unwrap();
        assert_eq!(
            (o.rc, o.seconds, o.log.as_str(), o.label.as_str()),
            (0, 1.5, "0-psql.log", "psql::x")
        );
        let o = parse_result("RESULT 124 9 check.log dbtel-agent check").unwrap();
        assert_eq!((o.rc, o.label.as_str()), (124, "dbtel-agent check"));
        assert!(parse_result("DONE").is_none());
        assert_eq!(
            parse_retry("RETRY 101 server_builds::x"),
            Some(("server_builds::x".to_string(), 101))
        );
        assert!(parse_retry("RESULT 0 1500 0-psql.log psql::x").is_none());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b'c"), r"'a b'\''c'");
    }
}
