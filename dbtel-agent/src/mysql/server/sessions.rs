//! Who a connection is: its user, client address and database, which the
//! probes do not read (three more strings per statement). The catalog reads
//! them from PROCESSLIST when a connection is first seen (at its login, or
//! its first statement if it began before the agent); the connection's
//! spans wait for the answer, at most [`HOLD_NS`], then go without.

use std::collections::VecDeque;

use opentelemetry::{KeyValue, Value};

use super::*;

/// Spans held per connection while its session is looked up (past it, the
/// oldest go without).
pub const HELD_MAX: usize = 256;
/// How long spans wait for their connection's session.
pub const HOLD_NS: u64 = 500_000_000;

/// A session as PROCESSLIST shows it, or as its connection said when it
/// ended (see `session_sites`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// `localhost` (a unix socket), or the client's `address:port`.
    pub host: String,
    pub db: Option<String>,
    /// The client's IP address alone (said at the end, without its port):
    /// `host` is then not used.
    pub ip: Option<String>,
}

/// Waiting for sessions: connections and since when.
pub type Awaiting = VecDeque<((u32, u64), u64)>;

/// db.namespace, user.name and where the client is.
pub fn session_attributes(s: &Session, db: Option<&str>, a: &mut Vec<KeyValue>) {
    if let Some(d) = db.or(s.db.as_deref()) {
        a.push(KeyValue::new("db.namespace", d.to_string()));
    }
    if !s.user.is_empty() {
        a.push(KeyValue::new("user.name", s.user.clone()));
    }
    if let Some(ip) = &s.ip {
        a.push(KeyValue::new("client.address", ip.clone()));
        a.push(KeyValue::new("network.transport", "tcp"));
        return;
    }
    match s.host.rsplit_once(':') {
        Some((addr, port)) if port.parse::<u16>().is_ok() => {
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            a.push(KeyValue::new("client.address", addr.to_string()));
            a.push(KeyValue::new(
                "client.port",
                i64::from(port.parse::<u16>().expect("checked")),
            ));
            a.push(KeyValue::new("network.transport", "tcp"));
        }
        _ if s.host == "localhost" => a.push(KeyValue::new("network.transport", "unix")),
        _ if !s.host.is_empty() => a.push(KeyValue::new("client.address", s.host.clone())),
        _ => {}
    }
}

/// The block of a connection's session attributes, built once until its
/// database changes (see `Conn::described`).
fn described(c: &mut Conn, s: &Session) -> Arc<AttrBlock> {
    c.described
        .get_or_insert_with(|| {
            let mut a = Vec::with_capacity(5);
            session_attributes(s, c.db.as_deref(), &mut a);
            AttrBlock::new(a)
        })
        .clone()
}

/// A connection's held spans go out with its session's attributes.
fn release_described(c: &mut Conn, s: &Session, out: &mut Vec<DbSpan>) {
    let block = described(c, s);
    for mut span in c.held.drain(..) {
        span.set_conn_block(block.clone());
        out.push(span);
    }
}

/// The database a `USE db` text switches to.
pub fn used_database(text: &str) -> Option<String> {
    // Every statement's text passes here: most are told apart by their first word's first bytes.
    let head = text.trim_start().as_bytes();
    if !head
        .get(..3)
        .is_some_and(|k| k.eq_ignore_ascii_case(b"use"))
    {
        return None;
    }
    let t = text.trim().trim_end_matches(';').trim();
    let (kw, rest) = t.split_at(t.find(char::is_whitespace)?);
    kw.eq_ignore_ascii_case("use")
        .then(|| rest.trim().trim_matches('`').to_string())
        .filter(|d| !d.is_empty())
}

fn connection_of(s: &DbSpan) -> Option<u64> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "db.mysql.connection_id")
        .and_then(|kv| match kv.value {
            Value::I64(n) => Some(n as u64),
            _ => None,
        })
}

impl Tracker {
    /// A connection first seen: its session is asked for (when there is a catalog).
    pub(super) fn ask_session(&mut self, key: (u32, u64), ts: u64) {
        if !self.asking {
            return;
        }
        if let Some(c) = self.conns.get_mut(key) {
            c.awaiting = true;
            self.session_asks.push(key);
            self.awaiting.push_back((key, ts));
        }
    }

    /// The spans `out[mark..]` were made for connection `key`: they get its
    /// session's attributes, or wait for them.
    pub(super) fn route(&mut self, key: (u32, u64), mark: usize, out: &mut Vec<DbSpan>) {
        if out.len() <= mark {
            return;
        }
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        // Known: the attributes are added in place (every statement passes here).
        if let Some(session) = c.session.clone() {
            let block = described(c, &session);
            for s in out[mark..]
                .iter_mut()
                .filter(|s| connection_of(s) == Some(key.1))
            {
                s.set_conn_block(block.clone());
            }
            return;
        }
        if !c.awaiting {
            return;
        }
        // Held past the bound: the oldest go without (after this loop, so
        // they are not taken back).
        let mut overflow = Vec::new();
        let mut i = mark;
        while i < out.len() {
            if connection_of(&out[i]) != Some(key.1) {
                i += 1;
                continue;
            }
            if c.held.len() >= HELD_MAX {
                overflow.push(c.held.remove(0));
            }
            c.held.push(out.remove(i));
        }
        out.append(&mut overflow);
    }

