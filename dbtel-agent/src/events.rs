//! Decoding of the raw ring-buffer records written by dbtel-ebpf.

use dbtel_common::{
    qflags, ConnEvent, Engine, ExecEvent, Header, Kind, PipelineEvent, QueryEvent, ResultEvent,
    ServerEvent, USDT_MAX_ARGS,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("record kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u16, need: usize, got: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("record kind {kind} says engine {engine}, not its own")]
    WrongEngine { kind: u16, engine: u16 },
}

/// Who and when: common to every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// PGconn pointer.
    pub conn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A query-issuing call was entered.
    Call {
        at: Origin,
        func: u32,
        /// None when the text could not be read. Shared with the last
        /// events of the same text (events_texts).
        text: Option<std::sync::Arc<str>>,
        /// Statement name (empty: unnamed, or the call has none). Shared
        /// like texts: a prepared statement's executions name it each time.
        name: std::sync::Arc<str>,
        truncated: bool,
    },
    /// PQgetResult returned; `result == 0` means no more results.
    /// `nulls`: PQgetResult's NULL returns are reported too (entry + return probes).
    Result {
        at: Origin,
        result: u64,
        status: i32,
        ntuples: i32,
        /// Shared with the last results of the same tag (events_texts).
        cmd_status: std::sync::Arc<str>,
        sqlstate: Option<String>,
        nulls: bool,
    },
    /// First use of a connection object in this process.
    Conn {
        at: Origin,
        backend_pid: i32,
        db: String,
        host: String,
        port: String,
    },
    /// PQfinish.
    Finish { at: Origin },
    /// A pipeline-mode call (dbtel_common::func::PQ*PIPELINE*): its return
    /// value when it was probed at return, else None (a sync, seen at entry).
    Pipeline {
        at: Origin,
        func: u32,
        ret: Option<i32>,
    },
}

impl Event {
    pub fn origin(&self) -> &Origin {
        match self {
            Event::Call { at, .. }
            | Event::Result { at, .. }
            | Event::Conn { at, .. }
            | Event::Finish { at }
            | Event::Pipeline { at, .. } => at,
        }
    }
}

pub fn read<T: Copy>(data: &[u8], kind: u16) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if data.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            need,
            got: data.len(),
        });
    }
    // SAFETY: T is a repr(C) integer-only type and the length is checked.
    Ok(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// A NUL-terminated C string in a fixed buffer, lossily as UTF-8.
pub fn cstr(bytes: &[u8]) -> String {
    lossy(until_nul(bytes)).into_owned()
}

/// The bytes of a C string in a fixed buffer: up to its NUL, if any.
fn until_nul(bytes: &[u8]) -> &[u8] {
    &bytes[..memchr::memchr(0, bytes).unwrap_or(bytes.len())]
}

/// `bytes` as UTF-8, invalid sequences replaced.
fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    // Valid UTF-8 checked the fast way first (the lossy decoder walks byte by byte).
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A server probe hit (see dbtel_common::site), from one backend process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHit {
    /// `at.pid`: the server process; `at.conn`: its postmaster's PID.
    pub at: Origin,
    pub site: u32,
    pub args: [u64; USDT_MAX_ARGS],
    /// The string argument, if the site has one and it was not NULL
    /// (shared: a statement's text is reported again and again).
    pub text: Option<std::sync::Arc<str>>,
    pub truncated: bool,
    /// A completion the kernel side held back for this record: it came first
    /// (see dbtel_common::Held).
    pub held: Option<dbtel_common::Held>,
}

impl ServerHit {
    /// The held completion as the hit it was (EndCommand's, at its time).
    pub fn completion(at: Origin, held: dbtel_common::Held) -> ServerHit {
        let mut args = [0; USDT_MAX_ARGS];
        args[..2].copy_from_slice(&held.args);
        ServerHit {
            at: Origin {
                ts_ns: held.ts_ns,
                ..at
            },
            site: dbtel_common::site::COMMAND_DONE,
            args,
            text: None,
            truncated: false,
            held: None,
        }
    }
}

/// Any record from the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Client(Event),
    Server(ServerHit),
    /// A traced server process exited (`conn`: its postmaster).
    ServerExit(Origin),
    /// --all: a process exec'd a program.
    Exec(Exec),
    /// --all: a client process that hit a probe exited.
    ClientExit(Origin),
    /// The process's dynamic loader mapped new objects (a dlopen, or the
    /// program's libraries at start); `held`: it is stopped until the agent
    /// sends it SIGCONT.
    Loaded {
        at: Origin,
        held: bool,
    },
}

