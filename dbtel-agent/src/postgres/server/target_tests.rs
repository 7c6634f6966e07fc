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
    const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";
    let data =
        fs::read(POSTGRES).unwrap_or_else(|e| panic!("{POSTGRES}: {e} (run cargo xtask setup)"));
    let file = object::File::parse(&*data).unwrap();
    let (sites, warnings) = function_sites(&file, POSTGRES);
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

#[test]
fn a_process_that_is_not_postgres_is_no_server() {
    assert!(inspect(std::process::id()).unwrap().is_none());
}
