//! The grouping key of a query: its literal-free text with whitespace
//! normalised, placeholders (`$1`, `?`) alike, and IN-lists and multi-row
//! VALUES collapsed, so `IN (?, ?)` and `IN (?, ?, ?)` are one shape. Used
//! to find the same query run again (N+1); exported texts are unchanged.

use std::hash::BuildHasher;

/// The collapsed form (for tests and messages).
pub fn grouping_form(obfuscated: &str) -> String {
    // Whitespace runs to one space; `$N` to `?`.
    let mut s = String::with_capacity(obfuscated.len());
    let mut chars = obfuscated.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            s.push(' ');
        } else if c == '$' && chars.peek().is_some_and(|c| c.is_ascii_digit()) {
            while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                chars.next();
            }
            s.push('?');
        } else {
            s.push(c);
        }
    }
    // Lists of placeholders, then lists of rows.
    for (from, to) in [
        ("?, ?", "?"),
        ("?,?", "?"),
        ("(?), (?)", "(?)"),
        ("(?),(?)", "(?)"),
    ] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s.trim().to_string()
}

/// A hash of a text as sent (to tell runs with different literals apart); never 0.
pub fn text_hash(text: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x0000_7465_7874)
        .hash_one(text)
        .max(1)
}

/// The key (a hash of [`grouping_form`]); never 0.
pub fn group_key(obfuscated: &str) -> u64 {
    let h =
        foldhash::fast::FixedState::with_seed(0x0067_726f_7570).hash_one(grouping_form(obfuscated));
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_placeholders_collapse() {
        let one = group_key("SELECT * FROM t WHERE id IN (?)");
        for n in 2..50 {
            let list = vec!["?"; n].join(", ");
            assert_eq!(
                group_key(&format!("SELECT * FROM t WHERE id IN ({list})")),
                one
            );
        }
        assert_eq!(
            grouping_form("INSERT INTO t (a, b) VALUES (?, ?), (?, ?),\n (?, ?)"),
            "INSERT INTO t (a, b) VALUES (?)"
        );
        assert_eq!(
            group_key("SELECT a FROM t WHERE id = $1"),
            group_key("SELECT  a FROM t\n WHERE id = ?")
        );
        assert_ne!(group_key("SELECT a FROM t"), group_key("SELECT b FROM t"));
    }
}
