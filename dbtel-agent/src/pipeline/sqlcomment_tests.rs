use super::*;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE: u128 = 0x0af7651916cd43dd8448eb211c80319c;
const SPAN: u64 = 0xb7ad6b7169203331;

fn tp(sampled: bool) -> Option<TraceParent> {
    Some(TraceParent {
        trace_id: TRACE,
        span_id: SPAN,
        sampled,
    })
}

/// The text comes back unchanged and borrowed, nothing taken.
fn untouched(sql: &str) {
    let c = split(sql);
    assert_eq!(c.comment, None, "{sql:?}");
    assert_eq!(c.traceparent, None, "{sql:?}");
    assert!(matches!(c.body, Cow::Borrowed(b) if b == sql), "{sql:?}");
}

/// The traceparent of `SELECT 1 /*traceparent='<value>'*/` (the comment
/// must be taken whatever the value).
fn traceparent_in(value: &str) -> Option<TraceParent> {
    let sql = format!("SELECT 1 /*traceparent='{value}'*/");
    let c = split(&sql);
    assert_eq!(c.body, "SELECT 1", "{sql:?}");
    c.traceparent
}

#[test]
fn psycopg2_commenter() {
    let sql = format!(
        "SELECT * FROM t WHERE id = 5 /*db_driver='psycopg2%%3A2.9.10',\
         dbapi_level='2.0',traceparent='{TP}'*/"
    );
    let c = split(&sql);
    assert!(matches!(
        c.body,
        Cow::Borrowed("SELECT * FROM t WHERE id = 5")
    ));
    assert_eq!(c.comment, Some(&sql[29..]));
    assert!(c.comment.unwrap().starts_with("/*db_driver="));
    assert_eq!(c.traceparent, tp(true));
    // psycopg2 doubles `%` for its paramstyle: a lone `%` stays.
    assert_eq!(url_decoded("psycopg2%%3A2.9.10"), "psycopg2%:2.9.10");
}

#[test]
fn spec_example() {
    let sql = "SELECT * FROM FOO /*action='%2Fparam*d',controller='index',\
               framework='spring',\
               traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01',\
               tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/";
    let c = split(sql);
    assert_eq!(c.body, "SELECT * FROM FOO");
    assert_eq!(
        c.traceparent,
        Some(TraceParent {
            trace_id: 0x5bd66ef5095369c7b0d1f8f4bd33716a,
            span_id: 0xc532cb4098ac3dd2,
            sampled: true,
        })
    );
    // No traceparent at all: still sqlcommenter, still taken out.
    let c = split("SELECT 1 /*action='index',route='%2Fusers'*/");
    assert_eq!(
        (c.body.as_ref(), c.comment, c.traceparent),
        (
            "SELECT 1",
            Some("/*action='index',route='%2Fusers'*/"),
            None
        )
    );
}

#[test]
fn url_encoding() {
    // The key and the value are both percent-encoded.
    let encoded = TP.replace('-', "%2D");
    let sql = format!("SELECT 1 /*%2Fparam%20first='v',trace%70arent='{encoded}'*/");
    assert_eq!(split(&sql).traceparent, tp(true));
    assert_eq!(url_decoded("a%20b%2fc%zz%4"), "a b/c%zz%4");
    assert_eq!(url_decoded("run+this"), "run+this");
    // Bytes that are not UTF-8 do not panic.
    assert_eq!(url_decoded("%ff%c3"), "\u{fffd}\u{fffd}");
    assert_eq!(url_decoded("%c3%a9%"), "é%");
}

#[test]
fn escaped_quotes() {
    let sql = format!("SELECT 1 /*a='it\\'s',b='\\'x',traceparent='{TP}'*/");
    let c = split(&sql);
    assert_eq!(c.body, "SELECT 1");
    assert_eq!(c.traceparent, tp(true));
    assert_eq!(
        pairs("a='it\\'s',b='x,y=z'"),
        Some(vec![("a", "it\\'s"), ("b", "x,y=z")])
    );
    assert_eq!(unescaped("it\\'s"), "it's");
    // A backslash not before a quote is just a backslash.
    assert_eq!(pairs("a='c:\\d'"), Some(vec![("a", "c:\\d")]));
    // The last quote escaped: the value never ends.
    untouched("SELECT 1 /*a='x\\'*/");
}

