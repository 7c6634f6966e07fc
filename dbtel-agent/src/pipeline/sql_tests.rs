use super::*;

fn f(sql: &str) -> QueryFacts {
    facts(sql, true)
}

#[test]
fn obfuscates_literals_and_keeps_shape() {
    assert_eq!(
        f("SELECT * FROM users WHERE id = 42 AND name = 'bob''s' AND x IN (1.5, -2)").text,
        "SELECT * FROM users WHERE id = ? AND name = ? AND x IN (?, ?)"
    );
    assert_eq!(
        f("select $$secret$$, E'a\\'b', x'ff'").text,
        "select ?, ?, ?"
    );
    // Unary minus belongs to the literal; binary minus stays.
    assert_eq!(
        f("update t set b = b + -5, c = c - 2, d = x-1 where e = -1.5").text,
        "update t set b = b + ?, c = c - ?, d = x-? where e = ?"
    );
    assert_eq!(
        f("SELECT abalance FROM pgbench_accounts WHERE aid = $1").text,
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    );
    // Identifiers with digits and quoted identifiers are not literals.
    assert_eq!(
        f("select t1.c2 from \"T 3\" t1").text,
        "select t1.c2 from \"T 3\" t1"
    );
    // Comments are dropped: they can carry anything (sqlcommenter's tags, literals).
    assert_eq!(
        f("select 1 /*traceparent='00-ab-cd-01'*/").text,
        "select ? "
    );
    assert_eq!(
        f("select a/* secret 42 */from t -- user=bob\nwhere b = 2").text,
        "select a from t \nwhere b = ?"
    );
    assert_eq!(
        facts("select 1 -- kept as sent\n", false).text,
        "select 1 -- kept as sent\n"
    );
    assert_eq!(facts("select 'x'", false).text, "select 'x'");
}

#[test]
fn affected_rows_from_command_tags() {
    for (tag, n) in [
        ("INSERT 0 5", Some(5)),
        ("UPDATE 3", Some(3)),
        ("DELETE 0", Some(0)),
        ("MERGE 2", Some(2)),
        ("COPY 10", Some(10)),
    ] {
        assert_eq!(affected_rows(tag), n, "{tag}");
    }
    for tag in ["SELECT 1", "BEGIN", "CREATE TABLE", "", "UPDATE"] {
        assert_eq!(affected_rows(tag), None, "{tag}");
    }
}

#[test]
fn copy_directions_and_summaries() {
    use CopyDirection::*;
    for (sql, d) in [
        ("COPY t FROM STDIN", Some(In)),
        ("copy t (a, b) from stdin with (format csv)", Some(In)),
        (
            "COPY (select * from t where a in (select 1 from u)) TO STDOUT",
            Some(Out),
        ),
        ("/* x */ copy public.t to stdout", Some(Out)),
        ("select 1 from t", None),
    ] {
        assert_eq!(copy_direction(sql), d, "{sql}");
    }
    let count = |sql: &str| row_count(f(sql).operation.as_deref().unwrap_or(""), sql);
    assert_eq!(count("copy t to stdout"), Some(RowCount::Returned));
    assert_eq!(count("copy t from stdin"), Some(RowCount::Affected));
    assert_eq!(
        count("with x as (select 1) insert into t select * from x"),
        Some(RowCount::Affected)
    );
    assert_eq!(count("fetch 10 from c"), Some(RowCount::Returned));
    assert_eq!(count("create table t (a int)"), None);
    assert_eq!(
        f("COPY  ct FROM STDIN ").summary.as_deref(),
        Some("COPY ct")
    );
    assert_eq!(
        f("copy (select a from t) to stdout").summary.as_deref(),
        Some("COPY SELECT t")
    );
}

#[test]
fn operators_and_spacing_stay_as_written() {
    assert_eq!(
        f("select * from t where a != 1 and b<>2").text,
        "select * from t where a != ? and b<>?"
    );
    assert_eq!(
        f("select box '(1,1),(2,2)' <| box '(3,3),(4,4)'").text,
        "select box ? <| box ?"
    );
    assert_eq!(
        f("SELECT  x::int\n\t FROM \"tä\" WHERE y = 'é' AND z ~~* 'ü%'").text,
        "SELECT  x::int\n\t FROM \"tä\" WHERE y = ? AND z ~~* ?"
    );
    assert_eq!(f("select 'ö', 1,\n  'ß'").text, "select ?, ?,\n  ?");
}

#[test]
fn a_text_in_parentheses_is_named_by_its_first_operation() {
    let q = f("(select a from t1 where x = 1) union (select a from t2)");
    let bare = f("select a from t1 where x = 1 union select a from t2");
    assert_eq!(
        (q.operation.as_deref(), &q.collection, &q.summary),
        (Some("SELECT"), &bare.collection, &bare.summary)
    );
    assert_eq!(
        q.text,
        "(select a from t1 where x = ?) union (select a from t2)"
    );
    let one = f("(select a from t1)");
    assert_eq!(
        (one.operation.as_deref(), one.collection.as_deref()),
        (Some("SELECT"), Some("t1"))
    );
}

