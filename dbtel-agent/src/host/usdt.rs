//! SystemTap SDT (USDT) probes of an ELF file: the `.note.stapsdt` notes and
//! their argument specifications (`-4@%r13d`, `8@-144(%rbp)`, `4@60(%rax)`,
//! `-4@$0`, `-4@NBuffers(%rip)`), decoded into where each argument lives at
//! the probe, so the eBPF side can read them generically (no build-specific
//! code).

use object::{
    read::elf::{ElfFile64, SectionHeader},
    Endianness, Object, ObjectSection,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsdtError {
    #[error("not a 64-bit ELF file: {0}")]
    Elf(String),
    #[error("malformed stapsdt note: {0}")]
    Note(&'static str),
    #[error("cannot parse USDT argument {spec:?}: {why}")]
    Arg { spec: String, why: &'static str },
}

/// An x86-64 general-purpose register, by its slot in the kernel's `struct pt_regs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpr {
    R15,
    R14,
    R13,
    R12,
    Rbp,
    Rbx,
    R11,
    R10,
    R9,
    R8,
    Rax,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rip,
    Rsp,
}

impl Gpr {
    /// Byte offset of the register in x86-64 `struct pt_regs`.
    pub fn pt_regs_offset(self) -> u16 {
        match self {
            Gpr::R15 => 0,
            Gpr::R14 => 8,
            Gpr::R13 => 16,
            Gpr::R12 => 24,
            Gpr::Rbp => 32,
            Gpr::Rbx => 40,
            Gpr::R11 => 48,
            Gpr::R10 => 56,
            Gpr::R9 => 64,
            Gpr::R8 => 72,
            Gpr::Rax => 80,
            Gpr::Rcx => 88,
            Gpr::Rdx => 96,
            Gpr::Rsi => 104,
            Gpr::Rdi => 112,
            // orig_rax at 120
            Gpr::Rip => 128,
            // cs 136, eflags 144
            Gpr::Rsp => 152,
        }
    }
}

/// A register operand: which register, and which part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    pub gpr: Gpr,
    /// Bytes used: 8 (%rax), 4 (%eax), 2 (%ax), 1 (%al / %ah).
    pub width: u8,
    /// %ah, %bh, %ch, %dh: bits 8..16.
    pub high_byte: bool,
}

fn reg(name: &str) -> Option<Reg> {
    use Gpr::*;
    let legacy = |g, w, h| {
        Some(Reg {
            gpr: g,
            width: w,
            high_byte: h,
        })
    };
    match name {
        "rax" => legacy(Rax, 8, false),
        "eax" => legacy(Rax, 4, false),
        "ax" => legacy(Rax, 2, false),
        "al" => legacy(Rax, 1, false),
        "ah" => legacy(Rax, 1, true),
        "rbx" => legacy(Rbx, 8, false),
        "ebx" => legacy(Rbx, 4, false),
        "bx" => legacy(Rbx, 2, false),
        "bl" => legacy(Rbx, 1, false),
        "bh" => legacy(Rbx, 1, true),
        "rcx" => legacy(Rcx, 8, false),
        "ecx" => legacy(Rcx, 4, false),
        "cx" => legacy(Rcx, 2, false),
        "cl" => legacy(Rcx, 1, false),
        "ch" => legacy(Rcx, 1, true),
        "rdx" => legacy(Rdx, 8, false),
        "edx" => legacy(Rdx, 4, false),
        "dx" => legacy(Rdx, 2, false),
        "dl" => legacy(Rdx, 1, false),
        "dh" => legacy(Rdx, 1, true),
        "rsi" => legacy(Rsi, 8, false),
        "esi" => legacy(Rsi, 4, false),
        "si" => legacy(Rsi, 2, false),
        "sil" => legacy(Rsi, 1, false),
        "rdi" => legacy(Rdi, 8, false),
        "edi" => legacy(Rdi, 4, false),
        "di" => legacy(Rdi, 2, false),
        "dil" => legacy(Rdi, 1, false),
        "rbp" => legacy(Rbp, 8, false),
        "ebp" => legacy(Rbp, 4, false),
        "bp" => legacy(Rbp, 2, false),
        "bpl" => legacy(Rbp, 1, false),
        "rsp" => legacy(Rsp, 8, false),
        "esp" => legacy(Rsp, 4, false),
        "sp" => legacy(Rsp, 2, false),
        "spl" => legacy(Rsp, 1, false),
        "rip" => legacy(Rip, 8, false),
        _ => {
            // r8..r15 with suffixes: r8 (8), r8d (4), r8w (2), r8b / r8l (1)
            let rest = name.strip_prefix('r')?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let gpr = match digits.as_str() {
                "8" => R8,
                "9" => R9,
                "10" => R10,
                "11" => R11,
                "12" => R12,
                "13" => R13,
                "14" => R14,
                "15" => R15,
                _ => return None,
            };
            let width = match &rest[digits.len()..] {
                "" => 8,
                "d" => 4,
                "w" => 2,
                "b" | "l" => 1,
                _ => return None,
            };
            Some(Reg {
                gpr,
                width,
                high_byte: false,
            })
        }
    }
}

/// Where an argument's value is at the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In a register.
    Register(Reg),
    /// A constant.
    Immediate(i64),
    /// In memory at `base + disp (+ index * scale)`.
    Memory {
        base: Reg,
        disp: i64,
        index: Option<(Reg, u8)>,
    },
    /// In memory at a symbol's address plus `disp` (RIP-relative: `sym(%rip)`).
    Symbol { name: String, disp: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// Size in bytes (1, 2, 4, 8).
    pub size: u8,
    pub signed: bool,
    pub location: Location,
}

fn arg_err(spec: &str, why: &'static str) -> UsdtError {
    UsdtError::Arg {
        spec: spec.to_string(),
        why,
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = match s.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => s.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

/// One argument: `[-]size@operand`.
pub fn parse_arg(spec: &str) -> Result<Arg, UsdtError> {
    let (size, op) = spec
        .split_once('@')
        .ok_or_else(|| arg_err(spec, "no '@'"))?;
    let size: i64 = parse_int(size).ok_or_else(|| arg_err(spec, "bad size"))?;
    let (signed, size) = (size < 0, size.unsigned_abs());
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(arg_err(spec, "size is not 1, 2, 4 or 8"));
    }
    let location = if let Some(r) = op.strip_prefix('%') {
        Location::Register(reg(r).ok_or_else(|| arg_err(spec, "unknown register"))?)
    } else if let Some(imm) = op.strip_prefix('$') {
        Location::Immediate(parse_int(imm).ok_or_else(|| arg_err(spec, "bad immediate"))?)
    } else if let Some(open) = op.find('(') {
        let inner = op[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| arg_err(spec, "unbalanced parenthesis"))?;
        let prefix = &op[..open];
        let mut parts = inner.split(',');
        let base = parts
            .next()
            .and_then(|b| reg(b.trim().strip_prefix('%')?))
            .ok_or_else(|| arg_err(spec, "bad base register"))?;
        let index = match (parts.next(), parts.next()) {
            (Some(i), scale) => {
                let i = reg(i.trim().strip_prefix('%').unwrap_or(""))
                    .ok_or_else(|| arg_err(spec, "bad index register"))?;
                let scale = scale
                    .map_or(Some(1), |s| parse_int(s.trim()))
                    .ok_or_else(|| arg_err(spec, "bad scale"))?;
                Some((i, scale as u8))
            }
            (None, _) => None,
        };
        if base.gpr == Gpr::Rip {
            // `sym(%rip)` or `disp+sym(%rip)`: an address in the binary.
            let (disp, name) = match prefix.split_once('+') {
                Some((d, n)) if parse_int(d).is_some() => (parse_int(d).unwrap(), n),
                _ => (0, prefix),
            };
            if name.is_empty() || parse_int(name).is_some() {
                return Err(arg_err(spec, "RIP-relative operand without a symbol"));
            }
            Location::Symbol {
                name: name.to_string(),
                disp,
            }
        } else {
            let disp = if prefix.is_empty() {
                0
            } else {
                parse_int(prefix).ok_or_else(|| arg_err(spec, "bad displacement"))?
            };
            Location::Memory { base, disp, index }
        }
    } else {
        return Err(arg_err(spec, "unknown operand form"));
    };
    Ok(Arg {
        size: size as u8,
        signed,
        location,
    })
}

/// The kernel side's description of one argument (see dbtel_common::ArgSpec).
/// RIP-relative (global variable) arguments are refused: their address depends
/// on where each process loaded the binary.
pub fn arg_spec(a: &Arg) -> Result<dbtel_common::ArgSpec, &'static str> {
    use dbtel_common::{argkind, ArgSpec, NO_INDEX};
    let mut s = ArgSpec {
        size: a.size,
        signed: a.signed as u8,
        index_off: NO_INDEX,
        ..Default::default()
    };
    match &a.location {
        Location::Immediate(v) => {
            s.kind = argkind::IMMEDIATE;
            s.value = *v;
        }
        Location::Register(r) => {
            s.kind = argkind::REGISTER;
            s.reg_off = r.gpr.pt_regs_offset();
            s.high_byte = r.high_byte as u8;
        }
        Location::Memory { base, disp, index } => {
            s.kind = argkind::MEMORY;
            s.reg_off = base.gpr.pt_regs_offset();
            s.value = *disp;
            if let Some((i, scale)) = index {
                s.index_off = i.gpr.pt_regs_offset();
                s.scale = *scale;
            }
        }
        Location::Symbol { .. } => {
            return Err("argument in a global variable (RIP-relative) is not supported")
        }
    }
    Ok(s)
}

/// A whole argument string (space separated; empty for no arguments).
pub fn parse_args(spec: &str) -> Result<Vec<Arg>, UsdtError> {
    spec.split_whitespace().map(parse_arg).collect()
}

/// One probe site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub provider: String,
    pub name: String,
    /// Virtual address of the probe's instruction (link-time, adjusted for prelink).
    pub address: u64,
    /// Virtual address of its semaphore (0: none).
    pub semaphore: u64,
    pub args: Vec<Arg>,
}

