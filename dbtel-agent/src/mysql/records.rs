//! The MySQL client probes' ring-buffer records, decoded (and encoded, for
//! tests and the replay bench).

use dbtel_common::{qflags, Kind, MyCall, MyCallEvent, MyConnEvent, MyReturnEvent};

use crate::events::{self, cstr, DecodeError, Origin};

/// One MySQL client record. `at.conn` is the handle the call was made on
/// (a MYSQL* or, for statement calls, a MYSQL_STMT*); `mysql` its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A call entered: statement texts (mysql_real_query, mysql_send_query,
    /// mysql_stmt_prepare) and handles let go of (mysql_stmt_close, mysql_close).
    Call {
        at: Origin,
        call: MyCall,
        mysql: u64,
        text: Option<String>,
        truncated: bool,
    },
    /// A call returned, with its handle's state at that moment.
    Return(Returned),
    /// A connection's details: first use by this process, or its database
    /// or connection id changed.
    Conn(ConnDetails),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    pub at: Origin,
    pub call: MyCall,
    pub mysql: u64,
    /// The return value: 0 success for int calls; the MYSQL_RES* for
    /// mysql_store_result / mysql_use_result (0: none or failure);
    /// mysql_next_result: 0 more, -1 no more, > 0 error.
    pub ret: u64,
    /// The server's connection id (CONNECTION_ID()).
    pub thread_id: u64,
    /// The handle's last error number and SQLSTATE (0 and "" if none).
    pub errno: u32,
    pub sqlstate: String,
    /// The handle's affected rows (None: u64::MAX, "no count", e.g. after an error or a SELECT).
    pub affected_rows: Option<u64>,
    /// Rows buffered: mysql_store_result's MYSQL_RES, or the statement's after mysql_stmt_store_result.
    pub rows: u64,
    /// Columns of the pending result (0: the statement returns no rows).
    pub field_count: u32,
    /// MYSQL.server_status: SERVER_STATUS_IN_TRANS (1), AUTOCOMMIT (2), MORE_RESULTS_EXISTS (8).
    pub server_status: u32,
    /// Statement calls: the server's statement id.
    pub stmt_id: u64,
}

pub const IN_TRANS: u32 = 1;
pub const AUTOCOMMIT: u32 = 2;
pub const MORE_RESULTS: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnDetails {
    /// `at.conn`: the MYSQL*.
    pub at: Origin,
    pub thread_id: u64,
    /// The current database ("" if none).
    pub db: String,
    /// As the application gave them ("" when unknown); `port` 0 when unknown.
    pub host: String,
    pub socket: String,
    pub port: u32,
    /// The server's version string ("10.11.19-MariaDB-0+deb12u1").
    pub version: String,
}

impl Record {
    pub fn origin(&self) -> &Origin {
        match self {
            Record::Call { at, .. }
            | Record::Return(Returned { at, .. })
            | Record::Conn(ConnDetails { at, .. }) => at,
        }
    }
}

/// Decodes a record whose header says engine MySQL.
pub fn decode(data: &[u8]) -> Result<Record, DecodeError> {
    let (h, at) = events::header(data)?;
    let call = || MyCall::from_u32(h.func).ok_or(DecodeError::UnknownKind(h.kind));
    match Kind::from_u16(h.kind) {
        Some(Kind::MyCall) => {
            let fixed = MyCallEvent::TEXT_OFFSET;
            if data.len() < fixed {
                return Err(DecodeError::Truncated {
                    kind: h.kind,
                    need: fixed,
                    got: data.len(),
                });
            }
            let mysql = u64::from_ne_bytes(data[32..40].try_into().unwrap());
            let text_len = u32::from_ne_bytes(data[40..44].try_into().unwrap()) as usize;
            let flags = u32::from_ne_bytes(data[44..48].try_into().unwrap());
            let call = call()?;
            let text_bytes = data
                .get(fixed..fixed + text_len)
                .ok_or(DecodeError::Truncated {
                    kind: h.kind,
                    need: fixed + text_len,
                    got: data.len(),
                })?;
            let has_text = matches!(
                call,
                MyCall::RealQuery | MyCall::SendQuery | MyCall::StmtPrepare
            );
            // A counted text may hold NULs: keep all its bytes.
            let text = (has_text && flags & qflags::TEXT_FAULT == 0)
                .then(|| String::from_utf8_lossy(text_bytes).into_owned());
            Ok(Record::Call {
                at,
                call,
                mysql,
                text,
                truncated: flags & qflags::TRUNCATED != 0,
            })
        }
        Some(Kind::MyReturn) => {
            let r: MyReturnEvent = events::read(data, h.kind)?;
            Ok(Record::Return(Returned {
                at,
                call: call()?,
                mysql: r.mysql,
                ret: r.ret,
                thread_id: r.thread_id,
                errno: r.errno,
                sqlstate: if r.errno != 0 {
                    cstr(&r.sqlstate)
                } else {
                    String::new()
                },
                affected_rows: (r.affected_rows != u64::MAX).then_some(r.affected_rows),
                rows: r.rows,
                field_count: r.field_count,
                server_status: r.server_status,
                stmt_id: r.stmt_id,
            }))
        }
        Some(Kind::MyConn) => {
            let c: MyConnEvent = events::read(data, h.kind)?;
            Ok(Record::Conn(ConnDetails {
                at,
                thread_id: c.thread_id,
                db: cstr(&c.db),
                host: cstr(&c.host),
                socket: cstr(&c.socket),
                port: c.port,
                version: cstr(&c.version),
            }))
        }
        _ => Err(DecodeError::UnknownKind(h.kind)),
    }
}