#[test]
fn postgresql_16_numbers_are_replaced_whole() {
    assert_eq!(
        f("select 0o17, 0B101, 1_000, 0x_FF, 0xF_F, 0xFF, 1_000.5 from t where a = -0o7").text,
        "select ?, ?, ?, ?, ?, ?, ? from t where a = ?"
    );
    // PostgreSQL 15 reads `123abc` as `123 AS abc`: the alias stays.
    assert_eq!(f("select 123abc from t").text, "select ?abc from t");
    assert_eq!(
        f("select x_1, t.b101 from t").text,
        "select x_1, t.b101 from t",
        "identifiers are not numbers"
    );
}

#[test]
fn text_cut_inside_a_literal_leaks_nothing_after_the_cut() {
    let got = f("SELECT * FROM t WHERE secret = 'hunter2 and mo");
    assert!(!got.text.contains("hunter2"), "{got:?}");
    assert!(
        got.text.starts_with("SELECT * FROM t WHERE secret = "),
        "{got:?}"
    );
    assert!(got.text.ends_with('?'));
    assert_eq!(got.operation.as_deref(), Some("SELECT"));
    assert_eq!(got.collection.as_deref(), Some("t"));
}

#[test]
fn a_text_cut_inside_a_literal_keeps_everything_before_it() {
    let mut sql = String::from("INSERT INTO brinopers VALUES (1, 'int4', '{>,>=}', '{100}'), ");
    sql.push_str("(2, 'text', '{<}', '{aaa...");
    let got = f(&sql);
    assert_eq!(
        got.text,
        "INSERT INTO brinopers VALUES (?, ?, ?, ?), (?, ?, ?, ?"
    );
    assert_eq!(
        (got.operation.as_deref(), got.collection.as_deref()),
        (Some("INSERT"), Some("brinopers"))
    );
    // An E'' string cut open: the same.
    assert_eq!(
        f("select a, E'x\\n' from t where b = E'open").text,
        "select a, ? from t where b = ?"
    );
}

#[test]
fn syntax_the_tokenizer_does_not_know_is_obfuscated_by_the_plain_scanner() {
    let got = f("select 1 |> 2, 'secret' /* c 7 */ from t");
    assert_eq!(got.text, "select ? |> ?, ?  from t");
    assert_eq!(got.operation.as_deref(), Some("SELECT"));
    // Where the scanner is not sure (a dollar-quoted string), nothing after the failure leaves.
    let got = f("select 1 |> $$secret$$");
    assert!(!got.text.contains("secret"), "{got:?}");
}

#[test]
fn jsonb_question_mark_operators_leak_no_literal() {
    // sqlparser 0.59 swallowed the quote after `?`, turning the literal into words.
    for (sql, secret) in [
        ("select * from t where data ?'secret'", "secret"),
        ("select * from t where a ?'s3cr3t' || 'pw'", "s3cr3t"),
        (
            "select * from t where tags ?| array['admin'] and x = 'pw1'",
            "pw1",
        ),
    ] {
        let got = f(sql).text;
        assert!(
            !got.contains(secret) && !got.contains("admin"),
            "{sql} -> {got}"
        );
        assert!(got.starts_with("select * from t where "), "{got}");
    }
}

#[test]
fn operation_collection_summary() {
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SELECT",
            Some("pgbench_accounts"),
            "SELECT pgbench_accounts",
        ),
        (
            "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 2",
            "UPDATE",
            Some("pgbench_tellers"),
            "UPDATE pgbench_tellers",
        ),
        (
            "INSERT INTO pgbench_history (tid, bid) VALUES (1, 2)",
            "INSERT",
            Some("pgbench_history"),
            "INSERT pgbench_history",
        ),
        (
            "delete from public.items where id = 3",
            "DELETE",
            Some("public.items"),
            "DELETE public.items",
        ),
        (
            "select * from songs s, artists a where s.a = a.id",
            "SELECT",
            None,
            "SELECT songs artists",
        ),
        (
            "SELECT o.x FROM orders o JOIN customers c ON o.c = c.id",
            "SELECT",
            None,
            "SELECT orders customers",
        ),
        (
            "INSERT INTO archive SELECT * FROM orders",
            "INSERT",
            None,
            "INSERT archive SELECT orders",
        ),
        ("select pg_sleep(0.2)", "SELECT", None, "SELECT"),
        (
            "SELECT * FROM generate_series(1, 3)",
            "SELECT",
            None,
            "SELECT",
        ),
        ("BEGIN", "BEGIN", None, "BEGIN"),
        ("end", "END", None, "END"),
        (
            "CREATE TABLE items (id int, name text)",
            "CREATE",
            Some("items"),
            "CREATE items",
        ),
        (
            "WITH t AS (SELECT * FROM a) UPDATE b SET x = 1 FROM t",
            "UPDATE",
            None,
            "SELECT a UPDATE b t",
        ),
        (
            "select * from t for update",
            "SELECT",
            Some("t"),
            "SELECT t",
        ),
        (
            "insert into t values (1) on conflict (id) do update set x = 2",
            "INSERT",
            Some("t"),
            "INSERT t",
        ),
    ];
    for (sql, op, coll, summary) in cases {
        let got = f(sql);
        assert_eq!(got.operation.as_deref(), Some(*op), "{sql}");
        assert_eq!(got.collection.as_deref(), *coll, "{sql}");
        assert_eq!(got.summary.as_deref(), Some(*summary), "{sql}");
    }
}

