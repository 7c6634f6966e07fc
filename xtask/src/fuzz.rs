//! `cargo xtask fuzz`: every libFuzzer target in fuzz/ for a bounded time,
//! from its seed corpus in fuzz/corpus/<target>/. A crash (panic, overflow,
//! more than 2 GB, one input over 10 s) fails the run and names the input
//! libFuzzer saved (fuzz/artifacts/<target>/); what the run learns goes to
//! target/fuzz-corpus/<target>/, never into the checked-in seeds.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{output, root, run, target_dir};

/// cargo-fuzz, from crates.io, when missing.
const CARGO_FUZZ: &str = "0.13.2";

/// Installs cargo-fuzz if missing (the nightly toolchain and its rust-src
/// come with setup).
pub(crate) fn install() -> Result<()> {
    if !output(Command::new("cargo").args(["fuzz", "--version"])).contains(CARGO_FUZZ) {
        run(Command::new("cargo").args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ}"),
            "--locked",
        ]))?;
    }
    Ok(())
}

/// `cargo +nightly fuzz …` in the repository (the rustup proxy, not the
/// stable cargo running xtask: cargo-fuzz needs nightly's sanitizer flags).
fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .args(["+nightly", "fuzz"])
        // Set by the stable cargo running xtask; the nightly one must choose its own.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        // Line tables are enough for a crash's backtrace; full debug info made
        // six sanitized binaries too big for a CI disk.
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only");
    c
}

/// One build for all targets (each run then finds its binary built).
/// Unoptimized (--dev): a bounded run in CI is paid mostly in the cold build
/// of every dependency with the sanitizer, which optimizing doubles.
fn build() -> Result<()> {
    install()?;
    let started = Instant::now();
    run(cargo_fuzz()
        .args(["build", "--dev", "--target-dir"])
        .arg(fuzz_target_dir()))?;
    eprintln!("xtask: fuzz targets built in {:.0?}", started.elapsed());
    Ok(())
}

/// Its own: a sanitized build's host artifacts (build scripts, proc
/// macros) would otherwise go to target/debug, beside the tests' and under
/// the same cargo lock.
fn fuzz_target_dir() -> PathBuf {
    target_dir().join("fuzz")
}

pub(crate) fn fuzz(seconds: u32, only: &[String]) -> Result<()> {
    build()?;
    let listed = output(cargo_fuzz().arg("list"));
    let targets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && (only.is_empty() || only.iter().any(|o| o == t)))
        .collect();
    if targets.is_empty() {
        bail!("no fuzz targets (cargo fuzz list: {listed:?})");
    }
    let started = Instant::now();
    let mut crashed = Vec::new();
    for t in &targets {
        let learnt = target_dir().join("fuzz-corpus").join(t);
        let seeds = root().join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&learnt)?;
        let artifacts = root().join("fuzz/artifacts").join(t);
        std::fs::create_dir_all(&artifacts)?;
        let before = entries(&artifacts);
        // libFuzzer adds what it learns to the first directory given only.
        let mut cmd = cargo_fuzz();
        cmd.args(["run", "--dev", "--target-dir"])
            .arg(fuzz_target_dir())
            .arg(t)
            .arg(&learnt);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        let status = cmd
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .status()
            .with_context(|| format!("cannot run cargo fuzz run {t}"))?;
        if !status.success() {
            let new: Vec<String> = entries(&artifacts)
                .into_iter()
                .filter(|a| !before.contains(a))
                .collect();
            eprintln!("xtask: fuzz target {t} failed ({status}); input: {new:?}");
            crashed.push(format!("{t}: {}", new.join(", ")));
        }
    }
    eprintln!(
        "xtask: fuzzed {} targets, {seconds} s each, in {:.0?}",
        targets.len(),
        started.elapsed()
    );
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes (replay: cargo +nightly fuzz run TARGET INPUT):\n  {}",
            crashed.join("\n  ")
        );
    }
    Ok(())
}

/// The files in `dir`, as paths.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}
