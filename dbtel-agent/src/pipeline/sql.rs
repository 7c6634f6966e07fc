//! Query text handling: literal obfuscation and the low-cardinality facts
//! OpenTelemetry asks for (operation, collection, summary), from one pass of
//! sqlparser's tokenizer.

use std::sync::Arc;

use opentelemetry::KeyValue;
use sqlparser::{
    keywords::Keyword,
    tokenizer::{Token, Tokenizer},
};

use crate::pipeline::{attr_block::AttrBlock, name::Name, span::shared};

mod dialect;
mod mysql;
mod obfuscate;
pub mod prepared;
mod summary;

pub use dialect::Dialect;
use obfuscate::{cut_open, render_obfuscated, tokenize, Lexed};
use summary::describe;

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
    /// Its grouping key (crate::pipeline::group): one per query shape,
    /// whatever its literals or list lengths.
    pub group: u64,
    /// The name its spans take: the summary, else the operation.
    pub span_name: Option<Arc<str>>,
    /// The four above as span attributes, built once per text: a span then
    /// carries the block (see pipeline::attr_block).
    pub attrs: Arc<AttrBlock>,
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
        self.attrs = AttrBlock::new(a);
        self.span_name = self
            .summary
            .as_deref()
            .or(self.operation.as_deref())
            .map(Arc::from);
        self
    }

    /// The span name these facts give: the summary, else the operation.
    pub fn name(&self) -> Option<Name> {
        self.span_name.clone().map(Name::from)
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
    /// Facts by the address of a shared text (events::texts hands out one
    /// Arc per text a backend repeats): a repeat costs a pointer compare,
    /// not a scan and hash of the text. Each slot holds its text, so an
    /// address cannot be reused while it is here.
    memo: Box<[Option<Shared>]>,
}

/// A shared text in [`FactsCache`]'s memo: its facts and its hash as sent.
#[derive(Clone)]
struct Shared {
    text: Arc<str>,
    facts: Arc<QueryFacts>,
    hash: u64,
}

/// A hash of a text as sent, without its sqlcommenter comment.
fn text_hash_as_sent(text: &str) -> u64 {
    crate::pipeline::group::text_hash(&crate::pipeline::sqlcomment::split(text).body)
}

/// Slots of [`FactsCache::get_shared`]'s memo (direct-mapped).
const MEMO_SLOTS: usize = 64;

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
            memo: vec![None; MEMO_SLOTS].into_boxed_slice(),
        }
    }

    /// The facts of a text. Obfuscated (the default), a sqlcommenter comment
    /// is taken out first: not exported (it can carry user data), and not
    /// in the key (a traceparent per request would miss every time).
    pub fn get(&mut self, sql: &str) -> Arc<QueryFacts> {
        if self.text == Text::Obfuscated && crate::pipeline::sqlcomment::may_have(sql) {
            let c = crate::pipeline::sqlcomment::split(sql);
            if c.comment.is_some() {
                return self.get_body(&c.body);
            }
        }
        self.get_body(sql)
    }

    /// [`FactsCache::get`] of a shared text, memoised by its address.
    pub fn get_shared(&mut self, sql: &Arc<str>) -> &Arc<QueryFacts> {
        &self.shared(sql).facts
    }

    /// [`FactsCache::get_shared`], and the text's hash as sent
    /// ([`crate::pipeline::group::text_hash`] of it without its sqlcommenter
    /// comment: a traceparent per execution would make repeats differ),
    /// computed once per shared text, not per execution.
    pub fn get_shared_hashed(&mut self, sql: &Arc<str>) -> (&Arc<QueryFacts>, u64) {
        let s = self.shared(sql);
        (&s.facts, s.hash)
    }

    fn shared(&mut self, sql: &Arc<str>) -> &Shared {
        let slot = (Arc::as_ptr(sql).cast::<u8>() as usize >> 4) % MEMO_SLOTS;
        let hit = matches!(&self.memo[slot], Some(m) if Arc::ptr_eq(&m.text, sql));
        if !hit {
            let facts = self.get(sql);
            let hash = text_hash_as_sent(sql);
            self.memo[slot] = Some(Shared {
                text: sql.clone(),
                facts,
                hash,
            });
        }
        self.memo[slot].as_ref().expect("filled above")
    }

    fn get_body(&mut self, sql: &str) -> Arc<QueryFacts> {
        // Obfuscated, texts differing only in literal values share their facts
        // (applications inlining literals would otherwise miss every time).
        if let Some(f) = self.plain.get(sql) {
            return f.clone();
        }
        let shaped = if self.text != Text::Raw {
            crate::pipeline::shape::shape_in(self.dialect, sql)
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
        let group = if obfuscate && !comments {
            crate::pipeline::group::group_key(&text)
        } else {
            crate::pipeline::group::group_key(&render_obfuscated(lexed, false, dialect))
        };
        QueryFacts {
            text,
            operation,
            collection,
            summary,
            group,
            span_name: None,
            attrs: Default::default(),
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

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
