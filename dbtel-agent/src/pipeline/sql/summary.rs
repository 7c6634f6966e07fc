//! What a text is, from its significant tokens: operation, collection and
//! db.query.summary.

use sqlparser::{keywords::Keyword, tokenizer::Token};

use super::{mysql, Dialect};

/// OpenTelemetry caps db.query.summary at 255 characters.
const SUMMARY_MAX: usize = 255;

/// Keywords that start a statement whose kind is worth naming in a summary.
fn is_statement_keyword(k: Keyword) -> bool {
    matches!(
        k,
        Keyword::SELECT | Keyword::INSERT | Keyword::UPDATE | Keyword::DELETE | Keyword::MERGE
    )
}

/// (operation, collection, summary) from the significant tokens.
pub(super) fn describe(
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
