//! The USDT probes' stand-ins, for servers built without them (source
//! builds without --enable-dtrace, Python wheels, many container images):
//! the same facts from uprobes on the functions around each probe, found by
//! name in .dynsym or .symtab, arguments read per the calling convention.
//!
//! Each point fires as often as its probe, on the same events: a statement
//! status change, an aborted transaction, a lock actually waited for, a
//! deadlock. Nothing here fires per row or per buffer.

use super::target::{symbol_address, symbol_offset, CodeReader, FnArg, ServerError, Site};
use crate::host::process::vaddr_to_offset;
use crate::host::usdt::Gpr;
use dbtel_common::{site, SiteSpec};
use iced_x86::{Mnemonic, OpKind, Register};

/// One probe's stand-in: the first of `functions` the executable defines.
struct StandIn {
    probe: &'static str,
    site: u32,
    /// Candidates in order of preference (a static function of an unstripped
    /// build first, then the exported one every build keeps).
    functions: &'static [&'static str],
    at_return: bool,
    why: &'static str,
}

const STAND_INS: &[StandIn] = &[
    // The probe is the first statement of pgstat_report_activity(BackendState,
    // const char *cmd_str): its entry is the same point.
    StandIn {
        probe: "statement__status",
        site: site::STATEMENT_STATUS,
        functions: &["pgstat_report_activity"],
        at_return: false,
        why: "query spans",
    },
    // The probe is in AbortTransaction (static); AtAbort_Notify is exported
    // and called only there, once per aborted top-level transaction.
    StandIn {
        probe: "transaction__abort",
        site: site::TRANSACTION_ABORT,
        functions: &["AbortTransaction", "AtAbort_Notify"],
        at_return: false,
        why: "transactions",
    },
    // ProcSleep(LOCALLOCK *, ...) runs only when a lock is waited for (its
    // one caller is WaitOnLock in 15 to 18); the LOCALLOCK begins with the
    // LOCKTAG and the mode.
    StandIn {
        probe: "lock__wait__start",
        site: site::LOCK_WAIT_START,
        functions: &["ProcSleep"],
        at_return: false,
        why: "lock waits",
    },
    // Its return: the wait's ProcWaitStatus. Only OK (0) is a wait done; on
    // ERROR (2, a deadlock) DeadLockReport follows, as the USDT path has no
    // lock__wait__done then. A wait ended by an error (lock_timeout, cancel)
    // never returns, as with the probe.
    StandIn {
        probe: "lock__wait__done",
        site: site::LOCK_WAIT_DONE,
        functions: &["ProcSleep"],
        at_return: true,
        why: "lock waits",
    },
    // Called in the victim once a deadlock is found (noreturn).
    StandIn {
        probe: "deadlock__found",
        site: site::DEADLOCK_FOUND,
        functions: &["DeadLockReport"],
        at_return: false,
        why: "deadlocks",
    },
];

/// ProcWaitStatus: PROC_WAIT_STATUS_OK.
const WAIT_OK: u64 = 0;

/// The stand-ins' sites. Every probe needs one: a build without any of its
/// functions is refused, naming what is missing.
pub fn sites(file: &object::File, exe: &str, code: CodeReader) -> Result<Vec<Site>, ServerError> {
    let mut found = Vec::new();
    for s in STAND_INS {
        let f = s
            .functions
            .iter()
            .find_map(|&f| symbol_offset(file, f).map(|o| (f, o)));
        let Some((function, offset)) = f else {
            return Err(ServerError::MissingFunction {
                path: exe.into(),
                probe: s.probe,
                functions: s.functions.join(" or "),
                why: s.why,
            });
        };
        found.push((s, function, offset));
    }
    let locktag = locktag_layout(file, code).map_err(|why| ServerError::Layout {
        path: exe.into(),
        why,
    })?;
    let mut sites = Vec::new();
    for (s, function, offset) in found {
        let mut spec = SiteSpec {
            probe: s.site,
            ..Default::default()
        };
        match s.site {
            site::STATEMENT_STATUS => {
                spec.args[0] = FnArg::Pointer(Gpr::Rsi).spec();
                spec.text_arg = 1;
                spec.repeat_once = 1;
            }
            site::LOCK_WAIT_START => {
                for (i, a) in locktag.args().into_iter().enumerate() {
                    spec.args[i] = a.spec();
                }
            }
            site::LOCK_WAIT_DONE => {
                spec.args[0] = FnArg::Return(4).spec();
                spec.mask_arg = 1;
                spec.arg_mask = 1 << WAIT_OK;
            }
            _ => {}
        }
        sites.push(Site {
            name: function,
            offset,
            spec,
            at_return: s.at_return,
            semaphore: false,
        });
    }
    Ok(sites)
}

/// Where LOCKTAG's fields are, as the lock__wait__start probe passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocktagLayout {
    /// Offset of locktag_type (u8); the fields before it are three u32 and
    /// a u16, the lock method id (u8) follows, then LOCALLOCKTAG's mode.
    pub type_offset: i64,
}

impl LocktagLayout {
    /// field1..field4, type, mode: off the LOCALLOCK pointer (first argument).
    fn args(self) -> [FnArg; 6] {
        let t = self.type_offset;
        [
            FnArg::FieldOfFirst(t - 14, 4),
            FnArg::FieldOfFirst(t - 10, 4),
            FnArg::FieldOfFirst(t - 6, 4),
            FnArg::FieldOfFirst(t - 2, 2),
            FnArg::FieldOfFirst(t, 1),
            FnArg::FieldOfFirst(t + 2, 4),
        ]
    }
}

/// The LOCKTAG layout, learnt from the server's own code: DescribeLockTag
/// (StringInfo, const LOCKTAG *) switches on locktag_type first, a one-byte
/// load off its second argument. The layout has been the same since 8.2 (it
/// is a hash key and written to two-phase state files): anything else is a
/// build dbtel does not know, and is refused rather than misread.
pub fn locktag_layout(file: &object::File, code: CodeReader) -> Result<LocktagLayout, String> {
    let address = symbol_address(file, "DescribeLockTag")
        .ok_or("no DescribeLockTag symbol to learn LOCKTAG's layout from")?;
    let offset = vaddr_to_offset(file, address).ok_or("DescribeLockTag is in no segment")?;
    let bytes = code(offset, 64).ok_or("DescribeLockTag's code is unreadable")?;
    let type_offset = type_load(&bytes, address)
        .ok_or("DescribeLockTag does not begin by reading locktag_type")?;
    if type_offset != 14 {
        return Err(format!(
            "DescribeLockTag reads locktag_type at offset {type_offset}, not 14: a LOCKTAG layout dbtel does not know"
        ));
    }
    Ok(LocktagLayout { type_offset })
}

/// The displacement of the first one-byte zero-extending load from %rsi.
fn type_load(code: &[u8], ip: u64) -> Option<i64> {
    crate::host::x86::decode_body(code, ip)
        .iter()
        .take(16)
        .find(|i| {
            i.mnemonic() == Mnemonic::Movzx
                && i.op_count() == 2
                && i.op1_kind() == OpKind::Memory
                && i.memory_base() == Register::RSI
                && i.memory_index() == Register::None
                && i.memory_size().size() == 1
        })
        .map(|i| i.memory_displacement64() as i64)
}

#[cfg(test)]
#[path = "uprobe_sites_tests.rs"]
mod tests;
