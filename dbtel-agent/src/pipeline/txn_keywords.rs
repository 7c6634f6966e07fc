//! Which statements open, end and mark a transaction: a statement's [`Verb`].
//!
//! Only the leading keywords of a statement are looked at, without a parser:
//! this runs on every query start. A multi-statement string ("BEGIN; ...;
//! COMMIT") is classified by its first statement only.

/// What a statement does to the transaction state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Begin,
    Commit,
    Rollback,
    /// PREPARE TRANSACTION 'gid': the block ends, prepared for two-phase commit.
    PrepareTransaction,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    Other,
}

/// Words of a statement: identifiers as written (compared without case),
/// quoted identifiers verbatim (tagged so `"begin"` is never the keyword),
/// comments and whitespace skipped. Every query is classified: no allocation
/// for the common case.
struct Words<'a> {
    s: &'a [u8],
    i: usize,
}

#[derive(Debug, PartialEq)]
enum Word<'a> {
    Keyword(&'a [u8]),
    Quoted(String),
}

impl Word<'_> {
    /// `k` in upper case.
    fn is(&self, k: &str) -> bool {
        matches!(self, Word::Keyword(w) if w.eq_ignore_ascii_case(k.as_bytes()))
    }
    /// As a savepoint name: unquoted names fold to lower case, as the server does.
    fn name(self) -> String {
        match self {
            Word::Keyword(w) => String::from_utf8_lossy(w).to_ascii_lowercase(),
            Word::Quoted(q) => q,
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = Word<'a>;

    fn next(&mut self) -> Option<Word<'a>> {
        let s = self.s;
        loop {
            match (s.get(self.i), s.get(self.i + 1)) {
                (Some(c), _) if c.is_ascii_whitespace() => self.i += 1,
                (Some(b'-'), Some(b'-')) => {
                    while self.i < s.len() && s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    // Block comments nest in PostgreSQL.
                    let mut depth = 0;
                    while self.i < s.len() {
                        if s[self.i..].starts_with(b"/*") {
                            depth += 1;
                            self.i += 2;
                        } else if s[self.i..].starts_with(b"*/") {
                            depth -= 1;
                            self.i += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            self.i += 1;
                        }
                    }
                }
                _ => break,
            }
        }
        let start = self.i;
        match s.get(start)? {
            // MySQL quotes identifiers with backticks too.
            &q @ (b'"' | b'`') => {
                let mut name = Vec::new();
                self.i += 1;
                while self.i < s.len() {
                    if s[self.i] == q {
                        if s.get(self.i + 1) == Some(&q) {
                            name.push(q);
                            self.i += 2;
                            continue;
                        }
                        self.i += 1;
                        break;
                    }
                    name.push(s[self.i]);
                    self.i += 1;
                }
                Some(Word::Quoted(String::from_utf8_lossy(&name).into_owned()))
            }
            c if c.is_ascii_alphabetic() || *c == b'_' || *c >= 0x80 => {
                while self.i < s.len()
                    && (s[self.i].is_ascii_alphanumeric()
                        || matches!(s[self.i], b'_' | b'$')
                        || s[self.i] >= 0x80)
                {
                    self.i += 1;
                }
                Some(Word::Keyword(&s[start..self.i]))
            }
            _ => None, // punctuation (';', '(' ...): the words of interest are over
        }
    }
}

/// Classifies a statement by its leading keywords.
pub fn verb(text: &str) -> Verb {
    let mut w = Words {
        s: text.as_bytes(),
        i: 0,
    };
    let Some(Word::Keyword(first)) = w.next() else {
        return Verb::Other;
    };
    // The longest leading keyword of interest is SAVEPOINT.
    let mut upper = [0u8; 9];
    let Some(upper) = upper.get_mut(..first.len()) else {
        return Verb::Other;
    };
    upper.copy_from_slice(first);
    upper.make_ascii_uppercase();
    // Most statements are none of these: no second word read for them.
    if !matches!(
        &*upper,
        b"BEGIN"
            | b"START"
            | b"COMMIT"
            | b"END"
            | b"ABORT"
            | b"PREPARE"
            | b"ROLLBACK"
            | b"SAVEPOINT"
            | b"XA"
            | b"RELEASE"
    ) {
        return Verb::Other;
    }
    let mut next = w.next();
    // An optional WORK or TRANSACTION after the leading keyword.
    fn skip_noise<'a>(next: &mut Option<Word<'a>>, w: &mut Words<'a>) {
        if next
            .as_ref()
            .is_some_and(|n| n.is("WORK") || n.is("TRANSACTION"))
        {
            *next = w.next();
        }
    }
    match &*upper {
        // MariaDB's `BEGIN NOT ATOMIC … END` is a compound statement.
        b"BEGIN" if next.as_ref().is_some_and(|n| n.is("NOT")) => Verb::Other,
        b"BEGIN" => Verb::Begin,
        b"START" if next.as_ref().is_some_and(|n| n.is("TRANSACTION")) => Verb::Begin,
        b"COMMIT" | b"END" if next.as_ref().is_some_and(|n| n.is("PREPARED")) => Verb::Other,
        b"COMMIT" | b"END" => Verb::Commit,
        b"ABORT" => Verb::Rollback,
        b"PREPARE" if next.as_ref().is_some_and(|n| n.is("TRANSACTION")) => {
            Verb::PrepareTransaction
        }
        b"ROLLBACK" if next.as_ref().is_some_and(|n| n.is("PREPARED")) => Verb::Other,
        b"ROLLBACK" => {
            skip_noise(&mut next, &mut w);
            if !next.as_ref().is_some_and(|n| n.is("TO")) {
                return Verb::Rollback;
            }
            let mut name = w.next();
            if name.as_ref().is_some_and(|n| n.is("SAVEPOINT")) {
                name = w.next();
            }
            name.map_or(Verb::Other, |n| Verb::RollbackTo(n.name()))
        }
        b"SAVEPOINT" => next.map_or(Verb::Other, |n| Verb::Savepoint(n.name())),
        // MySQL's XA transactions. XA COMMIT / XA ROLLBACK end the block if
        // it is still open (ONE PHASE, or rolled back before XA PREPARE);
        // after XA PREPARE it has ended already, and they end nothing.
        b"XA" => match next {
            Some(n) if n.is("START") || n.is("BEGIN") => Verb::Begin,
            Some(n) if n.is("PREPARE") => Verb::PrepareTransaction,
            Some(n) if n.is("COMMIT") => Verb::Commit,
            Some(n) if n.is("ROLLBACK") => Verb::Rollback,
            _ => Verb::Other,
        },
        b"RELEASE" => {
            if next.as_ref().is_some_and(|n| n.is("SAVEPOINT")) {
                next = w.next();
            }
            next.map_or(Verb::Other, |n| Verb::Release(n.name()))
        }
        _ => Verb::Other,
    }
}
