//! USDT probe notes (`.note.stapsdt` descriptors) and their argument specs
//! (`-4@%esi 8@-16(%rbp)`), as a server executable carries them.
//!
//! Input: a note descriptor (three u64 then provider, name and argument
//! strings, NUL-separated); its first byte also picks whether
//! `.stapsdt.base` moved (prelink).
#![no_main]

use dbtel_agent::host::usdt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base_now = data.first().map(|&b| u64::from(b) << 12);
    for base in [None, base_now] {
        if let Ok(p) = usdt::parse_note(data, base) {
            for a in &p.args {
                let _ = usdt::arg_spec(a);
            }
        }
    }
    // The argument string on its own, as any text.
    if let Ok(spec) = std::str::from_utf8(data) {
        if let Ok(args) = usdt::parse_args(spec) {
            for a in &args {
                let _ = usdt::arg_spec(a);
            }
        }
    }
});
