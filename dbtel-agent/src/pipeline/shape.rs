//! The shape of a query text: the text with its literal values blanked out,
//! used as a cache key so that `... where aid = 17` and `... where aid = 42`
//! share one tokenization. Only a key: the exported text still comes from
//! sqlparser's tokenizer (the first text of each shape).
//!
//! Two texts of one shape must obfuscate identically, so this scanner blanks
//! only tokens that are unambiguously literals to any SQL tokenizer, keeps
//! comments and quoted identifiers verbatim in the key, and gives up (`None`:
//! cache by the exact text) on anything subtler: prefixed or dollar-quoted
//! strings, digits running into letters, unterminated quotes or comments.
//! The same scanner obfuscates texts sqlparser cannot tokenize (syntax newer
//! than it, such as `|>`), where it succeeds ([`obfuscated`]).

use crate::pipeline::sql::Dialect;

/// `None`: no shape worth trusting; cache by the exact text.
pub fn shape(sql: &str) -> Option<String> {
    blank(sql, "'", "0", true, false)
}

/// [`shape`] in a dialect's lexis. MySQL's differs where a literal starts
/// or ends: `"..."` is a string, backslashes escape in strings, backticks
/// quote names, `#` starts a comment, `-- ` needs a space and `/* */` does
/// not nest. The MySQL key is never compared with a PostgreSQL one (one
/// cache per dialect).
pub fn shape_in(dialect: Dialect, sql: &str) -> Option<String> {
    blank(sql, "'", "0", true, dialect == Dialect::MySql)
}

/// `sql` with every literal `?` (and comments dropped unless `comments`), if
/// the scanner is sure of every literal in it (PostgreSQL's lexis).
pub fn obfuscated(sql: &str, comments: bool) -> Option<String> {
    blank(sql, "?", "?", comments, false)
}

/// Bytes of a name (or a number's, after a name's first byte): a table, as
/// the scan asks per byte.
const NAME_BYTES: [bool; 256] = name_bytes(false);
/// MySQL's: its names may start with `@` (`@v`, `@1`): a digit after one is a name's.
const MY_NAME_BYTES: [bool; 256] = name_bytes(true);

const fn name_bytes(my: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] =
            b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 || (my && b == b'@');
        c += 1;
    }
    t
}

/// `my`: MySQL's lexis (see [`shape_in`]).
fn blank(sql: &str, string: &str, number: &str, comments: bool, my: bool) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // Where the last verbatim run began (copied in slices, not byte by byte).
    let mut run = 0;
    let names = if my { &MY_NAME_BYTES } else { &NAME_BYTES };
    let ident = |c: u8| names[c as usize];
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        match c {
            // MySQL: `--` then whitespace is a comment, `--x` two minus signs: rare, not kept apart here.
            b'-' if my && b.get(i + 1) == Some(&b'-') && !dash_comment(&sql[i + 2..]) => {
                return None
            }
            // A comment to the end of the line: `--` (MySQL: before whitespace, above), or MySQL's `#`.
            b'-' | b'#' if (c == b'-' && b.get(i + 1) == Some(&b'-')) || (my && c == b'#') => {
                let start = i;
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |n| i + n);
                if !comments {
                    out.push_str(&sql[run..start]);
                    run = i;
                }
            }
            b'/' if my && b.get(i + 1) == Some(&b'*') => {
                // Not nested: the first `*/` ends it.
                let start = i;
                i += 2 + sql[i + 2..].find("*/")? + 2;
                if !comments {
                    out.push_str(&sql[run..start]);
                    run = i;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                let mut depth = 0usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return None,
                    }
                }
                if !comments {
                    out.push_str(&sql[run..start]);
                    run = i;
                }
            }
            b'`' if my => i = past_quoted(b, i, false)?,
            b'"' if !my => i = past_quoted(b, i, false)?,
            b'\'' | b'"' => {
                if ident(prev) || prev == b'&' {
                    return None; // E'..', B'..', U&'..', _utf8mb4'..', X'..': other rules
                }
                let start = i;
                i = past_quoted(b, i, my)?;
                out.push_str(&sql[run..start]);
                out.push_str(string);
                run = i;
            }
            b'$' if !ident(prev) && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None, // $tag$…$tag$
            b'0'..=b'9' | b'.'
                if !ident(prev) && (c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                if prev == b'.' {
                    return None; // t.1, a.5.: tokenizers split these their own ways
                }
                let start = i;
                let digits = |i: &mut usize| {
                    while b.get(*i).is_some_and(u8::is_ascii_digit) {
                        *i += 1;
                    }
                };
                digits(&mut i);
                if b.get(i) == Some(&b'.') {
                    i += 1;
                    digits(&mut i);
                }
                if matches!(b.get(i), Some(b'e' | b'E')) {
                    let mut j = i + 1;
                    if matches!(b.get(j), Some(b'+' | b'-')) {
                        j += 1;
                    }
                    if !b.get(j).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    i = j;
                    digits(&mut i);
                }
                if b.get(i).is_some_and(|&x| ident(x) || x == b'.') {
                    return None; // 1abc, 1.2.3: not a plain number
                }
                out.push_str(&sql[run..start]);
                out.push_str(number);
                run = i;
            }
            // A name is passed whole: no literal starts inside one (the arms
            // above see a digit or `$` only after a non-name byte), and the
            // match per byte was most of this scan's time.
            _ if ident(c) => {
                i += 1;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[run..]);
    Some(out)
}

