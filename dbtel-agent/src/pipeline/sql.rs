//! Query text handling: literal obfuscation and the low-cardinality facts
//! OpenTelemetry asks for (operation, collection, summary), from one pass of
//! sqlparser's tokenizer.

use std::sync::Arc;

use opentelemetry::KeyValue;
use sqlparser::{
    dialect::Dialect as Lex,
    keywords::Keyword,
    tokenizer::{Token, Tokenizer, Whitespace},
};

use crate::pipeline::span::shared;

mod dialect;
mod mysql;
pub mod prepared;

pub use dialect::Dialect;

/// What the agent exports about one query text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryFacts {
    /// The text to export (literals replaced by `?` unless raw text was asked for).
    pub text: String,
    /// db.operation.name: the statement's leading keyword, e.g. `SELECT`.
    pub operation: Option<String>,
    /// db.collection.name: the one table the statement touches, if exactly one.
    pub collection: Option<String>,
    /// db.query.summary: operations and tables in order, e.g. `SELECT orders customers`.
    pub summary: Option<String>,
    /// The four above as span attributes, built once per text: a span then
    /// clones reference-counted strings instead of copying text.
    pub attrs: Vec<KeyValue>,
}

impl QueryFacts {
    fn with_attrs(mut self) -> Self {
        let mut a = Vec::with_capacity(4);
        if let Some(op) = &self.operation {
            a.push(KeyValue::new("db.operation.name", shared(op)));
        }
        if let Some(c) = &self.collection {
            a.push(KeyValue::new("db.collection.name", shared(c)));
        }
        if let Some(s) = &self.summary {
            a.push(KeyValue::new("db.query.summary", shared(s)));
        }
        a.push(KeyValue::new("db.query.text", shared(&self.text)));
        self.attrs = a;
        self
    }

    /// The span name these facts give: the summary, else the operation.
    pub fn name(&self) -> Option<String> {
        self.summary.clone().or_else(|| self.operation.clone())
    }
}

/// What of a query text is exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Text {
    /// Literals replaced by `?`, comments dropped (the default).
    #[default]
    Obfuscated,
    /// Literals replaced, comments kept (--keep-comments).
    ObfuscatedWithComments,
    /// As sent (--raw-query-text).
    Raw,
}

/// `true`: obfuscated (comments dropped); `false`: as sent.
impl From<bool> for Text {
    fn from(obfuscate: bool) -> Self {
        if obfuscate {
            Text::Obfuscated
        } else {
            Text::Raw
        }
    }
}

/// Memoised [`facts`]: applications repeat a small set of query texts, and
/// tokenizing each execution anew would dominate the agent's CPU.
pub struct FactsCache {
    text: Text,
    dialect: Dialect,
    /// By exact text, and by shape: apart, so that a text can never be
    /// mistaken for another text's shape.
    map: crate::FastMap<String, Arc<QueryFacts>>,
    shapes: crate::FastMap<String, Arc<QueryFacts>>,
    /// Texts that are their own shape (no literals: parameterised queries),
    /// looked up before computing any shape.
    plain: crate::FastMap<String, Arc<QueryFacts>>,
    capacity: usize,
}

impl FactsCache {
    pub fn new(text: impl Into<Text>, capacity: usize) -> Self {
        Self::with_dialect(text, capacity, Dialect::PostgreSql)
    }

    pub fn with_dialect(text: impl Into<Text>, capacity: usize, dialect: Dialect) -> Self {
        let (map, shapes, plain) = Default::default();
        FactsCache {
            text: text.into(),
            dialect,
            map,
            shapes,
            plain,
            capacity,
        }
    }

