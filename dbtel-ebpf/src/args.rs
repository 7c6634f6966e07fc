//! Probe arguments where a SiteSpec says they are: registers and memory.

use super::*;

/// A register slot of the probed task's pt_regs. The slot is chosen at attach
/// time, and the verifier refuses a direct load at a run-time context offset,
/// hence the helper (as libbpf's usdt.bpf.h does).
#[inline(always)]
pub(crate) fn reg(regs: u64, off: u16) -> u64 {
    if off as usize > 160 {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((regs + off as u64) as *const u64) }.unwrap_or(0)
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