/// True if `sql` certainly holds at most one statement (so it returns one
/// statement's results).
pub fn single_statement(sql: &str) -> bool {
    !sql.as_bytes().contains(&b';') || statements(sql).is_some_and(|v| v.len() <= 1)
}

/// The statements of a simple-protocol text, split at top-level `;` (pieces
/// holding only whitespace and comments are left out). `None` where this
/// scanner is unsure: dollar quotes, E'' and other prefixed strings, nested
/// comments, unterminated quotes or comments. No `;` at all is the common case.
pub fn statements(sql: &str) -> Option<Vec<&str>> {
    let b = sql.as_bytes();
    if !b.contains(&b';') {
        return Some(vec![sql]);
    }
    if let Some(one) = one_terminated(sql) {
        return Some(one.into_iter().collect());
    }
    scan(sql)
}

/// [`statements`] the long way: byte by byte.
fn scan(sql: &str) -> Option<Vec<&str>> {
    let b = sql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut out = Vec::new();
    let (mut start, mut content, mut i) = (0, false, 0);
    while i < b.len() {
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |n| i + n);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let n = sql[i + 2..].find("*/")?;
                if sql[i + 2..i + 2 + n].contains("/*") {
                    return None;
                }
                i += n + 4;
                continue;
            }
            // $1 or a$b; any other $ may open a dollar quote.
            b'$' if ident(prev) || b.get(i + 1).is_some_and(u8::is_ascii_digit) => content = true,
            b'$' => return None,
            b'\'' if ident(prev) || prev == b'&' => return None,
            b'\'' | b'"' => {
                i = past_quoted(b, i, false)?;
                content = true;
                continue;
            }
            b';' => {
                if content {
                    out.push(sql[start..i].trim());
                }
                (start, content) = (i + 1, false);
            }
            c if c.is_ascii_whitespace() => {}
            _ => content = true,
        }
        i += 1;
    }
    if content {
        out.push(sql[start..].trim());
    }
    Some(out)
}

/// The common case, without the scan below: one statement ended by the
/// text's only `;`, and nothing that quotes or comments (a `$` only before a
/// digit). `Some(None)`: an empty statement.
fn one_terminated(sql: &str) -> Option<Option<&str>> {
    let b = sql.as_bytes();
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace())?;
    if b[end] != b';' {
        return None;
    }
    let head = &b[..end];
    if !plain_dollars(head) {
        return None;
    }
    // Content as the scan counts it: any byte but ASCII whitespace (a text
    // of only other whitespace is one empty statement to it, not none).
    let content = head.iter().any(|c| !c.is_ascii_whitespace());
    Some(content.then(|| sql[..end].trim()))
}

