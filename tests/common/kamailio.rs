//! Kamailio (Debian package `kamailio`) as a registrar on loopback: a generated config that
//! requires digest auth for REGISTER (`pv_www_authenticate` against one fixed user and
//! password, qop=auth), keeps bindings in memory (usrloc `db_mode` 0, so a restart forgets
//! them), grants at most `max_expires`, answers OPTIONS to itself with 200, and proxies other
//! requests to the registered Contact (record-routed). Bindings are read through the `ctl`
//! module with `kamcmd ul.dump`.
//!
//! Kamailio runs in the foreground (`-DD`) in its own process group; [`Kamailio::stop`] and
//! `Drop` send SIGTERM to the group and wait for the main process (which stops its workers),
//! then SIGKILL the group if it has not exited within 5 s, so no worker outlives the test.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sip;

/// How long Kamailio may take to answer its first OPTIONS.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `binary` from the PATH, else from /usr/sbin (where Debian installs it; a normal user's PATH
/// may lack it).
fn program(binary: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(binary);
    let in_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()));
    if !in_path && sbin.is_file() {
        sbin
    } else {
        PathBuf::from(binary)
    }
}

/// What the generated config enforces.
#[derive(Debug, Clone)]
pub struct KamailioConfig {
    /// UDP port on 127.0.0.1.
    pub port: u16,
    /// The digest realm.
    pub realm: String,
    /// The only user allowed to register.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The longest expiry granted (registrar `max_expires`).
    pub max_expires: u32,
    /// Listen on TCP too (same port).
    pub tcp: bool,
}

/// A running Kamailio.
pub struct Kamailio {
    child: Option<Child>,
    config: KamailioConfig,
    dir: tempfile::TempDir,
    starts: u32,
}

impl Kamailio {
    /// Panics with an install hint unless the `kamailio` and `kamcmd` binaries run.
    pub fn require_installed() {
        for binary in ["kamailio", "kamcmd"] {
            let runs = Command::new(program(binary))
                .arg("-v")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            assert!(
                runs,
                "cannot run {binary}: install the Debian package kamailio (scripts/test.sh does)"
            );
        }
    }

    /// Writes the config and starts Kamailio; returns once it answers OPTIONS.
    pub fn start(config: KamailioConfig) -> Kamailio {
        Kamailio::require_installed();
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("kamailio.cfg"),
            config_text(&config, dir.path()),
        )
        .expect("write kamailio.cfg");
        let mut kamailio = Kamailio {
            child: None,
            config,
            dir,
            starts: 0,
        };
        kamailio.launch();
        kamailio
    }

    /// Its SIP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.config.port))
    }

    /// The process id of the running instance.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops Kamailio (its bindings are lost with it).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // The main process stops its workers before it exits.
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a stopped Kamailio again on the same port, with no bindings.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.launch();
    }

    /// The bindings in usrloc as (AOR, Contact address); `None` when `kamcmd` fails (e.g.
    /// Kamailio is down).
    pub fn bindings(&self) -> Option<Vec<(String, String)>> {
        let output = Command::new(program("kamcmd"))
            .args(["-s", &format!("unix:{}", self.ctl_socket().display())])
            .arg("ul.dump")
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut aor = String::new();
        let mut bindings = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("AoR:") {
                aor = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("Address:") {
                bindings.push((aor.clone(), value.trim().to_owned()));
            }
        }
        Some(bindings)
    }

    /// Polls [`Kamailio::bindings`] until `check` holds or `timeout`; returns the last read.
    pub fn wait_bindings(
        &self,
        timeout: Duration,
        check: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let bindings = self.bindings().unwrap_or_default();
            if check(&bindings) || Instant::now() >= deadline {
                return bindings;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the current and earlier instances logged.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|start| fs::read_to_string(self.log_path(start)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restarted ---\n")
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = fs::File::create(self.log_path(self.starts)).expect("kamailio log");
        let dir = self.dir.path();
        let child = Command::new(program("kamailio"))
            .arg("-f")
            .arg(dir.join("kamailio.cfg"))
            // Foreground with workers, logs to stderr, runtime files and a small memory pool
            // in the test's directory.
            .args(["-DD", "-E", "-m", "32", "-M", "8", "-Y"])
            .arg(dir)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn kamailio");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("kamailio exited ({status}) at start:\n{}", self.log());
            }
            // Any final response will do (OPTIONS to a user gets 404 from this config).
            if sip::options(self.addr(), Duration::from_millis(200)).is_some()
                && self.bindings().is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
        }
    }

    fn ctl_socket(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("kamailio-{start}.log"))
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- kamailio log\n{}", self.log());
        }
    }
}

/// The routing script: digest-protected REGISTER into an in-memory usrloc, OPTIONS to the
/// registrar answered, everything else proxied to the registered Contact.
fn config_text(config: &KamailioConfig, dir: &std::path::Path) -> String {
    let KamailioConfig {
        port,
        realm,
        user,
        password,
        max_expires,
        tcp,
    } = config;
    let ctl = dir.join("ctl.sock");
    let transports = if *tcp {
        format!("tcp_children=1\nlisten=udp:127.0.0.1:{port}\nlisten=tcp:127.0.0.1:{port}")
    } else {
        format!("disable_tcp=yes\nlisten=udp:127.0.0.1:{port}")
    };
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
{transports}
alias="127.0.0.1:{port}"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "ctl.so"

modparam("ctl", "binrpc", "unix:{ctl}")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 0)
modparam("registrar", "max_expires", {max_expires})

request_route {{
    xlog("L_INFO", "$rm $ru from $si:$sp\n");
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("OPTIONS") && $rU == $null) {{ sl_send_reply("200", "Keepalive"); exit; }}
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("{realm}", "{password}", "0") || $au != "{user}") {{
            xlog("L_INFO", "REGISTER challenged\n");
            www_challenge("{realm}", "1");
            exit;
        }}
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("INVITE")) {{ record_route(); }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"#,
        ctl = ctl.display()
    )
}
