//! `cargo xtask test --kernel 6.1|6.12`: the end-to-end core inside a virtual
//! machine booting Debian's own kernel over the live root filesystem
//! (virtme-ng). The host's own kernel is `--kernel host`, the default: the
//! whole suite runs there, natively.
//!
//! The kernel package is fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x` into `.kernels/`: it is never installed on the host.
//! QEMU and busybox come from apt, virtme-ng from PyPI (`.drivers/vng`).
//! The guest sees the host's files read-only (writes go to tmpfs overlays),
//! so the agent and test binaries built here run there unchanged; results come
//! back through a shared writable directory, since vng's own exit code is lost
//! on a root filesystem without systemd-udevd (it exits 255 whatever happened).

use std::{
    collections::HashMap,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, output, root, run};

/// The documented core: one test per capability, short because the guest is
/// emulated (TCG, see `vng`). (test file, test name, what it shows).
pub const CORE: &[(&str, &str, &str)] = &[
    (
        "psql",
        "psql_statements_become_one_client_span_each",
        "client spans (libpq uprobes)",
    ),
    (
        "server",
        "untraced_clients_get_server_spans_and_another_cluster_is_left_alone",
        "server spans (USDT, sched tracepoints)",
    ),
    (
        "locks",
        "a_blocked_update_shows_the_wait_its_blocker_and_a_link_to_the_blocking_transaction",
        "a lock wait and its blocker",
    ),
    (
        "locks",
        "a_deadlock_names_both_sides_rolls_the_victim_back_and_its_retry_is_counted",
        "a deadlock",
    ),
    (
        "refusals",
        "process_without_libpq",
        "attach refused: no client library",
    ),
    (
        "refusals",
        "libpq_lacking_the_expected_symbols",
        "attach refused: a libpq without the expected symbols",
    ),
    (
        "refusals",
        "postgresql_server_build_lacking_probes_is_refused_by_name",
        "attach refused: a server build without the probes",
    ),
    (
        "refusals",
        "not_enough_privilege",
        "attach refused: no CAP_BPF",
    ),
];

/// virtme-ng, pinned: its command line and guest init are what this file drives.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// QEMU (TCG needs no KVM) and a static busybox for vng's initramfs.
const VM_APT: &[&str] = &["qemu-system-x86", "busybox-static"];
/// Guest size: PostgreSQL clusters, Python clients and the agent at once;
/// /tmp is a tmpfs overlay, so memory is also the tests' disk.
const GUEST_MEMORY: &str = "3G";
const GUEST_CPUS: &str = "2";
/// The harness stretches its scenarios' lock holds and deadlock_timeout by
/// this (dbtel_tests::scaled): under TCG a psql takes about a second to start
/// and the agent's catalog answers come ~10x later than natively, so a 0.5 s
/// hold is over before the waiter arrives. Assertions are not loosened.
const TIME_SCALE: &str = "DBTEL_TEST_TIME_SCALE";
const TCG_TIME_SCALE: u32 = 10;
/// Per test inside the guest (`timeout`), and the boot's allowance.
const TEST_TIMEOUT_S: u64 = 900;
const BOOT_TIMEOUT_S: u64 = 300;

/// A kernel to boot: Debian's package for it and its unpacked tree.
struct Kernel {
    package: String,
    release: String,
    vmlinuz: PathBuf,
}

/// One test to run in the guest.
struct Case {
    file: String,
    name: String,
    exe: PathBuf,
}

