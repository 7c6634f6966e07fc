//! The USDT probes of the installed PostgreSQL 15 server binary, read by
//! dbtel's own parser (needs `cargo xtask setup`'s PostgreSQL; no root).

use std::collections::BTreeMap;

use dbtel_agent::host::usdt::{self, Gpr, Location};

const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

#[test]
fn postgres_15_probes_and_their_arguments() {
    let data = std::fs::read(POSTGRES)
        .unwrap_or_else(|e| panic!("{POSTGRES}: {e} (run cargo xtask setup)"));
    let probes = usdt::probes(&data).unwrap();
    let by_name: BTreeMap<&str, Vec<&usdt::Probe>> =
        probes.iter().fold(BTreeMap::new(), |mut m, p| {
            m.entry(p.name.as_str()).or_default().push(p);
            m
        });
    assert!(probes.iter().all(|p| p.provider == "postgresql"));
    assert!(by_name.len() >= 50, "{} distinct probes", by_name.len());
    for name in [
        "transaction__start",
        "transaction__commit",
        "transaction__abort",
        "query__start",
        "query__done",
        "statement__status",
        "lock__wait__start",
        "lock__wait__done",
        "deadlock__found",
    ] {
        let sites = by_name.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert!(
            sites.iter().all(|p| p.address != 0 && p.semaphore != 0),
            "{name}: address and semaphore"
        );
    }
    // Shapes from shared/PROBES.md: lock tag fields (u32 ×3, u16, u8) and a signed lock mode.
    let lock = &by_name["lock__wait__start"][0].args;
    let sizes: Vec<(u8, bool)> = lock.iter().map(|a| (a.size, a.signed)).collect();
    assert_eq!(
        sizes,
        vec![
            (4, false),
            (4, false),
            (4, false),
            (2, false),
            (1, false),
            (4, true)
        ]
    );
    assert!(matches!(lock[0].location, Location::Memory { .. }));
    let q = &by_name["query__start"][0].args;
    assert_eq!(
        (q.len(), q[0].size),
        (1, 8),
        "query__start(const char *query)"
    );
    assert!(by_name["deadlock__found"][0].args.is_empty());
    // Every argument of every probe in this build parses to something readable.
    for p in &probes {
        for a in &p.args {
            if let Location::Register(r) | Location::Memory { base: r, .. } = &a.location {
                assert!(r.gpr.pt_regs_offset() <= Gpr::Rsp.pt_regs_offset());
            }
        }
    }
}