/// --all: `at.pid` now runs `path` (as given to execve), in cgroup `cgroup_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub at: Origin,
    pub cgroup_id: u64,
    pub path: String,
    /// `--` mode: a descendant of the command, stopped until the agent has looked.
    pub held: bool,
}

/// Which engine a record comes from, by its header alone (None: too short or unknown).
pub fn engine_of(data: &[u8]) -> Option<Engine> {
    Engine::from_u16(u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?))
}

/// The record's header, checked: a known kind, tagged with its kind's engine.
pub fn header(data: &[u8]) -> Result<(Header, Origin), DecodeError> {
    if data.len() < size_of::<Header>() {
        return Err(DecodeError::Short(data.len()));
    }
    let h: Header = read(data, 0)?;
    let kind = Kind::from_u16(h.kind).ok_or(DecodeError::UnknownKind(h.kind))?;
    if Engine::from_u16(h.engine) != Some(kind.engine()) {
        return Err(DecodeError::WrongEngine {
            kind: h.kind,
            engine: h.engine,
        });
    }
    Ok((
        h,
        Origin {
            pid: h.pid,
            tid: h.tid,
            ts_ns: h.ts_ns,
            conn: h.conn,
        },
    ))
}

/// A server site's record (PostgreSQL's [`Kind::Server`], MySQL's [`Kind::MyServer`]).
pub fn server_hit(h: &Header, at: Origin, data: &[u8]) -> Result<ServerHit, DecodeError> {
    let fixed = ServerEvent::TEXT_OFFSET;
    if data.len() < fixed {
        return Err(DecodeError::Truncated {
            kind: h.kind,
            need: fixed,
            got: data.len(),
        });
    }
    let word = |i: usize| u64::from_ne_bytes(data[32 + 8 * i..40 + 8 * i].try_into().unwrap());
    let args = std::array::from_fn(word);
    let held = dbtel_common::Held {
        ts_ns: word(USDT_MAX_ARGS),
        args: [word(USDT_MAX_ARGS + 1), word(USDT_MAX_ARGS + 2)],
    };
    let text_len = u32::from_ne_bytes(data[fixed - 8..fixed - 4].try_into().unwrap()) as usize;
    let flags = u32::from_ne_bytes(data[fixed - 4..fixed].try_into().unwrap());
    let text_bytes = data
        .get(fixed..fixed + text_len)
        .ok_or(DecodeError::Truncated {
            kind: h.kind,
            need: fixed + text_len,
            got: data.len(),
        })?;
    // No text: a NULL pointer (e.g. statement__status going idle) or unreadable.
    let text = (flags & qflags::TEXT_PRESENT != 0 && flags & qflags::TEXT_FAULT == 0)
        .then(|| texts::shared(text_bytes));
    Ok(ServerHit {
        at,
        site: h.func,
        args,
        text,
        truncated: flags & qflags::TRUNCATED != 0,
        held: (held.ts_ns != 0).then_some(held),
    })
}

pub fn decode_record(data: &[u8]) -> Result<Record, DecodeError> {
    let (h, at) = header(data)?;
    match Kind::from_u16(h.kind) {
        Some(Kind::Server) => server_hit(&h, at, data).map(Record::Server),
        Some(Kind::ServerExit) => Ok(Record::ServerExit(at)),
        Some(Kind::ClientExit) => Ok(Record::ClientExit(at)),
        Some(Kind::Loaded) => Ok(Record::Loaded {
            at,
            held: h.func == dbtel_common::loader::HELD,
        }),
        Some(Kind::Exec) => {
            let fixed = ExecEvent::PATH_OFFSET;
            if data.len() < fixed {
                return Err(DecodeError::Truncated {
                    kind: h.kind,
                    need: fixed,
                    got: data.len(),
                });
            }
            let cgroup_id = u64::from_ne_bytes(data[32..40].try_into().unwrap());
            let len = u32::from_ne_bytes(data[40..44].try_into().unwrap()) as usize;
            let path = data.get(fixed..fixed + len).ok_or(DecodeError::Truncated {
                kind: h.kind,
                need: fixed + len,
                got: data.len(),
            })?;
            Ok(Record::Exec(Exec {
                at,
                cgroup_id,
                path: cstr(path),
                held: h.func == dbtel_common::loader::HELD,
            }))
        }
        _ => client(h, at, data).map(Record::Client),
    }
}