/// `kernels`: series (`6.1`, `6.12`) or full package names
/// (`linux-image-6.1.0-57-amd64`); `tests`: `file::name` instead of CORE.
pub fn test_kernels(kernels: &[String], tests: &[String], kvm: bool) -> Result<()> {
    let cases = selected(tests)?;
    eprintln!("xtask: VM core ({} tests):", cases.len());
    for (file, name, what) in cases.iter() {
        eprintln!("xtask:   {file}::{name}  ({what})");
    }
    vm_tools()?;
    let vng = vng()?;
    let kernels = kernels
        .iter()
        .map(|k| kernel(k))
        .collect::<Result<Vec<_>>>()?;
    let (agent, cases) = build(&cases)?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for k in &kernels {
        let results = boot_and_test(&vng, k, &agent, &cases, kvm)?;
        for r in &results {
            if !r.passed {
                failed.push(format!("{} {}", k.release, r.label));
            }
        }
        summary.push((k.release.clone(), results));
    }
    eprintln!("xtask: VM results:");
    for (release, results) in &summary {
        for r in results {
            eprintln!(
                "xtask:   {release:<24} {:<6} {:>6.1} s  {}",
                if r.passed { "ok" } else { "FAILED" },
                r.seconds,
                r.label
            );
        }
    }
    if !failed.is_empty() {
        bail!("failed in the VMs: {}", failed.join(", "));
    }
    Ok(())
}

/// CORE, or the `file::name` tests asked for (any test of tests/tests/).
fn selected(tests: &[String]) -> Result<Vec<(String, String, String)>> {
    if tests.is_empty() {
        return Ok(CORE
            .iter()
            .map(|(f, n, w)| (f.to_string(), n.to_string(), w.to_string()))
            .collect());
    }
    tests
        .iter()
        .map(|t| {
            let (f, n) = t.split_once("::").with_context(|| {
                format!(
                    "--vm-test {t}: expected FILE::TEST (e.g. psql::{})",
                    CORE[0].1
                )
            })?;
            Ok((f.to_string(), n.to_string(), "asked for".to_string()))
        })
        .collect()
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .contains("install ok installed")
}

fn vm_tools() -> Result<()> {
    let missing: Vec<&str> = VM_APT.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// virtme-ng in a venv of its own (`.drivers/vng`), as the driver venvs are.
fn vng() -> Result<PathBuf> {
    let venv = root().join(".drivers/vng");
    let stamp = venv.join("dbtel-vng");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(VIRTME_NG) {
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            VIRTME_NG,
        ]))?;
        std::fs::write(&stamp, VIRTME_NG)?;
    }
    Ok(venv.join("bin/vng"))
}

/// The package a series names, from apt's metadata: bookworm's default
/// kernel is `linux-image-amd64`, later series have `linux-image-X.Y-amd64`;
/// either depends on the current ABI's image (`linux-image-6.1.0-57-amd64`).
fn resolve(series: &str) -> Result<String> {
    if series.starts_with("linux-image-") {
        return Ok(series.to_string());
    }
    let metas = [
        format!("linux-image-{series}-amd64"),
        "linux-image-amd64".to_string(),
    ];
    for attempt in 0..2 {
        for meta in &metas {
            let deps = output(Command::new("apt-cache").args(["depends", "--important", meta]));
            let image = deps.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("Depends: ")
                    .filter(|p| p.starts_with(&format!("linux-image-{series}.")))
            });
            if let Some(image) = image {
                return Ok(image.to_string());
            }
        }
        if attempt == 0 {
            // Fresh machines have no package lists yet.
            run(Command::new("apt-get").args(["update", "-q"]))?;
        }
    }
    bail!(
        "no Debian kernel package for {series} in this machine's apt sources (tried {}): \
         give a package name (--kernel linux-image-...-amd64) or add the suite that has it",
        metas.join(", ")
    )
}

/// The kernel's tree in `.kernels/<package>/`, downloaded and unpacked once.
fn kernel(series: &str) -> Result<Kernel> {
    let package = resolve(series)?;
    let cache = root().join(".kernels");
    let tree = cache.join(&package);
    if find_vmlinuz(&tree).is_none() {
        let partial = cache.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        // apt-get download writes into its working directory; as root it warns
        // that the _apt user cannot write there (harmless).
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&partial))?;
        let deb = std::fs::read_dir(&partial)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let unpacked = partial.join("tree");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::rename(&unpacked, &tree)?;
        // The .deb is not needed any more (70-110 MB).
        std::fs::remove_dir_all(&partial)?;
    }
    let vmlinuz = find_vmlinuz(&tree).context("the package has no boot/vmlinuz-*")?;
    let release = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    Ok(Kernel {
        package,
        release,
        vmlinuz,
    })
}

