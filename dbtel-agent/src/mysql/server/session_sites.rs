//! Who a connection was, read as it ends: `end_connection(THD*)` runs once
//! per connection that logged in, before its THD is let go, with its
//! security context and current database still set. The catalog reads the
//! same from PROCESSLIST when a connection is first seen, but a connection
//! of a few milliseconds (a script's, a pool's health check) can be gone
//! before that query runs; these sites cost three traps per connection end,
//! nothing per statement. Offsets come from the server's own accessors
//! (`thd_user_name`: `mov rax, [rdi + sctx]; test; je; mov rax, [rax + 8]`).

use dbtel_common::{mysite, Engine, SiteSpec};

use super::target::via_rdi;
use crate::host::x86::{self, Access, Use};

pub const END_CONNECTION: &str = "_Z14end_connectionP3THD";

/// The exported functions whose code says where the fields are.
pub const ACCESSORS: &[&str] = &["thd_user_name", "thd_client_ip", "thd_current_db"];

/// Offsets the sites read (bytes from the start of their struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLayout {
    /// THD::security_ctx (Security_context*), and in it the user and ip strings.
    pub sctx: u32,
    pub user: u32,
    pub ip: u32,
    /// THD::db (LEX_CSTRING: its str first).
    pub db: u32,
}

/// The layout from the accessors' code (`code(name)`: the decoded body,
/// None if absent); the error names what did not decode.
pub fn decode(
    code: &dyn Fn(&'static str) -> Option<Vec<iced_x86::Instruction>>,
) -> Result<SessionLayout, String> {
    let accesses = |f: &'static str| -> Result<Vec<Access>, String> {
        code(f)
            .map(|b| x86::arg0_accesses(&b))
            .ok_or_else(|| format!("no {f}"))
    };
    let user_name = accesses("thd_user_name")?;
    let sctx = user_name
        .iter()
        .find(|a| a.via.is_none() && a.use_ == Use::Read && a.size == 8)
        .map(|a| a.disp)
        .ok_or("cannot decode thd_user_name: no load of security_ctx")?;
    let through_sctx = |body: &[Access]| {
        body.iter()
            .find(|a| a.via == Some(sctx) && a.use_ == Use::Read && a.size == 8)
            .map(|a| a.disp)
    };
    let user = through_sctx(&user_name).ok_or("cannot decode thd_user_name: no load of user")?;
    let ip = through_sctx(&accesses("thd_client_ip")?)
        .ok_or("cannot decode thd_client_ip: no load of ip through security_ctx")?;
    let db = accesses("thd_current_db")?
        .iter()
        .find(|a| a.via.is_none() && a.use_ == Use::Address)
        .map(|a| a.disp)
        .ok_or("cannot decode thd_current_db: no address of db")?;
    Ok(SessionLayout { sctx, user, ip, db })
}

/// The three sites on end_connection, each sending the connection id and one string.
pub fn sites(l: &SessionLayout, thread_id: u32) -> Vec<(&'static str, SiteSpec)> {
    let site = |probe: u32, text: dbtel_common::ArgSpec| {
        let mut s = SiteSpec {
            probe,
            engine: Engine::Mysql as u32,
            ..Default::default()
        };
        s.args[0] = via_rdi(thread_id, &[], 8);
        s.args[1] = text;
        s.text_arg = 2;
        (END_CONNECTION, s)
    };
    vec![
        site(mysite::SESSION_USER, via_rdi(l.sctx, &[l.user], 8)),
        site(mysite::SESSION_DB, via_rdi(l.db, &[], 8)),
        site(mysite::SESSION_ADDRESS, via_rdi(l.sctx, &[l.ip], 8)),
    ]
}
