//! A throwaway Prometheus (Debian's, installed by setup) scraping the agent
//! every second, with dbtel's alerting rules loaded; queried over its HTTP
//! API. Killed on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// deploy/prometheus/dbtel-rules.yml of this checkout.
pub fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/dbtel-rules.yml")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Scrapes `target` (host:port, path /metrics) as job `dbtel`.
    pub fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = rules_file();
        let rule_files = if rules.exists() {
            format!(
                "rule_files:\n  - {}\n",
                rules.canonicalize().unwrap().display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}\
             scrape_configs:\n  - job_name: dbtel\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/prometheus (Debian's prometheus, installed by cargo xtask setup)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::http_get(addr, "/-/ready").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the parsed `data` of a successful answer.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = crate::http_get(self.addr, path)
            .unwrap_or_else(|| panic!("prometheus did not answer {path}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{path}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector (panics on a query error).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` returns at least one sample.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(expr);
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: no data after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