    /// What a connection said of itself as it ended (before its end), kept
    /// while its session is not known.
    pub(super) fn said_at_end(&mut self, hit: &ServerHit) {
        let Some(c) = self
            .conns
            .get_mut((hit.at.pid, hit.args[0]))
            .filter(|c| c.awaiting)
        else {
            return;
        };
        let s = c.ending.get_or_insert_with(Session::default);
        let text = hit
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        match hit.site {
            mysite::SESSION_USER => s.user = text.unwrap_or_default(),
            mysite::SESSION_DB => s.db = text,
            mysite::SESSION_ADDRESS => match text {
                Some(ip) => s.ip = Some(ip),
                None => s.host = "localhost".into(),
            },
            _ => {}
        }
    }

    /// The connection ended: what it left open ends; while its session is
    /// looked up, it stays (closed) with its spans until the answer, unless
    /// it said who it was as it ended.
    pub(super) fn closed(&mut self, key: (u32, u64), mut c: Conn, ts: u64, out: &mut Vec<DbSpan>) {
        if !c.awaiting {
            return self.let_go(key, c, ts, out);
        }
        let mark = out.len();
        if let Some(p) = c.pending.take() {
            self.emit(key, &mut c, p, out);
        }
        if let Some(t) = c.txn.take() {
            self.close_txn(key, t, ts, Outcome::Incomplete, None, out);
        }
        c.held.extend(out.drain(mark..));
        if let Some(s) = c.ending.take() {
            // It said who it was: nothing left to wait for.
            return release_described(&mut c, &s, out);
        }
        c.closed = true;
        let mut c = Some(c);
        if let Some((old, evicted)) = self
            .conns
            .touch(key, || c.take().expect("once"), Conn::idle)
        {
            self.let_go(old, evicted, ts, out);
        }
    }

    /// The catalog's answer for a connection (None: not there any more).
    pub fn session(&mut self, key: (u32, u64), s: Option<Session>, out: &mut Vec<DbSpan>) {
        self.answer_session(key, s, out);
        if self.conns.get(key).is_some_and(|c| c.closed) {
            self.conns.remove(key);
        }
    }

    fn answer_session(&mut self, key: (u32, u64), s: Option<Session>, out: &mut Vec<DbSpan>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if s.is_none() && !c.closed {
            // Gone from PROCESSLIST while its end is still on its way here
            // (a short connection): what it says as it ends, or the wait's end.
            return;
        }
        c.awaiting = false;
        if let Some(s) = s {
            let s = Arc::new(s);
            c.described = None;
            release_described(c, &s, out);
            c.session = Some(s);
        } else {
            out.append(&mut c.held);
        }
    }

    /// Spans held past [`HOLD_NS`] go without their session.
    pub fn release_held(&mut self, now_ns: u64, out: &mut Vec<DbSpan>) {
        while let Some(&(key, since)) = self.awaiting.front() {
            if now_ns.saturating_sub(since) < HOLD_NS {
                break;
            }
            self.awaiting.pop_front();
            if let Some(c) = self.conns.get_mut(key).filter(|c| c.awaiting) {
                c.awaiting = false;
                out.append(&mut c.held);
                if c.closed {
                    self.conns.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(host: &str) -> Vec<KeyValue> {
        let s = Session {
            user: "app".into(),
            host: host.into(),
            db: Some("shop".into()),
            ip: None,
        };
        let mut a = vec![];
        session_attributes(&s, None, &mut a);
        a
    }

    #[test]
    fn where_the_client_is() {
        assert_eq!(
            attrs("127.0.0.1:50312"),
            [
                KeyValue::new("db.namespace", "shop"),
                KeyValue::new("user.name", "app"),
                KeyValue::new("client.address", "127.0.0.1"),
                KeyValue::new("client.port", 50312i64),
                KeyValue::new("network.transport", "tcp"),
            ]
        );
        assert_eq!(
            attrs("localhost")[2],
            KeyValue::new("network.transport", "unix")
        );
        assert_eq!(
            attrs("[::1]:4000")[2],
            KeyValue::new("client.address", "::1")
        );
        assert_eq!(
            attrs("db-client.example")[2],
            KeyValue::new("client.address", "db-client.example")
        );
    }

    #[test]
    fn use_statements() {
        assert_eq!(used_database("USE shop").as_deref(), Some("shop"));
        assert_eq!(used_database("use `my db`;").as_deref(), Some("my db"));
        assert_eq!(used_database("user_update()"), None);
        assert_eq!(used_database("use"), None);
    }
}