#[test]
fn trailing_semicolon_stays() {
    let c = split("SELECT 1 /*traceparent='x'*/;");
    assert!(matches!(c.body, Cow::Owned(ref b) if b == "SELECT 1;"));
    assert_eq!(c.comment, Some("/*traceparent='x'*/"));
    let c = split("SELECT 1\n  /*a='b'*/ \t;\n");
    assert_eq!(c.body, "SELECT 1;\n");
    // Whitespace after the comment goes with it.
    let c = split("SELECT 1 /*a='b'*/ \n");
    assert!(matches!(c.body, Cow::Borrowed("SELECT 1")));
    // After the `;`: the body is a slice, `;` kept.
    let c = split("SELECT 1; /*a='b'*/");
    assert!(matches!(c.body, Cow::Borrowed("SELECT 1;")));
    // Several statements: only the end's comment.
    let c = split("SELECT 1; SELECT 2 /*a='b'*/;");
    assert_eq!(c.body, "SELECT 1; SELECT 2;");
    // Two `;`: the comment is not at the end.
    untouched("SELECT 1 /*a='b'*/;;");
}

#[test]
fn leading_comment() {
    let sql = format!("  /*traceparent='{TP}'*/ SELECT 1;");
    let c = split(&sql);
    assert!(matches!(c.body, Cow::Borrowed("SELECT 1;")));
    assert_eq!(c.comment, Some(&sql[2..sql.len() - 10]));
    assert_eq!(c.traceparent, tp(true));
    // Spaces inside, as some libraries write it.
    let c = split("/* a='b' , c='d' */SELECT 1");
    assert_eq!((c.body.as_ref(), c.comment.is_some()), ("SELECT 1", true));
    // A leading one is taken when the trailing comment is a hint or prose.
    let c = split("/*a='b'*/ SELECT 1 /* just a note */");
    assert_eq!(c.body, "SELECT 1 /* just a note */");
    assert_eq!(c.comment, Some("/*a='b'*/"));
    // Only one is taken: the trailing one first.
    let c = split("/*a='b'*/ SELECT 1 /*c='d'*/");
    assert_eq!(c.body, "/*a='b'*/ SELECT 1");
    assert_eq!(c.comment, Some("/*c='d'*/"));
}

#[test]
fn comments_that_are_not_sqlcommenter() {
    for sql in [
        "/*!40101 SET NAMES utf8mb4 */",
        "SELECT 1 /*!40101 a='b' */",
        "/*!40101 SET NAMES utf8mb4 */; SELECT 1",
        "SELECT /*+ INDEX(t i) */ * FROM t",
        "/*+ SeqScan(t) */ SELECT * FROM t",
        "SELECT 1 /*+ MAX_EXECUTION_TIME(1000) */",
        "SELECT 1 /* fetch the user's row */",
        "SELECT 1 /* traceparent = '00' */",
        "SELECT 1 /**/",
        "SELECT 1 /* */",
        "SELECT 1 /*a=b*/",
        "SELECT 1 /*a=''*/x",
        "SELECT 1 /*a='b',*/",
        "SELECT 1 /*,a='b'*/",
        "SELECT 1 /*a='b'c='d'*/",
        "SELECT 1 /*a='b';c='d'*/",
        "SELECT 1 /*a b='c'*/",
        "SELECT 1 /*='c'*/",
        "SELECT 1 /*a:'c'*/",
        "SELECT 1 /*a=\"c\"*/",
        // Nested comments, either way round.
        "SELECT 1 /* x /* a='b' */ */",
        "SELECT 1 /* x /*a='b'*/",
        "/* /* a='b' */ */ SELECT 1",
        "/*a='b' /* x */ */ SELECT 1",
        // Not at either end.
        "SELECT /*a='b'*/ 1",
        "SELECT 1 /*a='b'*/ FROM t",
        "x /*a='b'*/ SELECT 1",
        "-- /*a='b'*/\nSELECT 1",
        // Only a comment: nothing was commented.
        "/*a='b'*/",
        " /*a='b'*/ ; ",
        "/*a='b'*/;;",
        "",
        " ;",
    ] {
        untouched(sql);
    }
    // An empty value is still a value.
    assert_eq!(split("SELECT 1 /*a=''*/").body, "SELECT 1");
}

