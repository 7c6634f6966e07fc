//! ELF files a traced process maps: the agent judges any of them (a
//! traced program decides what it maps). Input: the file's bytes, through
//! every engine's inspection: the sparse read of symbol tables and notes,
//! USDT notes, libpq (symbols, placements, layout, result points), the
//! MySQL client library (symbols, layout) and server (THD layout, sites),
//! and PostgreSQL's server probe sites.
#![no_main]

use std::path::Path;

use dbtel_agent::{
    host::{elf, usdt},
    mysql,
    postgres::{libpq::discover, server::target},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = "/fuzz/input";
    let host = Path::new(path);
    if let Some(sparse) = elf::symbols_and_notes_of(data) {
        assert_eq!(
            sparse.len(),
            data.len(),
            "the sparse copy has the file's size"
        );
        let _ = usdt::probes(&sparse);
        let _ = mysql::symbols::find(&sparse, &["mysql_real_query", "PQexec"]);
    }
    let _ = usdt::probes(data);
    let _ = discover::inspect_image(1, path, host, data);
    let _ = mysql::discover::claim_image(1, path, host, data);
    let _ = mysql::server::target::claim_image(1, path, host, data);
    let code = |at: u64, len: usize| {
        let at = usize::try_from(at).ok()?;
        data.get(at..at.checked_add(len)?).map(<[u8]>::to_vec)
    };
    let _ = target::sites_of_image(data, path, &code);
});
