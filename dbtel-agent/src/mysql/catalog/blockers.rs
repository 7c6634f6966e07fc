//! Who blocks a lock wait, from one snapshot of the server's own tables
//! (pure: rows in, facts out). InnoDB row and table locks:
//! information_schema.INNODB_LOCK_WAITS joined to INNODB_TRX and
//! INNODB_LOCKS (MariaDB; MySQL 8 has performance_schema.data_lock_waits
//! instead). Metadata locks: information_schema.METADATA_LOCK_INFO (the
//! metadata_lock_info plugin), which lists granted locks only: a waiter's
//! blockers are the other sessions holding a lock on a table the waiter
//! holds one on (DDL holds SHARED_UPGRADABLE while it waits to upgrade) or
//! its statement names. PROCESSLIST says what every session is doing and
//! which OS thread (TID) runs it: an MDL wait's probe names no THD.

use crate::mysql::server::spans::LockType;

/// A lock wait the catalog is asked about, while it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The server process.
    pub server: u32,
    /// The OS thread waiting.
    pub tid: u32,
    /// The waiting connection (0: the probe did not name the THD; found by
    /// its thread in PROCESSLIST).
    pub connection: u64,
    /// The wait's start, which names it.
    pub start_ns: u64,
    pub lock: LockType,
}

/// One row of the InnoDB query: a waiter, what it asked for, one blocker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InnodbRow {
    pub waiter: u64,
    pub mode: Option<String>,
    /// RECORD or TABLE.
    pub lock_type: Option<String>,
    /// `db`.`table` as InnoDB writes it.
    pub table: Option<String>,
    pub index: Option<String>,
    pub blocker: u64,
    pub blocker_mode: Option<String>,
    pub blocker_query: Option<String>,
    /// How long the blocker's transaction has been open (trx_started has
    /// second resolution).
    pub blocker_age_ms: Option<i64>,
}

/// One granted metadata lock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MdlRow {
    pub connection: u64,
    pub mode: String,
    /// "Table metadata lock", "Schema metadata lock", "Backup lock", …
    pub lock_type: String,
    pub schema: String,
    pub table: String,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcRow {
    pub id: u64,
    pub tid: u64,
    pub user: String,
    pub host: String,
    pub db: Option<String>,
    pub command: String,
    pub state: Option<String>,
    pub info: Option<String>,
    pub time_ms: Option<u64>,
}

/// One blocker of a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub connection_id: u64,
    /// Its statement running now (raw; obfuscated when exported), if any.
    pub query: Option<String>,
    /// What it is doing: PROCESSLIST's command, and state when it has one
    /// ("Sleep", "Query: User sleep").
    pub state: String,
    pub transaction_age_ms: Option<i64>,
    /// The lock it holds that blocks (InnoDB: X, S, …; MDL: MDL_SHARED_READ, …).
    pub mode: Option<String>,
}

/// What the catalog told about one wait while it was on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitFacts {
    pub waiter: u64,
    /// The mode asked for (InnoDB only: METADATA_LOCK_INFO lists granted locks).
    pub mode: Option<String>,
    /// `db.table`.
    pub table: Option<String>,
    pub index: Option<String>,
    /// RECORD or TABLE for InnoDB, "metadata" for MDL.
    pub granularity: Option<String>,
    pub blockers: Vec<Blocker>,
}

/// One snapshot of the server's tables.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub innodb: Vec<InnodbRow>,
    /// None: METADATA_LOCK_INFO is not there (plugin not loaded) or not asked.
    pub mdl: Option<Vec<MdlRow>>,
    pub sessions: Vec<ProcRow>,
}

/// `db`.`t` → db.t (InnoDB quotes both parts with backticks).
pub fn unquote_table(t: &str) -> String {
    t.split("`.`")
        .map(|p| p.trim_matches('`').replace("``", "`"))
        .collect::<Vec<_>>()
        .join(".")
}

impl Snapshot {
    fn session(&self, id: u64) -> Option<&ProcRow> {
        self.sessions.iter().find(|s| s.id == id)
    }