    pub fn get(&mut self, sql: &str) -> Arc<QueryFacts> {
        // Obfuscated, texts differing only in literal values share their facts
        // (applications inlining literals would otherwise miss every time).
        if let Some(f) = self.plain.get(sql) {
            return f.clone();
        }
        // Shapes are PostgreSQL's lexis: other dialects cache by exact text.
        let shaped = if self.text != Text::Raw && self.dialect == Dialect::PostgreSql {
            crate::pipeline::shape::shape(sql)
        } else {
            None
        };
        if shaped.as_deref() == Some(sql) {
            if self.plain.len() >= self.capacity {
                self.plain.clear();
            }
            let f = self
                .shapes
                .get(sql)
                .cloned()
                .unwrap_or_else(|| Arc::new(facts_in(self.dialect, sql, self.text)));
            self.plain.insert(sql.to_string(), f.clone());
            return f;
        }
        let (map, key) = match &shaped {
            Some(k) => (&mut self.shapes, k.as_str()),
            None => (&mut self.map, sql),
        };
        if let Some(f) = map.get(key) {
            return f.clone();
        }
        // Unbounded distinct texts must not grow memory: start over when full.
        if map.len() >= self.capacity {
            map.clear();
        }
        let f = Arc::new(facts_in(self.dialect, sql, self.text));
        map.insert(key.to_string(), f.clone());
        f
    }
}

/// OpenTelemetry caps db.query.summary at 255 characters.
const SUMMARY_MAX: usize = 255;

/// The facts of a PostgreSQL text.
pub fn facts(sql: &str, text: impl Into<Text>) -> QueryFacts {
    facts_in(Dialect::PostgreSql, sql, text)
}

pub fn facts_in(dialect: Dialect, sql: &str, text: impl Into<Text>) -> QueryFacts {
    let policy = text.into();
    let obfuscate = policy != Text::Raw;
    let comments = policy != Text::Obfuscated;
    let (quotes, lexer) = (dialect.quotes(), dialect.lexer());
    // Facts of tokenized text; `raw` is what to export when not obfuscating.
    let from = |lexed: &Lexed, raw: &str| {
        let (operation, collection, summary) = describe(&lexed.tokens, dialect);
        let text = if obfuscate {
            render_obfuscated(lexed, comments, dialect)
        } else {
            raw.to_string()
        };
        QueryFacts {
            text,
            operation,
            collection,
            summary,
            attrs: Vec::new(),
        }
    };
    let f = match tokenize(lexer, sql) {
        Ok(tokens) => from(&tokens, sql),
        // Text that does not tokenize (most often: cut inside a literal by the
        // length limit). Describe and obfuscate the part that does; nothing after
        // the failure point is exported verbatim.
        Err(cut) => {
            // A string cut open by the length limit: everything before it stays
            // (its literals replaced). Any other failure fails closed: a tokenizer
            // that misread a quote (as sqlparser 0.59 did after `?`) may have turned
            // literal contents into words, so nothing from the first quote on is kept.
            // (MySQL: `"` opens strings too, and `_utf8mb4'..'` introduces one.)
            let mysql = dialect == Dialect::MySql;
            let quote = sql[cut..]
                .trim_start_matches(|c: char| {
                    c.is_ascii_alphabetic() || c == '&' || (mysql && c == '_')
                })
                .chars()
                .next();
            let open_quote = quote.filter(|q| *q == '\'' || (*q == '"' && mysql));
            let cut = if obfuscate && !open_quote.is_some_and(|q| cut_open(lexer, sql, cut, q)) {
                sql[..cut].find(quotes).unwrap_or(cut)
            } else {
                cut
            };
            let open_quote = open_quote.is_some();
            // The head that tokenizes (a failure may leave part of an operator behind).
            let mut head = tokenize(lexer, &sql[..cut]);
            for _ in 0..4 {
                match head {
                    Err(at) if at > 0 => head = tokenize(lexer, &sql[..at]),
                    _ => break,
                }
            }
            let mut f = head.map_or_else(|_| QueryFacts::default(), |t| from(&t, sql));
            if obfuscate {
                // Syntax sqlparser does not know (`|>`): the plain scanner, where it
                // is sure of every literal; else nothing after the cut.
                let plain = (dialect == Dialect::PostgreSql)
                    .then(|| crate::pipeline::shape::obfuscated(sql, comments))
                    .flatten();
                match plain.filter(|_| !open_quote) {
                    Some(t) => f.text = t,
                    None => f.text.push('?'),
                }
            } else {
                f.text = sql.to_string();
            }
            f
        }
    };
    f.with_attrs()
}

