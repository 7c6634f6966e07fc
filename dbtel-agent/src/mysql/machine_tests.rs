//! The finder and the layout decoder on the client libraries installed on
//! this machine by `cargo xtask setup` (Debian 12: MariaDB Connector/C
//! 3.3.20 as libmariadb.so.3, and linked into /usr/bin/mariadb).

use super::{
    calls,
    layout::{self, Endpoint, LayoutError},
    symbols,
};

const LIBMARIADB: &str = "/usr/lib/x86_64-linux-gnu/libmariadb.so.3";
const CLI: &str = "/usr/bin/mariadb";

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!("{path}: {e} (cargo xtask setup installs libmariadb3 and mariadb-client)")
    })
}

#[test]
fn every_probed_call_is_found_in_the_shared_library_with_its_default_version() {
    let data = read(LIBMARIADB);
    let names: Vec<&'static str> = calls::symbols().collect();
    let found = symbols::find(&data, &names).unwrap();
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>().len(),
        names.len(),
        "{:?}",
        found.keys()
    );
    for (name, s) in &found {
        // Each name has a sized default version and a size-0 alias at the same address.
        assert_eq!(s.version.as_deref(), Some("libmysqlclient_18"), "{name}");
        assert!(s.size > 0, "{name}: the alias's size comes from its twin");
        // In this library file offsets equal addresses (first LOAD segment at 0).
        assert_eq!(s.offset, s.address, "{name}");
    }
    // Spot checks against `readelf --dyn-syms` (1:10.11.19-0+deb12u1).
    let real_query = &found["mysql_real_query"];
    assert_eq!(real_query.size, 247);
    assert_eq!(
        &data[real_query.offset as usize..][..4],
        &[0x55, 0x48, 0x89, 0xe5],
        "push rbp; mov rbp,rsp"
    );
}

#[test]
fn every_probed_call_is_found_in_the_static_cli() {
    let data = read(CLI);
    let names: Vec<&'static str> = calls::symbols().collect();
    let found = symbols::find(&data, &names).unwrap();
    let missing: Vec<&&str> = names.iter().filter(|n| !found.contains_key(**n)).collect();
    assert!(missing.is_empty(), "{missing:?}");
    // Exported unversioned from the executable's own .dynsym (it has no .symtab).
    assert!(found.values().all(|s| s.version.is_none() && s.size > 0));
    // mysql_query is not probed (it runs mysql_real_query): found all the same, and its
    // code as calls.rs says. The text segment's file offset equals its address here too:
    // push rbp; mov rbp,rsp; push r12; mov r12,rdi (strlen, then jmp mysql_real_query).
    let q = &symbols::find(&data, &["mysql_query"]).unwrap()["mysql_query"];
    assert_eq!(
        &data[q.offset as usize..][..7],
        &[0x55, 0x48, 0x89, 0xe5, 0x41, 0x54, 0x49]
    );
}

fn expected_debian() -> layout::MysqlLayout {
    layout::MysqlLayout {
        thread_id: 0x350,
        last_errno: 0x90,
        sqlstate: 0x297,
        affected_rows: 0x338,
        field_count: 0x37c,
        server_status: 0x380,
        server_version: 0x2d0,
        host_info: 0x2d8,
        db: 0x2e8,
        res_row_count: 0,
        stmt_mysql: 0x38,
        stmt_id: 0x40,
        stmt_last_errno: 0x108,
        stmt_sqlstate: 0x30d,
        stmt_affected_rows: 0xf8,
        stmt_row_count: 0xc8,
        stmt_field_count: 0x60,
        endpoint: Ok(Endpoint {
            host: 0x2b0,
            unix_socket: 0x2c8,
            port: 0x360,
        }),
    }
}

#[test]
fn each_struct_is_read_in_one_window_where_its_fields_are_close() {
    let o = expected_debian().offsets();
    // MYSQL: db 0x2e8 .. server_status's end 0x384; MYSQL_STMT: mysql 0x38 .. last_errno's end 0x10c.
    assert_eq!((o.head, o.head_len), (0x2e8, 0x9c));
    assert_eq!((o.stmt_head, o.stmt_head_len), (0x38, 0xd4));
    // Too far apart for one window: none (each read alone).
    assert_eq!(layout::window(&[(0x10, 8), (0x400, 8)]), (0, 0));
    // The window that holds the most; a field off the word steps is left out.
    assert_eq!(
        layout::window(&[(0x90, 4), (0x300, 8), (0x3f0, 4), (0x3f6, 2)]),
        (0x300, 0xf4)
    );
    // Never past the cap.
    let cap = dbtel_common::MY_HEAD_CAP as u32;
    assert_eq!(layout::window(&[(0, 8), (cap - 8, 8)]), (0, cap));
    assert_eq!(layout::window(&[(0, 8), (cap - 4, 8)]), (0, 0));
}