/// A client (libpq) record.
pub fn decode(data: &[u8]) -> Result<Event, DecodeError> {
    let (h, at) = header(data)?;
    client(h, at, data)
}

fn client(h: Header, at: Origin, data: &[u8]) -> Result<Event, DecodeError> {
    match Kind::from_u16(h.kind) {
        Some(Kind::Query) => {
            // Only the used part of the text is sent: read the fixed part, then the text.
            let fixed = QueryEvent::TEXT_OFFSET;
            if data.len() < fixed {
                return Err(DecodeError::Truncated {
                    kind: h.kind,
                    need: fixed,
                    got: data.len(),
                });
            }
            let text_len = u32::from_ne_bytes(data[32..36].try_into().unwrap()) as usize;
            let name_len = u32::from_ne_bytes(data[36..40].try_into().unwrap()) as usize;
            let flags = u32::from_ne_bytes(data[40..44].try_into().unwrap());
            let name_bytes = &data[48..48 + dbtel_common::NAME_CAP];
            let text_bytes = data
                .get(fixed..fixed + text_len)
                .ok_or(DecodeError::Truncated {
                    kind: h.kind,
                    need: fixed + text_len,
                    got: data.len(),
                })?;
            let name = texts::shared(&name_bytes[..name_len.min(name_bytes.len())]);
            let text = (flags & qflags::TEXT_FAULT == 0).then(|| texts::shared(text_bytes));
            Ok(Event::Call {
                at,
                func: h.func,
                text,
                name,
                truncated: flags & qflags::TRUNCATED != 0,
            })
        }
        Some(Kind::Result) => {
            let r: ResultEvent = read(data, h.kind)?;
            let sqlstate = cstr(&r.sqlstate);
            Ok(Event::Result {
                at,
                result: r.result,
                status: r.status,
                ntuples: r.ntuples,
                cmd_status: texts::shared(&r.cmd_status),
                sqlstate: (!sqlstate.is_empty()).then_some(sqlstate),
                nulls: h.func != dbtel_common::func::PQGET_RESULT_POINT,
            })
        }
        Some(Kind::Conn) => {
            let c: ConnEvent = read(data, h.kind)?;
            Ok(Event::Conn {
                at,
                backend_pid: c.backend_pid,
                db: cstr(&c.db),
                host: cstr(&c.host),
                port: cstr(&c.port),
            })
        }
        Some(Kind::Finish) => Ok(Event::Finish { at }),
        Some(Kind::Pipeline) => {
            let p: PipelineEvent = read(data, h.kind)?;
            Ok(Event::Pipeline {
                at,
                func: h.func,
                ret: (p.returned != 0).then_some(p.ret),
            })
        }
        _ => Err(DecodeError::UnknownKind(h.kind)),
    }
}

#[path = "events_encode.rs"]
pub mod encode;

#[path = "events_texts.rs"]
mod texts;

#[cfg(test)]
mod tests {
    use super::*;
    use dbtel_common::func;

    const AT: Origin = Origin {
        pid: 10,
        tid: 11,
        ts_ns: 1_000,
        conn: 0xabc,
    };

    #[test]
    fn call_round_trips_with_variable_length_text() {
        let b = encode::call(AT, func::PQSEND_PREPARE, Some("select 1"), Some("s1"));
        assert_eq!(b.len(), QueryEvent::TEXT_OFFSET + 8);
        assert_eq!(
            decode(&b).unwrap(),
            Event::Call {
                at: AT,
                func: func::PQSEND_PREPARE,
                text: Some("select 1".into()),
                name: "s1".into(),
                truncated: false
            }
        );
    }

