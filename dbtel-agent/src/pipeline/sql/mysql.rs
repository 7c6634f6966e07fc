//! What MySQL and MariaDB read differently from PostgreSQL, as far as
//! obfuscation and the span facts go (sqlparser's MySqlDialect does most:
//! `"..."` strings, backtick identifiers, `#` comments, `-- ` needing a
//! space, backslash escapes, `X'..'`, `0x..`, `b'..'`, `N'..'`):
//! - `/*! ... */` and `/*+ ... */` comments are code (run by the server,
//!   optimizer hints). sqlparser re-tokenizes them in place but gives their
//!   tokens the comment's start as location, which would misplace the text
//!   copied between tokens; here they stay comments: dropped with the other
//!   comments, or, when comments are kept, kept with their own literals
//!   replaced.
//! - Words starting with a digit: MySQL identifiers may (`123abc`), but
//!   `0b0101` is a bit literal and `1.5abc` a number with an alias, both of
//!   which the tokenizer returns as one word.
//! - `_utf8mb4'x'`: a character set introducer glued to its literal goes
//!   with it.
//! - `INSERT [IGNORE] t`, `REPLACE [INTO] t`, `UPDATE LOW_PRIORITY t`,
//!   `LOAD DATA ... INTO TABLE t`: table names after MySQL's modifiers;
//!   `SELECT ... INTO OUTFILE 'f'` or `INTO @v`: none.
//!
//! A text that does not tokenize is never scanned by the PostgreSQL plain
//! scanner (shape.rs): nothing from its first quote on is kept.

use std::any::TypeId;

use sqlparser::{
    dialect::{Dialect as Lex, MySqlDialect},
    keywords::Keyword,
    tokenizer::{Token, Whitespace},
};

/// MySqlDialect with `/*! */` left as comments (see the module doc); the
/// tokenizer's MySQL-only rules still apply (it asks for MySqlDialect's type).
#[derive(Debug)]
pub(super) struct Lexer;

const MYSQL: MySqlDialect = MySqlDialect {};

impl Lex for Lexer {
    fn dialect(&self) -> TypeId {
        TypeId::of::<MySqlDialect>()
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        MYSQL.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        MYSQL.is_identifier_part(ch)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        MYSQL.is_delimited_identifier_start(ch)
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        MYSQL.identifier_quote_style(identifier)
    }
    fn supports_string_literal_backslash_escape(&self) -> bool {
        MYSQL.supports_string_literal_backslash_escape()
    }
    fn supports_string_literal_concatenation(&self) -> bool {
        MYSQL.supports_string_literal_concatenation()
    }
    fn ignores_wildcard_escapes(&self) -> bool {
        MYSQL.ignores_wildcard_escapes()
    }
    fn supports_numeric_prefix(&self) -> bool {
        MYSQL.supports_numeric_prefix()
    }
    fn supports_bitwise_shift_operators(&self) -> bool {
        MYSQL.supports_bitwise_shift_operators()
    }
    fn requires_single_line_comment_whitespace(&self) -> bool {
        MYSQL.requires_single_line_comment_whitespace()
    }
    fn supports_multiline_comment_hints(&self) -> bool {
        false
    }
}

/// Renders a token MySQL reads differently, into `out`: `None` if it is
/// not one, else whether it was a value (a literal).
pub(super) fn render(
    t: &Token,
    next: Option<&Token>,
    source: &str,
    comments: bool,
    out: &mut String,
) -> Option<bool> {
    if let (true, Token::Whitespace(Whitespace::MultiLineComment(c))) = (comments, t) {
        // Code the server runs, kept: its literals replaced too.
        let (head, code) = executable_comment(c)?;
        out.push_str(&format!(
            "/*{head}{}*/",
            super::facts_in(
                super::Dialect::MySql,
                code,
                super::Text::ObfuscatedWithComments
            )
            .text
        ));
        return Some(false);
    }
    if introducer(t, next) {
        // `_utf8mb4'x'`: the introducer goes with its literal.
        return Some(false);
    }
    // `0b0101`, `1.5abc` (a number and its alias).
    let n = literal_word(t)?;
    out.push('?');
    out.push_str(source.get(n..).unwrap_or(""));
    Some(true)
}

/// A word the tokenizer made of a literal: `Some(n)` when its first `n`
/// bytes are a literal (the rest, if any, an alias written against it).
fn literal_word(t: &Token) -> Option<usize> {
    let Token::Word(w) = t else { return None };
    let v = w.value.as_bytes();
    if w.quote_style.is_some() || !v.first().is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
        return None;
    }
    if v.len() > 2
        && v[0] == b'0'
        && v[1] == b'b'
        && v[2..].iter().all(|c| matches!(c, b'0' | b'1'))
    {
        return Some(v.len());
    }
    // Digits and dots, then letters: a number (with a dot: not an identifier) and its alias.
    let n = v
        .iter()
        .position(|c| !c.is_ascii_digit() && *c != b'.')
        .unwrap_or(v.len());
    v[..n].contains(&b'.').then_some(n)
}

/// `_charset` glued to the literal after it (`_utf8mb4'x'`, `_binary'..'`).
fn introducer(t: &Token, next: Option<&Token>) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.starts_with('_') && w.value.len() > 1)
        && next.is_some_and(super::obfuscate::is_literal)
}

/// A comment the server runs: `/*!50001 ... */` (version-gated code) or `/*+ ... */` (hints):
/// (what precedes the code, the code).
fn executable_comment(content: &str) -> Option<(&str, &str)> {
    let rest = content
        .strip_prefix('!')
        .or_else(|| content.strip_prefix('+'))?;
    let code = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    Some((&content[..content.len() - code.len()], code))
}

/// What follows INTO without being a table: `INTO OUTFILE 'f'`, `INTO DUMPFILE 'f'`, `INTO @var`.
pub(super) fn not_a_table(t: Option<&Token>) -> bool {
    matches!(t, Some(Token::Word(w)) if w.quote_style.is_none()
        && (w.value.starts_with('@') || w.value.eq_ignore_ascii_case("OUTFILE") || w.value.eq_ignore_ascii_case("DUMPFILE")))
}

/// MySQL's statement modifiers before a table name.
pub(super) fn is_modifier(k: Keyword) -> bool {
    matches!(
        k,
        Keyword::LOW_PRIORITY
            | Keyword::HIGH_PRIORITY
            | Keyword::DELAYED
            | Keyword::IGNORE
            | Keyword::TABLE
    )
}

#[cfg(test)]
#[path = "mysql_tests.rs"]
mod tests;
