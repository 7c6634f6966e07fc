//! sqlcommenter comments (`/*key='value',...*/`, as OpenTelemetry and
//! Google's sqlcommenter libraries append to query texts): the traceparent
//! joins the database span to the application's trace, and the comment
//! leaves the exported text (its other keys can carry user data) and the
//! facts cache key (a new traceparent per request would be a new entry).
//!
//! Strict on purpose: a comment is taken only when all of it parses as
//! sqlcommenter, so MySQL conditional comments (`/*!40101 ...*/`), optimizer
//! hints (`/*+ ... */`) and prose stay in the text.

use std::borrow::Cow;

/// A W3C trace context parent (`traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// A query text split into its statement and its sqlcommenter comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commented<'a> {
    /// The text without the sqlcommenter comment (surrounding whitespace it
    /// leaves trimmed at the join; the rest of the text byte-identical).
    pub body: Cow<'a, str>,
    /// The comment as it was, `/*...*/` included (None: no sqlcommenter
    /// comment).
    pub comment: Option<&'a str>,
    pub traceparent: Option<TraceParent>,
}

/// Whether `sql` may hold a sqlcommenter comment: one begins or ends it (a
/// cheap test before [`split`], for every text the agent sees).
pub fn may_have(sql: &str) -> bool {
    let end = sql.trim_end_matches(|c: char| c.is_ascii_whitespace() || c == ';');
    end.ends_with("*/") || sql.trim_start().starts_with("/*")
}

/// The traceparent of a text's sqlcommenter comment, if any.
pub fn traceparent_in(sql: &str) -> Option<TraceParent> {
    if may_have(sql) {
        split(sql).traceparent
    } else {
        None
    }
}

/// Takes the sqlcommenter comment out of `sql`: the one at the end (before
/// an optional `;`), else a leading one (some Java agents prepend it).
/// Anything else returns `sql` unchanged with `comment` None.
pub fn split(sql: &str) -> Commented<'_> {
    if let Some(c) = trailing(sql).and_then(|r| taken(sql, r)) {
        return c;
    }
    // A trailing comment that is not sqlcommenter (a hint, prose) still
    // lets a prepended one be taken.
    if let Some(c) = leading(sql).and_then(|r| taken(sql, r)) {
        return c;
    }
    Commented {
        body: Cow::Borrowed(sql),
        comment: None,
        traceparent: None,
    }
}

/// Byte range of the comment, `/*` to `*/` included.
type Range = (usize, usize);

/// The last comment of the text when only whitespace and an optional `;`
/// follow it.
fn trailing(sql: &str) -> Option<Range> {
    let t = sql.trim_ascii_end();
    let t = t.strip_suffix(';').map_or(t, str::trim_ascii_end);
    if t.len() < 4 || !t.ends_with("*/") {
        return None;
    }
    let close = t.len() - 2;
    let open = t[..close].rfind("/*")?;
    // An opener before it that nothing closes: this is the inside of
    // another comment (`/* note /*a='b'*/`). Quote-blind, so a literal
    // holding `/*` refuses too: rare, and refusing only loses the trace link.
    let head = &sql[..open];
    if head
        .rfind("/*")
        .is_some_and(|i| !head[i + 2..].contains("*/"))
    {
        return None;
    }
    Some((open, t.len()))
}

/// A comment with only whitespace before it.
fn leading(sql: &str) -> Option<Range> {
    let open = sql.len() - sql.trim_ascii_start().len();
    if !sql[open..].starts_with("/*") {
        return None;
    }
    // The first close ends it; a nested opener then fails the parse.
    let close = sql[open + 2..].find("*/")? + open + 2;
    Some((open, close + 2))
}

