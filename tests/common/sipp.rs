//! Running SIPp (the PBX side) with a hard deadline; every run is killed on drop.
//!
//! Scenario files live in `tests/sipp/`. SIPp runs with its working directory in a per-run
//! tempdir, so `play_pcap_audio="audio.pcap"` in a scenario means `<tempdir>/audio.pcap` (see
//! [`Sipp::with_audio`]) and every log SIPp writes stays there. Exit code 0 means every call
//! succeeded; `-timeout`/`-timeout_error` make a hung scenario fail instead of waiting forever.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::pcap;
use super::ports::PortBlock;

/// SIP transport SIPp uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `-t u1`: UDP, one socket.
    Udp,
    /// `-t t1`: TCP, one connection for all calls.
    TcpOne,
    /// `-t tn`: TCP, one connection per call.
    TcpPerCall,
}

/// Path of a scenario in `tests/sipp/`.
pub fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// Whether this process may open raw sockets (needed by `play_pcap_audio`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Prints why an audio test is skipped and returns true when not root.
pub fn skip_without_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "SKIP {test}: SIPp's play_pcap_audio needs raw sockets (root or CAP_NET_RAW); \
         run as root (CI does) to check echoed RTP"
    );
    true
}

/// A SIPp run being configured.
pub struct Sipp {
    scenario: PathBuf,
    target: SocketAddr,
    local_ip: String,
    ports: PortBlock,
    transport: Transport,
    calls: u32,
    limit: u32,
    rate: u32,
    pause_ms: u64,
    deadline: Duration,
    retransmissions: bool,
    extra: Vec<String>,
    dir: tempfile::TempDir,
    audio_packets: Option<usize>,
}

impl Sipp {
    /// SIPp with `scenario` (a file name in `tests/sipp/`) calling `target`, one call, UDP.
    /// Uses ports `ports.base` (SIP), `+1` (control), `+2..+8` (media: `-mp base+2`, so
    /// `[media_port+4]` = `base+6` is the echo port, see [`Sipp::echo_port`]).
    pub fn new(scenario: &str, target: SocketAddr) -> Sipp {
        let path = scenario_path(scenario);
        assert!(path.exists(), "no scenario {}", path.display());
        let local_ip = if target.is_ipv6() { "::1" } else { "127.0.0.1" }.to_owned();
        Sipp {
            scenario: path,
            target,
            local_ip,
            ports: PortBlock::reserve(10),
            transport: Transport::Udp,
            calls: 1,
            limit: 1,
            rate: 10,
            pause_ms: 1_000,
            deadline: Duration::from_secs(40),
            retransmissions: true,
            extra: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            audio_packets: None,
        }
    }

    /// `-m calls -l limit -r rate`.
    pub fn calls(mut self, calls: u32, limit: u32, rate: u32) -> Sipp {
        (self.calls, self.limit, self.rate) = (calls, limit, rate);
        self
    }

    /// `-t`.
    pub fn transport(mut self, transport: Transport) -> Sipp {
        self.transport = transport;
        self
    }

    /// `-d`: what a bare `<pause/>` in the scenario waits.
    pub fn pause_ms(mut self, ms: u64) -> Sipp {
        self.pause_ms = ms;
        self
    }

    /// Hard deadline for the whole run (SIPp is killed and the test fails after it).
    pub fn deadline(mut self, deadline: Duration) -> Sipp {
        self.deadline = deadline;
        self
    }

    /// `-nr`: no SIPp retransmissions and no absorbing of received retransmissions, so each
    /// retransmitted response matches its own `<recv>`.
    pub fn no_retransmissions(mut self) -> Sipp {
        self.retransmissions = false;
        self
    }

    /// Writes `<tempdir>/audio.pcap` with `packets` PCMU packets (see [`pcap`]).
    pub fn with_audio(mut self, packets: usize) -> Sipp {
        pcap::write_pcmu_pcap(&self.dir.path().join("audio.pcap"), packets);
        self.audio_packets = Some(packets);
        self
    }

    /// The numbered audio of [`Sipp::with_audio`] (`frames` 20 ms frames) sent in packets of
    /// `packet_len` bytes instead: a caller that ignores `a=ptime`.
    pub fn with_audio_cut(mut self, frames: usize, packet_len: usize) -> Sipp {
        let path = self.dir.path().join("audio.pcap");
        pcap::write_pcmu_pcap_cut(&path, 0, frames, packet_len);
        self.audio_packets = Some((frames * pcap::PAYLOAD_LEN).div_ceil(packet_len));
        self
    }

    /// The same numbered audio as [`Sipp::with_audio`] as raw PCMU (`audio.ulaw`), for the
    /// scenarios that send it with SIPp's `rtp_stream` (one ordinary UDP socket for every call,
    /// no raw sockets).
    pub fn with_ulaw(mut self, packets: usize) -> Sipp {
        pcap::write_pcmu_raw(&self.dir.path().join("audio.ulaw"), packets);
        self.audio_packets = Some(packets);
        self
    }

