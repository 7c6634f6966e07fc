//! `cargo xtask test --kernel 6.1|6.12`: the end-to-end core inside a virtual
//! machine booting Debian's own kernel over the live root filesystem
//! (virtme-ng). The host's own kernel is `--kernel host`, the default: the
//! whole suite runs there, natively.
//!
//! The kernel package is fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x` into `.kernels/`: it is never installed on the host.
//! QEMU and busybox are unpacked the same way (`.kernels/tools`), virtme-ng
//! comes from PyPI (`.drivers/vng`).
//! The guest sees the host's files read-only (writes go to tmpfs overlays),
//! so the agent and test binaries built here run there unchanged (vm.rs).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, output, root, run};

mod vm;

/// The documented core: one test per capability, short because the guest's
/// CPU is emulated (TCG, see vm.rs). (test file, test name, what it shows).
pub const CORE: &[(&str, &str, &str)] = &[
    (
        "psql",
        "psql_statements_become_one_client_span_each",
        "client spans (libpq uprobes)",
    ),
    (
        "server_builds",
        "debian_15_through_the_uprobe_stand_ins",
        "server spans counted against the server's log (uprobe stand-ins, sched tracepoints: backends forked after the attach), psql and psycopg2 client spans",
    ),
    (
        "locks",
        "a_blocked_update_shows_the_wait_its_blocker_and_a_link_to_the_blocking_transaction",
        "a lock wait and its blocker (USDT)",
    ),
    (
        "locks",
        "a_deadlock_through_the_uprobe_stand_ins",
        "a deadlock and a granted wait (uprobe stand-ins: ProcSleep's return is a uretprobe)",
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

/// virtme-ng, pinned: its command line and guest init are what vm.rs drives.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// QEMU (TCG needs no KVM) with its firmware, and a static busybox for vng's
/// initramfs: unpacked, never installed (an image's newer qemu-utils, from
/// backports, conflicts with Debian 12's qemu-system-common: installing
/// would remove it). Their libraries the machine lacks are unpacked beside.
const VM_DEBS: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
    "busybox-static",
];

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
    what: String,
    exe: PathBuf,
}

impl Case {
    fn label(&self) -> String {
        format!("{}::{}", self.file, self.name)
    }
}

/// `kernels`: series (`6.1`, `6.12`) or full package names
/// (`linux-image-6.1.0-57-amd64`); `tests`: `file::name` instead of CORE.
pub fn test_kernels(kernels: &[String], tests: &[String], kvm: bool) -> Result<()> {
    let mut cases = selected(tests)?;
    eprintln!("xtask: the VM core ({} tests):", cases.len());
    for c in &cases {
        eprintln!("xtask:   {}  ({})", c.label(), c.what);
    }
    let tools = vm_tools()?;
    let vng = vng()?;
    let kernels = kernels
        .iter()
        .map(|k| kernel(k))
        .collect::<Result<Vec<_>>>()?;
    let agent = build(&mut cases)?;
    let mut summary = Vec::new();
    for k in &kernels {
        summary.push((k, vm::boot_and_test(&vng, &tools, k, &agent, &cases, kvm)?));
    }
    eprintln!("xtask: VM results:");
    let mut failed = Vec::new();
    for (k, outcomes) in &summary {
        for o in outcomes {
            eprintln!(
                "xtask:   {:<24} {:<6} {:>6.1} s  {}{}",
                k.release,
                if o.passed() { "ok" } else { "FAILED" },
                o.seconds,
                o.label,
                match o.first_try {
                    Some(rc) => format!(" (second try; the first failed with exit {rc})"),
                    None => String::new(),
                }
            );
            if !o.passed() {
                failed.push(format!("{} on {}", o.label, k.release));
            }
        }
    }
    if !failed.is_empty() {
        bail!("failed in the VMs: {}", failed.join(", "));
    }
    Ok(())
}

/// CORE, or the `file::name` tests asked for (any test of tests/tests/).
fn selected(tests: &[String]) -> Result<Vec<Case>> {
    let case = |file: &str, name: &str, what: &str| Case {
        file: file.into(),
        name: name.into(),
        what: what.into(),
        exe: PathBuf::new(),
    };
    if tests.is_empty() {
        return Ok(CORE.iter().map(|(f, n, w)| case(f, n, w)).collect());
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
            Ok(case(f, n, "asked for"))
        })
        .collect()
}

