//! Field offsets read out of a library's own x86-64 code: where a function
//! reads, takes the address of, or stores a field of the struct its first
//! argument points to (`mov rax, [rdi + 0x350]`), including through a copy
//! of that argument (`mov r13, rdi` ... `mov [r13 + 0x2e8], rax`) and one
//! pointer further (`mov rdx, [rdi + 0x38]` ... `test [rdx + 0x380], ..`).
//! Any library's accessors (libmariadb's now; libpq's layout.rs does the
//! same for its one-line accessors) decode with it.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

/// Decodes a function body up to its last `ret`: the first one no
/// conditional branch seen so far jumps past (a compiler may put an early return before the
/// loop it branches to: 18.6's PQresultErrorField). At most 40 instructions.
pub fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut furthest = 0;
    while decoder.can_decode() && out.len() < 40 {
        let ins = decoder.decode();
        if ins.is_invalid() {
            break;
        }
        // Conditional only: an unconditional jmp may be a tail call elsewhere.
        if ins.flow_control() == FlowControl::ConditionalBranch
            && ins.op0_kind() == OpKind::NearBranch64
        {
            furthest = furthest.max(ins.near_branch_target());
        }
        let ret = ins.mnemonic() == Mnemonic::Ret;
        let next = ins.next_ip();
        out.push(ins);
        if ret && next > furthest {
            break;
        }
    }
    out
}

/// Decodes a whole function body (`code` is exactly its bytes, as the
/// symbol's size says); stops at the first undecodable byte.
pub fn decode_body(code: &[u8], ip: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            break;
        }
        out.push(ins);
    }
    out
}

/// Bytes to skip at a function's entry so that its uprobe sits on an
/// instruction the kernel emulates. Its int3 is otherwise followed by a
/// single step of the displaced instruction (a second trap, the debug
/// exception): x86 uprobes emulate branches, nops and pushes, not a `test`.
/// A `test`/`cmp` of registers writes only the flags, so at the conditional
/// branch after it every argument register still holds what the caller
/// passed (`thd_wait_begin`: `test rdi, rdi; je ...`, run for every network
/// wait of every connection). 0 where the entry stays as it is.
pub fn emulated_entry_skip(code: &[u8], ip: u64) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let (first, second) = (decoder.decode(), decoder.decode());
    let flags_only = matches!(first.mnemonic(), Mnemonic::Test | Mnemonic::Cmp)
        && (0..first.op_count()).all(|i| first.op_kind(i) != OpKind::Memory);
    let branch = second.flow_control() == FlowControl::ConditionalBranch
        && matches!(second.op0_kind(), OpKind::NearBranch64)
        && !second.is_invalid()
        && !matches!(
            second.mnemonic(),
            Mnemonic::Jrcxz | Mnemonic::Jecxz | Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne
        );
    if !first.is_invalid() && flags_only && branch {
        first.len() as u64
    } else {
        0
    }
}

/// The registers (full width) an instruction writes or may write.
pub fn written_registers(info: &mut InstructionInfoFactory, ins: &Instruction) -> Vec<Register> {
    info.info(ins)
        .used_registers()
        .iter()
        .filter(|u| {
            matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .map(|u| u.register().full_register())
        .collect()
}

/// What an instruction does with a field of the first argument's struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read into a register (`mov`, `movzx`, ...), or compared/tested.
    Read,
    /// Its address taken (`lea`): an embedded array, e.g. a `char sqlstate[6]`.
    Address,
    /// Written, or updated in place (`add`, `or`, ...).
    Write,
}

/// One access to `[arg0 + disp]`, or to `[[arg0 + via] + disp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub ip: u64,
    pub mnemonic: Mnemonic,
    pub disp: u32,
    /// Bytes accessed (0 for `lea`).
    pub size: u32,
    pub use_: Use,
    /// The register read into (for `Read`, `Address`) or written from (`Write`).
    pub reg: Register,
    /// `Some(a)`: through the pointer loaded from `[arg0 + a]`.
    pub via: Option<u32>,
    /// The instruction before it was a call (e.g. a stored `strdup` result).
    pub after_call: bool,
}

/// Registers a call may change (System V x86-64).
const CALLER_SAVED: [Register; 9] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