/// Builds the bytes the kernel side would send.
pub mod encode {
    use super::*;
    use crate::events::encode::{bytes_of, fill, header};

    pub fn call(at: Origin, call: MyCall, mysql: u64, text: Option<&str>) -> Vec<u8> {
        let mut out = bytes_of(&header(Kind::MyCall, call as u32, &at)).to_vec();
        let text_b = text.unwrap_or("").as_bytes();
        out.extend_from_slice(&mysql.to_ne_bytes());
        out.extend_from_slice(&(text_b.len() as u32).to_ne_bytes());
        let flags = if text.is_none()
            && matches!(
                call,
                MyCall::RealQuery | MyCall::SendQuery | MyCall::StmtPrepare
            ) {
            qflags::TEXT_FAULT
        } else {
            0
        };
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(text_b);
        out
    }

    pub fn returned(r: &Returned) -> Vec<u8> {
        let mut ev = MyReturnEvent {
            hdr: header(Kind::MyReturn, r.call as u32, &r.at),
            mysql: r.mysql,
            ret: r.ret,
            thread_id: r.thread_id,
            affected_rows: r.affected_rows.unwrap_or(u64::MAX),
            rows: r.rows,
            stmt_id: r.stmt_id,
            errno: r.errno,
            field_count: r.field_count,
            server_status: r.server_status,
            _pad: 0,
            sqlstate: [0; 8],
        };
        fill(&mut ev.sqlstate, &r.sqlstate);
        bytes_of(&ev).to_vec()
    }

    pub fn conn(c: &ConnDetails) -> Vec<u8> {
        // SAFETY: integers and byte arrays only.
        let mut ev: MyConnEvent = unsafe { std::mem::zeroed() };
        ev.hdr = header(Kind::MyConn, 0, &c.at);
        ev.thread_id = c.thread_id;
        ev.port = c.port;
        fill(&mut ev.db, &c.db);
        fill(&mut ev.host, &c.host);
        fill(&mut ev.socket, &c.socket);
        fill(&mut ev.version, &c.version);
        bytes_of(&ev).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(conn: u64) -> Origin {
        Origin {
            pid: 7,
            tid: 8,
            ts_ns: 1_000,
            conn,
        }
    }

    #[test]
    fn records_round_trip() {
        let call = Record::Call {
            at: at(0x10),
            call: MyCall::RealQuery,
            mysql: 0x10,
            text: Some("SELECT 'a\0b'".into()),
            truncated: false,
        };
        let Record::Call {
            at: a,
            call: c,
            mysql,
            text,
            ..
        } = &call
        else {
            unreachable!()
        };
        assert_eq!(
            decode(&encode::call(*a, *c, *mysql, text.as_deref())).unwrap(),
            call
        );
        let ret = Returned {
            at: at(0x20),
            call: MyCall::StmtExecute,
            mysql: 0x10,
            ret: 0,
            thread_id: 42,
            errno: 1213,
            sqlstate: "40001".into(),
            affected_rows: None,
            rows: 3,
            field_count: 2,
            server_status: IN_TRANS | AUTOCOMMIT,
            stmt_id: 5,
        };
        assert_eq!(
            decode(&encode::returned(&ret)).unwrap(),
            Record::Return(ret)
        );
        let conn = ConnDetails {
            at: at(0x10),
            thread_id: 42,
            db: "shop".into(),
            host: "localhost".into(),
            socket: "/tmp/m.sock".into(),
            port: 0,
            version: "10.11.19-MariaDB".into(),
        };
        assert_eq!(decode(&encode::conn(&conn)).unwrap(), Record::Conn(conn));
    }

    #[test]
    fn a_libpq_record_or_a_short_one_is_refused() {
        let pq = crate::events::encode::finish(at(1));
        assert!(matches!(decode(&pq), Err(DecodeError::UnknownKind(_))));
        let mut b = encode::call(at(1), MyCall::RealQuery, 1, Some("SELECT 1"));
        b.truncate(50);
        assert!(matches!(decode(&b), Err(DecodeError::Truncated { .. })));
        // A header whose engine is not its kind's.
        let mut b = encode::call(at(1), MyCall::Close, 1, None);
        b[2] = 1;
        assert!(matches!(decode(&b), Err(DecodeError::WrongEngine { .. })));
    }
}