/// `.kernels/tools/bin`: a `qemu-system-x86_64` that runs the unpacked QEMU
/// on its own libraries and firmware, and `busybox`.
fn vm_tools() -> Result<PathBuf> {
    let dir = root().join(".kernels/tools");
    let bin = dir.join("bin");
    let stamp = dir.join("dbtel-tools");
    let wanted = VM_DEBS.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(bin);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let debs = dir.join("debs");
    let tree = dir.join("root");
    std::fs::create_dir_all(&bin)?;
    run(Command::new("apt-get").args(["update", "-q"]))?;
    // What apt would add for them here (the libraries this machine lacks).
    let plan = output(
        Command::new("apt-get")
            .args(["install", "--simulate", "-q", "--no-install-recommends"])
            .args(VM_DEBS),
    );
    let mut packages: Vec<String> = VM_DEBS.iter().map(|p| p.to_string()).collect();
    for line in plan.lines() {
        if let Some(p) = line.strip_prefix("Inst ").and_then(|l| l.split(' ').next()) {
            if !packages.iter().any(|q| q == p) {
                packages.push(p.to_string());
            }
        }
    }
    unpack(&packages, &debs, &tree)?;
    let t = tree.display();
    std::fs::write(
        bin.join("qemu-system-x86_64"),
        format!(
            "#!/bin/sh\n\
             export LD_LIBRARY_PATH={t}/usr/lib/x86_64-linux-gnu:{t}/lib/x86_64-linux-gnu\n\
             exec {t}/usr/bin/qemu-system-x86_64 -L {t}/usr/share/qemu -L {t}/usr/share/seabios \"$@\"\n"
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("qemu-system-x86_64"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::os::unix::fs::symlink(tree.join("bin/busybox"), bin.join("busybox"))?;
    std::fs::write(&stamp, &wanted)?;
    Ok(bin)
}

/// virtme-ng in a venv of its own (`.drivers/vng`), as the driver venvs are.
fn vng() -> Result<PathBuf> {
    let venv = root().join(".drivers/vng");
    crate::drivers::venv(&venv, "dbtel-vng", &[VIRTME_NG], &[])?;
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
            // A fresh machine has no package lists yet.
            run(Command::new("apt-get").args(["update", "-q"]))?;
        }
    }
    bail!(
        "no Debian kernel package for {series} in this machine's apt sources (tried {}): \
         give a package name (--kernel linux-image-...-amd64) or add the suite that has it",
        metas.join(", ")
    )
}

/// Downloads `packages` into `debs` (apt-get download) and unpacks each into
/// `tree` (dpkg-deb -x): nothing is installed. The .debs are removed after
/// (a kernel's is 70-110 MB).
pub(crate) fn unpack(packages: &[String], debs: &Path, tree: &Path) -> Result<()> {
    std::fs::create_dir_all(debs)?;
    // apt-get download writes into its working directory; as root it warns
    // that the _apt user cannot write there (harmless).
    run(Command::new("apt-get")
        .args(["download", "-q"])
        .args(packages)
        .current_dir(debs))?;
    let mut found = false;
    for deb in std::fs::read_dir(debs)?.flatten() {
        found |= deb.path().extension().is_some_and(|e| e == "deb");
        run(Command::new("dpkg-deb").arg("-x").arg(deb.path()).arg(tree))?;
    }
    if !found {
        bail!("apt-get download left no .deb in {}", debs.display());
    }
    std::fs::remove_dir_all(debs)?;
    Ok(())
}

/// The kernel's tree in `.kernels/<package>/`, downloaded and unpacked once.
fn kernel(series: &str) -> Result<Kernel> {
    let package = resolve(series)?;
    let cache = root().join(".kernels");
    let tree = cache.join(&package);
    if find_vmlinuz(&tree).is_none() {
        let partial = cache.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        let unpacked = partial.join("tree");
        unpack(
            std::slice::from_ref(&package),
            &partial.join("debs"),
            &unpacked,
        )?;
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::rename(&unpacked, &tree)?;
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

/// Builds the agent and the test executables on the host; returns the agent
/// and fills in each case's executable.
fn build(cases: &mut [Case]) -> Result<PathBuf> {
    let agent = release_agent()?;
    let tests = executables(crate::cargo_test().args(["--test", "*", "--no-run"]))?;
    for c in cases {
        c.exe = tests
            .get(&c.file)
            .with_context(|| format!("no test file tests/tests/{}.rs", c.file))?
            .clone();
    }
    Ok(agent)
}

/// Optimised: under TCG a debug agent saturates the emulated CPU (11 s of
/// CPU in an 11 s lock test), its loop falls seconds behind the kernel's
/// events and the catalog is asked about waits that are over.
fn release_agent() -> Result<PathBuf> {
    executables(cargo().args(["build", "--release", "-p", "dbtel-agent"]))?
        .remove("dbtel-agent")
        .context("cargo built no dbtel-agent executable")
}

/// target name -> executable, from cargo's JSON messages.
fn executables(cmd: &mut Command) -> Result<HashMap<String, PathBuf>> {
    cmd.arg("--message-format=json").stdout(Stdio::piped());
    crate::announce(&format!("{cmd:?}"));
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
}
