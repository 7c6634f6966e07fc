//! Who the `--` command runs as, and the credentials it is given between
//! fork and exec: never the agent's capabilities. Under sudo it runs as the
//! invoking user (SUDO_UID / SUDO_GID), with --user as that user; otherwise
//! as the agent's own user, with no capability (a root agent's command
//! stays uid 0 but without capabilities, and cannot regain them by exec:
//! SECBIT_NOROOT, locked).

use std::ffi::{CStr, CString};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {0}: no such user")]
    Unknown(String),
    #[error("SUDO_UID={0}: not a uid")]
    BadSudoUid(String),
    #[error("--user {0} needs CAP_SETUID and CAP_SETGID (run the agent as root)")]
    CannotSwitch(String),
}

/// Credentials for the command, prepared before fork (nothing in the child allocates).
#[derive(Debug, Clone)]
pub struct CommandUser {
    /// (uid, gid, supplementary groups) to switch to; None keeps the agent's user.
    pub switch: Option<(u32, u32, Vec<libc::gid_t>)>,
    pub name: String,
    /// HOME, USER and LOGNAME for the command when it switches (as runuser sets them).
    env: Vec<(String, String)>,
}

/// A passwd entry: (name, uid, gid, home).
fn passwd(by: Lookup) -> Option<(String, u32, u32, String)> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: a zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers valid for the call; the result points into `pw`/`buf`.
    let rc = unsafe {
        match &by {
            Lookup::Name(n) => libc::getpwnam_r(
                n.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            ),
            Lookup::Uid(u) => {
                libc::getpwuid_r(*u, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out)
            }
        }
    };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getpw*_r filled these NUL-terminated strings.
    let s = |p: *const libc::c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    Some((s(pw.pw_name), pw.pw_uid, pw.pw_gid, s(pw.pw_dir)))
}

enum Lookup {
    Name(CString),
    Uid(u32),
}

/// The supplementary groups of `name` with primary group `gid`.
fn groups_of(name: &str, gid: u32) -> Vec<libc::gid_t> {
    let Ok(c) = CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut v = vec![0 as libc::gid_t; n as usize];
        // SAFETY: v holds n entries; n is updated to the count needed.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, v.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            v.truncate(n as usize);
            return v;
        }
        if n as usize <= v.len() {
            return vec![gid];
        }
    }
}

impl CommandUser {
    /// `--user NAME|UID` if given; else SUDO_UID / SUDO_GID when the agent
    /// is root under sudo; else the agent's own user.
    pub fn choose(
        user: Option<&str>,
        sudo_uid: Option<String>,
        sudo_gid: Option<String>,
    ) -> Result<CommandUser, UserError> {
        // SAFETY: no preconditions.
        let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
        if let Some(u) = user {
            let entry = match u.parse::<u32>() {
                Ok(n) => passwd(Lookup::Uid(n)),
                Err(_) => CString::new(u).ok().and_then(|c| passwd(Lookup::Name(c))),
            };
            let (name, uid_to, gid, home) = entry.ok_or_else(|| UserError::Unknown(u.into()))?;
            if uid_to != euid
                && !(super::privileges::effective().contains(&caps::Capability::CAP_SETUID)
                    && super::privileges::effective().contains(&caps::Capability::CAP_SETGID))
            {
                return Err(UserError::CannotSwitch(u.into()));
            }
            return Ok(Self::switching(name, uid_to, gid, home));
        }
        if euid == 0 {
            if let Some(s) = sudo_uid.filter(|s| !s.is_empty()) {
                let to: u32 = s.parse().map_err(|_| UserError::BadSudoUid(s.clone()))?;
                if to != 0 {
                    let entry = passwd(Lookup::Uid(to));
                    let gid = sudo_gid
                        .and_then(|g| g.parse().ok())
                        .or(entry.as_ref().map(|e| e.2))
                        .unwrap_or(to);
                    let (name, home) = entry
                        .map(|e| (e.0, e.3))
                        .unwrap_or_else(|| (to.to_string(), "/".into()));
                    return Ok(Self::switching(name, to, gid, home));
                }
            }
        }
        let name = passwd(Lookup::Uid(uid)).map_or_else(|| uid.to_string(), |e| e.0);
        Ok(CommandUser {
            switch: None,
            name,
            env: Vec::new(),
        })
    }

