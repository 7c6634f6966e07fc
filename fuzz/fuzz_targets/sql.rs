//! Query texts as traced programs send them: any UTF-8 (the agent reads
//! texts lossily), through obfuscation, summaries, shapes, statement splits
//! the prepared-statement parsers and the sqlcommenter split, in both
//! dialects.
//!
//! Input: a text, or two separated by a NUL. Beyond not crashing: raw text
//! is exported as sent, statement splits are pieces of the text, the facts
//! cache (which shares facts between texts of one shape, and takes
//! sqlcommenter comments out when obfuscating) answers for the second text
//! what computing its facts afresh would, and a sqlcommenter
//! split loses nothing but the comment and whitespace.
#![no_main]

use dbtel_agent::pipeline::{
    shape,
    sql::{self, prepared, Dialect, FactsCache, Text},
    sqlcomment,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = input.split_once('\0').unwrap_or((input, input));
    for dialect in [Dialect::PostgreSql, Dialect::MySql] {
        for text in [Text::Obfuscated, Text::ObfuscatedWithComments, Text::Raw] {
            let f = sql::facts_in(dialect, a, text);
            let _ = f.name();
            if text == Text::Raw {
                assert_eq!(f.text, a, "raw text is exported as sent");
            }
            // Obfuscated, the cache takes a sqlcommenter comment out first.
            let fresh = |t: &str| {
                if text == Text::Obfuscated {
                    sql::facts_in(dialect, &sqlcomment::split(t).body, text)
                } else {
                    sql::facts_in(dialect, t, text)
                }
            };
            let mut cache = FactsCache::with_dialect(text, 4, dialect);
            assert_eq!(*cache.get(a), fresh(a), "the cache's facts of {a:?}");
            assert_eq!(
                *cache.get(b),
                fresh(b),
                "the cache's facts of {b:?} after {a:?} ({text:?}, {dialect:?})"
            );
        }
    }
    for dialect in [Dialect::PostgreSql, Dialect::MySql] {
        if let Some(k) = shape::shape_in(dialect, a) {
            assert!(k.len() <= a.len(), "a shape only blanks");
        }
    }
    let _ = shape::obfuscated(a, true);
    let _ = shape::obfuscated(a, false);
    let _ = shape::single_statement(a);
    if let Some(pieces) = shape::statements(a) {
        for p in pieces {
            assert!(a.contains(p), "{p:?} is part of {a:?}");
        }
    }
    let _ = prepared::prepare(a);
    let _ = prepared::execute(a);
    let _ = prepared::action(a);
    let _ = prepared::deallocate(a);
    let _ = sql::affected_rows(a);
    let _ = sql::copy_direction(a);
    for op in ["SELECT", "INSERT", "COPY", "FETCH", "MOVE"] {
        let _ = sql::row_count(op, a);
    }
    commented(a);
});

/// The body and the comment account for the text: every byte outside the
/// comment, but whitespace, is in the body, in order.
fn commented(a: &str) {
    let c = sqlcomment::split(a);
    let Some(comment) = c.comment else {
        assert_eq!(c.body, a, "no comment: the text as it was");
        assert_eq!(c.traceparent, None);
        return;
    };
    assert!(
        comment.starts_with("/*") && comment.ends_with("*/"),
        "{comment:?}"
    );
    let at = (comment.as_ptr() as usize)
        .checked_sub(a.as_ptr() as usize)
        .filter(|at| at + comment.len() <= a.len())
        .expect("the comment is a slice of the text");
    let outside = [&a[..at], &a[at + comment.len()..]].concat();
    let solid = |s: &str| s.split_ascii_whitespace().collect::<String>();
    assert_eq!(
        solid(&outside),
        solid(&c.body),
        "{a:?} split at {comment:?}"
    );
    assert!(
        c.body
            .bytes()
            .any(|b| b != b';' && !b.is_ascii_whitespace()),
        "a comment is taken only from a statement: {a:?}"
    );
}
