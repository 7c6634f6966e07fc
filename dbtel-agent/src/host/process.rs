//! Processes as /proc shows them (alive, their executable, their mapped
//! files) and ELF addresses: what every engine's discovery starts from.

use std::{fs, io, path::Path};

use object::{Object, ObjectSegment};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with PID {0}")]
    NoSuchProcess(u32),
    #[error("cannot read /proc/{pid}/maps: {error}{}", super::privileges::denied_hint(.error, true))]
    Maps { pid: u32, error: io::Error },
}

/// True while the process runs: a zombie (exited, not yet reaped by its
/// parent) counts as gone.
pub fn process_exists(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// (device, inode) of a file: the same library or executable, whatever path reaches it.
pub fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub fn exe_name(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Paths of the file-backed executable mappings in /proc/<pid>/maps.
pub fn executable_mappings(pid: u32) -> Result<Vec<String>, ProcessError> {
    if !process_exists(pid) {
        return Err(ProcessError::NoSuchProcess(pid));
    }
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            ProcessError::NoSuchProcess(pid)
        } else {
            ProcessError::Maps { pid, error }
        }
    })?;
    Ok(parse_maps(&maps))
}

/// The size of a process's address space, in pages (/proc/<pid>/statm's
/// first field): a library mapped changes it, and it is far cheaper to read
/// than the maps (no path per mapping).
pub fn mapped_pages(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_ascii_whitespace().next()?.parse().ok()
}

pub fn parse_maps(maps: &str) -> Vec<String> {
    // Read at every library load of a held process: byte checks, no field
    // splitting. "ADDR PERMS OFFSET DEV INODE   PATH": only the path has a '/'.
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        let executable = line
            .split_once(' ')
            .is_some_and(|(_, rest)| rest.as_bytes().get(2) == Some(&b'x'));
        let Some(at) = line.find('/').filter(|_| executable) else {
            continue;
        };
        let path = line[at..].trim_end();
        if !path.ends_with(" (deleted)") && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

/// Virtual address → offset in the file, through the loadable segment holding it.
pub fn vaddr_to_offset(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        // Checked: a mapped file's headers may say anything (found by fuzzing).
        let into = addr.checked_sub(seg.address()).filter(|&d| d < size)?;
        off.checked_add(into)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keeps_executable_file_mappings_once() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/psql
55d0c0001000-55d0c0002000 r-xp 00001000 08:01 123 /usr/bin/psql
7f0000000000-7f0000001000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libpq.so.5.15
7f0000002000-7f0000003000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libpq.so.5.15
7f0000004000-7f0000005000 rw-p 00000000 00:00 0 
7f0000006000-7f0000007000 r-xp 00000000 00:00 0 [vdso]
7f0000008000-7f0000009000 r-xp 00000000 08:01 789 /tmp/old.so (deleted)
";
        assert_eq!(
            parse_maps(maps),
            vec!["/usr/bin/psql", "/usr/lib/x86_64-linux-gnu/libpq.so.5.15"]
        );
    }

    /// An ELF header and one PT_LOAD at `vaddr`, `filesz` bytes from file offset `offset`.
    fn one_segment(offset: u64, vaddr: u64, filesz: u64) -> Vec<u8> {
        let mut b = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
        b.extend_from_slice(&[3, 0, 0x3e, 0, 1, 0, 0, 0]); // ET_DYN, x86-64, version 1
        for v in [0u64, 64, 0] {
            b.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
        }
        b.extend_from_slice(&[0, 0, 0, 0, 64, 0, 56, 0, 1, 0, 64, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[1, 0, 0, 0, 5, 0, 0, 0]); // PT_LOAD, r-x
        for v in [offset, vaddr, vaddr, filesz, filesz, 0x1000] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn segments_at_the_end_of_the_address_space_do_not_overflow() {
        // Found by the elf fuzz target: a segment whose end passes 2^64.
        let data = one_segment(0, 0xffff_ffff_ffff_fffb, 0x2000);
        let file = object::File::parse(&*data).unwrap();
        assert_eq!(vaddr_to_offset(&file, 0xffff_ffff_ffff_fffc), Some(1));
        assert_eq!(vaddr_to_offset(&file, 0x10), None);
        let data = one_segment(u64::MAX, 0x1000, 0x2000);
        let file = object::File::parse(&*data).unwrap();
        assert_eq!(vaddr_to_offset(&file, 0x1001), None);
        assert_eq!(vaddr_to_offset(&file, 0x1000), Some(u64::MAX));
    }

    #[test]
    fn zombies_count_as_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie until wait().
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!process_exists(pid));
        child.wait().unwrap();
        assert!(!process_exists(pid));
        assert!(process_exists(std::process::id()));
    }
}
