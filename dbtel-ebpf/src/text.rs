//! The one text copy: a statement text from the traced process into an
//! event's fixed buffer, NUL-terminated (libpq, the PostgreSQL server) or
//! (pointer, length) (the MySQL client API), cut at the agent's limit.

use super::*;

/// Copies the text at `p` (NUL-terminated when `len` is None) into `dst`.
/// Returns the bytes copied (NUL excluded) and [`qflags`] (TRUNCATED, TEXT_FAULT).
#[inline(always)]
pub(crate) fn copy(dst: &mut [u8; TEXT_CAP], p: u64, len: Option<u64>) -> (u32, u32) {
    let limit = unsafe { core::ptr::read_volatile(&MAX_TEXT) } as usize;
    let limit = if limit > TEXT_CAP - 2 {
        TEXT_CAP - 2
    } else {
        limit
    };
    match len {
        None => {
            // One byte past the limit (plus NUL) tells "exactly the limit" from "cut".
            match unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut dst[..limit + 2]) } {
                Ok(s) if s.len() > limit => (limit as u32, qflags::TRUNCATED),
                Ok(s) => (s.len() as u32, 0),
                Err(_) => (0, qflags::TEXT_FAULT),
            }
        }
        Some(len) => {
            let (n, flags) = if len as usize > limit {
                (limit, qflags::TRUNCATED)
            } else {
                (len as usize, 0)
            };
            // The mask is a no-op (n < TEXT_CAP) that the verifier can see.
            let n = n & (TEXT_CAP - 1);
            if n == 0 {
                return (0, flags);
            }
            match unsafe { bpf_probe_read_user_buf(p as *const u8, &mut dst[..n]) } {
                Ok(()) => (n as u32, flags),
                Err(_) => (0, qflags::TEXT_FAULT),
            }
        }
    }
}
