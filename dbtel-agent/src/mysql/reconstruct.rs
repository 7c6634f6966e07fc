//! PLACEHOLDER (replaced by the real reconstruction before this lands).
use super::records::Record;
use crate::pipeline::{dbspan::DbSpan, sql::Text};
pub struct Reconstructor;
impl Reconstructor {
    pub fn new(_text: Text) -> Self {
        Reconstructor
    }
    pub fn on_record(&mut self, rec: Record, _out: &mut Vec<DbSpan>) {
        log::info!("mysql record {rec:?}");
    }
    pub fn tick(&mut self, _now_ns: u64, _out: &mut Vec<DbSpan>) {}
    pub fn process_exited(&mut self, _pid: u32, _ts_ns: u64, _out: &mut Vec<DbSpan>) {}
    pub fn in_flight(&self) -> usize {
        0
    }
}
