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

/// The whole file, if it is a regular ELF file within [`MAX_ELF_BYTES`]
/// (reads at most its size as it was when opened).
pub fn read_bounded(host_path: &Path) -> io::Result<Vec<u8>> {
    let (mut f, len) = open_elf(host_path)?;
    let mut data = Vec::with_capacity(len as usize);
    data.extend_from_slice(b"\x7fELF");
    // Read into the spare capacity (no zeroing first: on an exec the agent
    // races the new server's first fork), never past the size it had.
    (&mut f).take(len - 4).read_to_end(&mut data)?;
    Ok(data)
}

/// The file as a buffer of its size holding only its ELF header, program and
/// section headers, symbol and string tables; zeros elsewhere (pages never
/// written, so never really allocated).
pub fn symbol_tables_only(host_path: &Path) -> Option<Vec<u8>> {
    sections_only(host_path, &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB])
}

/// As [`symbol_tables_only`], notes too (USDT probes).
pub fn symbols_and_notes(host_path: &Path) -> Option<Vec<u8>> {
    sections_only(host_path, &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB, SHT_NOTE])
}

fn sections_only(host_path: &Path, kinds: &[u32]) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let (f, len) = open_elf(host_path).ok()?;
    sections_from(len, kinds, &|buf, at| f.read_exact_at(buf, at).ok())
}

/// As [`symbols_and_notes`], of a file already in memory (fuzzing; tests).
pub fn symbols_and_notes_of(image: &[u8]) -> Option<Vec<u8>> {
    let read = |buf: &mut [u8], at: u64| {
        let at = usize::try_from(at).ok()?;
        buf.copy_from_slice(image.get(at..at.checked_add(buf.len())?)?);
        Some(())
    };
    sections_from(
        image.len() as u64,
        &[SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB, SHT_NOTE],
        &read,
    )
}

/// A buffer of `len` zeros with the headers and the sections of `kinds`
/// filled in by `read(buf, file_offset)`.
fn sections_from(
    len: u64,
    kinds: &[u32],
    read: &dyn Fn(&mut [u8], u64) -> Option<()>,
) -> Option<Vec<u8>> {
    use object::{
        elf::FileHeader64,
        read::elf::{FileHeader, SectionHeader},
        Endianness,
    };
    let mut data = vec![0u8; usize::try_from(len).ok()?];
    let fill = |data: &mut [u8], at: u64, len: u64| -> Option<()> {
        let range = usize::try_from(at).ok()?..usize::try_from(at.checked_add(len)?).ok()?;
        read(data.get_mut(range)?, at)
    };
    fill(&mut data, 0, size_of::<FileHeader64<Endianness>>() as u64)?;
    let hdr = *FileHeader64::<Endianness>::parse(&*data).ok()?;
    let e = hdr.endian().ok()?;
    if hdr.e_shnum.get(e) == 0 {
        return None; // none, or more than fit the field: read the whole file
    }
    let (phoff, phlen) = (
        hdr.e_phoff.get(e),
        u64::from(hdr.e_phnum.get(e)) * u64::from(hdr.e_phentsize.get(e)),
    );
    let (shoff, shlen) = (
        hdr.e_shoff.get(e),
        u64::from(hdr.e_shnum.get(e)) * u64::from(hdr.e_shentsize.get(e)),
    );
    fill(&mut data, phoff, phlen)?;
    fill(&mut data, shoff, shlen)?;
    let tables: Vec<(u64, u64)> = hdr
        .section_headers(e, &*data)
        .ok()?
        .iter()
        .filter(|s| kinds.contains(&s.sh_type(e)))
        .map(|s| (s.sh_offset(e), s.sh_size(e)))
        .collect();
    for (at, len) in tables {
        fill(&mut data, at, len)?;
    }
    Some(data)
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