/// A text's tokens and where each starts in it (the obfuscated text is the
/// original with its literals replaced: operators and spacing as written).
struct Lexed {
    /// What was tokenized: the input, or a copy read more leniently (0x_FF).
    text: String,
    tokens: Vec<Token>,
    starts: Vec<usize>,
}

/// Tokens, or the byte offset where tokenizing failed.
fn tokenize(dialect: &dyn Lex, sql: &str) -> Result<Lexed, usize> {
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
fn cut_open(dialect: &dyn Lex, sql: &str, at: usize, quote: char) -> bool {
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

fn is_literal(t: &Token) -> bool {
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

fn render_obfuscated(lexed: &Lexed, comments: bool, dialect: Dialect) -> String {
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

/// Rows a command changed or copied, from its tag (`INSERT 0 5`, `UPDATE 3`,
/// `DELETE 0`, `MERGE 2`, `COPY 10`).
pub fn affected_rows(tag: &str) -> Option<i64> {
    let mut w = tag.split_ascii_whitespace();
    match w.next()? {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" => w.last()?.parse().ok(),
        _ => None,
    }
}

/// Which way a COPY moves rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// COPY … FROM: rows go into a table.
    In,
    /// COPY … TO: rows come out of a table or query.
    Out,
}

/// The direction of a COPY statement: its first FROM or TO outside parentheses.
pub fn copy_direction(sql: &str) -> Option<CopyDirection> {
    let tokens = Tokenizer::new(Dialect::PostgreSql.lexer(), sql)
        .with_unescape(false)
        .tokenize()
        .ok()?;
    let mut words = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_)));
    if !matches!(words.next(), Some(Token::Word(w)) if w.keyword == Keyword::COPY) {
        return None;
    }
    let mut depth = 0i32;
    for t in words {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.keyword == Keyword::FROM => {
                return Some(CopyDirection::In)
            }
            Token::Word(w) if depth == 0 && w.keyword == Keyword::TO => {
                return Some(CopyDirection::Out)
            }
            _ => {}
        }
    }
    None
}

/// What a statement's row count (its command tag's number) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCount {
    /// db.response.returned_rows: SELECT, FETCH, COPY … TO.
    Returned,
    /// db.response.affected_rows: INSERT, UPDATE, DELETE, MERGE, COPY … FROM.
    Affected,
}

/// What the row count of a statement with this operation (`db.operation.name`)
/// and text counts; `None` for statements whose tag counts nothing.
pub fn row_count(operation: &str, sql: &str) -> Option<RowCount> {
    match operation {
        "SELECT" | "FETCH" | "VALUES" | "TABLE" => Some(RowCount::Returned),
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => Some(RowCount::Affected),
        "COPY" => Some(match copy_direction(sql)? {
            CopyDirection::In => RowCount::Affected,
            CopyDirection::Out => RowCount::Returned,
        }),
        _ => None,
    }
}

/// Keywords that start a statement whose kind is worth naming in a summary.
fn is_statement_keyword(k: Keyword) -> bool {
    matches!(
        k,
        Keyword::SELECT | Keyword::INSERT | Keyword::UPDATE | Keyword::DELETE | Keyword::MERGE
    )
}

