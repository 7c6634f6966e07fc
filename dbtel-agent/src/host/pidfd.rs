//! Traced processes followed by pidfd: an exit is seen even when the PID has
//! been given to another process since (a /proc/PID check would then follow
//! the newcomer until it exits).

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open(2) takes a PID and flags; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned to us, owned by nothing else.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// The process has exited (a zombie included): its pidfd is readable.
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }
}

/// The traced processes' pidfds (where pidfd_open works: Linux 5.3+).
#[derive(Default)]
pub struct Liveness {
    fds: HashMap<u32, Pidfd>,
}

impl Liveness {
    pub fn watch(&mut self, pid: u32) {
        if self.fds.contains_key(&pid) {
            return;
        }
        match Pidfd::open(pid) {
            Ok(fd) => {
                self.fds.insert(pid, fd);
            }
            Err(e) => log::debug!("process {pid}: no pidfd ({e}): followed through /proc"),
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.fds.remove(&pid);
    }

    /// Still the process that was traced, and running.
    pub fn alive(&self, pid: u32) -> bool {
        match self.fds.get(&pid) {
            Some(fd) => !fd.exited(),
            None => super::process::process_exists(pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_is_seen_through_the_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut l = Liveness::default();
        l.watch(pid);
        assert!(l.alive(pid));
        child.kill().unwrap();
        // Exited but not yet reaped: a zombie, gone all the same.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!l.alive(pid));
        child.wait().unwrap();
        assert!(!l.alive(pid));
        l.forget(pid);
        assert!(!l.alive(pid));
    }
}