#[test]
fn cache_returns_the_same_facts_and_stays_bounded() {
    let mut c = FactsCache::new(true, 2);
    let a = c.get("select 1");
    assert_eq!(*a, f("select 1"));
    assert!(Arc::ptr_eq(&a, &c.get("select 1")));
    c.get("select 2");
    c.get("select 3");
    assert!(c.map.len() <= 2);
    assert_eq!(c.get("select 1").text, "select ?");
    // A parameterised text is its own shape: found by the text itself next time.
    let q = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    let p = c.get(q);
    assert!(c.plain.contains_key(q) && Arc::ptr_eq(&p, &c.get(q)));
    assert_eq!(p.text, q);
    assert!(
        !c.plain.contains_key("select 1"),
        "texts with literals never go by their text"
    );
}

#[test]
fn empty_and_odd_text() {
    let empty = f("");
    assert_eq!(
        (empty.text.as_str(), empty.operation, empty.summary),
        ("", None, None)
    );
    // Only the (empty) text becomes an attribute.
    assert_eq!(empty.attrs.kvs(), [KeyValue::new("db.query.text", "")]);
    assert_eq!(f("  ;").operation, None);
}

#[test]
fn sql_level_prepared_statements() {
    use super::prepared::*;
    assert_eq!(
        prepare("PREPARE getacct (int) AS select * from accounts where id = $1"),
        Some(("getacct".into(), "select * from accounts where id = $1"))
    );
    assert_eq!(
        prepare("prepare \"My Q\" as UPDATE t SET a = 1"),
        Some(("My Q".into(), "UPDATE t SET a = 1"))
    );
    assert_eq!(prepare("PREPARE TRANSACTION 'g1'"), None);
    assert_eq!(prepare("PREPARE p AS"), Some(("p".into(), "")));
    assert_eq!(execute("EXECUTE GetAcct(42)"), Some("getacct".into()));
    assert_eq!(execute("execute p"), Some("p".into()));
    assert_eq!(execute("EXECUTE 'x'"), None);
    assert_eq!(deallocate("DEALLOCATE PREPARE p"), Some(Some("p".into())));
    assert_eq!(deallocate("deallocate all"), Some(None));
    assert_eq!(deallocate("select 1"), None);
}

#[test]
fn comments_are_kept_on_request() {
    let keep = |sql: &str| facts(sql, Text::ObfuscatedWithComments).text;
    assert_eq!(
        keep("select 1 /* app=shop */ from t -- end"),
        "select ? /* app=shop */ from t -- end"
    );
    assert_eq!(
        keep("select 1 |> 2 /* c */"),
        "select ? |> ? /* c */",
        "the plain scanner too"
    );
    assert_eq!(
        facts("select 1 /* app=shop */", Text::Obfuscated).text,
        "select ? "
    );
}

/// Texts the sql fuzz target crashed the agent with (bytes as found).
#[test]
fn fuzzed_texts_do_not_panic() {
    // A failure at the end of a text cut just after a two-byte character:
    // the cut point was put inside it.
    let texts = [&b"=$$,=\xdc\x9b$"[..]];
    for t in texts {
        let t = std::str::from_utf8(t).unwrap();
        for dialect in [Dialect::PostgreSql, Dialect::MySql] {
            for text in [Text::Obfuscated, Text::ObfuscatedWithComments, Text::Raw] {
                let f = facts_in(dialect, t, text);
                // PostgreSQL: a dollar quote cut open, obfuscated (MySQL: names).
                if text != Text::Raw && dialect == Dialect::PostgreSql {
                    assert_eq!(f.text, "=?", "{t:?}");
                }
            }
        }
    }
}

#[test]
fn a_shared_text_finds_its_facts_by_address_and_a_copy_by_content() {
    let mut c = FactsCache::new(Text::Obfuscated, 16);
    let a: Arc<str> = Arc::from("SELECT abalance FROM pgbench_accounts WHERE aid = 5");
    let first = c.get_shared(&a).clone();
    assert!(Arc::ptr_eq(&first, c.get_shared(&a)));
    assert_eq!(
        first.text,
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
    );
    // Another allocation of another text in the same slot replaces it.
    let texts: Vec<Arc<str>> = (0..200)
        .map(|i| Arc::from(format!("SELECT {i} FROM t{i}").as_str()))
        .collect();
    for (i, t) in texts.iter().enumerate() {
        let f = c.get_shared(t).clone();
        assert_eq!(f.collection, Some(format!("t{i}")));
        assert!(Arc::ptr_eq(&f, c.get_shared(t)));
    }
    assert!(c.memo.iter().flatten().count() <= MEMO_SLOTS);
    // The same text elsewhere: the same facts, by content.
    let copy: Arc<str> = Arc::from(&*a);
    assert_eq!(c.get_shared(&copy).text, first.text);
}