    fn state_of(&self, id: u64) -> String {
        match self.session(id) {
            Some(s) => match s.state.as_deref().filter(|st| !st.is_empty()) {
                Some(st) => format!("{}: {st}", s.command),
                None => s.command.clone(),
            },
            None => "unknown".into(),
        }
    }

    /// The waiting connection of `ask`: named by the probe, else the
    /// session its thread runs.
    pub fn waiter(&self, ask: &Ask) -> Option<u64> {
        if ask.connection != 0 {
            return Some(ask.connection);
        }
        self.sessions
            .iter()
            .find(|s| s.tid == u64::from(ask.tid))
            .map(|s| s.id)
    }

    /// What blocks `ask`'s wait, if it is still on in this snapshot.
    pub fn facts(&self, ask: &Ask) -> Option<WaitFacts> {
        let waiter = self.waiter(ask)?;
        match ask.lock {
            LockType::Row | LockType::Table => self.innodb_facts(waiter),
            LockType::Metadata => self.mdl_facts(waiter),
        }
    }

    fn innodb_facts(&self, waiter: u64) -> Option<WaitFacts> {
        let rows: Vec<&InnodbRow> = self.innodb.iter().filter(|r| r.waiter == waiter).collect();
        let first = rows.first()?;
        let mut blockers: Vec<Blocker> = Vec::new();
        for r in &rows {
            if blockers.iter().any(|b| b.connection_id == r.blocker) {
                continue;
            }
            let running = self.session(r.blocker).and_then(|s| s.info.clone());
            blockers.push(Blocker {
                connection_id: r.blocker,
                query: r.blocker_query.clone().or(running),
                state: self.state_of(r.blocker),
                transaction_age_ms: r.blocker_age_ms,
                mode: r.blocker_mode.clone(),
            });
        }
        Some(WaitFacts {
            waiter,
            mode: first.mode.clone(),
            table: first.table.as_deref().map(unquote_table),
            index: first.index.clone(),
            granularity: first.lock_type.clone(),
            blockers,
        })
    }

    fn mdl_facts(&self, waiter: u64) -> Option<WaitFacts> {
        let me = self.session(waiter)?;
        // Only a session that says it waits for a metadata lock.
        if !me
            .state
            .as_deref()
            .is_some_and(|s| s.contains("metadata lock"))
        {
            return None;
        }
        let mut facts = WaitFacts {
            waiter,
            granularity: Some("metadata".into()),
            ..WaitFacts::default()
        };
        let Some(mdl) = &self.mdl else {
            return Some(facts);
        };
        let is_table = |r: &&MdlRow| r.lock_type == "Table metadata lock";
        let mut tables: Vec<(&str, &str)> = mdl
            .iter()
            .filter(is_table)
            .filter(|r| r.connection == waiter)
            .map(|r| (r.schema.as_str(), r.table.as_str()))
            .collect();
        if tables.is_empty() {
            // Waiting for its first lock on the table: the one its statement names.
            let text = me.info.as_deref().unwrap_or("").to_ascii_lowercase();
            tables = mdl
                .iter()
                .filter(is_table)
                .filter(|r| r.connection != waiter && names(&text, &r.table))
                .map(|r| (r.schema.as_str(), r.table.as_str()))
                .collect();
        }
        tables.dedup();
        facts.table = tables.first().map(|(s, t)| format!("{s}.{t}"));
        for r in mdl.iter().filter(is_table) {
            let on = tables.contains(&(r.schema.as_str(), r.table.as_str()));
            if !on
                || r.connection == waiter
                || facts
                    .blockers
                    .iter()
                    .any(|b| b.connection_id == r.connection)
            {
                continue;
            }
            let s = self.session(r.connection);
            facts.blockers.push(Blocker {
                connection_id: r.connection,
                query: s.and_then(|s| s.info.clone()),
                state: self.state_of(r.connection),
                transaction_age_ms: None,
                mode: Some(r.mode.clone()),
            });
        }
        Some(facts)
    }
}

/// Whether a (lowercased) statement names `table` as a word.
fn names(text: &str, table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    text.match_indices(&t).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + t.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

#[cfg(test)]
#[path = "blockers_tests.rs"]
mod tests;
