//! The voxgate binary under test: config in a tempdir, output to a log file, ready when it
//! answers OPTIONS over UDP, SIGTERM via `kill -TERM`, killed on drop (also when a test panics).

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::metrics::{http_get, Metrics};
use super::ports::PortBlock;
use super::sip;

/// How long voxgate may take to answer its first OPTIONS.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Knobs the tests turn; everything else is the default config in [`GatewayConfig::toml`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `[sip] t1_ms`; `None` keeps voxgate's default.
    pub t1_ms: Option<u64>,
    /// `[calls] drain_timeout_secs`.
    pub drain_timeout_secs: u64,
    /// `[calls] max_concurrent`.
    pub max_concurrent: usize,
    /// `[[trunks]] allow_from` of the single trunk `pbx`.
    pub allow_from: Vec<String>,
    /// Extra lines inside the `[[trunks]]` entry of `pbx`, after `allow_from` (keys, then
    /// `[[trunks.users]]` tables, e.g. for digest authentication).
    pub trunk_extra: String,
    /// Extra lines inside the `[[agents]]` entry of the echo agent (e.g. `ring_ms = 1000`).
    pub agent_extra: String,
    /// Also listen on `[::1]` (same port).
    pub ipv6: bool,
    /// RTP ports to reserve (two per call: RTP + RTCP).
    pub rtp_ports: u16,
    /// Extra lines inside `[rtp]` (e.g. `timeout_secs = 2`).
    pub rtp_extra: String,
    /// Extra TOML appended at the end (new tables only).
    pub extra: String,
    /// The agent the catch-all route sends calls to (`echo` unless a test adds another agent
    /// in `extra`).
    pub route_agent: String,
    /// `[[routes]]` tables placed before the catch-all route (routes match in order).
    pub routes: String,
    /// Environment variables for the process (e.g. `OPENAI_API_KEY`).
    pub env: Vec<(String, String)>,
    /// Extra `key = value` lines inside `[sip]` (e.g. `session_expires_secs = 90`).
    pub sip_extra: String,
    /// The open-file limit (soft, hard) voxgate starts with (through util-linux's `prlimit`);
    /// `None` inherits the test's.
    pub open_files: Option<(u64, u64)>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            t1_ms: None,
            drain_timeout_secs: 2,
            max_concurrent: 100,
            allow_from: vec!["127.0.0.0/8".into(), "::1/128".into()],
            trunk_extra: String::new(),
            agent_extra: String::new(),
            ipv6: false,
            rtp_ports: 40,
            rtp_extra: String::new(),
            extra: String::new(),
            route_agent: "echo".into(),
            routes: String::new(),
            env: Vec::new(),
            sip_extra: String::new(),
            open_files: None,
        }
    }
}

impl GatewayConfig {
    /// The config file for SIP on `sip_port`, metrics on `metrics_port`, RTP in `rtp`.
    pub fn toml(&self, sip_port: u16, metrics_port: u16, rtp: PortBlock) -> String {
        let listen = if self.ipv6 {
            format!("[\"127.0.0.1:{sip_port}\", \"[::1]:{sip_port}\"]")
        } else {
            format!("\"127.0.0.1:{sip_port}\"")
        };
        let t1 = self
            .t1_ms
            .map(|t| format!("t1_ms = {t}\n"))
            .unwrap_or_default();
        let allow: Vec<String> = self.allow_from.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[sip]\nlisten = {listen}\n{t1}{}\n\n\
             [rtp]\nport_min = {}\nport_max = {}\njitter_min_ms = 40\njitter_max_ms = 200\n{}\n\n\
             [calls]\nmax_concurrent = {}\ndrain_timeout_secs = {}\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
             [[trunks]]\nname = \"pbx\"\nallow_from = [{}]\n{}\n\n\
             [[agents]]\nname = \"echo\"\nkind = \"echo\"\n{}\n\n\
             {}\n\n[[routes]]\nagent = \"{}\"\n\n{}\n",
            self.sip_extra,
            rtp.base,
            rtp.base + rtp.len - 1,
            self.rtp_extra,
            // voxgate refuses a max_concurrent above the RTP port pairs the range holds.
            self.max_concurrent.min(usize::from(rtp.len / 2)),
            self.drain_timeout_secs,
            allow.join(", "),
            self.trunk_extra,
            self.agent_extra,
            self.routes,
            self.route_agent,
            self.extra,
        )
    }
}

/// A running voxgate.
pub struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    sip: SocketAddr,
    sip_v6: Option<SocketAddr>,
    metrics: SocketAddr,
    log: PathBuf,
    /// The RTP port range it was given.
    pub rtp: PortBlock,
}

