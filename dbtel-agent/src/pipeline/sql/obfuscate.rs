//! A text's tokens and where each starts in it, and the text rendered with
//! its literals replaced.

use sqlparser::{
    dialect::Dialect as Lex,
    keywords::Keyword,
    tokenizer::{Token, Tokenizer, Whitespace},
};

use super::{mysql, Dialect};

/// A text's tokens and where each starts in it (the obfuscated text is the
/// original with its literals replaced: operators and spacing as written).
pub(super) struct Lexed {
    /// What was tokenized: the input, or a copy read more leniently (0x_FF).
    text: String,
    pub(super) tokens: Vec<Token>,
    starts: Vec<usize>,
}

/// Tokens, or the byte offset where tokenizing failed.
pub(super) fn tokenize(dialect: &dyn Lex, sql: &str) -> Result<Lexed, usize> {
    let run = |sql: &str| match Tokenizer::new(dialect, sql)
        .with_unescape(false)
        .tokenize_with_location()
    {
        Ok(t) => {
            let starts = byte_offsets(
                sql,
                t.iter()
                    .map(|t| (t.span.start.line as usize, t.span.start.column as usize)),
            );
            Ok(Lexed {
                text: sql.to_string(),
                tokens: t.into_iter().map(|t| t.token).collect(),
                starts,
            })
        }
        Err(e) => {
            let (line, col) = (e.location.line as usize, e.location.column as usize);
            // At the end at most one character back (the failure is in the
            // text): the start of that character, never inside it (found by fuzzing).
            Err(sql
                .floor_char_boundary(byte_offset(sql, line, col).min(sql.len().saturating_sub(1))))
        }
    };
    match run(sql) {
        // `0x_FF` (PostgreSQL 16): the tokenizer wants a hex digit after 0x. The
        // underscore carries nothing: read it without (a few at most).
        Err(at) if sql[..at].ends_with(['x', 'X']) && sql[at..].starts_with('_') => {
            let mut fixed = sql.to_string();
            for _ in 0..8 {
                match run(&fixed) {
                    Err(at)
                        if fixed[..at].ends_with(['x', 'X']) && fixed[at..].starts_with('_') =>
                    {
                        fixed.remove(at);
                    }
                    r => return r.map_err(|_| at),
                }
            }
            Err(at)
        }
        r => r,
    }
}

/// True if `sql` fails to tokenize only because a string quoted with `quote`
/// starting at `at` never closes (the text was cut inside it).
pub(super) fn cut_open(dialect: &dyn Lex, sql: &str, at: usize, quote: char) -> bool {
    let tail = format!("{}{quote}", &sql[at..]);
    // Closing it must make the whole tail one literal, and the head tokenize alone.
    matches!(Tokenizer::new(dialect, &tail).with_unescape(false).tokenize(), Ok(t) if t.len() == 1 && is_literal(&t[0]))
        && Tokenizer::new(dialect, &sql[..at])
            .with_unescape(false)
            .tokenize()
            .is_ok()
}

/// Byte offsets of increasing 1-based (line, column-in-chars) locations.
fn byte_offsets(sql: &str, locations: impl Iterator<Item = (usize, usize)>) -> Vec<usize> {
    let mut chars = sql.char_indices().peekable();
    let (mut line, mut col) = (1, 1);
    let mut out = Vec::new();
    for (l, c) in locations {
        while (line, col) < (l, c) {
            match chars.next() {
                Some((_, '\n')) => (line, col) = (line + 1, 1),
                Some(_) => col += 1,
                None => break,
            }
        }
        out.push(chars.peek().map_or(sql.len(), |(b, _)| *b));
    }
    out
}

/// Byte offset of a 1-based (line, column-in-chars) location, backed up to the
/// start of a literal that may begin there.
fn byte_offset(sql: &str, line: usize, col: usize) -> usize {
    let mut off = 0;
    for (i, l) in sql.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return off
                + l.char_indices()
                    .nth(col.saturating_sub(1))
                    .map_or(l.len(), |(b, _)| b);
        }
        off += l.len();
    }
    // Unknown location: keep nothing rather than something unobfuscated.
    0
}

pub(super) fn is_literal(t: &Token) -> bool {
    matches!(
        t,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// A word written right after a number that PostgreSQL 16 reads as part of
/// it: a radix prefix's digits (`o17`, `b101`, `x_FF`) or digit groups (`_000`).
fn continues_number(t: &Token) -> bool {
    let Token::Word(w) = t else { return false };
    let mut b = w.value.bytes();
    w.quote_style.is_none()
        && matches!(
            b.next(),
            Some(b'o' | b'O' | b'b' | b'B' | b'x' | b'X' | b'_')
        )
        && b.all(|c| c.is_ascii_hexdigit() || c == b'_')
}

pub(super) fn render_obfuscated(lexed: &Lexed, comments: bool, dialect: Dialect) -> String {
    let mysql = dialect == Dialect::MySql;
    let tokens = &lexed.tokens;
    let source = |i: usize| {
        let end = lexed.starts.get(i + 1).copied().unwrap_or(lexed.text.len());
        lexed.text.get(lexed.starts[i]..end).unwrap_or("")
    };
    let mut out = String::new();
    // Last significant token: decides whether a `-` is unary (part of the literal).
    let mut prev_is_value = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        if matches!(t, Token::Minus)
            && !prev_is_value
            && tokens
                .get(i + 1)
                .is_some_and(|n| matches!(n, Token::Number(..)))
        {
            // `-5` is one literal: `?`, so `+ 5` and `+ -5` obfuscate alike.
            i += 1;
            continue;
        }
        if let Some(value) = mysql
            .then(|| mysql::render(t, tokens.get(i + 1), source(i), comments, &mut out))
            .flatten()
        {
            prev_is_value |= value;
            i += 1;
            continue;
        }
        if let (
            false,
            Token::Whitespace(
                Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_),
            ),
        ) = (comments, t)
        {
            // Comments are dropped (they can carry anything, literals included);
            // a space keeps the words around them apart.
            if !out.ends_with(char::is_whitespace)
                && !matches!(tokens.get(i + 1), Some(Token::Whitespace(_)) | None)
            {
                out.push(' ');
            }
            i += 1;
            continue;
        }
        if is_literal(t) {
            out.push('?');
            // PostgreSQL 16's 0o17, 0b101, 0x_FF, 1_000: the tokenizer stops the
            // number before the letter or underscore; the rest is the literal's too.
            while matches!(t, Token::Number(..) | Token::HexStringLiteral(_))
                && tokens.get(i + 1).is_some_and(continues_number)
            {
                i += 1;
            }
        } else {
            out.push_str(source(i));
        }
        if !matches!(t, Token::Whitespace(_)) {
            prev_is_value = is_literal(t)
                || matches!(t, Token::RParen | Token::RBracket | Token::Placeholder(_))
                || matches!(t, Token::Word(w) if w.keyword == Keyword::NoKeyword || w.quote_style.is_some());
        }
        i += 1;
    }
    out
}
