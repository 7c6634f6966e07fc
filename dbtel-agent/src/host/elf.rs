//! Reading ELF files a traced process maps, cheaply and within bounds: a
//! traced program decides what it maps (a device, a huge sparse file), and
//! must not be able to make the agent read it.

use std::{
    fs,
    io::{self, Read},
    path::Path,
};

use object::elf::{SHT_DYNSYM, SHT_NOTE, SHT_STRTAB, SHT_SYMTAB};

/// The largest file read (or mapped sparsely) at all.
pub const MAX_ELF_BYTES: u64 = 256 << 20;

/// A regular file within [`MAX_ELF_BYTES`] that starts like an ELF file, opened.
fn open_elf(host_path: &Path) -> io::Result<(fs::File, u64)> {
    let mut f = fs::File::open(host_path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_ELF_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} MiB, larger than the {} MiB dbtel reads",
                meta.len() >> 20,
                MAX_ELF_BYTES >> 20
            ),
        ));
    }
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ELF file",
        ));
    }
    Ok((f, meta.len()))
}

/// Bytes read from one file at most: more code and data than any client
/// library or server dbtel traces (mariadbd loads ~25 MiB), so that no file a
/// traced program maps can make the agent hold more.
pub const MAX_READ_BYTES: u64 = 64 << 20;

/// A file's bytes where they are in the file, only the parts read: the rest
/// are zero pages of an anonymous mapping, never touched, so never resident
/// (a Vec would be zeroed first: 10 MiB of memset delayed the agent enough
/// to miss an exec'd server's first fork).
pub struct Sparse {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    read: u64,
}

// SAFETY: the mapping is owned by the value and only reached through it.
unsafe impl Send for Sparse {}
unsafe impl Sync for Sparse {}

impl Sparse {
    fn zeroed(len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("too large"))?;
        // SAFETY: a new private anonymous mapping, owned by the returned value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Sparse {
            ptr: std::ptr::NonNull::new(p.cast()).expect("mmap gave a mapping"),
            len,
            read: 0,
        })
    }

    /// Copies `len` bytes of the file at `at` into place with `read(buf,
    /// at)` (within the file's size and [`MAX_READ_BYTES`] in all).
    fn fill(&mut self, read: Reader, at: u64, len: u64) -> io::Result<()> {
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.len as u64)
            .ok_or_else(|| bad("a range past the end of the file"))?;
        self.read += len;
        if self.read > MAX_READ_BYTES {
            return Err(bad(&format!(
                "more than the {} MiB dbtel reads of a file",
                MAX_READ_BYTES >> 20
            )));
        }
        // SAFETY: the range is within the mapping (checked above), which we own.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(at as usize), (end - at) as usize)
        };
        read(buf, at)
    }
}

/// Reads a file's bytes at an offset into a buffer, whole or not at all.
type Reader<'a> = &'a dyn Fn(&mut [u8], u64) -> io::Result<()>;

impl std::fmt::Debug for Sparse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sparse({} bytes, {} read)", self.len, self.read)
    }
}

impl std::ops::Deref for Sparse {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable for the value's life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Sparse {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `zeroed`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1)) };
    }
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// What the agent reads of an ELF file to decode code and find symbols: its
/// headers, every loaded segment (code and data), the symbol and string
/// tables and notes; not debug information. A regular ELF file within
/// [`MAX_ELF_BYTES`], at most [`MAX_READ_BYTES`] read.
pub fn read_bounded(host_path: &Path) -> io::Result<Sparse> {
    read_parts(
        host_path,
        true,
        &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB, SHT_NOTE],
    )
}

/// Headers, symbol and string tables only (which file is which).
pub fn symbol_tables_only(host_path: &Path) -> Option<Sparse> {
    read_parts(host_path, false, &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB]).ok()
}

/// As [`symbol_tables_only`], notes too (USDT probes), or why not.
pub fn symbols_and_notes(host_path: &Path) -> io::Result<Sparse> {
    read_parts(
        host_path,
        false,
        &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB, SHT_NOTE],
    )
}

fn read_parts(host_path: &Path, segments: bool, kinds: &[u32]) -> io::Result<Sparse> {
    use std::os::unix::fs::FileExt;
    let (f, len) = open_elf(host_path)?;
    parts_from(len, segments, kinds, &|buf, at| f.read_exact_at(buf, at))
}

/// As [`symbols_and_notes`], of a file already in memory (fuzzing; tests).
pub fn symbols_and_notes_of(image: &[u8]) -> Option<Sparse> {
    let read = |buf: &mut [u8], at: u64| {
        let at = usize::try_from(at).map_err(|_| bad("offset"))?;
        let end = at.checked_add(buf.len()).ok_or_else(|| bad("offset"))?;
        buf.copy_from_slice(image.get(at..end).ok_or_else(|| bad("past the end"))?);
        Ok(())
    };
    parts_from(
        image.len() as u64,
        false,
        &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB, SHT_NOTE],
        &read,
    )
    .ok()
}