    /// Copies `source` into the scenario's working directory as `name` (e.g. a pcap that a
    /// scenario plays by its bare name).
    pub fn with_file(self, name: &str, source: &Path) -> Sipp {
        std::fs::copy(source, self.dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
        self
    }

    /// Like [`Sipp::with_audio`], the payloads numbered from `first` (another party's audio).
    pub fn with_audio_from(mut self, first: usize, packets: usize) -> Sipp {
        pcap::write_pcmu_pcap_from(&self.dir.path().join("audio.pcap"), first, packets);
        self.audio_packets = Some(packets);
        self
    }

    /// Calls `user` instead of the scenario's `echo` (Request-URI and To), through a copy of
    /// the scenario in the run's directory: lets one gateway route the same scenario to
    /// another agent (`[[routes]] user`).
    pub fn dialling(mut self, user: &str) -> Sipp {
        let text = std::fs::read_to_string(&self.scenario)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.scenario.display()));
        assert!(text.contains("sip:echo@"), "the scenario dials echo");
        let copy = self.dir.path().join("dialling.xml");
        std::fs::write(&copy, text.replace("sip:echo@", &format!("sip:{user}@")))
            .unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
        self.scenario = copy;
        self
    }

    /// Any other SIPp argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Sipp {
        self.extra.push(arg.into());
        self
    }

    /// SIPp's SIP port.
    pub fn sip_port(&self) -> u16 {
        self.ports.port(0)
    }

    /// The port the scenarios advertise in SDP (`[media_port+4]`) and play RTP from.
    pub fn echo_port(&self) -> u16 {
        self.ports.port(6)
    }

    /// The address an [`super::rtp::RtpSink`] must bind to receive voxgate's echo.
    pub fn echo_addr(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip.parse().expect("ip"), self.echo_port())
    }

    fn args(&self) -> Vec<String> {
        let dir = self.dir.path();
        let transport = match self.transport {
            Transport::Udp => "u1",
            Transport::TcpOne => "t1",
            Transport::TcpPerCall => "tn",
        };
        let mut args: Vec<String> = vec![
            "-sf".into(),
            self.scenario.display().to_string(),
            "-i".into(),
            self.local_ip.clone(),
            "-mi".into(),
            self.local_ip.clone(),
            "-p".into(),
            self.ports.port(0).to_string(),
            "-cp".into(),
            self.ports.port(1).to_string(),
            "-mp".into(),
            self.ports.port(2).to_string(),
            "-t".into(),
            transport.into(),
            "-m".into(),
            self.calls.to_string(),
            "-l".into(),
            self.limit.to_string(),
            "-r".into(),
            self.rate.to_string(),
            "-d".into(),
            self.pause_ms.to_string(),
            "-timeout".into(),
            format!("{}s", self.deadline.as_secs().saturating_sub(5).max(5)),
            "-timeout_error".into(),
            "-max_socket".into(),
            "1000".into(),
            "-nostdin".into(),
            "-trace_err".into(),
            "-error_file".into(),
            dir.join("errors.log").display().to_string(),
            "-trace_msg".into(),
            "-message_file".into(),
            dir.join("messages.log").display().to_string(),
            "-trace_stat".into(),
            "-stf".into(),
            dir.join("stats.csv").display().to_string(),
        ];
        if !self.retransmissions {
            args.push("-nr".into());
        }
        args.extend(self.extra.iter().cloned());
        let target = match self.target {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            SocketAddr::V4(a) => a.to_string(),
        };
        args.push(target);
        args
    }

    /// Starts SIPp in the background.
    pub fn spawn(self) -> SippRun {
        let args = self.args();
        let stdout = fs::File::create(self.dir.path().join("stdout.log")).expect("stdout file");
        let stderr = fs::File::create(self.dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new("sipp")
            .args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run sipp ({e}); install sip-tester (scripts/test.sh does)")
            });
        SippRun {
            child: Some(child),
            started: Instant::now(),
            deadline: self.deadline,
            args,
            sipp: self,
        }
    }

    /// Runs SIPp to the end (or kills it at the deadline) and returns what happened.
    pub fn run(self) -> SippOutcome {
        self.spawn().wait()
    }
}

/// A SIPp process; killed on drop.
pub struct SippRun {
    child: Option<Child>,
    started: Instant,
    deadline: Duration,
    args: Vec<String>,
    sipp: Sipp,
}

impl SippRun {
    /// Waits for SIPp to exit, killing it at the deadline.
    pub fn wait(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("child");
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait sipp") {
                break Some(status);
            }
            if self.started.elapsed() > self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read =
            |name: &str| fs::read_to_string(self.sipp.dir.path().join(name)).unwrap_or_default();
        SippOutcome {
            status,
            args: self.args.clone(),
            stdout: read("stdout.log"),
            stderr: read("stderr.log"),
            errors: read("errors.log"),
            messages: read("messages.log"),
            stats: read("stats.csv"),
            audio_packets: self.sipp.audio_packets,
        }
    }
}