/// Whether the text has no `;`, quote or comment opener, and `$` only
/// before a digit (parameters: `$1`).
fn plain_dollars(b: &[u8]) -> bool {
    // Two SIMD searches instead of a walk byte by byte (every statement
    // passes here, twice per text it reports on the server side).
    if memchr::memchr3(b';', b'\'', b'"', b).is_some() {
        return false;
    }
    memchr::memchr3_iter(b'$', b'-', b'/', b)
        .all(|i| b[i] == b'$' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
}

/// The index just past the quoted token opening at `i` (its quote character
/// doubled inside stands for itself); `None` if it never closes.
fn past_quoted(b: &[u8], mut i: usize, backslash: bool) -> Option<usize> {
    let q = b[i];
    i += 1;
    loop {
        match b.get(i) {
            Some(b'\\') if backslash => {
                b.get(i + 1)?;
                i += 2;
            }
            Some(&c) if c == q && b.get(i + 1) == Some(&q) => i += 2,
            Some(&c) if c == q => return Some(i + 1),
            Some(_) => i += 1,
            None => return None,
        }
    }
}

/// After a `--`: MySQL reads a comment when whitespace follows (as
/// sqlparser's tokenizer: any Unicode whitespace).
fn dash_comment(rest: &str) -> bool {
    rest.chars().next().is_some_and(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_way_agrees_with_the_scan() {
        let mut short = 0;
        for t in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "select 1 ;  \n",
            ";",
            " ; ",
            "select a$b;",
            "select $1, $22;",
            "select 'a';",
            "select 1 -- x;",
            "select $q$ a $q$;",
            "select 1; select 2;",
            "select \"a\";",
            "select 1/2;",
            "select 1;;",
            "select 1",
            "\u{3000};",
            "\x0B;",
        ] {
            if let Some(one) = one_terminated(t) {
                short += 1;
                assert_eq!(Some(one.into_iter().collect()), scan(t), "{t:?}");
            }
            assert_eq!(statements(t), scan(t), "{t:?}");
        }
        assert_eq!(short, 7, "the texts the short way takes");
    }

    #[test]
    fn plain_dollars_agrees_with_the_byte_walk() {
        let walk = |b: &[u8]| {
            b.iter().enumerate().all(|(i, &c)| match c {
                b';' | b'\'' | b'"' | b'-' | b'/' => false,
                b'$' => b.get(i + 1).is_some_and(u8::is_ascii_digit),
                _ => true,
            })
        };
        for t in [
            "",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select $1, $22, $3",
            "select $",
            "select $a",
            "select a$b",
            "select 1 - 2",
            "select 1 / 2",
            "select 'a'",
            "select \"a\"",
            "select 1; select 2",
            "$1$2$",
            "update pgbench_branches set bbalance = bbalance + $1 where bid = $2 and name = 'x'",
            "select é, 日本 from t where a = $9",
        ] {
            assert_eq!(plain_dollars(t.as_bytes()), walk(t.as_bytes()), "{t:?}");
        }
    }

    #[test]
    fn single_statements_are_told_from_several() {
        for one in [
            "select 1",
            "select 1;",
            "select 1 ; \n -- done\n",
            "select ';' from t",
            "select \"a;b\" from t; /* x; */",
            "",
            ";",
        ] {
            assert!(single_statement(one), "{one:?}");
        }
        for several in [
            "select 1; select 2",
            "begin; update t set a = 1; commit;",
            "select 'x;'; select 2",
            "select $$;$$",
            "select E'\\';'; select 1",
            "select 1; /* a /* nested */ */ select 2",
        ] {
            assert!(!single_statement(several), "{several:?}");
        }
        assert_eq!(
            statements("COMMIT; BEGIN ;-- next\n"),
            Some(vec!["COMMIT", "BEGIN"])
        );
        assert_eq!(
            statements("select 'a;b', $1; select a$b"),
            Some(vec!["select 'a;b', $1", "select a$b"])
        );
        assert_eq!(statements("select $q$;$q$; select 1"), None);
    }
    use crate::pipeline::sql::facts;

    #[test]
    fn literal_values_do_not_change_the_shape() {
        let a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 17;").unwrap();
        let b = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 981234;").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            shape("update t set s = 'it''s', f = 1.5e-3 where id = .5").unwrap(),
            "update t set s = ', f = 0 where id = 0"
        );
        assert_ne!(
            shape("select 1 from t1").unwrap(),
            shape("select 1 from t2").unwrap(),
            "digits inside names are names"
        );
        assert_eq!(
            shape("select $1, x$2").unwrap(),
            "select $1, x$2",
            "placeholders stay"
        );
    }

    #[test]
    fn comments_and_quoted_names_are_kept_verbatim() {
        let c1 = "select 1 /* traceparent='00-aa-01' */ -- n=5\n";
        let c2 = "select 1 /* traceparent='00-bb-01' */ -- n=5\n";
        assert_ne!(shape(c1), shape(c2));
        assert_ne!(
            shape("select \"a'1\" from t"),
            shape("select \"a'2\" from t")
        );
        assert_eq!(
            shape("select 2 /* a /* nested */ 3 */").unwrap(),
            "select 0 /* a /* nested */ 3 */"
        );
    }

    #[test]
    fn anything_subtle_has_no_shape() {
        for sql in [
            "select U&'x'a",
            "select t.1",
            "select a.5.",
            "select E'\\n'",
            "select $$x$$",
            "select 'cut",
            "select 1 /* cut",
            "select 1abc",
            "select 1e",
            "select \"cut",
            "select 1.2.3",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn texts_of_one_shape_obfuscate_identically() {
        let groups: &[&[&str]] = &[
            &[
                "select * from t where a = 1 and b = 'x'",
                "select * from t where a = 22 and b = 'yy''z'",
            ],
            &[
                "insert into t values (1, -2.5, 'a')",
                "insert into t values (3, -4e10, '')",
            ],
            &[
                "update t set v = v + 1 where id = 7 -- k=1",
                "update t set v = v + 99 where id = 8 -- k=1",
            ],
        ];
        for g in groups {
            let shapes: Vec<_> = g.iter().map(|s| shape(s).unwrap()).collect();
            assert!(shapes.windows(2).all(|w| w[0] == w[1]), "{g:?}");
            let texts: Vec<_> = g.iter().map(|s| facts(s, true).text).collect();
            assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
        }
    }

    #[test]
    fn mysql_texts_have_mysql_shapes() {
        let my = |sql| shape_in(Dialect::MySql, sql);
        assert_eq!(
            my("SELECT c FROM sbtest1 WHERE id=4837"),
            my("SELECT c FROM sbtest1 WHERE id=12")
        );
        assert_eq!(
            my(r#"select 'it\'s', "a""b", '\\' from t where x = 1.5e3"#).unwrap(),
            "select ', ', ' from t where x = 0"
        );
        for (a, b, why) in [
            (
                "select `a'1` from t",
                "select `a'2` from t",
                "backtick names",
            ),
            ("select 1 # n='1'\n", "select 1 # n='2'\n", "# comments"),
            ("select 1 -- n='1'\n", "select 1 -- n='2'\n", "-- comments"),
            ("select @1", "select @2", "variables"),
        ] {
            assert_ne!(my(a), my(b), "{why}");
            assert!(my(a).is_some(), "{a}");
        }
        assert_eq!(
            my("select 2 /* a /* b */ 'x'").unwrap(),
            "select 0 /* a /* b */ '",
            "MySQL's comments do not nest"
        );
        for sql in [
            "select _utf8mb4'x'",
            "select X'0a'",
            "select N\"x\"",
            "select 0x1F",
            "select 1--1",
            "select 1 --",
            "select 'it\\'",
            "select 1 /* cut",
        ] {
            assert_eq!(my(sql), None, "{sql}");
        }
        // The PostgreSQL scanner reads these otherwise.
        assert_ne!(shape("select \"a\""), my("select \"a\""));
    }

    #[test]
    fn mysql_texts_of_one_shape_obfuscate_identically() {
        use crate::pipeline::sql::{facts_in, Text};
        let groups: &[&[&str]] = &[
            &[
                "SELECT c FROM sbtest1 WHERE id=4837",
                "SELECT c FROM sbtest1 WHERE id=1",
            ],
            &[
                r#"insert into t values (1, "a\"b", 'c''d', -2.5) # k"#,
                r#"insert into t values (22, "", '\\', -4e10) # k"#,
            ],
            &[
                "update `t``1` set v = 'x' where id = 7 -- k=1\n",
                "update `t``1` set v = 'yy' where id = 8 -- k=1\n",
            ],
        ];
        for g in groups {
            let shapes: Vec<_> = g
                .iter()
                .map(|s| shape_in(Dialect::MySql, s).unwrap())
                .collect();
            assert!(shapes.windows(2).all(|w| w[0] == w[1]), "{g:?}");
            for text in [Text::Obfuscated, Text::ObfuscatedWithComments] {
                let facts: Vec<_> = g
                    .iter()
                    .map(|s| facts_in(Dialect::MySql, s, text))
                    .collect();
                assert!(facts.windows(2).all(|w| w[0] == w[1]), "{facts:?}");
            }
        }
    }
}