/// A sparse buffer of `len` bytes with the headers, the loaded segments (if
/// `segments`) and the sections of `kinds` read in.
fn parts_from(len: u64, segments: bool, kinds: &[u32], read: Reader) -> io::Result<Sparse> {
    use object::{
        elf::{FileHeader64, PT_LOAD},
        read::elf::{FileHeader, ProgramHeader, SectionHeader},
        Endianness,
    };
    let mut data = Sparse::zeroed(len)?;
    data.fill(read, 0, size_of::<FileHeader64<Endianness>>() as u64)?;
    let hdr = *FileHeader64::<Endianness>::parse(&*data).map_err(|e| bad(&e.to_string()))?;
    let e = hdr.endian().map_err(|e| bad(&e.to_string()))?;
    let (phoff, phlen) = (
        hdr.e_phoff.get(e),
        u64::from(hdr.e_phnum.get(e)) * u64::from(hdr.e_phentsize.get(e)),
    );
    let (shoff, shlen) = (
        hdr.e_shoff.get(e),
        u64::from(hdr.e_shnum.get(e)) * u64::from(hdr.e_shentsize.get(e)),
    );
    data.fill(read, phoff, phlen)?;
    data.fill(read, shoff, shlen)?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    if segments {
        let phdrs = hdr
            .program_headers(e, &*data)
            .map_err(|e| bad(&e.to_string()))?;
        ranges.extend(
            phdrs
                .iter()
                .filter(|p| p.p_type(e) == PT_LOAD)
                .map(|p| (p.p_offset(e), p.p_filesz(e))),
        );
    }
    let shdrs = hdr
        .section_headers(e, &*data)
        .map_err(|e| bad(&e.to_string()))?;
    ranges.extend(
        shdrs
            .iter()
            .filter(|s| kinds.contains(&s.sh_type(e)))
            .map(|s| (s.sh_offset(e), s.sh_size(e))),
    );
    // Sections inside loaded segments are read once.
    ranges.sort_unstable();
    let mut at = 0u64;
    for (start, size) in ranges {
        let end = start.saturating_add(size);
        let from = start.max(at);
        if end > from {
            data.fill(read, from, end - from)?;
            at = end;
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_elf_files_within_the_bound_are_read() {
        let dev = read_bounded(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(dev.to_string(), "not a regular file");
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(MAX_ELF_BYTES + 1).unwrap();
        assert!(read_bounded(&sparse)
            .unwrap_err()
            .to_string()
            .contains("larger than the 256 MiB dbtel reads"));
        assert!(symbol_tables_only(&sparse).is_none());
        f.set_len(4096).unwrap();
        assert_eq!(
            read_bounded(&sparse).unwrap_err().to_string(),
            "not an ELF file"
        );
        assert!(symbol_tables_only(Path::new("/dev/zero")).is_none());
        let me = Path::new("/usr/bin/ls");
        assert_eq!(
            read_bounded(me).unwrap().len() as u64,
            fs::metadata(me).unwrap().len()
        );
        assert!(symbol_tables_only(me).is_some());
    }

    /// A file that claims a huge loaded segment is refused past the bound;
    /// a server's notes are read without its code.
    #[test]
    fn only_the_parts_needed_are_read() {
        let pg = Path::new("/usr/lib/postgresql/15/bin/postgres");
        let len = fs::metadata(pg).unwrap().len();
        let notes = symbols_and_notes(pg).unwrap();
        assert_eq!(notes.len() as u64, len);
        assert!(notes.read < len / 2, "{notes:?}");
        let loaded = read_bounded(pg).unwrap();
        assert!(loaded.read > notes.read, "{loaded:?}");
        // A 100 MiB "library" whose one segment covers it all.
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("libpq.so.5");
        let mut elf = fs::read("/usr/bin/ls").unwrap();
        elf.resize(100 << 20, 0);
        fs::write(&big, &elf).unwrap();
        let mut sparse = Sparse::zeroed(200 << 20).unwrap();
        let f = fs::File::open(&big).unwrap();
        let read = |buf: &mut [u8], at: u64| std::os::unix::fs::FileExt::read_exact_at(&f, buf, at);
        let err = sparse.fill(&read, 0, 100 << 20).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
    }
}

#[cfg(test)]
mod postgres_notes {
    #[test]
    fn debian_postgres_probes_from_its_notes_alone() {
        let p = std::path::Path::new("/usr/lib/postgresql/15/bin/postgres");
        let sparse = super::symbols_and_notes(p).expect("sparse");
        let probes = crate::host::usdt::probes(&sparse);
        assert!(
            probes
                .as_ref()
                .is_ok_and(|p| p.iter().any(|p| p.provider == "postgresql")),
            "{:?}",
            probes.err()
        );
    }
}
