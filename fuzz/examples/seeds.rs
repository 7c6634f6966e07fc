//! Writes the seed corpora in fuzz/corpus/ (except the ELF seeds: see
//! fuzz/seeds/tiny.c): `cargo run -p dbtel-fuzz --example seeds`. The
//! layout seeds are the accessors of this machine's libpq, libmariadb and
//! mariadbd, where installed (their code is what the decoders are for).

use std::{fs, path::Path};

use dbtel_agent::{
    events::{encode, Origin},
    mysql::{
        self,
        records::{encode as my, ConnDetails, Returned},
    },
    postgres::libpq,
};
use dbtel_common::{func, Kind, MyCall};

/// Records in the records target's framing: u16 length, bytes.
fn framed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u16).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn sql() {
    let texts = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 17;",
        "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 98;",
        "insert into t values (1, -2.5, 'it''s', E'\\n', $$x$$, U&'d\\0061t', B'101')",
        "select /* traceparent='00-aa-01' */ a.b, \"Q\"\"x\" from s.t join u using (id) -- c\n",
        "BEGIN; UPDATE t SET v = v + 1 WHERE id = 1; COMMIT;",
        "PREPARE p (int) AS SELECT $1::int; EXECUTE p(2); DEALLOCATE ALL",
        "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
        "select * from t |> where a = 1 |> select b",
        "SELECT `a`, \"str\", 0x1F, b'01', _utf8mb4'x' COLLATE utf8mb4_bin FROM db.t WHERE c = 'it\\'s' # tail",
        "/*!40101 SET NAMES utf8mb4 */; SELECT @@version, @v := 1",
        "select 'cut in the midd",
        "select 1\0select 2",
        "select * from t where a = 1 and b = 'x'\0select * from t where a = 22 and b = 'yy''z'",
        // sqlcommenter: psycopg2's (appended), a Java agent's (prepended).
        "SELECT * FROM t WHERE id = 5 /*db_driver='psycopg2%%3A2.9.10',dbapi_level='2.0',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/;",
        "/*action='%2Fparam*d',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-00',x='it\\'s'*/ SELECT 1",
    ];
    for (i, t) in texts.iter().enumerate() {
        write("sql", &format!("text{i}"), t.as_bytes());
    }
}

fn records() {
    let at = |ts: u64| Origin {
        pid: 100,
        tid: 100,
        ts_ns: ts,
        conn: 0x5000,
    };
    let libpq = [
        encode::conn(at(1), 4242, "postgres", "/run/postgresql", "5432"),
        encode::call(at(2), func::PQEXEC, Some("select $1, 'x' from t"), None),
        encode::result(at(3), 0x7000, 2, 1, "SELECT 1", ""),
        encode::result(at(4), 0, 0, 0, "", ""),
        encode::call(
            at(5),
            func::PQPREPARE,
            Some("insert into t values ($1)"),
            Some("s1"),
        ),
        encode::result_point(at(6), 7, 0, "", "23505"),
        encode::pipeline(at(7), func::PQENTER_PIPELINE_MODE, Some(1)),
        encode::call(at(8), func::PQSEND_QUERY_PARAMS, Some("begin"), None),
        encode::pipeline(at(9), func::PQPIPELINE_SYNC, None),
        encode::finish(at(10)),
        encode::client_exit(at(11)),
    ];
    write("records", "libpq", &framed(&libpq));
    let host = [
        encode::server(at(1), 1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], Some("select 1")),
        encode::server_exit(at(2)),
        encode::loaded(at(3), true),
        encode::exec(at(4), 77, "/usr/bin/psql"),
    ];
    write("records", "host", &framed(&host));
    let ret = |ts: u64, call: MyCall| Returned {
        at: at(ts),
        call,
        mysql: 0x5000,
        ret: 0,
        thread_id: 9,
        errno: 0,
        sqlstate: String::new(),
        affected_rows: Some(1),
        rows: 0,
        field_count: 0,
        server_status: mysql::records::AUTOCOMMIT,
        stmt_id: 0,
    };
    let mysql = [
        my::conn(&ConnDetails {
            at: at(1),
            thread_id: 9,
            db: "test".into(),
            host: "localhost".into(),
            socket: "/run/mysqld/mysqld.sock".into(),
            port: 3306,
            version: "10.11.19-MariaDB-0+deb12u1".into(),
        }),
        my::call(
            at(2),
            MyCall::RealQuery,
            0x5000,
            Some("update t set v = 'x' where id = 3"),
        ),
        my::returned(&ret(3, MyCall::RealQuery)),
        my::call(at(4), MyCall::StmtPrepare, 0x6000, Some("select ? from t")),
        my::returned(&Returned {
            stmt_id: 1,
            ..ret(5, MyCall::StmtPrepare)
        }),
        my::call(at(6), MyCall::StmtExecute, 0x6000, None),
        my::returned(&Returned {
            errno: 1213,
            sqlstate: "40001".into(),
            affected_rows: None,
            ..ret(7, MyCall::StmtExecute)
        }),
        encode::server_of(
            Kind::MyServer,
            at(8),
            0,
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Some("select 1"),
        ),
        my::call(at(9), MyCall::Close, 0x5000, None),
        encode::client_exit(at(10)),
    ];
    write("records", "mysql", &framed(&mysql));
}