#[test]
fn traceparent_validation() {
    assert_eq!(traceparent_in(TP), tp(true));
    let bad = [
        // Wrong lengths.
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c0-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "",
        "00",
        // Uppercase hex.
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
        "0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
        // Version ff; all-zero ids.
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        // Not hex; other separators; version 00 with more fields.
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-ab",
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        // Higher version, but what follows the flags is not a field.
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
    ];
    for v in bad {
        assert_eq!(traceparent_in(v), None, "{v:?}");
    }
    // Higher versions: later fields ignored.
    let v = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever";
    assert_eq!(traceparent_in(v), tp(true));
    assert_eq!(traceparent_in(&TP.replace("00-", "cc-")), tp(true));
    // A traceparent twice is ambiguous.
    let sql = format!("SELECT 1 /*traceparent='{TP}',traceparent='{TP}'*/");
    assert_eq!(split(&sql).traceparent, None);
    // Other keys holding a trace context do not count.
    let sql = format!("SELECT 1 /*traceparents='{TP}',xtraceparent='{TP}'*/");
    assert_eq!(split(&sql).traceparent, None);
}

#[test]
fn sampled_flag() {
    let at = |flags: &str| traceparent_in(&format!("{}{flags}", &TP[..53]));
    assert_eq!(at("00"), tp(false));
    assert_eq!(at("01"), tp(true));
    assert_eq!(at("02"), tp(false));
    assert_eq!(at("ff"), tp(true));
}

#[test]
fn text_cut_by_the_capture_limit() {
    let sql = format!("SELECT 1 /*db_driver='psycopg2',traceparent='{TP}'*/");
    // Every cut: never panics; before the last byte nothing is taken.
    for n in 0..sql.len() {
        untouched(&sql[..n]);
    }
    let sql = format!("/*traceparent='{TP}'*/ SELECT 1");
    for n in 0..=sql.find(" SELECT").unwrap() {
        untouched(&sql[..n]);
    }
    // Cut in a value, right where `*/` happens to be.
    untouched("SELECT 1 /*a='x*/");
    untouched("SELECT 1 /*a='*/");
}

#[test]
fn multibyte_text() {
    let sql = format!("SELECT 'héllo — ✓' /*a='%C3%A9',traceparent='{TP}'*/;  ");
    let c = split(&sql);
    assert_eq!(c.body, "SELECT 'héllo — ✓';  ");
    assert_eq!(c.traceparent, tp(true));
    let c = split("/*a='b'*/ SELECT '日本'");
    assert_eq!(c.body, "SELECT '日本'");
    // Multibyte inside the comment is not sqlcommenter (keys are ASCII).
    untouched("SELECT 1 /*clé='v'*/");
    untouched("SELECT 1 /*a='b'✓*/");
    // Non-ASCII inside a value: raw, not encoded, but still a value.
    assert_eq!(split("SELECT 1 /*a='✓'*/").body, "SELECT 1");
    // A traceparent with multibyte characters where the fields are.
    let v = format!("{}é{}", &TP[..10], &TP[12..]);
    assert_eq!(traceparent_in(&v), None);
    for n in 0..=v.len() {
        if let Some(cut) = v.get(..n) {
            assert_eq!(parse_traceparent(cut), None);
        }
    }
    // Whitespace that is not ASCII is text, not trimmed.
    let c = split("SELECT 1\u{a0}/*a='b'*/");
    assert_eq!(c.body, "SELECT 1\u{a0}");
}

#[test]
fn every_byte_outside_the_comment_is_kept() {
    let texts = [
        format!("SELECT 1 /*traceparent='{TP}'*/ ;\n"),
        format!("\n/*traceparent='{TP}'*/\nSELECT 1"),
        "BEGIN; UPDATE t SET v = 1; /*a='b'*/ ; ".to_string(),
    ];
    for sql in &texts {
        let c = split(sql);
        let comment = c.comment.expect("taken");
        let at = comment.as_ptr() as usize - sql.as_ptr() as usize;
        let outside = [&sql[..at], &sql[at + comment.len()..]].concat();
        let solid = |s: &str| s.split_ascii_whitespace().collect::<String>();
        assert_eq!(solid(&outside), solid(&c.body), "{sql:?}");
    }
}

#[test]
fn opentelemetry_pythons_comment_with_bare_numbers_is_taken() {
    let sql = "select 1 /*db_driver='psycopg2%%3A2.9.13',dbapi_threadsafety=2,libpq_version=170006,traceparent='00-7312080dc94e205cf46a1018a6f14ada-111510fec240a9bc-03'*/";
    let c = split(sql);
    assert_eq!(c.body, "select 1");
    let tp = c.traceparent.expect("traceparent");
    assert_eq!(tp.trace_id, 0x7312080dc94e205cf46a1018a6f14ada);
    assert_eq!(tp.span_id, 0x111510fec240a9bc);
    assert!(tp.sampled);
    // A bare word is still not sqlcommenter.
    assert_eq!(split("select 1 /*a=b*/").comment, None);
}
