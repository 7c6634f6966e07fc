use std::sync::atomic::AtomicBool;

use super::*;

/// A collector that is up or down at the test's word, keeping what it got.
#[derive(Default)]
struct Collector {
    up: AtomicBool,
    refuse_for_good: AtomicBool,
    got: Mutex<Vec<Vec<u8>>>,
}

impl Transport for Collector {
    fn send(&self, body: &Bytes) -> Result<(), retry::Failure> {
        if self.refuse_for_good.load(Ordering::Relaxed) {
            return Err(retry::Failure::permanent("answered 400 Bad Request"));
        }
        if !self.up.load(Ordering::Relaxed) {
            return Err(retry::Failure::retryable("connection refused", None));
        }
        self.got.lock().unwrap().push(body.to_vec());
        Ok(())
    }

    fn target(&self) -> &str {
        "test"
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[test]
fn what_waits_is_sent_in_order_once_the_collector_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(ExportStats::default());
    let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
    let collector = Arc::new(Collector::default());
    spool.start_sender(collector.clone());
    for i in 0..5u8 {
        spool.put(&[i; 100], 10).unwrap();
    }
    assert!(spool.busy());
    assert_eq!(load(&stats.spooled), 50);
    assert_eq!(spool.waiting(), (50, 500));
    std::thread::sleep(Duration::from_millis(100));
    assert!(collector.got.lock().unwrap().is_empty(), "collector down");
    collector.up.store(true, Ordering::Relaxed);
    wait_for("all sent", || !spool.busy());
    let got = collector.got.lock().unwrap().clone();
    assert_eq!(got, (0..5u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
    assert_eq!((load(&stats.spooled), load(&stats.exported)), (0, 50));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    spool.finish(Duration::from_secs(1));
}

#[test]
fn the_cap_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(ExportStats::default());
    let spool = Spool::open(dir.path(), 1000, stats.clone()).unwrap();
    for i in 0..4u8 {
        spool.put(&[i; 400], 7).unwrap();
    }
    // 4 x 400 bytes in 1000: the first two went.
    assert_eq!(spool.waiting(), (14, 800));
    assert_eq!(load(&stats.spooled), 14);
    assert_eq!(load(&stats.failed), 14);
    assert_eq!(load(&spool.stats.dropped), 14);
    assert!(spool.put(&[0; 2000], 1).is_err(), "larger than the cap");
}

#[test]
fn an_earlier_runs_requests_are_sent_and_counted_apart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let stats = Arc::new(ExportStats::default());
        let spool = Spool::open(dir.path(), 1 << 20, stats).unwrap();
        spool.put(b"first", 3).unwrap();
        spool.put(b"second", 4).unwrap();
        // A write cut short by a crash.
        std::fs::write(dir.path().join("0000000000000009-1.tmp"), b"half").unwrap();
        // The first agent still holds the lock.
        let again = Spool::open(dir.path(), 1 << 20, Arc::default());
        assert!(
            matches!(again, Err(SpoolError::Locked(_))),
            "two agents, one spool"
        );
    }
    let stats = Arc::new(ExportStats::default());
    let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
    assert_eq!(load(&spool.stats.earlier_found), 7);
    assert!(!dir.path().join("0000000000000009-1.tmp").exists());
    spool.put(b"third", 5).unwrap();
    let collector = Arc::new(Collector::default());
    collector.up.store(true, Ordering::Relaxed);
    spool.start_sender(collector.clone());
    wait_for("all sent", || !spool.busy());
    assert_eq!(
        collector.got.lock().unwrap().clone(),
        [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
    );
    assert_eq!(load(&spool.stats.earlier_delivered), 7);
    assert_eq!((load(&stats.exported), load(&stats.spooled)), (5, 0));
}

#[test]
fn a_request_refused_for_good_is_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(ExportStats::default());
    let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
    let collector = Arc::new(Collector::default());
    collector.refuse_for_good.store(true, Ordering::Relaxed);
    spool.put(b"bad", 2).unwrap();
    spool.start_sender(collector.clone());
    wait_for("dropped", || !spool.busy());
    assert_eq!((load(&stats.failed), load(&stats.spooled)), (2, 0));
}

#[test]
fn stopping_with_the_collector_away_keeps_the_spool_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(ExportStats::default());
    let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
    spool.start_sender(Arc::new(Collector::default()));
    spool.put(b"kept", 6).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    spool.finish(Duration::from_secs(30));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(load(&stats.spooled), 6);
    assert!(dir.path().join(name(0, 6)).exists());
}