const NT_STAPSDT: u32 = 3;

/// Every probe site in an ELF file's `.note.stapsdt`.
pub fn probes(data: &[u8]) -> Result<Vec<Probe>, UsdtError> {
    let elf = ElfFile64::<Endianness>::parse(data).map_err(|e| UsdtError::Elf(e.to_string()))?;
    let endian = elf.endian();
    // Notes record .stapsdt.base's link-time address; prelinking may have moved it.
    let base_now = elf.section_by_name(".stapsdt.base").map(|s| s.address());
    let mut out = Vec::new();
    let sections = elf.elf_section_table();
    for section in sections.iter() {
        if sections.section_name(endian, section).ok() != Some(b".note.stapsdt".as_slice()) {
            continue;
        }
        let Some(mut notes) = section
            .notes(endian, data)
            .map_err(|_| UsdtError::Note("unreadable section"))?
        else {
            continue;
        };
        while let Some(note) = notes
            .next()
            .map_err(|_| UsdtError::Note("bad note header"))?
        {
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            // Another provider's note we cannot read is none of our business;
            // a missing postgresql probe is reported by name by the caller.
            match parse_note(note.desc(), base_now) {
                Ok(p) => out.push(p),
                Err(e) => log::debug!("skipping a USDT note: {e}"),
            }
        }
    }
    Ok(out)
}