fn find_vmlinuz(tree: &Path) -> Option<PathBuf> {
    std::fs::read_dir(tree.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// The agent and the test executables, built on the host.
fn build(cases: &[(String, String, String)]) -> Result<(PathBuf, Vec<(Case, String)>)> {
    // Optimised: under TCG a debug agent saturates the emulated CPU (11 s of
    // CPU in an 11 s lock test), its loop falls seconds behind the kernel's
    // events and the catalog is asked about waits that are over.
    let agent = executables(cargo().args(["build", "--release", "-p", "dbtel-agent"]))?
        .remove("dbtel-agent")
        .context("cargo built no dbtel-agent executable")?;
    let tests = executables(cargo().args(["test", "-p", "dbtel-tests", "--tests", "--no-run"]))?;
    let cases = cases
        .iter()
        .map(|(file, name, what)| {
            let exe = tests
                .get(file)
                .with_context(|| format!("no test file tests/tests/{file}.rs"))?;
            Ok((
                Case {
                    file: file.clone(),
                    name: name.clone(),
                    exe: exe.clone(),
                },
                what.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((agent, cases))
}

/// target name -> executable, from cargo's JSON messages.
fn executables(cmd: &mut Command) -> Result<HashMap<String, PathBuf>> {
    cmd.arg("--message-format=json").stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let mut found = HashMap::new();
    for line in out.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(found)
}

/// What one test (or the agent's check) gave in the guest.
pub struct Outcome {
    label: String,
    passed: bool,
    seconds: f64,
}

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's script: the kernel's facts the agent depends on, the agent's
/// own `check` (loads every program through this kernel's verifier), then
/// each test alone, its output in its own log and one RESULT line per test.
fn script(dir: &Path, agent: &Path, cases: &[(Case, String)], kvm: bool) -> String {
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
    // virtme-ng's init mounts tracefs and brings up lo; a different init might not.
    s += "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing\n\
          ip link set lo up\n";
    s += &format!(
        "{{ echo \"kernel $(uname -r)\"\n\
         \x20 [ -e /sys/kernel/btf/vmlinux ] && echo 'BTF: /sys/kernel/btf/vmlinux' || echo 'BTF: absent'\n\
         \x20 echo \"sched_process_fork: $(grep -o '[^;]*parent_comm[^;]*;' /sys/kernel/tracing/events/sched/sched_process_fork/format)\"\n\
         }} >{d}/facts\n"
    );
    s += "t() { label=$1; log=$2; shift 2; start=$(date +%s%N); \
          timeout ";
    s += &format!(
        "{TEST_TIMEOUT_S} \"$@\" >\"$log\" 2>&1; rc=$?; \
         echo \"RESULT $rc $(( ($(date +%s%N) - start) / 1000000 )) $label\" >>{d}/results; }}\n"
    );
    s += &format!(
        "t 'dbtel-agent check' {d}/check.log \"$DBTEL_AGENT\" check --no-otlp --no-catalog\n"
    );
    for (i, (c, _)) in cases.iter().enumerate() {
        s += &format!(
            "t {} {d}/{i}-{}.log {} --exact {} --test-threads=1\n",
            quote(&format!("{}::{}", c.file, c.name)),
            c.file,
            quote(&c.exe.display().to_string()),
            quote(&c.name),
        );
    }
    s += &format!("echo DONE >>{d}/results\n");
    s
}

/// Boots `k` under vng, runs the cases in it, reports them as they finish.
fn boot_and_test(
    vng: &Path,
    k: &Kernel,
    agent: &Path,
    cases: &[(Case, String)],
    kvm: bool,
) -> Result<Vec<Outcome>> {
    let dir = root().join(".kernels/runs").join(&k.release);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let script_path = dir.join("guest.sh");
    std::fs::write(&script_path, script(&dir, agent, cases, kvm))?;
    let console = std::fs::File::create(dir.join("console.log"))?;
    let mut cmd = Command::new(vng);
    // vng runs virtme-run and friends from PATH: its venv's bin first.
    let path = format!(
        "{}:{}",
        vng.parent().unwrap().display(),
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
        cmd.args(["--qemu-opts", "-cpu host,-arch-capabilities"]);
    } else {
        // TCG: QEMU emulates the CPU. Slow (several times KVM), but it boots
        // anywhere; on this project's test machine /dev/kvm is kvm_pvm (software
        // nested virtualisation) and neither Debian kernel gets past its
        // decompressor under it (an emulation failure on a VEX instruction in
        // 6.12's zstd, a crawl in 6.1's xz).
        cmd.arg("--disable-kvm");
    }
    eprintln!(
        "xtask: booting {} ({}) under {}: {} s to boot, then the tests; logs in {}",
        k.release,
        k.package,
        if kvm {
            "KVM"
        } else {
            "TCG (emulated CPU: slow; --kvm to use KVM)"
        },
        if kvm { "a few" } else { "10-20" },
        dir.display()
    );
    eprintln!("xtask: {cmd:?}");
    let started = Instant::now();
    let deadline =
        started + Duration::from_secs(BOOT_TIMEOUT_S + TEST_TIMEOUT_S * (cases.len() as u64 + 1));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", vng.display()))?;
    let results = dir.join("results");
    let mut seen = 0;
    let mut booted = false;
    let mut outcomes = Vec::new();
    let mut done = false;
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
        let text = std::fs::read_to_string(&results).unwrap_or_default();
        for line in text.lines().skip(seen) {
            seen += 1;
            if line == "DONE" {
                done = true;
                continue;
            }
            let Some(o) = parse_result(line) else {
                continue;
            };
            eprintln!(
                "xtask: [{}] {} {} ({:.1} s){}",
                k.release,
                if o.0 { "ok    " } else { "FAILED" },
                o.2,
                o.1,
                if o.3 == 124 { ": timed out" } else { "" }
            );
            outcomes.push(Outcome {
                label: o.2,
                passed: o.0,
                seconds: o.1,
            });
        }
        if exited {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the process group we made for vng.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            bail!(
                "{}: the VM ran past its {} s allowance; see {}",
                k.release,
                deadline.duration_since(started).as_secs(),
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
    for (i, o) in outcomes.iter().enumerate().filter(|(_, o)| !o.passed) {
        let log = if i == 0 {
            dir.join("check.log")
        } else {
            dir.join(format!("{}-{}.log", i - 1, cases[i - 1].0.file))
        };
        eprintln!("xtask: --- {} on {}: {}", o.label, k.release, log.display());
        eprintln!("{}", tail(&log, 60));
    }
    if !done {
        bail!(
            "{}: the guest did not finish its tests ({} of {} reported); console:\n{}",
            k.release,
            outcomes.len(),
            cases.len() + 1,
            tail(&dir.join("console.log"), 40) + &tail(&dir.join("guest.log"), 20)
        );
    }
    Ok(outcomes)
}

/// `RESULT <rc> <ms> <label>` -> (passed, seconds, label, rc).
fn parse_result(line: &str) -> Option<(bool, f64, String, i32)> {
    let mut f = line.strip_prefix("RESULT ")?.splitn(3, ' ');
    let rc: i32 = f.next()?.parse().ok()?;
    let ms: f64 = f.next()?.parse().ok()?;
    Some((rc == 0, ms / 1000.0, f.next()?.to_string(), rc))
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
    fn core_tests_exist_in_their_files() {
        for (file, name, _) in CORE {
            let src = std::fs::read_to_string(root().join(format!("tests/tests/{file}.rs")))
                .unwrap_or_else(|e| panic!("tests/tests/{file}.rs: {e}"));
            assert!(src.contains(&format!("fn {name}()")), "{file}::{name}");
        }
    }

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result("RESULT 0 1500 psql::x"),
            Some((true, 1.5, "psql::x".into(), 0))
        );
        assert_eq!(parse_result("RESULT 124 9 a b").unwrap().3, 124);
        assert_eq!(parse_result("DONE"), None);
    }
}