fn usdt() {
    // pc, base, semaphore, then provider, name, arguments: as in PostgreSQL 15's notes.
    let note = |pc: u64, name: &str, args: &str| {
        let mut d = Vec::new();
        for w in [pc, 0x2000, 0] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        for s in ["postgresql", name, args] {
            d.extend_from_slice(s.as_bytes());
            d.push(0);
        }
        d
    };
    write(
        "usdt",
        "query_start",
        &note(0x1234, "query__start", "8@%rbx"),
    );
    write(
        "usdt",
        "lock_wait_start",
        &note(
            0x5678,
            "lock__wait__start",
            "-4@%esi -4@%edi -2@%dx -4@8(%rbx) 8@-16(%rbp) -1@%al",
        ),
    );
    write(
        "usdt",
        "indexed",
        &note(0x10, "x", "8@(%rax,%rbx,8) 4@$42 8@x(%rip)"),
    );
}

/// The accessors each decoder reads, from a library's bytes, in the layout
/// target's framing (selector; u16 length, code per accessor).
fn layout() {
    let mut mariadbd: Vec<&'static str> = mysql::server::target::ACCESSORS.to_vec();
    mariadbd.push(mysql::server::target::END_STATEMENT);
    let libs: [(&str, u8, &[&'static str]); 3] = [
        (
            "/usr/lib/x86_64-linux-gnu/libpq.so.5",
            0,
            libpq::layout::ACCESSORS,
        ),
        (
            "/usr/lib/x86_64-linux-gnu/libmariadb.so.3",
            1,
            mysql::layout::ACCESSORS,
        ),
        ("/usr/sbin/mariadbd", 2, &mariadbd),
    ];
    for (path, selector, names) in libs {
        let Ok(data) = fs::read(path) else {
            eprintln!("no {path}: no layout seed from it");
            continue;
        };
        let found = mysql::symbols::find(&data, names).unwrap();
        for sized in [false, true] {
            let mut seed = vec![selector | if sized { 0x80 } else { 0 }];
            for name in names {
                let code = found
                    .get(name)
                    .and_then(|s| s.code(&data, 256))
                    .map(|c| if sized { c } else { &c[..c.len().min(256)] })
                    .unwrap_or_default();
                seed.extend_from_slice(&(code.len() as u16).to_le_bytes());
                seed.extend_from_slice(code);
            }
            let file = Path::new(path).file_name().unwrap().to_string_lossy();
            write(
                "layout",
                &format!("{file}-{}", ["ret", "sized"][sized as usize]),
                &seed,
            );
            if selector == 0 && sized {
                // PQgetResult's body, for the placement and result-point search.
                let g = mysql::symbols::find(&data, &["PQgetResult"]).unwrap();
                if let Some(code) = g.get("PQgetResult").and_then(|s| s.code(&data, 256)) {
                    let mut seed = vec![3 | 0x80];
                    seed.extend_from_slice(&(code.len() as u16).to_le_bytes());
                    seed.extend_from_slice(code);
                    write("layout", "PQgetResult", &seed);
                }
            }
        }
    }
}

fn main() {
    sql();
    records();
    usdt();
    layout();
    // Two structures of pieces: a start for the generator's bytes.
    write(
        "sql_literals",
        "pieces0",
        b"\x00\x02\x05\x00\x03\x01\x02\x00\x01",
    );
    write(
        "sql_literals",
        "pieces1",
        b"\x01\x00\x07\x02\x04\x00\x03\x09\x01\x00\x02\x01",
    );
}
