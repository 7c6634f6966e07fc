//! Reading ELF files a traced process maps, cheaply.

use std::{fs, path::Path};

/// The file as a buffer of its size holding only its ELF header, program and
/// section headers, symbol and string tables; zeros elsewhere (pages never
/// written, so never really allocated).
pub fn symbol_tables_only(host_path: &Path) -> Option<Vec<u8>> {
    use object::{
        elf::{FileHeader64, SHT_DYNSYM, SHT_STRTAB, SHT_SYMTAB},
        read::elf::{FileHeader, SectionHeader},
        Endianness,
    };
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(host_path).ok()?;
    let mut data = vec![0u8; usize::try_from(f.metadata().ok()?.len()).ok()?];
    let fill = |data: &mut [u8], at: u64, len: u64| -> Option<()> {
        let range = usize::try_from(at).ok()?..usize::try_from(at.checked_add(len)?).ok()?;
        f.read_exact_at(data.get_mut(range)?, at).ok()
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
        .filter(|s| matches!(s.sh_type(e), SHT_SYMTAB | SHT_DYNSYM | SHT_STRTAB))
        .map(|s| (s.sh_offset(e), s.sh_size(e)))
        .collect();
    for (at, len) in tables {
        fill(&mut data, at, len)?;
    }
    Some(data)
}
