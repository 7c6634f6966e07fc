//! Where PQgetResult holds its answer: one probe instead of an entry probe
//! plus a return probe per call.
//!
//! A return probe costs two traps per PQgetResult call, and a query takes two
//! calls (its result, then NULL). Every libpq since 8.4 ends PQgetResult with
//!
//! ```c
//! if (res && res->nEvents > 0)
//!     (void) PQfireResultCreateEvents(conn, res);
//! return res;
//! ```
//!
//! so the conditional branch on `res->nEvents` runs once per call that
//! returns a result, with `res` and `conn` in the registers that the call's
//! argument moves read. A branch is emulated by the kernel (no single-step),
//! and a call returning NULL — the second call of every query — costs nothing.
//! The point is found by decoding the function; if the code does not have
//! that shape the agent falls back to entry + return probes.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, IntelFormatter, Mnemonic,
    OpKind, Register,
};

use crate::host::usdt::Gpr;

/// A probe site inside PQgetResult.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPoint {
    /// Bytes from the function's first instruction.
    pub offset: u64,
    /// Register holding the PGresult* there.
    pub res: Gpr,
    /// Register holding the PGconn* there.
    pub conn: Gpr,
    /// The instruction there, e.g. `jle 18662h`.
    pub instruction: String,
}

/// The shape was not found: why, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub &'static str);

/// Finds the result points in PQgetResult's `code` (at address `ip`, the
/// whole function). `is_fire(target)` says whether a call to `target` (or a
/// call through the GOT slot at `target`) reaches PQfireResultCreateEvents.
pub fn find(
    code: &[u8],
    ip: u64,
    is_fire: &dyn Fn(u64, bool) -> bool,
) -> Result<Vec<ResultPoint>, NotFound> {
    let mut insns = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return Err(NotFound("undecodable instruction"));
        }
        insns.push(ins);
    }
    let calls: Vec<usize> = (0..insns.len())
        .filter(|&i| fire_call(&insns[i], is_fire))
        .collect();
    if calls.is_empty() {
        return Err(NotFound("no call to PQfireResultCreateEvents"));
    }
    let mut points = Vec::new();
    for call in calls {
        points.push(point_before(&insns, call, ip)?);
    }
    Ok(points)
}

fn fire_call(ins: &Instruction, is_fire: &dyn Fn(u64, bool) -> bool) -> bool {
    if ins.mnemonic() != Mnemonic::Call {
        return false;
    }
    match ins.op0_kind() {
        OpKind::NearBranch64 => is_fire(ins.near_branch64(), false),
        // call [rip+disp] (-fno-plt): the GOT slot.
        OpKind::Memory if ins.is_ip_rel_memory_operand() => {
            is_fire(ins.ip_rel_memory_address(), true)
        }
        _ => false,
    }
}

/// The branch that leads to the call at `insns[call]`, with the registers
/// the call's first two arguments come from.
fn point_before(insns: &[Instruction], call: usize, start: u64) -> Result<ResultPoint, NotFound> {
    let (mut conn, mut res) = (None, None);
    // Walk back over the argument moves to the start of the call's block.
    let mut first = call;
    while first > 0 {
        let ins = &insns[first - 1];
        if ins.code() != Code::Mov_r64_rm64 && ins.code() != Code::Mov_rm64_r64 {
            break;
        }
        if ins.op0_kind() != OpKind::Register || ins.op1_kind() != OpKind::Register {
            return Err(NotFound("argument loaded from memory"));
        }
        match ins.op0_register() {
            Register::RDI if conn.is_none() => conn = Some(ins.op1_register()),
            Register::RSI if res.is_none() => res = Some(ins.op1_register()),
            _ => return Err(NotFound("unexpected move before the call")),
        }
        first -= 1;
    }
    let (Some(conn), Some(res)) = (conn, res) else {
        return Err(NotFound("arguments not moved from registers"));
    };
    let (Some(conn_gpr), Some(res_gpr)) = (gpr(conn), gpr(res)) else {
        return Err(NotFound("argument in a register the probe cannot read"));
    };
    let block = insns[first].ip();
    // Exactly one branch may enter the block: the one testing nEvents, as
    // its fall-through or its target (the block's first instruction). Any
    // other way in would bypass the probe, or skip an argument move.
    let entries: Vec<usize> = (0..insns.len())
        .filter(|&i| {
            let ins = &insns[i];
            let target = matches!(
                ins.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) && ins.op0_kind() == OpKind::NearBranch64
                && (block..=insns[call].ip()).contains(&ins.near_branch64());
            let falls = i + 1 == first && ins.flow_control() != FlowControl::UnconditionalBranch;
            target || falls
        })
        .collect();
    let [j] = entries[..] else {
        return Err(NotFound("the call's block has several ways in"));
    };
    let branch = &insns[j];
    if branch.flow_control() != FlowControl::ConditionalBranch
        || branch.op0_kind() != OpKind::NearBranch64
    {
        return Err(NotFound(
            "the call's block is not entered by a conditional branch",
        ));
    }
    if j + 1 != first && branch.near_branch64() != block {
        return Err(NotFound(
            "the branch enters the call's block past an argument move",
        ));
    }
    let mut text = String::new();
    IntelFormatter::new().format(branch, &mut text);
    Ok(ResultPoint {
        offset: branch.ip() - start,
        res: res_gpr,
        conn: conn_gpr,
        instruction: text,
    })
}