impl Gateway {
    /// Starts voxgate with the default config plus `extra_toml` appended (new tables only).
    pub fn start(extra_toml: &str) -> Gateway {
        Gateway::start_with(GatewayConfig {
            extra: extra_toml.to_owned(),
            ..GatewayConfig::default()
        })
    }

    /// Starts voxgate with `config` and waits until it answers OPTIONS (panics after
    /// [`READY_TIMEOUT`] or if it exits, showing its log). A port block taken by another
    /// process between its probe and voxgate's bind (another test run on the machine) is
    /// replaced by a fresh one, at most twice.
    pub fn start_with(config: GatewayConfig) -> Gateway {
        for attempt in 1.. {
            match Gateway::try_start(&config) {
                Ok(gateway) => return gateway,
                Err(failure) if attempt < 3 && failure.contains("Address already in use") => {
                    eprintln!("voxgate's ports were taken meanwhile; trying another block");
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn try_start(config: &GatewayConfig) -> Result<Gateway, String> {
        let ports = PortBlock::reserve(2);
        let rtp = PortBlock::reserve(config.rtp_ports);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("voxgate.toml");
        fs::write(&file, config.toml(ports.port(0), ports.port(1), rtp)).expect("write config");
        let log = dir.path().join("voxgate.log");
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // VOXGATE_BIN: another build of the binary (A/B benchmark runs).
        let binary =
            std::env::var_os("VOXGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_voxgate").into());
        // prlimit sets the limit and executes voxgate in its place (same process).
        let mut command = match config.open_files {
            Some((soft, hard)) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&file)
            .env(
                "RUST_LOG",
                std::env::var("VOXGATE_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("OPENAI_API_KEY")
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn voxgate");
        let sip: SocketAddr = format!("127.0.0.1:{}", ports.port(0))
            .parse()
            .expect("addr");
        let sip_v6 = config
            .ipv6
            .then(|| format!("[::1]:{}", ports.port(0)).parse().expect("addr"));
        let metrics = format!("127.0.0.1:{}", ports.port(1))
            .parse()
            .expect("addr");
        let mut gateway = Gateway {
            child: Some(child),
            dir,
            sip,
            sip_v6,
            metrics,
            log,
            rtp,
        };
        gateway.wait_ready()?;
        Ok(gateway)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "voxgate exited ({status}) before answering OPTIONS; config:\n{}\nlog:\n{}",
                    self.config(),
                    self.log()
                ));
            }
            if sip::options(self.sip, Duration::from_millis(300)).is_some_and(|r| r.status == 200) {
                return Ok(());
            }
        }
        panic!(
            "voxgate did not answer OPTIONS with 200 within {READY_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }

    /// SIP address (UDP and TCP) on 127.0.0.1.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// SIP address on `[::1]`, if configured.
    pub fn sip_addr_v6(&self) -> Option<SocketAddr> {
        self.sip_v6
    }

    /// The metrics endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// Scrapes `/metrics` (panics if it does not answer 200).
    pub fn metrics(&self) -> Metrics {
        let (status, text) = http_get(self.metrics, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\nlog:\n{}", self.log()));
        assert_eq!(status, 200, "GET /metrics answered {status}: {text}");
        Metrics { text }
    }

    /// Polls `/metrics` until `check` holds on the value of `name{labels}` (0 when absent) or
    /// `timeout`; returns the last value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        check: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metrics().get(name, labels).unwrap_or(0.0);
            if check(value) || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything voxgate wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The frames the first call's jitter buffer concealed, from voxgate's `media stopped` log
    /// line (waits up to `timeout` for the call's media to stop).
    pub fn wait_concealed_frames(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            let counted = log
                .lines()
                .filter(|line| line.contains("media stopped"))
                .find_map(|line| {
                    let value = line.split("concealed_frames=").nth(1)?;
                    value.split_whitespace().next()?.parse().ok()
                });
            if let Some(concealed) = counted {
                return concealed;
            }
            assert!(Instant::now() < deadline, "no `media stopped` line:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The config file it runs with.
    pub fn config(&self) -> String {
        fs::read_to_string(self.dir.path().join("voxgate.toml")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("voxgate not running")
    }

    /// Sends SIGTERM (`kill -TERM <pid>`; no libc in this crate).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics unless voxgate is still running (did not crash).
    pub fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "voxgate exited unexpectedly ({status}); log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- voxgate config\n{}\n--- voxgate log (tail)\n{}",
                self.config(),
                tail(&self.log(), 8_000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}