#[test]
fn decodes_the_shared_library_and_the_cli_alike() {
    // The values are those of Connector/C 3.3's headers (offsetof, checked at run time by
    // tests/tests/mysql_layout.rs against a live connection).
    assert_eq!(
        layout::decode(LIBMARIADB, &read(LIBMARIADB)).unwrap(),
        expected_debian()
    );
    assert_eq!(layout::decode(CLI, &read(CLI)).unwrap(), expected_debian());
}

#[test]
fn a_library_without_the_accessors_is_refused_by_name() {
    let libpq = "/usr/lib/x86_64-linux-gnu/libpq.so.5";
    let e = layout::decode(libpq, &read(libpq)).unwrap_err();
    assert_eq!(
        e,
        LayoutError::Missing {
            library: libpq.into(),
            accessor: "mysql_thread_id"
        }
    );
    assert_eq!(
        e.to_string(),
        format!("{libpq} lacks mysql_thread_id: not a MySQL client library dbtel can read")
    );
    let e = layout::decode("notes.txt", b"not an ELF file").unwrap_err();
    assert_eq!(e.to_string(), "notes.txt: not a readable x86-64 ELF file");
}

#[test]
fn an_accessor_that_does_not_decode_is_named() {
    let data = read(LIBMARIADB);
    let found = symbols::find(&data, layout::ACCESSORS).unwrap();
    let real = |name: &'static str| {
        let s = &found[name];
        Some(crate::host::x86::decode_body(
            s.code(&data, 0).unwrap(),
            s.address,
        ))
    };
    // mysql_stmt_reset that returns 0 without reading stmt_id: xor eax,eax; ret.
    let odd = |name: &'static str| {
        if name == "mysql_stmt_reset" {
            Some(crate::host::x86::decode_body(&[0x31, 0xc0, 0xc3], 0))
        } else {
            real(name)
        }
    };
    let e = layout::from_accessors("libodd.so", &odd).unwrap_err();
    assert_eq!(
        e.to_string(),
        "libodd.so: cannot decode mysql_stmt_reset: no 8-byte load of stmt_id"
    );
    // A mysql_stmt_more_results reading another field of the connection than mysql_more_results:
    // xor eax,eax; mov rdx,[rdi+0x38]; test dword [rdx+0x390],8; setne al; ret
    let code = [
        0x31, 0xc0, 0x48, 0x8b, 0x57, 0x38, 0xf7, 0x82, 0x90, 0x03, 0x00, 0x00, 0x08, 0x00, 0x00,
        0x00, 0x0f, 0x95, 0xc0, 0xc3,
    ];
    let odd = |name: &'static str| {
        if name == "mysql_stmt_more_results" {
            Some(crate::host::x86::decode_body(&code, 0))
        } else {
            real(name)
        }
    };
    let e = layout::from_accessors("libodd.so", &odd).unwrap_err();
    assert!(
        e.to_string()
            .contains("mysql_stmt_more_results: reads another field"),
        "{e}"
    );
    // A layout whose pointer run is not the public order: the endpoint alone is unknown.
    let shifted = [0x48, 0x8b, 0x87, 0xe0, 0x02, 0x00, 0x00, 0xc3]; // mysql_get_host_info: mov rax,[rdi+0x2e0]
    let odd = |name: &'static str| {
        if name == "mysql_get_host_info" {
            Some(crate::host::x86::decode_body(&shifted, 0))
        } else {
            real(name)
        }
    };
    let l = layout::from_accessors("libodd.so", &odd).unwrap();
    assert_eq!(l.thread_id, 0x350);
    assert!(l
        .endpoint
        .unwrap_err()
        .to_string()
        .contains("mysql_get_host_info"));
}

#[test]
fn of_two_versions_at_two_addresses_the_default_is_probed() {
    // A library keeping an old implementation under an old version
    // (mysql_thread_id@OLD_1) beside the default one (mysql_thread_id@@NEW_2).
    let dir = tempfile_dir();
    let src = dir.join("v.c");
    std::fs::write(
        &src,
        "int old_impl(void) { return 1; }\nint new_impl(void) { return 2; }\n\
         __asm__(\".symver old_impl, mysql_thread_id@OLD_1\");\n__asm__(\".symver new_impl, mysql_thread_id@@NEW_2\");\n",
    )
    .unwrap();
    let map = dir.join("v.map");
    std::fs::write(&map, "OLD_1 { global: mysql_thread_id; local: *; };\nNEW_2 { global: mysql_thread_id; } OLD_1;\n").unwrap();
    let lib = dir.join("libv.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg(format!("-Wl,--version-script={}", map.display()))
        .status()
        .expect("cc");
    assert!(status.success());
    let data = std::fs::read(&lib).unwrap();
    let found = symbols::find(&data, &["mysql_thread_id"]).unwrap();
    let s = &found["mysql_thread_id"];
    assert_eq!(s.version.as_deref(), Some("NEW_2"));
    // new_impl: mov eax,2; ret
    assert_eq!(
        &data[s.offset as usize..][..6],
        &[0xb8, 0x02, 0x00, 0x00, 0x00, 0xc3]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dbtel-symver-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
