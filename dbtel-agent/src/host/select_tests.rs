use super::*;

fn sel(exe: &[&str], exclude: &[&str], ports: &[u16], cgroups: &[&str]) -> Selectors {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Selectors::new(&v(exe), &v(exclude), ports, &v(cgroups)).unwrap()
}

fn client(exe: &str, cgroup: Option<&str>) -> ProcessFacts {
    ProcessFacts {
        exe: exe.into(),
        cgroup: cgroup.map(str::to_string),
        listening: None,
    }
}

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

#[test]
fn no_selectors_choose_everything() {
    let s = sel(&[], &[], &[], &[]);
    assert!(s.chooses(&client(PSQL, None)));
    assert!(s.chooses(&ProcessFacts {
        exe: POSTGRES.into(),
        cgroup: None,
        listening: Some(vec![5432])
    }));
    assert!(s.port_selected("6543"));
}

#[test]
fn exe_globs_match_paths_or_names() {
    let by_path = sel(&["/usr/lib/postgresql/*/bin/*"], &[], &[], &[]);
    assert!(by_path.chooses(&client(PSQL, None)));
    assert!(!by_path.chooses(&client("/usr/bin/python3.11", None)));
    // `*` does not cross a `/`.
    assert!(!sel(&["/usr/*/psql"], &[], &[], &[]).chooses(&client(PSQL, None)));
    let by_name = sel(&["python3*", "psql"], &[], &[], &[]);
    assert!(by_name.chooses(&client("/usr/bin/python3.11", None)));
    assert!(by_name.chooses(&client(PSQL, None)));
    assert!(!by_name.chooses(&client("/usr/bin/pgbench", None)));
}

#[test]
fn exclusions_win() {
    let s = sel(&["psql", "pgbench"], &["pgbench"], &[], &[]);
    assert!(s.chooses(&client(PSQL, None)));
    assert!(!s.chooses(&client("/usr/lib/postgresql/15/bin/pgbench", None)));
    assert!(!sel(&[], &["/usr/lib/postgresql/**"], &[], &[]).chooses(&client(PSQL, None)));
}

#[test]
fn ports_choose_servers_by_listener_and_clients_by_connection() {
    let s = sel(&[], &[], &[5432], &[]);
    assert!(s.by_port());
    let server = |ports: Vec<u16>| ProcessFacts {
        exe: POSTGRES.into(),
        cgroup: None,
        listening: Some(ports),
    };
    assert!(s.chooses(&server(vec![5432])));
    assert!(!s.chooses(&server(vec![5433])));
    assert!(!s.chooses(&server(vec![])));
    // A client is chosen; its connections are, one by one.
    assert!(s.chooses(&client(PSQL, None)));
    assert!(s.port_selected("5432"));
    assert!(s.port_selected(""), "libpq's default port");
    assert!(!s.port_selected("5433"));
    assert!(!s.port_selected("not a port"));
}

#[test]
fn cgroups_match_path_or_container_id() {
    let id = "4f1c0a6b1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e";
    let cg = format!("/system.slice/docker-{id}.scope");
    assert!(sel(&[], &[], &[], &["/system.slice/docker-*"]).chooses(&client(PSQL, Some(&cg))));
    assert!(sel(&[], &[], &[], &["4f1c0a6b*"]).chooses(&client(PSQL, Some(&cg))));
    assert!(!sel(&[], &[], &[], &["/user.slice/*"]).chooses(&client(PSQL, Some(&cg))));
    assert!(
        !sel(&[], &[], &[], &["*"]).chooses(&client(PSQL, None)),
        "unknown cgroup: not chosen"
    );
}

#[test]
fn container_ids_from_runtime_cgroup_paths() {
    let id = "4f1c0a6b1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e";
    for path in [
        format!("/system.slice/docker-{id}.scope"),
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"),
        format!("/kubepods/besteffort/pod1234/{id}"),
        format!("/machine.slice/libpod-{id}.scope"),
        format!("/docker/{id}"),
        format!("/system.slice/crio-{id}.scope"),
    ] {
        assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
    }
    assert_eq!(
        container_id("/user.slice/user-0.slice/session-1.scope"),
        None
    );
    assert_eq!(container_id("/"), None);
}

#[test]
fn bad_globs_are_named() {
    let e = Selectors::new(&["[".into()], &[], &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad --exe glob `[`"), "{e}");
}

#[test]
fn cgroup_v2_line() {
    assert_eq!(
        facts::parse_cgroup("0::/system.slice/postgresql@15-main.service\n").as_deref(),
        Some("/system.slice/postgresql@15-main.service")
    );
    assert_eq!(facts::parse_cgroup("0::/\n").as_deref(), Some("/"));
    let hybrid = "9:name=systemd:/\n4:memory:/docker/4f1c0a6b1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e\n1:cpu:/\n0::/\n";
    assert_eq!(
        facts::parse_cgroup(hybrid).as_deref(),
        Some("/docker/4f1c0a6b1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e")
    );
    let systemd_first = "9:name=systemd:/system.slice/a.service\n4:memory:/other\n0::/\n";
    assert_eq!(
        facts::parse_cgroup(systemd_first).as_deref(),
        Some("/system.slice/a.service")
    );
    assert_eq!(facts::parse_cgroup(""), None);
}

#[test]
fn cgroup_ids_resolve_to_paths() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile_dir();
    std::fs::create_dir_all(root.join("system.slice/docker-1.scope")).unwrap();
    let id = std::fs::metadata(root.join("system.slice/docker-1.scope"))
        .unwrap()
        .ino();
    assert_eq!(
        facts::cgroup_path(&root, id).as_deref(),
        Some("/system.slice/docker-1.scope")
    );
    let top = std::fs::metadata(&root).unwrap().ino();
    assert_eq!(facts::cgroup_path(&root, top).as_deref(), Some("/"));
    assert_eq!(facts::cgroup_path(&root, u64::MAX), None);
    std::fs::remove_dir_all(&root).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dbtel-cgroup-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
