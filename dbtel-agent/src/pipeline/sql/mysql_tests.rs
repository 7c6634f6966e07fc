//! MySQL/MariaDB texts: obfuscation (no literal survives) and the facts.

use crate::pipeline::sql::{facts, facts_in, Dialect, FactsCache, QueryFacts, Text};

fn f(sql: &str) -> QueryFacts {
    facts_in(Dialect::MySql, sql, Text::Obfuscated)
}

fn kept(sql: &str) -> String {
    facts_in(Dialect::MySql, sql, Text::ObfuscatedWithComments).text
}

#[test]
fn double_quotes_are_strings_backticks_identifiers() {
    assert_eq!(
        f(r#"SELECT * FROM users WHERE name = "bob" AND pw = 'x'"#).text,
        "SELECT * FROM users WHERE name = ? AND pw = ?"
    );
    assert_eq!(
        f("SELECT `select`, `a b`, `x``y` FROM `db`.`t` WHERE `c` = 1").text,
        "SELECT `select`, `a b`, `x``y` FROM `db`.`t` WHERE `c` = ?"
    );
    // PostgreSQL reads the same text's "bob" as an identifier.
    assert_eq!(facts(r#"select "bob""#, true).text, r#"select "bob""#);
    assert_eq!(f(r#"select "bob""#).text, "select ?");
}

#[test]
fn backslash_escapes_stay_inside_their_string() {
    assert_eq!(
        f(r#"select 'it\'s', "dq \" x", 'a\\', b, '\\\'', 'x''y', "p""q""#).text,
        "select ?, ?, ?, b, ?, ?, ?"
    );
    assert_eq!(
        f(r"select * from t where a like '%\_%' and b = 'c\'d'").text,
        "select * from t where a like ? and b = ?"
    );
}

#[test]
fn comments_in_mysql_syntax() {
    assert_eq!(
        f("select a # it's secret 42\nfrom t where b = 'x'").text,
        "select a \nfrom t where b = ?"
    );
    assert_eq!(
        f("select a -- it's 'secret'\nfrom t").text,
        "select a \nfrom t"
    );
    // `--` needs a space: `1--1` is 1 - (-1).
    assert_eq!(
        f("select 1--1, a--b from t").text,
        "select ?-?, a--b from t"
    );
    assert_eq!(f("select 1 /* 'secret' */ + 2").text, "select ?  + ?");
    // Markers inside strings are not comments.
    assert_eq!(
        f(r#"select '# no', "-- nor", '/* this */', a from t"#).text,
        "select ?, ?, ?, a from t"
    );
    assert_eq!(
        kept("select a # note\nfrom t where b = 1").as_str(),
        "select a # note\nfrom t where b = ?"
    );
}

#[test]
fn executable_comments_are_code() {
    // Dropped with the other comments by default.
    assert_eq!(f("/*!40101 SET NAMES 'utf8mb4' */").text, "");
    assert_eq!(
        f("select /*+ MAX_EXECUTION_TIME(1000) */ * from t where a = 'x'").text,
        "select  * from t where a = ?"
    );
    // Kept: their literals replaced like the rest.
    assert_eq!(
        kept("/*!40101 SET NAMES 'utf8mb4' */"),
        "/*!40101 SET NAMES ? */"
    );
    assert_eq!(
        kept("select /*+ MAX_EXECUTION_TIME(1000) */ * from t /* plain 7 */"),
        "select /*+ MAX_EXECUTION_TIME(?) */ * from t /* plain 7 */"
    );
    assert_eq!(kept("/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`localhost` */ VIEW v AS select 'x'"),
        "/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`localhost` */ VIEW v AS select ?");
}

#[test]
fn hex_bit_national_and_introduced_literals() {
    assert_eq!(
        f("select 0x1F, X'4D', x'ff', b'0101', B'1', 0b0101, 0xABCDEF, N'n', n'm'").text,
        "select ?, ?, ?, ?, ?, ?, ?, ?, ?"
    );
    assert_eq!(
        f("select _utf8mb4'secret', _binary 'x', _latin1'y' collate latin1_bin").text,
        "select ?, _binary ?, ? collate latin1_bin"
    );
    assert_eq!(
        f("select _id from t").text,
        "select _id from t",
        "an identifier with an underscore is not an introducer"
    );
}

#[test]
fn numbers_and_identifiers_starting_with_digits() {
    assert_eq!(
        f("select 1.5e3, .5, -2, 1e-3, 1.5abc, 123abc, t.1c from t").text,
        "select ?, ?, ?, ?, ?abc, 123abc, t.1c from t"
    );
    // `5ec2` is an identifier to MySQL (not a number): its digit is kept apart all the same.
    assert_eq!(f("select 5ec2 from t").text, "select ?ec2 from t");
    assert_eq!(
        f("select * from t where a = ? and b in (?, ?)").text,
        "select * from t where a = ? and b in (?, ?)"
    );
    assert_eq!(f("select 'a' 'b' \"c\"").text, "select ? ? ?");
}

#[test]
fn variables_accounts_and_multi_statements() {
    assert_eq!(
        f("set @a = 'secret', @@session.sql_mode = 'ANSI'").text,
        "set @a = ?, @@session.sql_mode = ?"
    );
    assert_eq!(
        f("CREATE USER 'bob'@'localhost' IDENTIFIED BY 'pw'").text,
        "CREATE USER ?@? IDENTIFIED BY ?"
    );
    assert_eq!(
        f("select 1; select 'a'; do sleep(2)").text,
        "select ?; select ?; do sleep(?)"
    );
}

#[test]
fn a_text_cut_inside_a_literal_keeps_nothing_of_it() {
    for (sql, head) in [
        (
            r#"select * from t where a = "hunter2 and mo"#,
            "select * from t where a = ",
        ),
        (
            r"insert into t values ('a\'b', 'hunter2 and mo",
            "insert into t values (?, ",
        ),
        (
            r#"insert into t values ("x", "hunter2\" and mo"#,
            "insert into t values (?, ",
        ),
        (r#"select _utf8mb4'hunter2"#, "select "),
    ] {
        let got = f(sql);
        assert!(!got.text.contains("hunter2"), "{sql} -> {got:?}");
        assert!(
            got.text.starts_with(head) && got.text.ends_with('?'),
            "{sql} -> {got:?}"
        );
    }
    // An unterminated backtick: nothing from the failure on.
    let got = f("select `a from t where b = 'hunter2'");
    assert!(!got.text.contains("hunter2"), "{got:?}");
}

#[test]
fn raw_text_stays_as_sent() {
    assert_eq!(
        facts_in(Dialect::MySql, r#"select "x" # c"#, Text::Raw).text,
        r#"select "x" # c"#
    );
}

/// Every literal syntax, in several positions and both obfuscating policies:
/// its marker never survives.
#[test]
fn no_literal_survives() {
    let literals = [
        "'s3cr3t'",
        "\"s3cr3t\"",
        r"'s3\'cr3t'",
        r#""s3\"cr3t""#,
        "'s3''cr3t'",
        "N's3cr3t'",
        "n's3cr3t'",
        "_utf8mb4's3cr3t'",
        "_binary 's3cr3t'",
        "_latin1\"s3cr3t\"",
        "X'5ec2e7'",
        "x'5ec2e7'",
        "0x5ec2e7",
        "b'0101011'",
        "B'0101011'",
        "0b0101011",
        "1.5e-7",
        "15e-7",
        "'s3cr3t\\\\'",
        "'multi\ns3cr3t'",
    ];
    let markers = ["s3cr3t", "cr3t", "5ec2e7", "0101011", "1.5e-7", "5e-7"];
    for lit in literals {
        for sql in [
            format!("select {lit}"),
            format!("select * from t where a = {lit} and b = 1"),
            format!("insert into t (a, b) values ({lit}, -{lit})"),
            format!("update t set a = {lit} where b in ({lit}, {lit})"),
            format!("select a from t where b = {lit} # note\n and c = {lit}"),
            format!("/*!40101 set @x = {lit} */ select /*+ HINT({lit}) */ 1"),
            format!("call p({lit}); select concat({lit}, a) from t"),
            // Glued: strings concatenate (`0b01010b01` would be one identifier).
            if lit.starts_with(|c: char| c.is_ascii_digit()) {
                format!("select {lit}")
            } else {
                format!("select {lit}{lit}")
            },
        ] {
            for policy in [Text::Obfuscated, Text::ObfuscatedWithComments] {
                let got = facts_in(Dialect::MySql, &sql, policy).text;
                assert!(
                    !markers.iter().any(|m| got.contains(m)),
                    "{policy:?}: {sql:?} -> {got:?}"
                );
            }
        }
    }
}

/// (text, db.operation.name, db.collection.name, db.query.summary)
type Case = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

#[test]
fn operation_collection_summary() {
    let cases: &[Case] = &[
        (
            "SELECT * FROM `shop`.`order items` WHERE id = 1",
            Some("SELECT"),
            Some("shop.order items"),
            Some("SELECT shop.order items"),
        ),
        (
            "select c from sbtest1 where id=5",
            Some("SELECT"),
            Some("sbtest1"),
            Some("SELECT sbtest1"),
        ),
        (
            "SELECT DISTINCT c FROM sbtest3 WHERE id BETWEEN 1 AND 100 ORDER BY c",
            Some("SELECT"),
            Some("sbtest3"),
            Some("SELECT sbtest3"),
        ),
        (
            "INSERT INTO shop.t (a) VALUES (1)",
            Some("INSERT"),
            Some("shop.t"),
            Some("INSERT shop.t"),
        ),
        (
            "INSERT IGNORE INTO t VALUES (1)",
            Some("INSERT"),
            Some("t"),
            Some("INSERT t"),
        ),
        (
            "insert t values (1)",
            Some("INSERT"),
            Some("t"),
            Some("INSERT t"),
        ),
        (
            "INSERT LOW_PRIORITY IGNORE `t` SET a = 1",
            Some("INSERT"),
            Some("t"),
            Some("INSERT t"),
        ),
        (
            "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 2",
            Some("INSERT"),
            Some("t"),
            Some("INSERT t"),
        ),
        (
            "REPLACE INTO t VALUES (1)",
            Some("REPLACE"),
            Some("t"),
            Some("REPLACE t"),
        ),
        (
            "REPLACE t SELECT * FROM s",
            Some("REPLACE"),
            None,
            Some("REPLACE t SELECT s"),
        ),
        (
            "UPDATE LOW_PRIORITY IGNORE `t` SET a = 1",
            Some("UPDATE"),
            Some("t"),
            Some("UPDATE t"),
        ),
        (
            "UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = 1",
            Some("UPDATE"),
            None,
            Some("UPDATE t1 t2"),
        ),
        (
            "DELETE QUICK FROM t WHERE a = 1",
            Some("DELETE"),
            Some("t"),
            Some("DELETE t"),
        ),
        (
            "SELECT REPLACE(a, 'x', 'y') FROM t",
            Some("SELECT"),
            Some("t"),
            Some("SELECT t"),
        ),
        (
            "LOAD DATA INFILE '/tmp/x' INTO TABLE t",
            Some("LOAD"),
            Some("t"),
            Some("LOAD t"),
        ),
        (
            "SELECT * FROM t1 JOIN db2.t2 USING (id)",
            Some("SELECT"),
            None,
            Some("SELECT t1 db2.t2"),
        ),
        (
            "SELECT * FROM t FOR UPDATE",
            Some("SELECT"),
            Some("t"),
            Some("SELECT t"),
        ),
        (
            "SELECT a FROM t INTO OUTFILE '/tmp/a'",
            Some("SELECT"),
            Some("t"),
            Some("SELECT t"),
        ),
        (
            "SELECT a INTO @v FROM t",
            Some("SELECT"),
            Some("t"),
            Some("SELECT t"),
        ),
        ("select sleep(0.2)", Some("SELECT"), None, Some("SELECT")),
        ("USE shop", Some("USE"), None, Some("USE")),
        ("SET NAMES utf8mb4", Some("SET"), None, Some("SET")),
        ("SET autocommit=0", Some("SET"), None, Some("SET")),
        ("SHOW TABLES", Some("SHOW"), None, Some("SHOW")),
        ("CALL p(1)", Some("CALL"), None, Some("CALL")),
        ("START TRANSACTION", Some("START"), None, Some("START")),
        ("SAVEPOINT s1", Some("SAVEPOINT"), None, Some("SAVEPOINT")),
        ("commit", Some("COMMIT"), None, Some("COMMIT")),
        ("/*!40101 SET NAMES utf8 */", None, None, None),
        ("# only a comment", None, None, None),
    ];
    for (sql, op, coll, summary) in cases {
        let got = f(sql);
        assert_eq!(
            (
                got.operation.as_deref(),
                got.collection.as_deref(),
                got.summary.as_deref()
            ),
            (*op, *coll, *summary),
            "{sql}"
        );
    }
}

#[test]
fn the_cache_reads_its_own_dialect() {
    let mut my = FactsCache::with_dialect(true, 10, Dialect::MySql);
    assert_eq!(
        my.get(r#"select "a" from t where b = 1"#).text,
        "select ? from t where b = ?"
    );
    assert_eq!(
        my.get(r#"select "b" from t where b = 2"#).text,
        "select ? from t where b = ?"
    );
    assert_eq!(
        my.get("select a from t # 'c'\nwhere b = 3").text,
        "select a from t \nwhere b = ?"
    );
    let mut pg = FactsCache::new(true, 10);
    assert_eq!(
        pg.get(r#"select "a" from t where b = 1"#).text,
        r#"select "a" from t where b = ?"#
    );
}
