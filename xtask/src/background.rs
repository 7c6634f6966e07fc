//! The slow builds the host's tests do not need (the sanitized fuzz build,
//! the VMs' optimised agent, their QEMU and kernels), run in the idle CPU
//! scheduling class and the idle I/O class while the end-to-end tests run. Those tests wait on
//! servers, clients and sleeps much of the time; done after them, these
//! builds were ~10 minutes of CI. The later steps then find them built.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::target_dir;

pub struct Prebuild {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

impl Prebuild {
    /// `xtask prebuild` under `chrt --idle 0 nice -n 19 ionice -c 3`, its output in
    /// target/xtask-prebuild.log.
    pub fn start(fuzz: bool, kernels: &[String]) -> Result<Prebuild> {
        std::fs::create_dir_all(target_dir())?;
        let log = target_dir().join("xtask-prebuild.log");
        let out = File::create(&log).with_context(|| format!("{}", log.display()))?;
        // SCHED_IDLE, not only nice 19: with a niced build beside it, a
        // catalog test (all::every_server_gets_its_own_catalog) failed 1 run
        // in 3 (the blocker was gone before the catalog was asked); with an
        // idle-class one, 5 of 5 passed and so did the lock tests.
        let mut cmd = Command::new("chrt");
        cmd.args(["--idle", "0", "nice", "-n", "19", "ionice", "-c", "3"])
            .arg(std::env::current_exe()?)
            .arg("prebuild");
        if fuzz {
            cmd.arg("--fuzz");
        }
        for k in kernels {
            cmd.args(["--kernel", k]);
        }
        cmd.env(crate::STARTED_VAR, crate::STARTED.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        crate::announce(&format!(
            "in the background: {cmd:?} (log: {})",
            log.display()
        ));
        let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
        Ok(Prebuild {
            child: Some(child),
            log,
            started: Instant::now(),
        })
    }

    /// Waits for it, copies its log into ours, fails if it did.
    pub fn wait(mut self) -> Result<()> {
        let waiting = Instant::now();
        let status = self.child.take().expect("waited once").wait()?;
        crate::announce(&format!(
            "background builds {status} after {:.0?} (waited {:.0?} for them); their log follows",
            self.started.elapsed(),
            waiting.elapsed()
        ));
        let mut log = File::open(&self.log)?;
        std::io::copy(&mut log, &mut std::io::stderr())?;
        if !status.success() {
            bail!("background builds failed ({status}): see above");
        }
        Ok(())
    }
}

/// A failed step ends `xtask test`: the builds behind it end with it.
impl Drop for Prebuild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
