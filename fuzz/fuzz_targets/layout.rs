//! The x86-64 decoding that learns struct layouts from a library's own
//! accessor functions: libpq's (PGconn, PGresult), the MySQL client
//! library's (MYSQL, MYSQL_RES, MYSQL_STMT) and mariadbd's (THD), and the
//! code reading around it (arg0 accesses, probe placement, PQgetResult's
//! result points). The code comes from a file a traced program maps.
//!
//! Input: a selector byte (which decoder; its high bit: bodies of known
//! size or up to the first `ret`), then accessor bodies, each a
//! little-endian u16 length then the code, given to the decoder's
//! accessors in the order of its list (missing ones are absent symbols).
#![no_main]

use dbtel_agent::{
    host::{placement, x86},
    mysql,
    postgres::libpq::{layout, resultpoint},
};
use iced_x86::Instruction;
use libfuzzer_sys::fuzz_target;

const IP: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let mut bodies: Vec<&[u8]> = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + body.len()..];
        bodies.push(body);
    }
    let sized = selector & 0x80 != 0;
    let decode = |code: &[u8]| {
        if sized {
            x86::decode_body(code, IP)
        } else {
            x86::decode(code, IP)
        }
    };
    // The body of the accessor named, by its place in `names`.
    let by_name = |names: &[&'static str]| {
        let bodies = &bodies;
        let names = names.to_vec();
        move |name: &'static str| -> Option<Vec<Instruction>> {
            let i = names.iter().position(|n| *n == name)?;
            bodies.get(i).map(|b| decode(b))
        }
    };
    match selector & 0x7f {
        0 => {
            let get = by_name(layout::ACCESSORS);
            let _ = layout::libpq_layout(&layout::Accessors { get: &get });
        }
        1 => {
            let get = by_name(mysql::layout::ACCESSORS);
            if let Ok(l) = mysql::layout::from_accessors("fuzz", &get) {
                let _ = l.offsets();
            }
        }
        2 => {
            let mut names = mysql::server::target::ACCESSORS.to_vec();
            names.push(mysql::server::target::END_STATEMENT);
            let get = by_name(&names);
            if let Ok(l) = mysql::server::target::decode("fuzz", &get) {
                let _ = mysql::server::target::sites(&l);
            }
        }
        _ => {
            // Each body as any function: what the placement and the
            // result-point search read.
            for b in &bodies {
                let insns = decode(b);
                let _ = x86::arg0_accesses(&insns);
                let _ = placement::at_entry(&insns);
                let _ = placement::entry_probe(&insns, placement::arg_registers(b.len() % 7));
                let _ = resultpoint::find(b, IP, &|target, _| target % 2 == 0);
            }
        }
    }
});
