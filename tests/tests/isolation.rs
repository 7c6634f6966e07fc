//! Only traced processes pay: the uprobe breakpoint (int3) is written into
//! the traced process's copy of libpq and nowhere else, and removed when the
//! agent stops.

use std::{
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use dbtel_tests::{require_root, Agent, Cluster};
use object::{Object, ObjectSegment, ObjectSymbol};

/// The psycopg2 app of the Python test: connected, waiting on stdin.
fn idle_app(dsn: &str) -> (Child, u32) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/app.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dsn)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("app did not start: {line:?}"));
    (child, pid)
}

/// (path, file offset, original bytes) of PQfinish's first instructions in the libpq `pid` maps
/// (its probe sits on the first emulated one).
fn pqfinish_entry(pid: u32) -> (String, u64, Vec<u8>) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let path = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libpq.so"))
        .expect("libpq mapped")
        .to_string();
    let data = std::fs::read(&path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let addr = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("PQfinish") && !s.is_undefined())
        .unwrap()
        .address();
    let off = file
        .segments()
        .find_map(|seg| {
            let (o, size) = seg.file_range();
            (addr >= seg.address() && addr < seg.address() + size).then(|| addr - seg.address() + o)
        })
        .unwrap();
    (
        path.clone(),
        off,
        data[off as usize..off as usize + 16].to_vec(),
    )
}

/// 16 bytes at a file offset of `path` as mapped in `pid`'s memory.
fn bytes_in_memory(pid: u32, path: &str, off: u64) -> Vec<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[5] != path {
            continue;
        }
        let (start, end) = f[0].split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let map_off = u64::from_str_radix(f[2], 16).unwrap();
        if off >= map_off && off < map_off + (end - start) {
            let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
            mem.seek(SeekFrom::Start(start + off - map_off)).unwrap();
            let mut b = vec![0u8; 16];
            mem.read_exact(&mut b).unwrap();
            return b;
        }
    }
    panic!("offset {off:#x} of {path} not mapped in {pid}");
}

#[test]
fn breakpoints_only_in_the_traced_process() {
    require_root();
    let pg = Cluster::start();
    let (mut a, pa) = idle_app(&pg.dsn("postgres"));
    let (mut b, pb) = idle_app(&pg.dsn("postgres"));
    let (path, off, original) = pqfinish_entry(pa);
    let has_int3 = |bytes: &[u8]| {
        bytes
            .iter()
            .zip(&original)
            .any(|(&m, &f)| m == 0xcc && f != 0xcc)
    };
    assert_eq!(
        (
            bytes_in_memory(pa, &path, off),
            bytes_in_memory(pb, &path, off)
        ),
        (original.clone(), original.clone())
    );

    let agent = Agent::start(
        &["--exporter", "none", "--pid", &pa.to_string()],
        Stdio::null(),
    );
    assert!(
        has_int3(&bytes_in_memory(pa, &path, off)),
        "int3 in the traced process"
    );
    assert_eq!(
        bytes_in_memory(pb, &path, off),
        original,
        "the untraced process runs libpq untouched"
    );

    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    // The kernel may finish unregistering the probe just after the agent's exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while bytes_in_memory(pa, &path, off) != original && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        bytes_in_memory(pa, &path, off),
        original,
        "breakpoint removed when the agent stops"
    );
    for c in [&mut a, &mut b] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
