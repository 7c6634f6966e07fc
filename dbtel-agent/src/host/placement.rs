//! Where in a function to put an entry uprobe. The kernel emulates a few x86
//! instructions at a breakpoint (jmp, call, jcc, nop, push reg) and must
//! single-step any other out of line, which costs ten times more per hit. So an
//! entry probe goes on the first emulated instruction of the function, provided
//! every instruction before it leaves the argument registers and the stack
//! pointer untouched and does not branch: the probe then sees the same
//! arguments as at the entry.

use iced_x86::{
    Code, FlowControl, Formatter, Instruction, InstructionInfoFactory, IntelFormatter, Mnemonic,
    OpAccess, OpKind, Register,
};

/// Chosen probe address within a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Bytes from the function's first instruction.
    pub offset: u64,
    /// The instruction there, e.g. `jmp 164B0h`.
    pub instruction: String,
    /// Whether the kernel emulates it (cheap) or single-steps it (expensive).
    pub emulated: bool,
}

/// How many leading instructions may be stepped over.
const MAX_SKIP: usize = 3;

pub fn is_emulated(ins: &Instruction) -> bool {
    match ins.flow_control() {
        // Relative jmp/call/jcc: emulated; indirect ones are not.
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call => {
            matches!(
                ins.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            )
        }
        FlowControl::Next => {
            ins.mnemonic() == Mnemonic::Nop
                || (ins.code() == Code::Push_r64 && ins.op0_kind() == OpKind::Register)
        }
        _ => false,
    }
}

fn full_reg(r: Register) -> Register {
    r.full_register()
}

/// True if executing `ins` before the probe changes nothing the probe reads:
/// no branch, no stack pointer use, no write to `args`.
fn skippable(ins: &Instruction, args: &[Register], info: &mut InstructionInfoFactory) -> bool {
    if ins.flow_control() != FlowControl::Next {
        return false;
    }
    let used = info.info(ins);
    if used.used_memory().iter().any(|m| {
        matches!(
            m.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    }) {
        return false;
    }
    used.used_registers().iter().all(|r| {
        let reg = full_reg(r.register());
        if reg == Register::RSP {
            return false;
        }
        let writes = matches!(
            r.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        !(writes && args.contains(&reg))
    })
}

/// Picks the probe address for a function whose entry instructions are `insns`
/// (decoded from its first byte), when the probe reads `args`.
pub fn entry_probe(insns: &[Instruction], args: &[Register]) -> Placement {
    let mut info = InstructionInfoFactory::new();
    let start = insns.first().map_or(0, |i| i.ip());
    for ins in insns.iter().take(MAX_SKIP + 1) {
        if is_emulated(ins) {
            return placement(ins, start, true);
        }
        if !skippable(ins, args, &mut info) {
            break;
        }
    }
    at_entry(insns)
}

/// The function's first instruction (for a return probe, which must sit there).
pub fn at_entry(insns: &[Instruction]) -> Placement {
    match insns.first() {
        Some(first) => placement(first, first.ip(), is_emulated(first)),
        None => Placement {
            offset: 0,
            instruction: "?".into(),
            emulated: false,
        },
    }
}

fn placement(ins: &Instruction, start: u64, emulated: bool) -> Placement {
    let mut text = String::new();
    IntelFormatter::new().format(ins, &mut text);
    Placement {
        offset: ins.ip() - start,
        instruction: text,
        emulated,
    }
}

/// Registers holding the first `n` integer arguments (System V x86-64).
pub fn arg_registers(n: usize) -> &'static [Register] {
    const ARGS: [Register; 6] = [
        Register::RDI,
        Register::RSI,
        Register::RDX,
        Register::RCX,
        Register::R8,
        Register::R9,
    ];
    &ARGS[..n.min(6)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::x86::decode;

    fn place(bytes: &[u8], nargs: usize) -> Placement {
        entry_probe(&decode(bytes, 0x17900), arg_registers(nargs))
    }

    #[test]
    fn debian_pqsendquery_moves_past_its_mov_to_the_jmp() {
        // mov edx,1 ; jmp rel32   (PQsendQuery in Debian 12's libpq 15)
        let p = place(
            &[0xba, 0x01, 0x00, 0x00, 0x00, 0xe9, 0xa6, 0xeb, 0xff, 0xff],
            2,
        );
        assert_eq!((p.offset, p.emulated), (5, true), "{p:?}");
        assert!(p.instruction.starts_with("jmp"), "{p:?}");
    }

    #[test]
    fn a_mov_into_an_argument_register_pins_the_probe_at_entry() {
        // Same code, but the probe reads rdx (third argument): it must see rdx before the mov.
        let p = place(
            &[0xba, 0x01, 0x00, 0x00, 0x00, 0xe9, 0xa6, 0xeb, 0xff, 0xff],
            3,
        );
        assert_eq!((p.offset, p.emulated), (0, false));
    }

    #[test]
    fn push_at_entry_is_already_emulated() {
        // push rbp ; mov rbp,rsp   (PQgetResult, PQexec, ...)
        let p = place(&[0x55, 0x48, 0x89, 0xe5], 1);
        assert_eq!(
            (p.offset, p.emulated, p.instruction.as_str()),
            (0, true, "push rbp")
        );
    }

    #[test]
    fn stack_and_branch_instructions_are_not_stepped_over() {
        // sub rsp,8 ; push rbx  → the sub touches rsp: stay at entry.
        assert_eq!(place(&[0x48, 0x83, 0xec, 0x08, 0x53], 1).offset, 0);
        // test rdi,rdi ; je +5 ; nop → test is skippable, je is emulated (a branch): probe on je.
        let p = place(&[0x48, 0x85, 0xff, 0x74, 0x05, 0x90], 1);
        assert_eq!((p.offset, p.emulated), (3, true));
        // mov [rdi],eax ; nop → a memory write is not stepped over.
        assert_eq!(place(&[0x89, 0x07, 0x90], 1).offset, 0);
        // endbr64 ; push rbp → endbr64 changes nothing: the push is used.
        let p = place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 1);
        assert_eq!((p.offset, p.emulated), (4, true), "{p:?}");
    }
}
