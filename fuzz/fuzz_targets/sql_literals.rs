//! What obfuscation promises, checked on texts built from SQL pieces: no
//! literal value survives (`--`, `#` and `/* */` comments are dropped too),
//! and two texts differing only in their literals' values have the same
//! facts whenever they have the same shape in their dialect (the facts
//! cache hands the first text's facts to the second).
//!
//! Literal values carry markers no other piece holds (`zq` in strings,
//! `7777` in numbers): a marker in the obfuscated text is a leak.
#![no_main]

use arbitrary::Arbitrary;
use dbtel_agent::pipeline::{
    shape,
    sql::{facts_in, Dialect, Text},
};
use libfuzzer_sys::fuzz_target;

const WORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "insert",
    "into",
    "values",
    "update",
    "set",
    "delete",
    "and",
    "or",
    "t",
    "users",
    "a",
    "b1",
    "E",
    "N",
    "X",
    "B",
    "U&",
    "_utf8mb4",
    "begin",
    "commit",
    "prepare",
    "execute",
    "as",
    "in",
    "like",
    "limit",
    "order",
    "by",
    "interval",
    "date",
    "true",
    "null",
    "is",
    "not",
    "create",
    "table",
    "call",
    "with",
    "returning",
    "copy",
    "to",
    "`q`",
    "\"id\"",
];
const PUNCTS: &[&str] = &[
    "(", ")", ",", ";", "=", "<", ">", "+", "-", "*", "/", "||", "::", "%", "[", "]", "|>", "!",
    "~", "&", ".", "?", "$1", "@", ":", "{", "}", "\\",
];
/// Inside a string literal: characters that end or escape one elsewhere
/// (`ESC` is the quote escaped: by a backslash in MySQL, doubled in PostgreSQL).
const TAILS: &[&str] = &[
    "", " ", ";", "--", "/*", "*/", "\"", "''", "$", "$$", "?", "é", "\n", "`", ":x", "%", "\\",
    "#", "ESC",
];

#[derive(Arbitrary, Debug)]
enum Piece {
    Word(u8),
    Punct(u8),
    /// A '…' string (or "…" in MySQL): its tail, its quote.
    Str(u8, bool),
    /// A number: its form.
    Num(u8),
    /// A comment of words: `/* */`, `--` or (MySQL) `#`.
    Comment(u8, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    mysql: bool,
    /// Each piece, and whether it is written without a space before it.
    pieces: Vec<(Piece, bool)>,
}

/// The text with literal values of version `v` (0 or 1).
fn render(input: &Input, v: usize) -> String {
    let mut out = String::new();
    let mut prev_word = false;
    for (k, (piece, tight)) in input.pieces.iter().enumerate() {
        let pick = |list: &[&'static str], i: u8| list[usize::from(i) % list.len()];
        let value = ["a", "bb"][v];
        let text = match piece {
            Piece::Word(i) => pick(WORDS, *i).to_string(),
            Piece::Punct(i) => pick(PUNCTS, *i).to_string(),
            Piece::Str(tail, double) => {
                let q = if *double && input.mysql { '"' } else { '\'' };
                let body = format!("zq{k}{value}{}zq", pick(TAILS, *tail));
                // The quote doubled stands for itself, in both dialects.
                let body = body.replace(q, &format!("{q}{q}"));
                let escaped = if input.mysql {
                    format!("\\{q}")
                } else {
                    format!("{q}{q}")
                };
                let body = body.replace("ESC", &escaped);
                format!("{q}{body}{q}")
            }
            Piece::Num(form) => {
                let n = format!("7777{k}{}", [1, 22][v]);
                match form % 5 {
                    0 => n,
                    1 => format!("{n}.5"),
                    2 => format!(".{n}"),
                    3 => format!("{n}e3"),
                    _ => format!("{n}E-2"),
                }
            }
            Piece::Comment(i, style) => {
                let w = pick(WORDS, *i);
                match style % 3 {
                    0 => format!("/* {w} */"),
                    2 if input.mysql => format!("# {w}\n"),
                    _ => format!("-- {w}\n"),
                }
            }
        };
        // Only a string may follow a word directly (E'..', _utf8mb4'..'):
        // a number run into a word or punctuation is a name or a parameter.
        let joined = *tight && matches!(piece, Piece::Str(..)) && prev_word;
        if !out.is_empty() && !joined {
            out.push(' ');
        }
        out.push_str(&text);
        prev_word = matches!(piece, Piece::Word(_));
    }
    out
}

fuzz_target!(|input: Input| {
    let dialect = if input.mysql {
        Dialect::MySql
    } else {
        Dialect::PostgreSql
    };
    let (a, b) = (render(&input, 0), render(&input, 1));
    for sql in [&a, &b] {
        let f = facts_in(dialect, sql, Text::Obfuscated);
        assert!(
            !f.text.contains("zq") && !f.text.contains("7777"),
            "a literal survives in {:?} (from {sql:?})",
            f.text
        );
    }
    if let (Some(sa), Some(sb)) = (shape::shape_in(dialect, &a), shape::shape_in(dialect, &b)) {
        if sa == sb {
            for text in [Text::Obfuscated, Text::ObfuscatedWithComments] {
                assert_eq!(
                    facts_in(dialect, &a, text),
                    facts_in(dialect, &b, text),
                    "one shape, different facts: {a:?} and {b:?}"
                );
            }
        }
    }
});
