//! SQL-level prepared statements (`PREPARE name AS …`, `EXECUTE name(…)`,
//! `DEALLOCATE name`): they share one namespace per session with the
//! protocol's named statements.

/// A statement name as PostgreSQL folds it: unquoted lower-cased.
fn name(word: &str) -> Option<String> {
    if let Some(q) = word.strip_prefix('"') {
        return q.strip_suffix('"').map(|n| n.replace("\"\"", "\""));
    }
    (!word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80))
    .then(|| word.to_lowercase())
}

/// The first word (to whitespace or `(`), and what follows it.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = if let Some(quoted) = s.strip_prefix('"') {
        quoted.find('"').map_or(s.len(), |i| i + 2)
    } else {
        s.find(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .unwrap_or(s.len())
    };
    (&s[..end], &s[end..])
}

/// `PREPARE name [ ( types ) ] AS statement` → (name, statement).
pub fn prepare(text: &str) -> Option<(String, &str)> {
    let (kw, rest) = word(text);
    if !kw.eq_ignore_ascii_case("PREPARE") {
        return None;
    }
    let (n, mut rest) = word(rest);
    let n = name(n)?;
    rest = rest.trim_start();
    if rest.starts_with('(') {
        rest = &rest[rest.find(')')? + 1..];
    }
    let (as_kw, body) = word(rest);
    as_kw.eq_ignore_ascii_case("AS").then(|| (n, body.trim()))
}

/// `EXECUTE name [ ( args ) ]` → name.
pub fn execute(text: &str) -> Option<String> {
    let (kw, rest) = word(text);
    if !kw.eq_ignore_ascii_case("EXECUTE") {
        return None;
    }
    name(word(rest).0)
}

/// What a statement does to its session's prepared statements.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    Prepare(String, &'a str),
    Execute(String),
    /// A name, or None for ALL.
    Deallocate(Option<String>),
}

/// Cheap for every other statement: its first letter says no.
pub fn action(text: &str) -> Option<Action<'_>> {
    if !text
        .trim_start()
        .starts_with(['P', 'p', 'E', 'e', 'D', 'd'])
    {
        return None;
    }
    if let Some((name, body)) = prepare(text) {
        return Some(Action::Prepare(name, body));
    }
    execute(text)
        .map(Action::Execute)
        .or_else(|| deallocate(text).map(Action::Deallocate))
}

/// `DEALLOCATE [ PREPARE ] name | ALL` → the name, or None for ALL.
pub fn deallocate(text: &str) -> Option<Option<String>> {
    let (kw, rest) = word(text);
    if !kw.eq_ignore_ascii_case("DEALLOCATE") {
        return None;
    }
    let (mut w, rest) = word(rest);
    if w.eq_ignore_ascii_case("PREPARE") {
        w = word(rest).0;
    }
    if w.eq_ignore_ascii_case("ALL") {
        Some(None)
    } else {
        name(w).map(Some)
    }
}
