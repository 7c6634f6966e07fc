//! A statement's effect on a server session's transaction block, read from
//! its text (the transaction__start/commit probes would cost two traps per
//! implicit transaction): BEGIN opens a block, COMMIT/END, ROLLBACK/ABORT and
//! PREPARE TRANSACTION end it, AND CHAIN opens the next.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed,
    RolledBack,
    /// PREPARE TRANSACTION: handed to two-phase commit (no probe fires for it).
    Prepared,
    Incomplete,
}

/// A statement's effect on the transaction block, from its text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockEffect {
    /// It opened the block as it started (BEGIN / START TRANSACTION).
    pub opened: bool,
    /// It ends the open block: COMMIT/END, ROLLBACK/ABORT, PREPARE TRANSACTION.
    pub ends: Option<TxnOutcome>,
    /// A block is open after it (AND CHAIN, or "COMMIT; BEGIN").
    pub reopens: bool,
}

impl BlockEffect {
    /// `open`: a block is open as the statement starts. A text of several
    /// statements is taken as a whole; one the scanner cannot split has none.
    pub fn of(text: &str, open: bool) -> BlockEffect {
        if !text.as_bytes().contains(&b';') {
            return Self::single(text, open);
        }
        let Some(stmts) = crate::pipeline::shape::statements(text) else {
            return BlockEffect::default();
        };
        if let [one] = stmts[..] {
            return Self::single(one, open);
        }
        let (mut e, mut now_open, mut began) = (BlockEffect::default(), open, false);
        for st in stmts {
            if starts_block(st) && !now_open {
                (now_open, began) = (true, true);
            } else if let Some(end) = block_end(st).filter(|_| now_open) {
                if !began {
                    e.ends = Some(end);
                }
                let chained = chains(st);
                (now_open, began) = (chained, chained);
            }
        }
        e.reopens = began && now_open;
        e
    }

    pub fn single(text: &str, open: bool) -> BlockEffect {
        if !open {
            return BlockEffect {
                opened: starts_block(text),
                ..Default::default()
            };
        }
        let ends = block_end(text);
        BlockEffect {
            opened: false,
            ends,
            reopens: ends.is_some() && chains(text),
        }
    }
}

/// BEGIN / START TRANSACTION (comments and case as the client's side reads them).
fn starts_block(text: &str) -> bool {
    matches!(
        crate::pipeline::txn::verb(text),
        crate::pipeline::txn::Verb::Begin
    )
}

/// COMMIT / END → committed, ROLLBACK / ABORT → rolled back; not ROLLBACK TO SAVEPOINT.
fn ends_block(text: &str) -> Option<TxnOutcome> {
    match crate::pipeline::txn::verb(text) {
        crate::pipeline::txn::Verb::Commit => Some(TxnOutcome::Committed),
        crate::pipeline::txn::Verb::Rollback => Some(TxnOutcome::RolledBack),
        _ => None,
    }
}

/// How a statement ends the open block, if it does: PREPARE TRANSACTION
/// prepares it, COMMIT/END commits, ROLLBACK/ABORT rolls back.
fn block_end(text: &str) -> Option<TxnOutcome> {
    match crate::pipeline::txn::verb(text) {
        crate::pipeline::txn::Verb::PrepareTransaction => Some(TxnOutcome::Prepared),
        _ => ends_block(text),
    }
}

/// COMMIT AND CHAIN / ROLLBACK AND CHAIN.
fn chains(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    ends_block(text).is_some() && upper.contains("AND CHAIN") && !upper.contains("AND NO CHAIN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_verbs_are_read_past_comments() {
        assert!(starts_block(
            "/* app=shop */ begin isolation level serializable"
        ));
        assert_eq!(ends_block("-- done\nCOMMIT"), Some(TxnOutcome::Committed));
        assert_eq!(ends_block("ROLLBACK\nTO SAVEPOINT a"), None);
        assert!(!starts_block("select 'BEGIN'"));
    }
}
