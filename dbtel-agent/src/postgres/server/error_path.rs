//! errstart's ERROR path. Every ereport calls errstart, DEBUG ones too (a
//! Bind's "bind <unnamed> to ...", a Parse's "parse ...": DEBUG2, one or two
//! per extended-protocol statement), and a probe at its entry traps each of
//! them to keep only errors. errstart begins by testing `elevel >= ERROR`
//! (`cmp $0x14,%edi; jle ...` in Debian's 15 and the 16 and 18 wheels): a
//! probe on the branch taken for errors fires for errors only.

use iced_x86::{FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpKind, Register};

/// How far into errstart the test may be (its prologue saves registers first).
const PROLOGUE: usize = 24;
/// The furthest an ERROR path may start from the function's entry.
const MAX_REACH: u64 = 1 << 16;

/// Where (bytes from the function's start at `ip`) only calls with a first
/// argument of at least `error` go: past a signed compare of that argument
/// (or a copy of it) with ERROR, the function's first branch. None when the
/// code does not begin that way: the entry is probed and the kernel filters.
pub fn error_path(code: &[u8], ip: u64, error: i64) -> Option<u64> {
    let body = crate::host::x86::decode_body(code, ip);
    let mut info = InstructionInfoFactory::new();
    // Registers holding the first argument: %rdi, and copies made of it.
    let mut holds = vec![Register::RDI];
    for (i, ins) in body.iter().enumerate().take(PROLOGUE) {
        if let Some(limit) = compared(ins, &holds) {
            let next = body.get(i + 1)?;
            // Forward, within reach of one function: a backward branch or a
            // wild target is no place to probe.
            return branch_to_errors(next, limit, error)
                .and_then(|at| at.checked_sub(ip))
                .filter(|&past| past > 0 && past < MAX_REACH);
        }
        // Straight-line code only: a branch before the test may skip it.
        if ins.flow_control() != FlowControl::Next {
            return None;
        }
        let copied = copy_of(ins, &holds);
        let written = crate::host::x86::written_registers(&mut info, ins);
        holds.retain(|r| !written.contains(r));
        holds.extend(copied);
    }
    None
}

/// Bytes into the function at `ip` (file `offset`) past its test of its
/// first argument against `min_arg0`, if it begins with one.
pub(super) fn past_test(
    ip: u64,
    min_arg0: u32,
    offset: u64,
    code: super::target::CodeReader,
) -> Option<u64> {
    error_path(&code(offset, 96)?, ip, min_arg0 as i64)
}

/// `cmp reg32, imm` on a register holding the argument: the immediate.
fn compared(ins: &Instruction, holds: &[Register]) -> Option<i64> {
    let imm = matches!(
        ins.op1_kind(),
        OpKind::Immediate8 | OpKind::Immediate8to32 | OpKind::Immediate32
    );
    (ins.mnemonic() == Mnemonic::Cmp
        && ins.op0_kind() == OpKind::Register
        && ins.op0_register().is_gpr32()
        && holds.contains(&ins.op0_register().full_register())
        && imm)
        .then(|| ins.immediate32() as i32 as i64)
}

/// `mov reg32, r32` from a register holding the argument: the copy.
fn copy_of(ins: &Instruction, holds: &[Register]) -> Option<Register> {
    (ins.mnemonic() == Mnemonic::Mov
        && ins.op0_kind() == OpKind::Register
        && ins.op1_kind() == OpKind::Register
        && ins.op1_register().is_gpr32()
        && holds.contains(&ins.op1_register().full_register()))
    .then(|| ins.op0_register().full_register())
}

/// Where the conditional branch after `cmp arg, limit` sends arg >= error:
/// past it (it jumps away for less), or its target (it jumps for more).
fn branch_to_errors(jcc: &Instruction, limit: i64, error: i64) -> Option<u64> {
    if jcc.flow_control() != FlowControl::ConditionalBranch
        || jcc.op0_kind() != OpKind::NearBranch64
    {
        return None;
    }
    match (jcc.mnemonic(), limit - error) {
        (Mnemonic::Jle, -1) | (Mnemonic::Jl, 0) => Some(jcc.next_ip()),
        (Mnemonic::Jg, -1) | (Mnemonic::Jge, 0) => Some(jcc.near_branch_target()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "error_path_tests.rs"]
mod tests;