    fn switching(name: String, uid: u32, gid: u32, home: String) -> CommandUser {
        let groups = groups_of(&name, gid);
        CommandUser {
            env: vec![
                ("HOME".into(), home),
                ("USER".into(), name.clone()),
                ("LOGNAME".into(), name.clone()),
            ],
            switch: Some((uid, gid, groups)),
            name,
        }
    }

    /// The uid the command runs as.
    pub fn uid(&self) -> u32 {
        // SAFETY: no preconditions.
        self.switch
            .as_ref()
            .map_or(unsafe { libc::getuid() }, |s| s.0)
    }

    /// True when the command runs as a user other than the agent's (signals to it need CAP_KILL).
    pub fn other_than_agent(&self) -> bool {
        // SAFETY: no preconditions.
        self.uid() != unsafe { libc::getuid() }
    }

    /// The environment for the command: the agent's, with the user's HOME, USER and LOGNAME.
    pub fn environment(&self) -> Vec<CString> {
        let mut out: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| !self.env.iter().any(|(n, _)| k == n.as_str()))
            .filter_map(|(k, v)| {
                let mut b = k.into_encoded_bytes();
                b.push(b'=');
                b.extend(v.into_encoded_bytes());
                CString::new(b).ok()
            })
            .collect();
        out.extend(
            self.env
                .iter()
                .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()),
        );
        out
    }

    /// In the forked child, before exec: leaves it with no capability,
    /// switched to the chosen user. Async-signal-safe (system calls on data
    /// prepared before the fork). Returns what failed.
    ///
    /// # Safety
    /// Only between fork and exec.
    pub unsafe fn apply_in_child(&self) -> Result<(), &'static CStr> {
        // SAFETY: prctl/set*id/setgroups/capset with valid arguments.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            match &self.switch {
                Some((uid, gid, groups)) => {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                        return Err(c"setgroups");
                    }
                    if libc::setresgid(*gid, *gid, *gid) != 0 {
                        return Err(c"setgid");
                    }
                    if libc::setresuid(*uid, *uid, *uid) != 0 {
                        return Err(c"setuid");
                    }
                }
                // A root agent's command keeps uid 0: exec must not give it
                // every capability back. (EPERM without CAP_SETPCAP: a
                // non-root agent's command gains nothing by exec anyway.)
                None if libc::getuid() == 0 => {
                    const NOROOT: libc::c_ulong = 1 | 2; // SECBIT_NOROOT and its lock
                    if libc::prctl(libc::PR_SET_SECUREBITS, NOROOT, 0, 0, 0) != 0 {
                        return Err(c"PR_SET_SECUREBITS");
                    }
                }
                None => {}
            }
            // Nothing effective, permitted or inheritable (a setuid to a
            // non-root user cleared them already; a non-root agent's did not).
            let header = [0x2008_0522u32, 0];
            let data = [0u32; 6];
            if libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0 {
                return Err(c"capset");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_user_zero_and_unknown_users_are_named() {
        let e = CommandUser::choose(Some("no-such-user-dbtel"), None, None).unwrap_err();
        assert_eq!(e.to_string(), "--user no-such-user-dbtel: no such user");
        let e = CommandUser::choose(Some("4294967"), None, None).unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
    }

    #[test]
    fn the_users_home_replaces_the_agents() {
        let u = CommandUser::switching("alice".into(), 1000, 1000, "/home/alice".into());
        let env = u.environment();
        assert!(env.iter().any(|e| e.to_bytes() == b"HOME=/home/alice"));
        assert_eq!(
            env.iter()
                .filter(|e| e.to_bytes().starts_with(b"HOME="))
                .count(),
            1
        );
        assert!(env.iter().any(|e| e.to_bytes() == b"USER=alice"));
    }
}