/// Desc: pc, base, semaphore (3 × u64), then provider\0 name\0 args\0.
pub fn parse_note(desc: &[u8], base_now: Option<u64>) -> Result<Probe, UsdtError> {
    let word = |i: usize| -> Result<u64, UsdtError> {
        desc.get(i * 8..i * 8 + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or(UsdtError::Note("descriptor too short"))
    };
    let (pc, base, sem) = (word(0)?, word(1)?, word(2)?);
    let mut strings = desc[24..]
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let provider = strings.next().ok_or(UsdtError::Note("no provider"))?;
    let name = strings.next().ok_or(UsdtError::Note("no probe name"))?;
    let args = parse_args(&strings.next().unwrap_or_default())?;
    let shift = |addr: u64| match base_now {
        Some(now) if addr != 0 => addr.wrapping_add(now).wrapping_sub(base),
        _ => addr,
    };
    Ok(Probe {
        provider,
        name,
        address: shift(pc),
        semaphore: shift(sem),
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(gpr: Gpr, width: u8) -> Reg {
        Reg {
            gpr,
            width,
            high_byte: false,
        }
    }

    #[test]
    fn postgres_argument_forms() {
        // Seen in PostgreSQL 15's postgres binary (shared/PROBES.md).
        assert_eq!(
            parse_arg("4@%ebx").unwrap(),
            Arg {
                size: 4,
                signed: false,
                location: Location::Register(r(Gpr::Rbx, 4))
            }
        );
        assert_eq!(
            parse_arg("-4@%r13d").unwrap(),
            Arg {
                size: 4,
                signed: true,
                location: Location::Register(r(Gpr::R13, 4))
            }
        );
        assert_eq!(
            parse_arg("8@-144(%rbp)").unwrap().location,
            Location::Memory {
                base: r(Gpr::Rbp, 8),
                disp: -144,
                index: None
            }
        );
        assert_eq!(
            parse_arg("4@60(%rax)").unwrap().location,
            Location::Memory {
                base: r(Gpr::Rax, 8),
                disp: 60,
                index: None
            }
        );
        assert_eq!(
            parse_arg("4@(%r12)").unwrap().location,
            Location::Memory {
                base: r(Gpr::R12, 8),
                disp: 0,
                index: None
            }
        );
        assert_eq!(parse_arg("2@12(%r12)").unwrap().size, 2);
        assert_eq!(parse_arg("-4@$0").unwrap().location, Location::Immediate(0));
        assert_eq!(
            parse_arg("-4@$-8192").unwrap().location,
            Location::Immediate(-8192)
        );
        assert_eq!(
            parse_arg("1@%dil").unwrap().location,
            Location::Register(r(Gpr::Rdi, 1))
        );
        assert_eq!(
            parse_arg("1@%ah").unwrap().location,
            Location::Register(Reg {
                gpr: Gpr::Rax,
                width: 1,
                high_byte: true
            })
        );
        assert_eq!(
            parse_arg("-4@NBuffers(%rip)").unwrap().location,
            Location::Symbol {
                name: "NBuffers".into(),
                disp: 0
            }
        );
        assert_eq!(
            parse_arg("-4@40+CheckpointStats(%rip)").unwrap().location,
            Location::Symbol {
                name: "CheckpointStats".into(),
                disp: 40
            }
        );
        assert_eq!(
            parse_arg("8@16(%rax,%rbx,8)").unwrap().location,
            Location::Memory {
                base: r(Gpr::Rax, 8),
                disp: 16,
                index: Some((r(Gpr::Rbx, 8), 8))
            }
        );
        assert_eq!(parse_args("").unwrap(), vec![]);
        assert_eq!(
            parse_args("4@(%r12) 4@4(%r12) 4@8(%r12) 2@12(%r12) 1@14(%r12) -4@%r13d")
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        assert_eq!(
            parse_arg("3@%eax").unwrap_err().to_string(),
            "cannot parse USDT argument \"3@%eax\": size is not 1, 2, 4 or 8"
        );
        assert!(parse_arg("4@%xmm0").is_err());
        assert!(parse_arg("4@foo").is_err());
        assert!(parse_arg("4@8(%rax").is_err());
    }

    #[test]
    fn pt_regs_offsets_match_the_kernel_layout() {
        assert_eq!(Gpr::Rdi.pt_regs_offset(), 112);
        assert_eq!(Gpr::Rbx.pt_regs_offset(), 40);
        assert_eq!(Gpr::Rsp.pt_regs_offset(), 152);
    }

    #[test]
    fn note_descriptor_with_prelink_shift() {
        let mut desc = Vec::new();
        desc.extend_from_slice(&0x1000u64.to_le_bytes());
        desc.extend_from_slice(&0x5000u64.to_le_bytes());
        desc.extend_from_slice(&0x9000u64.to_le_bytes());
        desc.extend_from_slice(b"postgresql\0transaction__start\x004@%ebx\0");
        let p = parse_note(&desc, Some(0x5100)).unwrap();
        assert_eq!(
            (p.provider.as_str(), p.name.as_str()),
            ("postgresql", "transaction__start")
        );
        assert_eq!((p.address, p.semaphore), (0x1100, 0x9100));
        assert_eq!(p.args.len(), 1);
        assert_eq!(
            parse_note(&desc[..20], None),
            Err(UsdtError::Note("descriptor too short"))
        );
    }
}
