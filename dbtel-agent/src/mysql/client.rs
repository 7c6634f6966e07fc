//! The MySQL/MariaDB client library as an engine: claims the library in a
//! process, decodes its records and turns them into spans.

use std::path::Path;

use crate::{
    engine::{ClaimError, Engine, Plan},
    events::DecodeError,
    pipeline::{dbspan::DbSpan, sql::Text},
};

use super::{discover, reconstruct::Reconstructor, records};

pub struct Client {
    recon: Reconstructor,
}

impl Client {
    pub fn new(text: Text) -> Self {
        Client { recon: Reconstructor::new(text) }
    }
}

impl Engine for Client {
    fn name(&self) -> &'static str {
        "MySQL/MariaDB client library"
    }

    fn id(&self) -> dbtel_common::Engine {
        dbtel_common::Engine::Mysql
    }

    fn claim(&self, pid: u32, path: &str, host: &Path) -> Result<Option<Plan>, ClaimError> {
        // A server (mariadbd) first: it defines no client library.
        if let Some(plan) = super::server::target::claim(pid, path, host)? {
            return Ok(Some(plan));
        }
        discover::claim(pid, path, host)
    }

    fn on_record(&mut self, data: &[u8], out: &mut Vec<DbSpan>) -> Result<u32, DecodeError> {
        let rec = records::decode(data)?;
        let pid = rec.origin().pid;
        self.recon.on_record(rec, out);
        Ok(pid)
    }

    fn tick(&mut self, now_ns: u64, out: &mut Vec<DbSpan>) {
        self.recon.tick(now_ns, out);
    }

    fn forget(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<DbSpan>) {
        self.recon.process_exited(pid, ts_ns, out);
    }

    fn in_flight(&self) -> usize {
        self.recon.in_flight()
    }
}
