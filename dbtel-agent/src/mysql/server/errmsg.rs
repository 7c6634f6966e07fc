//! The server's error message formats, read from the file the server reads
//! them from (`<lc_messages_dir>/<language>/errmsg.sys`): a span carries
//! the format of its error (`Table '%-.192s.%-.192s' doesn't exist`), never
//! the message itself, which holds user data.
//!
//! The file (MariaDB's derror.cc): a 32-byte header (`fe fe 02 ..`, the
//! texts' total length u32 at 6, the message count u16 at 12, the section
//! count u16 at 14), one u16 size per section (section i holds errors from
//! (i + 1) * 1000), a u16 per message, then the NUL-terminated texts.

use std::path::{Path, PathBuf};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFormats {
    /// (first error number, formats) per section.
    sections: Vec<(u32, Vec<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrmsgError {
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: not an errmsg.sys file ({1})")]
    Format(PathBuf, &'static str),
}

fn u16_at(d: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?) as usize)
}

impl ErrorFormats {
    pub fn parse(d: &[u8]) -> Result<Self, &'static str> {
        if d.len() < 32 || d[0] != 0xfe || d[1] != 0xfe || d[2] != 2 {
            return Err("bad header");
        }
        let length = u32::from_le_bytes(d[6..10].try_into().expect("4 bytes")) as usize;
        let (count, nsec) = (u16_at(d, 12).ok_or("short")?, u16_at(d, 14).ok_or("short")?);
        let sizes: Vec<usize> = (0..nsec)
            .map(|i| u16_at(d, 32 + 2 * i))
            .collect::<Option<_>>()
            .ok_or("short section table")?;
        if sizes.iter().sum::<usize>() != count {
            return Err("section sizes do not add up to the message count");
        }
        let at = 32 + 2 * nsec + 2 * count;
        let body = d
            .get(at..at + length)
            .ok_or("shorter than its header says")?;
        // The texts are NUL-terminated, in order (the length table's last
        // entry does not hold on 10.11's file: the NULs are the truth).
        let texts: Vec<String> = body
            .split(|&b| b == 0)
            .take(count)
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        if texts.len() < count {
            return Err("fewer texts than messages");
        }
        let mut texts = texts.into_iter();
        let sections = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i as u32 + 1) * 1000, texts.by_ref().take(n).collect()))
            .collect();
        Ok(ErrorFormats { sections })
    }

    /// The format of error `n`, if the file has it.
    pub fn get(&self, n: u32) -> Option<&str> {
        let (base, texts) = self
            .sections
            .iter()
            .find(|(base, t)| (*base..*base + t.len() as u32).contains(&n))?;
        texts.get((n - base) as usize).map(String::as_str)
    }

    /// The English formats of the server `pid` (as the process sees its
    /// files: Debian's /usr/share/mysql; /usr/share/mariadb elsewhere).
    pub fn of_server(pid: u32) -> Result<Self, ErrmsgError> {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let candidates = [
            "usr/share/mysql/english/errmsg.sys",
            "usr/share/mariadb/english/errmsg.sys",
        ];
        let path = candidates
            .iter()
            .map(|c| root.join(c))
            .find(|p| p.exists())
            .unwrap_or_else(|| root.join(candidates[0]));
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<Self, ErrmsgError> {
        let d = std::fs::read(path).map_err(|e| ErrmsgError::Read(path.into(), e))?;
        Self::parse(&d).map_err(|why| ErrmsgError::Format(path.into(), why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sections: 1000.. with two messages, 2000.. with one.
    fn file() -> Vec<u8> {
        let texts: [&[u8]; 3] = [b"hashchk\0", b"Table '%-.192s' doesn't exist\0", b"late\0"];
        let length: usize = texts.iter().map(|t| t.len()).sum();
        let mut d = vec![0xfe, 0xfe, 2, 5, 1, 0];
        d.extend((length as u32).to_le_bytes());
        d.extend([0, 0]);
        d.extend(3u16.to_le_bytes());
        d.extend(2u16.to_le_bytes());
        d.resize(32, 0);
        d.extend(2u16.to_le_bytes());
        d.extend(1u16.to_le_bytes());
        for t in texts {
            d.extend((t.len() as u16).to_le_bytes());
        }
        for t in texts {
            d.extend_from_slice(t);
        }
        d
    }

    #[test]
    fn formats_by_error_number() {
        let f = ErrorFormats::parse(&file()).unwrap();
        assert_eq!(f.get(1000), Some("hashchk"));
        assert_eq!(f.get(1001), Some("Table '%-.192s' doesn't exist"));
        assert_eq!(f.get(1002), None);
        assert_eq!(f.get(2000), Some("late"));
        assert_eq!(f.get(999), None);
        let mut short = file();
        short.truncate(40);
        assert!(ErrorFormats::parse(&short).is_err());
        assert_eq!(ErrorFormats::parse(b"nope"), Err("bad header"));
    }

    /// The server's own file, as Debian installs it with mariadb-server.
    #[test]
    fn debian_mariadb_formats() {
        let f = ErrorFormats::load(Path::new("/usr/share/mysql/english/errmsg.sys"))
            .expect("errmsg.sys (cargo xtask setup installs mariadb-server)");
        assert_eq!(f.get(1146), Some("Table '%-.192s.%-.192s' doesn't exist"));
        assert_eq!(
            f.get(1213),
            Some("Deadlock found when trying to get lock; try restarting transaction")
        );
        assert_eq!(
            f.get(1205),
            Some("Lock wait timeout exceeded; try restarting transaction")
        );
    }
}
