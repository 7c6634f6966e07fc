//! What a user expects dbtel to export for a statement, written apart from
//! the agent's own SQL handling (ground truth, not self-agreement): every
//! literal becomes `?`, comments go, everything else stays as written.

/// `sql` with each literal (quoted string of any kind, dollar-quoted string,
/// number) replaced by `?` and comments removed.
pub fn expected_text(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // The last byte kept, for "is this the start of a word".
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let prev_is_word = |out: &String| out.as_bytes().last().is_some_and(|&c| word(c));
    while i < b.len() {
        let c = b[i];
        let rest = &sql[i..];
        if rest.starts_with("--") {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        }
        if rest.starts_with("/*") {
            let (mut depth, mut j) = (0, i);
            while j < b.len() {
                if sql[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if sql[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = j;
            continue;
        }
        if c == b'"' {
            let end = sql[i + 1..].find('"').map_or(b.len(), |e| i + 2 + e);
            out.push_str(&sql[i..end]);
            i = end;
            continue;
        }
        // Prefixed strings: E'', U&'', B'', X'', N''.
        if !prev_is_word(&out) {
            let lower = rest.to_ascii_lowercase();
            let prefix = ["u&'", "e'", "b'", "x'", "n'"]
                .iter()
                .find(|p| lower.starts_with(*p))
                .map(|p| p.len() - 1);
            if let Some(p) = prefix {
                let escapes = lower.starts_with("e'");
                i = skip_string(b, i + p, escapes);
                out.push('?');
                continue;
            }
        }
        if c == b'\'' {
            i = skip_string(b, i, false);
            out.push('?');
            continue;
        }
        if c == b'$' && !prev_is_word(&out) {
            // $tag$...$tag$ (a tag does not start with a digit; $1 is a parameter).
            let tag_end = rest[1..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map(|e| e + 1);
            if let Some(e) = tag_end {
                let tag = &rest[..=e];
                if rest.as_bytes()[e] == b'$'
                    && !tag[1..].starts_with(|ch: char| ch.is_ascii_digit())
                {
                    if let Some(close) = rest[tag.len()..].find(tag) {
                        i += tag.len() + close + tag.len();
                        out.push('?');
                        continue;
                    }
                }
            }
        }
        let digit_at = |k: usize| {
            b.get(k).is_some_and(u8::is_ascii_digit)
                || (b.get(k) == Some(&b'.') && b.get(k + 1).is_some_and(u8::is_ascii_digit))
        };
        // A minus sign before a number is part of the value unless a value precedes it (`a - 1`).
        let negative = c == b'-' && digit_at(i + 1) && !follows_value(&out);
        if negative || (digit_at(i) && !prev_is_word(&out)) {
            let start = if negative { i + 1 } else { i };
            let mut j = start;
            while j < b.len() {
                let d = b[j];
                let exp_sign = (d == b'+' || d == b'-')
                    && j > start
                    && matches!(b[j - 1], b'e' | b'E')
                    && !sql[start..j].to_ascii_lowercase().starts_with("0x");
                if d.is_ascii_alphanumeric()
                    || d == b'_'
                    || (d == b'.' && !sql[j..].starts_with(".."))
                    || exp_sign
                {
                    j += 1;
                } else {
                    break;
                }
            }
            i = j;
            out.push('?');
            continue;
        }
        let ch = rest.chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// True if `out` ends with a value (a name, a literal, a closing bracket):
/// a following minus sign is then an operator.
fn follows_value(out: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "select",
        "where",
        "and",
        "or",
        "not",
        "then",
        "else",
        "when",
        "return",
        "by",
        "limit",
        "offset",
        "in",
        "is",
        "values",
        "between",
        "as",
        "set",
        "case",
        "like",
        "returning",
        "having",
        "on",
        "to",
        "from",
        "with",
        "default",
    ];
    let t = out.trim_end();
    let Some(last) = t.chars().last() else {
        return false;
    };
    if last == ')' || last == ']' || last == '?' || last == '"' {
        return true;
    }
    if !(last.is_alphanumeric() || last == '_') {
        return false;
    }
    let word = t
        .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("");
    !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
}

/// The index just past the quoted string that starts at `start` (a `'`);
/// `''` continues it, and with `escapes` so does a backslash.
fn skip_string(b: &[u8], start: usize, escapes: bool) -> usize {
    let mut j = start + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if escapes => j += 2,
            b'\'' if b.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// [`expected_text`] for MySQL/MariaDB's dialect: `'...'` and `"..."` are
/// strings (a backslash escapes the next character, a doubled quote
/// continues it), backticks quote identifiers, `#` and `-- ` (with a space)
/// start line comments and `/* */` does not nest (`/*!...*/` and `/*+...*/`
/// included), and `0x..`, `X'..'`, `b'..'`, `0b..`, `N'..'` are literals.
pub fn expected_mysql_text(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let prev_is_word = |out: &String| out.as_bytes().last().is_some_and(|&c| word(c));
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let rest = &sql[i..];
        let dash_comment = rest.starts_with("--")
            && b.get(i + 2)
                .is_none_or(|&d| d == b' ' || d == b'\t' || d == b'\n' || d == b'\r');
        if c == b'#' || dash_comment {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        }
        if let Some(body) = rest.strip_prefix("/*") {
            i = body.find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            continue;
        }
        if c == b'`' {
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == b'`' && b.get(j + 1) == Some(&b'`') {
                    j += 2;
                } else if b[j] == b'`' {
                    j += 1;
                    break;
                } else {
                    j += 1;
                }
            }
            out.push_str(&sql[i..j]);
            i = j;
            continue;
        }
        // N'..', X'..', B'..' and a charset introducer glued to its string (_utf8mb4'..').
        if !prev_is_word(&out) {
            let lower = rest.to_ascii_lowercase();
            let letter = ["n'", "x'", "b'"].iter().any(|p| lower.starts_with(p));
            let introducer = c == b'_' && {
                let len = rest.bytes().take_while(|&d| word(d)).count();
                len > 1 && matches!(b.get(i + len), Some(b'\'' | b'"'))
            };
            if letter || introducer {
                let q = if letter {
                    i + 1
                } else {
                    i + rest.bytes().take_while(|&d| word(d)).count()
                };
                i = skip_mysql_string(b, q);
                out.push('?');
                continue;
            }
        }
        if c == b'\'' || c == b'"' {
            i = skip_mysql_string(b, i);
            out.push('?');
            continue;
        }
        let digit_at = |k: usize| {
            b.get(k).is_some_and(u8::is_ascii_digit)
                || (b.get(k) == Some(&b'.') && b.get(k + 1).is_some_and(u8::is_ascii_digit))
        };
        let negative = c == b'-' && digit_at(i + 1) && !follows_value(&out);
        if negative || (digit_at(i) && !prev_is_word(&out)) {
            let start = if negative { i + 1 } else { i };
            let lower = sql[start..].to_ascii_lowercase();
            let mut j = start;
            if lower.starts_with("0x") || lower.starts_with("0b") {
                j += 2;
                while j < b.len() && b[j].is_ascii_hexdigit() {
                    j += 1;
                }
            } else {
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                if matches!(b.get(j), Some(b'e' | b'E')) {
                    let k = j + 1 + usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
                    if b.get(k).is_some_and(u8::is_ascii_digit) {
                        j = k;
                        while j < b.len() && b[j].is_ascii_digit() {
                            j += 1;
                        }
                    }
                }
            }
            i = j;
            out.push('?');
            continue;
        }
        let ch = rest.chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The index just past the MySQL string whose quote (`'` or `"`) is at `start`.
fn skip_mysql_string(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let mut j = start + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            q if q == quote && b.get(j + 1) == Some(&quote) => j += 2,
            q if q == quote => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::{expected_mysql_text as my, expected_text as e};

    #[test]
    fn literals_become_placeholders_and_the_rest_stays() {
        assert_eq!(
            e("select 1 != 2, 'a' || 'b' -- note\nfrom t"),
            "select ? != ?, ? || ? \nfrom t"
        );
        assert_eq!(
            e("select E'it\\'s', U&'d!0061' UESCAPE '!', x'1F', $t$ a $t$, $$b$$, $1"),
            "select ?, ? UESCAPE ?, ?, ?, ?, $1"
        );
        assert_eq!(
            e("select 0x1F + 0o17 + 1_000 + 1.5e-3 + .5, t1.c2 from t1"),
            "select ? + ? + ? + ? + ?, t1.c2 from t1"
        );
        assert_eq!(
            e("select 1 /* a /* nested */ b */ + 2, \"Col 1\""),
            "select ?  + ?, \"Col 1\""
        );
        assert_eq!(e("select 'it''s'"), "select ?");
        assert_eq!(
            e("select -1, a -1, f(-2.5), x = -3, (b) - 4"),
            "select ?, a -?, f(?), x = ?, (b) - ?"
        );
    }

    #[test]
    fn mysql_dialect() {
        assert_eq!(
            my(r#"insert into t values (1, 'it\'s', "say \"hi\"", 'a''b', "c""d", '\\')"#),
            "insert into t values (?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(
            my("select `a``b`, `x y` from `t` where \"s\" = 'v'"),
            "select `a``b`, `x y` from `t` where ? = ?"
        );
        assert_eq!(
            my("select a # it's 1\nfrom t -- 'x'\nwhere b = 2 /* 3 */"),
            "select a \nfrom t \nwhere b = ? "
        );
        assert_eq!(my("select 1--1, /*!40101 'x' */ 0x1F, X'4D', x'ff', b'01', B'1', 0b01, N'n', _utf8mb4'u'"), "select ?-?,  ?, ?, ?, ?, ?, ?, ?, ?");
        assert_eq!(
            my("select sleep(0.2), -1.5e-3, a-1, t1.c2, .5 from t1"),
            "select sleep(?), ?, a-?, t1.c2, ? from t1"
        );
        assert_eq!(
            my("select _id, $x from t where c = -2"),
            "select _id, $x from t where c = ?"
        );
        assert_eq!(my("SET autocommit=0"), "SET autocommit=?");
    }
}
