//! Probe arguments where a SiteSpec says they are: registers and memory.

use super::*;

/// A register slot of the probed task's pt_regs, by its byte offset. The slot
/// is chosen at attach time, and the verifier takes context loads only at a
/// constant offset in the load instruction itself: each arm is one such
/// load, in assembly so that the compiler cannot merge the arms into a load
/// through a computed pointer (it did, from plain and volatile reads).
/// libbpf's usdt.bpf.h calls bpf_probe_read_kernel instead: ~60-80 ns a
/// register on the hosts measured, against a few compares here.
#[inline(always)]
pub(crate) fn reg(regs: u64, off: u16) -> u64 {
    macro_rules! slots {
        ($($o:literal)*) => {
            match off {
                $($o => {
                    let v: u64;
                    // SAFETY: a constant offset inside the probe's pt_regs
                    // (x86-64: 21 slots of 8 bytes); the verifier checks it.
                    unsafe {
                        core::arch::asm!(
                            concat!("{v} = *(u64 *)({p} + ", $o, ")"),
                            v = out(reg) v,
                            p = in(reg) regs,
                            options(readonly, nostack, preserves_flags),
                        )
                    };
                    v
                })*
                _ => 0,
            }
        };
    }
    slots!(0 8 16 24 32 40 48 56 64 72 80 88 96 104 112 120 128 136 144 152 160)
}

/// Reads one hit's arguments. The arguments of a site mostly start from the
/// same register and the same pointer (MariaDB's ten statement facts are
/// all fields of `protocol->thd`, three of them behind `thd->m_stmt_da`):
/// the register and the last two pointers followed are read once per hit,
/// not once per argument (each read is a helper call: 33 became 13).
pub(crate) struct ArgReader {
    regs: u64,
    /// The last register read: its pt_regs offset (u16::MAX: none) and value.
    reg_off: u16,
    reg_val: u64,
    /// Pointers followed: (address, value read there), the older one first.
    ptrs: [(u64, u64); 2],
}

impl ArgReader {
    #[inline(always)]
    pub(crate) fn new(regs: u64) -> Self {
        ArgReader {
            regs,
            reg_off: u16::MAX,
            reg_val: 0,
            ptrs: [(0, 0); 2],
        }
    }

    #[inline(always)]
    fn reg(&mut self, off: u16) -> u64 {
        if off != self.reg_off {
            self.reg_val = reg(self.regs, off);
            self.reg_off = off;
        }
        self.reg_val
    }

    /// The pointer stored at `addr` (0 at address 0 or where unreadable).
    #[inline(always)]
    fn ptr(&mut self, addr: u64) -> u64 {
        if addr == 0 {
            return 0;
        }
        if self.ptrs[1].0 == addr {
            return self.ptrs[1].1;
        }
        if self.ptrs[0].0 == addr {
            return self.ptrs[0].1;
        }
        let v = read::<u64>(addr).unwrap_or(0);
        self.ptrs[0] = self.ptrs[1];
        self.ptrs[1] = (addr, v);
        v
    }

    #[inline(always)]
    pub(crate) fn arg(&mut self, a: &ArgSpec) -> u64 {
        let raw = match a.kind {
            argkind::IMMEDIATE => return a.value as u64,
            argkind::REGISTER => {
                let v = self.reg(a.reg_off);
                if a.high_byte != 0 {
                    v >> 8
                } else {
                    v
                }
            }
            argkind::MEMORY => {
                let mut addr = self.reg(a.reg_off).wrapping_add(a.value as u64);
                if a.index_off != NO_INDEX {
                    addr =
                        addr.wrapping_add(reg(self.regs, a.index_off).wrapping_mul(a.scale as u64));
                }
                // Pointers followed first (a field of a struct a field points to).
                if a.hops >= 1 {
                    addr = self.ptr(addr).wrapping_add(a.hops_at[0] as i64 as u64);
                }
                if a.hops >= 2 {
                    addr = self.ptr(addr).wrapping_add(a.hops_at[1] as i64 as u64);
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
