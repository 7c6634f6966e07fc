//! Finds MySQL client functions in an ELF file: a shared libmariadb.so.3 or
//! libmysqlclient.so, or an executable with Connector/C linked in (the
//! `mariadb` CLI exports them from its own .dynsym).
//!
//! libmariadb.so.3 defines each function twice at one address: the default
//! version `mysql_real_query@@libmysqlclient_18` with the function's size,
//! and `mysql_real_query@libmariadbclient_18`, a compatibility alias of size
//! 0. Both name one function: a probe goes on the address, once, and the
//! size (wanted to decode the body) comes from whichever symbol at that
//! address has one.

use std::collections::BTreeMap;

use object::{
    read::elf::{ElfFile64, ElfSymbol64},
    Endianness, Object, ObjectSymbol, SymbolKind,
};

/// One function as found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnSymbol {
    pub address: u64,
    /// Where its first byte is in the file: what a uprobe attaches to.
    pub offset: u64,
    /// Bytes of code (0 when no symbol at the address says).
    pub size: u64,
    /// The version of the symbol chosen (`libmysqlclient_18`), if versioned.
    pub version: Option<String>,
}

impl FnSymbol {
    /// The function's code: `size` bytes, or `fallback` bytes when the size is unknown.
    pub fn code<'d>(&self, data: &'d [u8], fallback: usize) -> Option<&'d [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let len = if self.size > 0 {
            usize::try_from(self.size).ok()?
        } else {
            fallback
        };
        data.get(start..start.checked_add(len)?.min(data.len()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a readable x86-64 ELF file: {0}")]
pub struct SymbolsError(#[from] object::Error);

/// The functions among `wanted` that `data` defines, by unversioned name.
/// A name defined at several addresses (a library keeping an old
/// implementation under an old version) resolves to its default version.
pub fn find(
    data: &[u8],
    wanted: &[&'static str],
) -> Result<BTreeMap<&'static str, FnSymbol>, SymbolsError> {
    let elf = ElfFile64::<Endianness>::parse(data)?;
    let file = object::File::parse(data)?;
    let endian = elf.endian();
    let versions = elf
        .elf_section_table()
        .versions(endian, data)
        .ok()
        .flatten();
    let defined = |s: &ElfSymbol64<'_, '_, Endianness>| {
        !s.is_undefined()
            && s.address() != 0
            && matches!(s.kind(), SymbolKind::Text | SymbolKind::Unknown)
    };
    // Sizes by address: an alias of size 0 borrows its twin's.
    let mut sizes: BTreeMap<u64, u64> = BTreeMap::new();
    for s in elf.dynamic_symbols().chain(elf.symbols()).filter(defined) {
        let e = sizes.entry(s.address()).or_default();
        *e = (*e).max(s.size());
    }
    // (rank, symbol): a default (not hidden) version beats a hidden one, .dynsym beats .symtab.
    let mut best: BTreeMap<&'static str, (u8, FnSymbol)> = BTreeMap::new();
    let tables = [(elf.dynamic_symbols(), true), (elf.symbols(), false)];
    for (table, dynamic) in tables {
        for s in table.filter(defined) {
            let Ok(full) = s.name() else { continue };
            // A .symtab may spell the version into the name.
            let (name, spelled) = match full.split_once('@') {
                Some((n, v)) => (n, Some(v.trim_start_matches('@'))),
                None => (full, None),
            };
            let Some(&name) = wanted.iter().find(|w| **w == name) else {
                continue;
            };
            let (hidden, version) = match (&versions, dynamic) {
                (Some(v), true) => {
                    let idx = v.version_index(endian, s.index());
                    let vname = v
                        .version(idx)
                        .ok()
                        .flatten()
                        .map(|x| String::from_utf8_lossy(x.name()).into_owned());
                    (idx.is_hidden(), vname)
                }
                _ => (
                    full.contains('@') && !full.contains("@@"),
                    spelled.map(str::to_string),
                ),
            };
            let rank = u8::from(!hidden) * 2 + u8::from(dynamic);
            let Some(offset) = crate::host::process::vaddr_to_offset(&file, s.address()) else {
                continue;
            };
            let sym = FnSymbol {
                address: s.address(),
                offset,
                size: sizes[&s.address()],
                version,
            };
            match best.get(name) {
                Some((r, _)) if *r >= rank => {}
                _ => {
                    best.insert(name, (rank, sym));
                }
            }
        }
    }
    Ok(best.into_iter().map(|(n, (_, s))| (n, s)).collect())
}
