//! Probe arguments where a SiteSpec says they are: registers and memory.

use super::*;

/// A register slot of the probed task's pt_regs. The slot is chosen at attach
/// time and the verifier refuses a load at a run-time context offset, so each
/// slot is its own load at a constant offset, written in assembly: LLVM turns
/// a match of plain loads back into one load at ctx + off. (The helper
/// libbpf's usdt.bpf.h calls instead costs ~25 ns per argument.)
#[inline(always)]
pub(crate) fn reg(regs: u64, off: u16) -> u64 {
    macro_rules! at {
        ($o:literal) => {{
            let v: u64;
            // SAFETY: a read of the context (pt_regs) at a constant, aligned
            // offset inside it, which the verifier checks.
            unsafe {
                core::arch::asm!(
                    concat!("{0} = *(u64 *)({1} + ", $o, ")"),
                    out(reg) v,
                    in(reg) regs,
                    options(readonly, nostack, preserves_flags)
                );
            }
            v
        }};
    }
    match off {
        0 => at!(0),
        8 => at!(8),
        16 => at!(16),
        24 => at!(24),
        32 => at!(32),
        40 => at!(40),
        48 => at!(48),
        56 => at!(56),
        64 => at!(64),
        72 => at!(72),
        80 => at!(80),
        88 => at!(88),
        96 => at!(96),
        104 => at!(104),
        112 => at!(112),
        120 => at!(120),
        128 => at!(128),
        136 => at!(136),
        144 => at!(144),
        152 => at!(152),
        160 => at!(160),
        _ => 0,
    }
}

#[inline(always)]
pub(crate) fn read_arg(regs: u64, a: &ArgSpec) -> u64 {
    let raw = match a.kind {
        argkind::IMMEDIATE => return a.value as u64,
        argkind::REGISTER => {
            let v = reg(regs, a.reg_off);
            if a.high_byte != 0 {
                v >> 8
            } else {
                v
            }
        }
        argkind::MEMORY => {
            let mut addr = reg(regs, a.reg_off).wrapping_add(a.value as u64);
            if a.index_off != NO_INDEX {
                addr = addr.wrapping_add(reg(regs, a.index_off).wrapping_mul(a.scale as u64));
            }
            // Pointers followed first (a field of a struct a field points to).
            if a.hops >= 1 {
                addr = read::<u64>(addr)
                    .unwrap_or(0)
                    .wrapping_add(a.hops_at[0] as i64 as u64);
            }
            if a.hops >= 2 {
                addr = read::<u64>(addr)
                    .unwrap_or(0)
                    .wrapping_add(a.hops_at[1] as i64 as u64);
            }
            match a.size {
                1 => read::<u8>(addr).unwrap_or(0) as u64,
                2 => read::<u16>(addr).unwrap_or(0) as u64,
                4 => read::<u32>(addr).unwrap_or(0) as u64,
                _ => read::<u64>(addr).unwrap_or(0),
            }
        }
        _ => return 0,
    };
    extend(raw, a.size, a.signed != 0)
}

/// Keeps the argument's `size` bytes, sign-extended if it is signed.
#[inline(always)]
fn extend(v: u64, size: u8, signed: bool) -> u64 {
    if size >= 8 || size == 0 {
        return v;
    }
    let shift = 64 - 8 * size as u32;
    if signed {
        (((v << shift) as i64) >> shift) as u64
    } else {
        (v << shift) >> shift
    }
}