/// The split at `(open, end)` when that comment is sqlcommenter and leaves
/// a statement.
fn taken(sql: &str, (open, end): Range) -> Option<Commented<'_>> {
    let comment = &sql[open..end];
    let pairs = pairs(&comment[2..comment.len() - 2])?;
    let head = sql[..open].trim_ascii_end();
    let tail = sql[end..].trim_ascii_start();
    let empty = |s: &str| s.bytes().all(|b| b == b';' || b.is_ascii_whitespace());
    if empty(head) && empty(tail) {
        // Only a comment: nothing was commented.
        return None;
    }
    let body = if tail.is_empty() {
        Cow::Borrowed(head)
    } else if head.is_empty() {
        Cow::Borrowed(tail)
    } else {
        Cow::Owned([head, tail].concat())
    };
    Some(Commented {
        body,
        comment: Some(comment),
        traceparent: traceparent_of(&pairs),
    })
}

/// A raw (still encoded) key and value.
type Pair<'a> = (&'a str, &'a str);

/// `key='value'(,key='value')*` (or `key=123`), whitespace allowed around
/// pairs; None when any of it is something else. Values keep their `\'`
/// escapes.
fn pairs(content: &str) -> Option<Vec<Pair<'_>>> {
    let mut out = Vec::new();
    let mut rest = content.trim_ascii_start();
    loop {
        let key_len = rest
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b"_.%-".contains(&b)))
            .unwrap_or(rest.len());
        if key_len == 0 {
            return None;
        }
        let key = &rest[..key_len];
        rest = rest[key_len..].strip_prefix('=')?;
        if let Some(quoted) = rest.strip_prefix('\'') {
            let value_len = quoted_len(quoted)?;
            out.push((key, &quoted[..value_len]));
            rest = quoted[value_len + 1..].trim_ascii_start();
        } else {
            // A bare number: OpenTelemetry's Python commenter writes the
            // repr of integers (`dbapi_threadsafety=2`).
            let value_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            if value_len == 0 {
                return None;
            }
            out.push((key, &rest[..value_len]));
            rest = rest[value_len..].trim_ascii_start();
        }
        if rest.is_empty() {
            return Some(out);
        }
        rest = rest.strip_prefix(',')?.trim_ascii_start();
    }
}

/// Length of a value up to its closing quote (`\'` does not close).
fn quoted_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The traceparent pair's value when it is valid W3C; a repeated key is
/// ambiguous, so none.
fn traceparent_of(pairs: &[Pair<'_>]) -> Option<TraceParent> {
    let mut found = pairs
        .iter()
        .filter(|(k, _)| url_decoded(k) == "traceparent");
    let (_, v) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    parse_traceparent(&url_decoded(&unescaped(v)))
}

/// A value without its `\'` escapes.
fn unescaped(v: &str) -> Cow<'_, str> {
    if v.contains("\\'") {
        Cow::Owned(v.replace("\\'", "'"))
    } else {
        Cow::Borrowed(v)
    }
}

/// Percent-decoding (RFC 3986: `+` stays). A `%` not followed by two hex
/// digits is kept as is (psycopg2 doubles `%` for its paramstyle); bytes
/// that do not make UTF-8 become U+FFFD.
fn url_decoded(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| Some((hex_digit(h[0])? << 4) | hex_digit(h[1])?));
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// W3C trace context: `VV-<32 hex>-<16 hex>-<2 hex>`, lowercase; version
/// `ff` and all-zero ids are invalid; versions above 00 may append fields.
pub fn parse_traceparent(s: &str) -> Option<TraceParent> {
    let lower_hex = |f: &str| f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let field = |from: usize, len: usize| {
        s.get(from..from + len)
            .filter(|f| lower_hex(f))
            .filter(|_| s.as_bytes().get(from + len).is_none_or(|&b| b == b'-'))
    };
    let version = field(0, 2)?;
    let trace = field(3, 32)?;
    let span = field(36, 16)?;
    let flags = field(53, 2)?;
    if version == "ff" || (version == "00" && s.len() != 55) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some(TraceParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

#[cfg(test)]
#[path = "sqlcomment_tests.rs"]
mod tests;