/// (operation, collection, summary) from the significant tokens.
fn describe(
    tokens: &[Token],
    dialect: Dialect,
) -> (Option<String>, Option<String>, Option<String>) {
    let mysql = dialect == Dialect::MySql;
    // `(SELECT …) UNION (SELECT …)`: named by its first operation.
    let toks: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .skip_while(|t| matches!(t, Token::LParen))
        .collect();
    let kw = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.keyword,
        _ => Keyword::NoKeyword,
    };
    let Some(Token::Word(first)) = toks.first() else {
        return (None, None, None);
    };
    let mut operation = first.value.to_uppercase();
    if first.keyword == Keyword::WITH {
        // The statement a CTE list leads to: the first statement keyword at depth 0.
        let mut depth = 0i32;
        for (i, t) in toks.iter().enumerate() {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ if depth == 0 && i > 0 && is_statement_keyword(kw(i)) => {
                    operation = kw_name(&toks, i);
                    break;
                }
                _ => {}
            }
        }
    }

    let mut parts: Vec<String> = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let k = kw(i);
        // FOR [NO KEY] UPDATE, ON CONFLICT DO UPDATE, ON DUPLICATE KEY UPDATE: clauses, not statements.
        let clause = k == Keyword::UPDATE
            && i > 0
            && matches!(
                kw(i - 1),
                Keyword::FOR | Keyword::KEY | Keyword::NO | Keyword::DO
            );
        if i == 0 && !is_statement_keyword(k) && k != Keyword::WITH {
            parts.push(operation.clone());
        }
        if is_statement_keyword(k) && !clause {
            parts.push(kw_name(&toks, i));
        }
        let table_follows = match k {
            Keyword::FROM | Keyword::JOIN | Keyword::INTO | Keyword::COPY => true,
            Keyword::UPDATE => !clause,
            Keyword::TABLE => true,
            Keyword::TRUNCATE => kw(i + 1) != Keyword::TABLE,
            // MySQL's `INSERT [IGNORE] t`, `REPLACE t`: INTO is optional.
            Keyword::INSERT | Keyword::REPLACE if mysql && i == 0 => {
                let mut j = i + 1;
                while mysql::is_modifier(kw(j)) {
                    j += 1;
                }
                kw(j) != Keyword::INTO
            }
            _ => false,
        };
        i += 1;
        if table_follows {
            // A comma-separated list of table references (FROM a, b).
            loop {
                while matches!(
                    kw(i),
                    Keyword::ONLY | Keyword::LATERAL | Keyword::IF | Keyword::NOT | Keyword::EXISTS
                ) || (mysql && mysql::is_modifier(kw(i)))
                {
                    i += 1;
                }
                // COPY … FROM STDIN: the client, not a table.
                if matches!(kw(i), Keyword::STDIN | Keyword::STDOUT)
                    || (mysql && mysql::not_a_table(toks.get(i).copied()))
                {
                    break;
                }
                let Some((name, next)) = qualified_name(&toks, i) else {
                    break;
                };
                if matches!(toks.get(next), Some(Token::LParen))
                    && k != Keyword::INTO
                    && k != Keyword::TABLE
                {
                    break; // a function call, not a table
                }
                parts.push(name.clone());
                if !tables.contains(&name) {
                    tables.push(name);
                }
                i = next;
                // Skip an alias: [AS] name.
                if kw(i) == Keyword::AS {
                    i += 1;
                }
                if matches!(toks.get(i), Some(Token::Word(w)) if w.keyword == Keyword::NoKeyword || w.quote_style.is_some())
                {
                    i += 1;
                }
                if matches!(toks.get(i), Some(Token::Comma)) && k == Keyword::FROM {
                    i += 1;
                    continue;
                }
                break;
            }
        }
    }
    let mut summary = parts.join(" ");
    if summary.len() > SUMMARY_MAX {
        let mut cut = SUMMARY_MAX;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
    }
    let collection = (tables.len() == 1).then(|| tables.remove(0));
    (
        Some(operation),
        collection,
        (!summary.is_empty()).then_some(summary),
    )
}

fn kw_name(toks: &[&Token], i: usize) -> String {
    match toks[i] {
        Token::Word(w) => w.value.to_uppercase(),
        t => t.to_string(),
    }
}

/// `name` or `schema.name` (quoted parts unquoted) starting at `i`: (name, next index).
fn qualified_name(toks: &[&Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match toks.get(i) {
            Some(Token::Word(w)) => name.push_str(&w.value),
            _ => return None,
        }
        i += 1;
        if matches!(toks.get(i), Some(Token::Period))
            && matches!(toks.get(i + 1), Some(Token::Word(_)))
        {
            name.push('.');
            i += 1;
            continue;
        }
        return Some((name, i));
    }
}

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
