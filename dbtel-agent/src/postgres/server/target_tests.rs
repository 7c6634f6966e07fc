use super::*;

#[test]
fn sqlstates_unpack() {
    let pack = |s: &str| {
        s.bytes().enumerate().fold(0u64, |acc, (i, c)| {
            acc | (((c - b'0') as u64 & 0x3f) << (6 * i))
        })
    };
    for s in ["40P01", "55P03", "57014", "40001", "42P01", "00000"] {
        assert_eq!(unpack_sqlstate(pack(s)), s);
    }
}

#[test]
fn end_command_reads_the_query_completion_and_ends_repeats() {
    let data = postgres15();
    let file = object::File::parse(&*data).unwrap();
    let (sites, warnings) = function_sites(&file, POSTGRES, &code_of(&data));
    assert!(warnings.is_empty(), "{warnings:?}");
    let done: Vec<&Site> = sites
        .iter()
        .filter(|s| s.spec.probe == site::COMMAND_DONE)
        .collect();
    assert_eq!(done.len(), 1);
    let spec = done[0].spec;
    assert_eq!(
        (spec.text_arg, spec.repeat_once),
        (0, repeat::ONCE | repeat::COMPLETES),
        "no text; the next text is reported even if it repeats; the idle report after it is not"
    );
    let rdi = usdt::Gpr::Rdi.pt_regs_offset();
    let field = |a: ArgSpec| (a.kind, a.reg_off, a.value, a.size, a.index_off);
    assert_eq!(
        field(spec.args[0]),
        (argkind::MEMORY, rdi, 0, 4, NO_INDEX),
        "qc->commandTag"
    );
    assert_eq!(
        field(spec.args[1]),
        (argkind::MEMORY, rdi, 8, 8, NO_INDEX),
        "qc->nprocessed"
    );
    assert_eq!(spec.args[2].kind, argkind::NONE);
    let errmsg = sites.iter().find(|s| s.name == "errmsg").unwrap();
    assert_eq!((errmsg.spec.text_arg, errmsg.spec.args[0].size), (1, 8));
}

const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

/// Debian's server executable (setup installs it).
fn postgres15() -> Vec<u8> {
    fs::read(POSTGRES).unwrap_or_else(|e| panic!("{POSTGRES}: {e} (run cargo xtask setup)"))
}

/// The executable's bytes at a file offset, as inspect_file reads them.
fn code_of(data: &[u8]) -> impl Fn(u64, usize) -> Option<Vec<u8>> + '_ {
    |at, len| data.get(at as usize..at as usize + len).map(<[u8]>::to_vec)
}

#[test]
fn errstart_is_probed_where_only_errors_go() {
    let data = postgres15();
    let file = object::File::parse(&*data).unwrap();
    let (sites, _) = function_sites(&file, POSTGRES, &code_of(&data));
    let entry = symbol_offset(&file, "errstart").unwrap();
    let errstart = sites.iter().find(|s| s.name == "errstart").unwrap();
    // Past `cmp $0x14,%edi; jle` (Debian's 15.x builds): unfiltered, no arguments.
    assert_eq!(errstart.offset, entry + 31);
    assert_eq!(errstart.spec.min_arg0, 0);
    assert_eq!(errstart.spec.args[0].kind, argkind::NONE);
    // Where the code cannot be read, its entry, filtered by level.
    let unreadable = |_: u64, _: usize| None;
    let (sites, _) = function_sites(&file, POSTGRES, &unreadable);
    let errstart = sites.iter().find(|s| s.name == "errstart").unwrap();
    assert_eq!((errstart.offset, errstart.spec.min_arg0), (entry, 21));
    assert_eq!(errstart.spec.args[0].kind, argkind::REGISTER);
    // errstart_cold is a jump to errstart: probed at its entry, unfiltered.
    let cold = sites.iter().find(|s| s.name == "errstart_cold").unwrap();
    assert_eq!(cold.spec.min_arg0, 0);
}

#[test]
fn a_process_that_is_not_postgres_is_no_server() {
    assert!(inspect(std::process::id()).unwrap().is_none());
}