impl Drop for SippRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a SIPp run left behind.
#[derive(Debug)]
pub struct SippOutcome {
    /// Exit status; `None` when killed at the deadline.
    pub status: Option<ExitStatus>,
    /// The command line (for messages).
    pub args: Vec<String>,
    /// SIPp's screen output.
    pub stdout: String,
    /// SIPp's stderr.
    pub stderr: String,
    /// `-trace_err` log: unexpected messages and failures.
    pub errors: String,
    /// `-trace_msg` log: every message sent and received.
    pub messages: String,
    /// `-trace_stat` CSV.
    pub stats: String,
    /// Packets per call in the pcap, if one was written.
    pub audio_packets: Option<usize>,
}

impl SippOutcome {
    /// SIPp's exit code (`None` if killed).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics with everything useful unless SIPp exited 0 (all calls succeeded).
    pub fn assert_success(&self) {
        assert_eq!(
            self.code(),
            Some(0),
            "SIPp did not succeed:\n{}",
            self.report()
        );
    }

    /// A readable dump for failure messages.
    pub fn report(&self) -> String {
        let tail = |s: &str, n: usize| {
            s.chars()
                .rev()
                .take(n)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        };
        format!(
            "status: {:?}\nargs: sipp {}\n--- stderr\n{}\n--- errors.log\n{}\n--- messages.log (tail)\n{}\n--- screen (tail)\n{}",
            self.status,
            self.args.join(" "),
            tail(&self.stderr, 3_000),
            tail(&self.errors, 6_000),
            tail(&self.messages, 6_000),
            tail(&self.stdout, 3_000),
        )
    }

    /// The SIP messages SIPp received, in order, as raw text.
    pub fn received(&self) -> Vec<TracedMessage> {
        self.traced().into_iter().filter(|m| !m.sent).collect()
    }

    /// The SIP messages SIPp sent and received, in order.
    pub fn traced(&self) -> Vec<TracedMessage> {
        // -trace_msg blocks look like:
        //   ----------------------------------------------- 2025-01-01 12:00:00.123456
        //   UDP message received [512] bytes :
        //   <message>
        let mut out = Vec::new();
        // The file starts with a separator, not after a newline: add one so the first message
        // is a block of its own rather than taken for a preamble.
        let messages = format!("\n{}", self.messages);
        let mut blocks = messages.split("\n----------------------------------------------- ");
        blocks.next();
        for block in blocks {
            let mut lines = block.splitn(3, '\n');
            let stamp = lines.next().unwrap_or("").trim();
            let what = lines.next().unwrap_or("");
            let text = lines
                .next()
                .unwrap_or("")
                .trim_start_matches(['\r', '\n'])
                .to_owned();
            let sent = what.contains("sent");
            if !(what.contains("message received") || what.contains("message sent")) {
                continue;
            }
            out.push(TracedMessage {
                at_secs: parse_clock(stamp),
                sent,
                text,
            });
        }
        out
    }
}

/// One SIP message from SIPp's trace.
#[derive(Debug, Clone)]
pub struct TracedMessage {
    /// Seconds since 1970-01-01 on SIPp's local clock (the trace's date and time stamp): only
    /// differences mean anything (resolution under 1 µs). Local time: in a zone with daylight
    /// saving, a test running across the change would see an hour's jump (CI runs in UTC).
    pub at_secs: f64,
    /// Sent by SIPp (else received).
    pub sent: bool,
    /// The message text.
    pub text: String,
}

impl TracedMessage {
    /// The start line.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("").trim_end()
    }

    /// The status code, if a response.
    pub fn status(&self) -> Option<u16> {
        let line = self.first_line();
        line.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    /// The first value of header `name` (case-insensitive, full name).
    pub fn header(&self, name: &str) -> Option<String> {
        super::sip::header_in(&self.text, name)
    }

    /// The CSeq method.
    pub fn cseq_method(&self) -> Option<String> {
        self.header("CSeq")
            .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
    }

    /// The body after the blank line.
    pub fn body(&self) -> &str {
        super::sip::body_of(&self.text)
    }
}

/// A `-trace_msg` time stamp (`2025-01-01 12:00:00.123456`) as [`TracedMessage::at_secs`].
pub fn parse_clock(stamp: &str) -> f64 {
    let mut parts = stamp.split_whitespace();
    let date = parts.next().unwrap_or("1970-01-01");
    let time = parts.next().unwrap_or("0:0:0");
    let of_day = time.split(':').fold(0.0, |acc, part| {
        acc * 60.0 + part.parse::<f64>().unwrap_or(0.0)
    });
    // The date too: a test that runs across midnight must not see time go back a day.
    let mut ymd = date.split('-').map(|part| part.parse::<i64>().unwrap_or(0));
    let (year, month, day) = (
        ymd.next().unwrap_or(1970),
        ymd.next().unwrap_or(1),
        ymd.next().unwrap_or(1),
    );
    days_from_civil(year, month, day) as f64 * 86_400.0 + of_day
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