/// Accesses to the first argument's struct, in code order. Registers are
/// known to hold the argument, or a pointer loaded from one of its fields,
/// from the instruction that sets them until one that overwrites them or a
/// call. Forward branches carry what is known to their targets (where paths
/// join, what all of them agree on); code after a `ret` or `jmp` starts from
/// what the branches to it knew. Backward branches (loops) add nothing.
pub fn arg0_accesses(insns: &[Instruction]) -> Vec<Access> {
    let mut info = InstructionInfoFactory::new();
    // Register -> None (holds arg0) or Some(a) (holds [arg0 + a]).
    type Held = Vec<(Register, Option<u32>)>;
    let mut held: Held = vec![(Register::RDI, None)];
    let mut at_target: std::collections::HashMap<u64, Held> = std::collections::HashMap::new();
    let mut out = Vec::new();
    let (mut after_call, mut dead) = (false, false);
    for ins in insns {
        match (at_target.remove(&ins.ip()), dead) {
            (Some(there), true) => held = there,
            (Some(there), false) => held.retain(|h| there.contains(h)),
            (None, true) => continue,
            (None, false) => {}
        }
        if let Some(a) = access(ins, &held, after_call) {
            out.push(a);
        }
        // What the instruction leaves in registers.
        let copied = match (
            ins.mnemonic(),
            ins.op_count() == 2 && ins.op0_kind() == OpKind::Register,
        ) {
            (Mnemonic::Mov, true) if ins.op1_kind() == OpKind::Register => held
                .iter()
                .find(|(r, _)| *r == ins.op1_register())
                .map(|&(_, v)| v),
            (Mnemonic::Mov, true)
                if ins.op1_kind() == OpKind::Memory && ins.memory_index() == Register::None =>
            {
                held.iter()
                    .find(|(r, v)| *r == ins.memory_base() && v.is_none())
                    .and_then(|_| u32::try_from(ins.memory_displacement64()).ok())
                    .filter(|_| ins.op0_register().size() == 8)
                    .map(Some)
            }
            _ => None,
        };
        let written = written_registers(&mut info, ins);
        held.retain(|(r, _)| !written.contains(r));
        if let Some(v) = copied {
            held.push((ins.op0_register(), v));
        }
        let flow = ins.flow_control();
        after_call = matches!(flow, FlowControl::Call | FlowControl::IndirectCall);
        if after_call {
            held.retain(|(r, _)| !CALLER_SAVED.contains(r));
        }
        if matches!(
            flow,
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
        ) && ins.near_branch_target() > ins.ip()
        {
            match at_target.get_mut(&ins.near_branch_target()) {
                Some(there) => there.retain(|h| held.contains(h)),
                None => {
                    at_target.insert(ins.near_branch_target(), held.clone());
                }
            }
        }
        dead = matches!(
            flow,
            FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
        );
    }
    out
}

