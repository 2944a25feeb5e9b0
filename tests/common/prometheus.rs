//! Prometheus (Debian package `prometheus`) as the monitoring that scrapes voxgate: a server on
//! loopback with a generated config (one job, `voxgate`, scraped every second), its data in a
//! tempdir, queried over its HTTP API. `promtool check metrics` lints an exposition.
//!
//! The server is killed and waited for on drop, so a failing test never leaves it running.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::metrics::http_get;
use super::ports::PortBlock;

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Prometheus server scraping one target.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts a server that scrapes `target`'s `/metrics` every second as job `voxgate`, and
    /// waits until it is ready.
    pub fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = PortBlock::reserve(1).port(0);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: voxgate\n    static_configs:\n\
                 \x20     - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect(
                "start `prometheus` (Debian package `prometheus`; scripts/test.sh installs it)",
            );
        let mut server = Prometheus { child, addr, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready") {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("prometheus exited at start ({status}):\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {READY_TIMEOUT:?}:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API, parsed; `None` unless it answered 200 with JSON.
    pub fn api(&self, path: &str) -> Option<serde_json::Value> {
        match http_get(self.addr, path) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The instant query `query` (URL-encoded here): each series' labels and value.
    pub fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Some(answer) = self.api(&format!("/api/v1/query?query={encoded}")) else {
            return Vec::new();
        };
        answer["data"]["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .filter_map(|one| {
                        let value = one["value"][1].as_str()?.parse().ok()?;
                        Some((one["metric"].clone(), value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `query` until one of its series' values satisfies `done`, for at most `timeout`;
    /// returns the last values seen.
    pub fn wait_query(
        &self,
        query: &str,
        timeout: Duration,
        done: impl Fn(f64) -> bool,
    ) -> Vec<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let values: Vec<f64> = self.query(query).into_iter().map(|(_, v)| v).collect();
            if values.iter().any(|v| done(*v)) || Instant::now() >= deadline {
                return values;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on `exposition`: (passed, what it printed).
pub fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run `promtool` (Debian package `prometheus`; scripts/test.sh installs it)");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .expect("write to promtool");
    }
    let output = child.wait_with_output().expect("promtool's output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}