    #[test]
    fn result_and_conn_round_trip() {
        let b = encode::result(AT, 0x77, 7, 0, "", "42P01");
        let Event::Result {
            sqlstate, status, ..
        } = decode(&b).unwrap()
        else {
            panic!()
        };
        assert_eq!((status, sqlstate.as_deref()), (7, Some("42P01")));
        let b = encode::conn(AT, 4242, "postgres", "/var/run/postgresql", "5432");
        assert_eq!(
            decode(&b).unwrap(),
            Event::Conn {
                at: AT,
                backend_pid: 4242,
                db: "postgres".into(),
                host: "/var/run/postgresql".into(),
                port: "5432".into()
            }
        );
        assert_eq!(
            decode(&encode::finish(AT)).unwrap(),
            Event::Finish { at: AT }
        );
        let enter = encode::pipeline(AT, func::PQENTER_PIPELINE_MODE, Some(1));
        assert_eq!(
            decode(&enter).unwrap(),
            Event::Pipeline {
                at: AT,
                func: func::PQENTER_PIPELINE_MODE,
                ret: Some(1)
            }
        );
        let sync = encode::pipeline(AT, func::PQPIPELINE_SYNC, None);
        assert_eq!(
            decode(&sync).unwrap(),
            Event::Pipeline {
                at: AT,
                func: func::PQPIPELINE_SYNC,
                ret: None
            }
        );
    }

    #[test]
    fn server_hits_round_trip() {
        let b = encode::server(
            AT,
            dbtel_common::site::STATEMENT_STATUS,
            [0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Some("select 1"),
        );
        assert_eq!(b.len(), ServerEvent::TEXT_OFFSET + 8);
        let want = ServerHit {
            at: AT,
            site: 1,
            args: [0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            text: Some("select 1".into()),
            truncated: false,
            held: None,
        };
        assert_eq!(decode_record(&b).unwrap(), Record::Server(want));
        let Record::Server(idle) =
            decode_record(&encode::server(AT, 1, [0; USDT_MAX_ARGS], None)).unwrap()
        else {
            panic!()
        };
        assert_eq!(idle.text, None);
        assert_eq!(
            decode_record(&encode::server_exit(AT)).unwrap(),
            Record::ServerExit(AT)
        );
        assert_eq!(
            decode_record(&encode::finish(AT)).unwrap(),
            Record::Client(Event::Finish { at: AT })
        );
    }

    #[test]
    fn a_held_completion_rides_with_the_next_text_and_comes_first() {
        let held = dbtel_common::Held {
            ts_ns: 77,
            args: [9, 1234],
        };
        let mut b = encode::server(
            AT,
            dbtel_common::site::STATEMENT_STATUS,
            [0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Some("select 2"),
        );
        let words = [held.ts_ns, held.args[0], held.args[1]];
        for (i, w) in words.into_iter().enumerate() {
            let at = ServerEvent::HELD_OFFSET + 8 * i;
            b[at..at + 8].copy_from_slice(&w.to_ne_bytes());
        }
        let Record::Server(hit) = decode_record(&b).unwrap() else {
            panic!()
        };
        assert_eq!(hit.held, Some(held));
        assert_eq!(hit.text.as_deref(), Some("select 2"));
        assert_eq!(hit.args[0], 0x55, "its own arguments untouched");
        let done = ServerHit::completion(hit.at, held);
        assert_eq!(
            (
                done.site,
                done.at.ts_ns,
                done.at.pid,
                done.args[0],
                done.args[1]
            ),
            (dbtel_common::site::COMMAND_DONE, 77, AT.pid, 9, 1234),
            "EndCommand's hit as it was, at its own time"
        );
        assert_eq!((done.text, done.held), (None, None));
    }

    #[test]
    fn exec_and_client_exit_round_trip() {
        let b = encode::exec(AT, 4026531835, "/usr/lib/postgresql/15/bin/psql");
        assert_eq!(b.len(), ExecEvent::PATH_OFFSET + 31);
        assert_eq!(
            decode_record(&b).unwrap(),
            Record::Exec(Exec {
                at: AT,
                cgroup_id: 4026531835,
                path: "/usr/lib/postgresql/15/bin/psql".into(),
                held: false,
            })
        );
        assert_eq!(
            decode_record(&encode::client_exit(AT)).unwrap(),
            Record::ClientExit(AT)
        );
        assert_eq!(
            decode_record(&encode::loaded(AT, true)).unwrap(),
            Record::Loaded { at: AT, held: true }
        );
        assert_eq!(
            decode_record(&encode::loaded(AT, false)).unwrap(),
            Record::Loaded {
                at: AT,
                held: false
            }
        );
        // A path longer than the record holds is an error, not a read past its end.
        let mut cut = b.clone();
        cut.truncate(b.len() - 4);
        assert!(matches!(
            decode_record(&cut),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Short(8)));
        let mut b = encode::finish(AT);
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(99)));
        let b = encode::result(AT, 1, 2, 3, "SELECT 3", "");
        assert!(matches!(
            decode(&b[..40]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