fn access(ins: &Instruction, held: &[(Register, Option<u32>)], after_call: bool) -> Option<Access> {
    let mem = (0..ins.op_count()).find(|&i| ins.op_kind(i) == OpKind::Memory)?;
    if ins.memory_index() != Register::None {
        return None;
    }
    let via = held.iter().find(|(r, _)| *r == ins.memory_base())?.1;
    let disp = u32::try_from(ins.memory_displacement64()).ok()?;
    let reg_op = (0..ins.op_count()).find(|&i| ins.op_kind(i) == OpKind::Register);
    let reg = reg_op.map_or(Register::None, |i| ins.op_register(i));
    let use_ = match ins.mnemonic() {
        Mnemonic::Lea => Use::Address,
        Mnemonic::Mov if mem == 0 => Use::Write,
        // Updated in place (`add [thd + 0x2818], rsi`, `or dword [thd + 0x3f34], 0x20`).
        Mnemonic::Add
        | Mnemonic::Sub
        | Mnemonic::Or
        | Mnemonic::And
        | Mnemonic::Xor
        | Mnemonic::Inc
        | Mnemonic::Dec
            if mem == 0 =>
        {
            Use::Write
        }
        Mnemonic::Mov
        | Mnemonic::Movzx
        | Mnemonic::Movsx
        | Mnemonic::Movsxd
        | Mnemonic::Test
        | Mnemonic::Cmp => Use::Read,
        _ => return None,
    };
    let size = if use_ == Use::Address {
        0
    } else {
        ins.memory_size().size() as u32
    };
    Some(Access {
        ip: ins.ip(),
        mnemonic: ins.mnemonic(),
        disp,
        size,
        use_,
        reg,
        via,
        after_call,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_test_and_branch_is_probed_at_the_branch() {
        // mariadbd's thd_wait_begin: test rdi, rdi; je +0x23; mov rax, [rdi + 0x580].
        let wait = [
            0x48, 0x85, 0xff, 0x74, 0x23, 0x48, 0x8b, 0x87, 0x80, 0x05, 0, 0,
        ];
        assert_eq!(emulated_entry_skip(&wait, 0x7de800), 3);
        // cmp esi, 5; jne (near): also flags only.
        let cmp = [0x83, 0xfe, 0x05, 0x0f, 0x85, 0x10, 0, 0, 0];
        assert_eq!(emulated_entry_skip(&cmp, 0x1000), 3);
        // push rbp (emulated already), a test of memory, a test then a mov: as they are.
        assert_eq!(emulated_entry_skip(&[0x55, 0x48, 0x89, 0xe5], 0x1000), 0);
        let mem = [0x48, 0x85, 0x3f, 0x74, 0x23];
        assert_eq!(emulated_entry_skip(&mem, 0x1000), 0);
        let mov = [0x48, 0x85, 0xff, 0x48, 0x89, 0xe5];
        assert_eq!(emulated_entry_skip(&mov, 0x1000), 0);
        // jrcxz is not among the branches the kernel emulates.
        assert_eq!(
            emulated_entry_skip(&[0x48, 0x85, 0xff, 0xe3, 0x10], 0x1000),
            0
        );
        assert_eq!(emulated_entry_skip(&[], 0x1000), 0);
    }

    fn accesses(bytes: &[u8]) -> Vec<(Use, u32, u32, Option<u32>, bool)> {
        arg0_accesses(&decode_body(bytes, 0x1000))
            .iter()
            .map(|a| (a.use_, a.disp, a.size, a.via, a.after_call))
            .collect()
    }

    #[test]
    fn direct_loads_and_addresses() {
        // mov rax,[rdi+0x350]; ret
        assert_eq!(
            accesses(&[0x48, 0x8b, 0x87, 0x50, 0x03, 0x00, 0x00, 0xc3]),
            vec![(Use::Read, 0x350, 8, None, false)]
        );
        // xor eax,eax; test rdi,rdi; je +6; mov eax,[rdi+0x90]; ret
        assert_eq!(
            accesses(&[
                0x31, 0xc0, 0x48, 0x85, 0xff, 0x74, 0x06, 0x8b, 0x87, 0x90, 0x00, 0x00, 0x00, 0xc3
            ]),
            vec![(Use::Read, 0x90, 4, None, false)]
        );
        // lea rax,[rdi+0x297]; ret
        assert_eq!(
            accesses(&[0x48, 0x8d, 0x87, 0x97, 0x02, 0x00, 0x00, 0xc3]),
            vec![(Use::Address, 0x297, 0, None, false)]
        );
    }

    #[test]
    fn through_a_loaded_pointer() {
        // xor eax,eax; test rdi,rdi; je; mov rdx,[rdi+0x38]; test rdx,rdx; je;
        // test dword [rdx+0x380],0x1008; setne al; ret   (mysql_stmt_more_results)
        let code = [
            0x31, 0xc0, 0x48, 0x85, 0xff, 0x74, 0x16, 0x48, 0x8b, 0x57, 0x38, 0x48, 0x85, 0xd2,
            0x74, 0x0d, 0xf7, 0x82, 0x80, 0x03, 0x00, 0x00, 0x08, 0x10, 0x00, 0x00, 0x0f, 0x95,
            0xc0, 0xc3,
        ];
        assert_eq!(
            accesses(&code),
            vec![
                (Use::Read, 0x38, 8, None, false),
                (Use::Read, 0x380, 4, Some(0x38), false)
            ]
        );
    }

    #[test]
    fn through_a_copy_across_calls_and_overwrites() {
        // mov r13,rdi; mov rdi,rsi; call .; mov rdi,[r13+0x2e8]; call .; mov rdi,rbx; call .;
        // mov [r13+0x2e8],rax; mov rax,[rdi+8]; ret   (mysql_select_db's tail; rdi no longer the argument)
        let code = [
            0x49, 0x89, 0xfd, 0x48, 0x89, 0xf7, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x49, 0x8b, 0xbd,
            0xe8, 0x02, 0x00, 0x00, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x89, 0xdf, 0xe8, 0x00,
            0x00, 0x00, 0x00, 0x49, 0x89, 0x85, 0xe8, 0x02, 0x00, 0x00, 0x48, 0x8b, 0x47, 0x08,
            0xc3,
        ];
        assert_eq!(
            accesses(&code),
            vec![
                (Use::Read, 0x2e8, 8, None, true),
                (Use::Write, 0x2e8, 8, None, true)
            ]
        );
    }

    #[test]
    fn a_branch_carries_what_it_knows_past_a_return() {
        // mov r13,rdi; test eax,eax; je L; pop r13; ret; nop; L: mov [r13+0x10],rax; ret
        let code = [
            0x49, 0x89, 0xfd, 0x85, 0xc0, 0x74, 0x04, 0x41, 0x5d, 0xc3, 0x90, 0x49, 0x89, 0x45,
            0x10, 0xc3,
        ];
        assert_eq!(accesses(&code), vec![(Use::Write, 0x10, 8, None, false)]);
        // The same without the branch: after `pop r13` r13 is something else.
        let code = [0x49, 0x89, 0xfd, 0x41, 0x5d, 0x49, 0x89, 0x45, 0x10, 0xc3];
        assert_eq!(accesses(&code), vec![]);
    }
}