fn gpr(r: Register) -> Option<Gpr> {
    Some(match r {
        Register::RBX => Gpr::Rbx,
        Register::RBP => Gpr::Rbp,
        Register::R12 => Gpr::R12,
        Register::R13 => Gpr::R13,
        Register::R14 => Gpr::R14,
        Register::R15 => Gpr::R15,
        Register::RAX => Gpr::Rax,
        Register::RCX => Gpr::Rcx,
        Register::RDX => Gpr::Rdx,
        Register::RSI => Gpr::Rsi,
        Register::RDI => Gpr::Rdi,
        Register::R8 => Gpr::R8,
        Register::R9 => Gpr::R9,
        Register::R10 => Gpr::R10,
        Register::R11 => Gpr::R11,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail of PQgetResult in Debian 12's libpq 5.15 (PostgreSQL 15),
    /// from 0x18680: test r12,r12 ; je ; mov eax,[r12+98h] ; test eax,eax ;
    /// jle 18662h ; mov rsi,r12 ; mov rdi,rbx ; call PQfireResultCreateEvents@plt ;
    /// jmp 18662h.
    const DEBIAN15: &[u8] = &[
        0x4d, 0x85, 0xe4, 0x74, 0xda, 0x41, 0x8b, 0x84, 0x24, 0x98, 0x00, 0x00, 0x00, 0x85, 0xc0,
        0x7e, 0xd1, 0x4c, 0x89, 0xe6, 0x48, 0x89, 0xdf, 0xe8, 0x34, 0x3a, 0xff, 0xff, 0xeb, 0xc4,
    ];
    const PLT: u64 = 0xc0d0;

    #[test]
    fn debian_libpq15_probes_the_nevents_branch() {
        let p = find(DEBIAN15, 0x18680, &|t, _| t == PLT).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].offset, p[0].res, p[0].conn),
            (0xf, Gpr::R12, Gpr::Rbx),
            "{p:?}"
        );
        assert!(p[0].instruction.starts_with("jle"), "{p:?}");
    }

    #[test]
    fn other_shapes_are_refused() {
        // No call to the events function.
        assert!(find(DEBIAN15, 0x18680, &|_, _| false).is_err());
        // A second way into the call's block (a jmp to the `mov rsi,r12`).
        let ip = 0x18680;
        let mut code = DEBIAN15.to_vec();
        code.extend_from_slice(&[0xeb, 0xf1]); // at +0x1e: jmp +0x11
        assert_eq!(
            find(&code, ip, &|t, _| t == PLT),
            Err(NotFound("the call's block has several ways in"))
        );
        // An argument read from the stack: mov rsi,[rsp+8] instead of mov rsi,r12.
        let mut code = DEBIAN15.to_vec();
        code.splice(0x11..0x14, [0x48, 0x8b, 0x74, 0x24, 0x08]);
        // The call's rel32 moved by 2 bytes: recompute so it still hits the PLT slot.
        let call_at = 0x18680 + 0x19;
        let rel = (PLT as i64 - (call_at + 5)) as i32;
        code[0x1a..0x1e].copy_from_slice(&rel.to_le_bytes());
        assert_eq!(
            find(&code, ip, &|t, _| t == PLT),
            Err(NotFound("argument loaded from memory"))
        );
    }
}
