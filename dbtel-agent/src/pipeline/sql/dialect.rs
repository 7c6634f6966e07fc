//! The SQL dialects query texts are read in.

use sqlparser::dialect::{Dialect as Lex, PostgreSqlDialect};

/// The SQL dialect a text is read in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    PostgreSql,
    /// MySQL and MariaDB, in the default sql_mode (`"..."` is a string;
    /// under ANSI_QUOTES it would be an identifier: replaced all the same).
    MySql,
}

impl Dialect {
    pub(super) fn lexer(self) -> &'static dyn Lex {
        match self {
            Dialect::PostgreSql => &PostgreSqlDialect {},
            Dialect::MySql => &super::mysql::Lexer,
        }
    }

    /// Quotes that open a literal: a text cut after one keeps nothing from it on.
    pub(super) fn quotes(self) -> &'static [char] {
        match self {
            Dialect::PostgreSql => &['\'', '$'],
            Dialect::MySql => &['\'', '"'],
        }
    }
}
