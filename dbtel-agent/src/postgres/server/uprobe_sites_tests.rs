use super::*;
use crate::postgres::server::target::CodeReader;

const DEBIAN: &str = "/usr/lib/postgresql/15/bin/postgres";

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (run cargo xtask setup)"))
}

fn sites_of(data: &[u8]) -> Result<Vec<Site>, ServerError> {
    let file = object::File::parse(data).unwrap();
    let code = |at: u64, len: usize| data.get(at as usize..at as usize + len).map(<[u8]>::to_vec);
    let code: CodeReader = &code;
    sites(&file, "postgres", code)
}

#[test]
fn a_stripped_build_has_every_stand_in_in_its_dynamic_symbols() {
    // Debian's build: stripped (.dynsym only), so the static functions are
    // gone and the exported stand-ins are used.
    let sites = sites_of(&read(DEBIAN)).unwrap();
    let names: Vec<(&str, u32, bool)> = sites
        .iter()
        .map(|s| (s.name, s.spec.probe, s.at_return))
        .collect();
    assert_eq!(
        names,
        [
            ("pgstat_report_activity", site::STATEMENT_STATUS, false),
            ("AtAbort_Notify", site::TRANSACTION_ABORT, false),
            ("ProcSleep", site::LOCK_WAIT_START, false),
            ("ProcSleep", site::LOCK_WAIT_DONE, true),
            ("DeadLockReport", site::DEADLOCK_FOUND, false),
        ]
    );
    let status = &sites[0].spec;
    assert_eq!(
        (status.text_arg, status.repeat_once, status.args[0].reg_off),
        (1, 1, Gpr::Rsi.pt_regs_offset()),
        "the text is cmd_str, the second argument"
    );
    let start = &sites[2].spec;
    let fields: Vec<(i64, u8)> = start.args[..6].iter().map(|a| (a.value, a.size)).collect();
    assert_eq!(fields, [(0, 4), (4, 4), (8, 4), (12, 2), (14, 1), (16, 4)]);
    let done = &sites[3].spec;
    assert_eq!(
        (done.args[0].reg_off, done.mask_arg, done.arg_mask),
        (Gpr::Rax.pt_regs_offset(), 1, 1),
        "only a wait that returned OK ends one"
    );
    // ProcSleep and the others start with code a uprobe can take (no
    // rip-relative trouble to worry about: the kernel emulates those).
    assert!(sites.iter().all(|s| s.offset > 0));
}

#[test]
fn the_locktag_layout_is_read_from_describelocktag() {
    let data = read(DEBIAN);
    let file = object::File::parse(&*data).unwrap();
    let code = |at: u64, len: usize| data.get(at as usize..at as usize + len).map(<[u8]>::to_vec);
    assert_eq!(
        locktag_layout(&file, &code),
        Ok(LocktagLayout { type_offset: 14 })
    );
    // Another layout is refused, not misread: `movzbl 0x10(%rsi),%ebx; ret`.
    assert_eq!(type_load(&[0x0f, 0xb6, 0x5e, 0x10, 0xc3], 0x1000), Some(16));
    // Code that never reads the type: nothing learnt.
    assert_eq!(type_load(&[0x31, 0xc0, 0xc3], 0x1000), None);
    let unreadable = |_: u64, _: usize| None;
    assert!(locktag_layout(&file, &unreadable)
        .unwrap_err()
        .contains("unreadable"));
}

#[test]
fn a_build_without_a_stand_in_is_refused_naming_it() {
    // A shared library has none of the server's functions.
    let data = read("/usr/lib/x86_64-linux-gnu/libpq.so.5");
    let err = sites_of(&data).unwrap_err().to_string();
    assert!(
        err.contains("without the function pgstat_report_activity that stands in for the probe statement__status (needed for query spans)"),
        "{err}"
    );
}
