//! The whole sans-IO SIP core (endpoint, transactions, dialogs, calls, admission, digest auth,
//! registration, REFER and bridged transfers) driven by a script of network input and `io/`
//! reports, in virtual time.
//!
//! The input is a list of records, each starting with `%%` and an op letter at the start of a
//! line (the script format is in `fuzz/README.md`; `fuzz/seeds/sip_switchboard/` has examples):
//!
//! | record | what happens |
//! |---|---|
//! | `%%U` + bytes | a UDP datagram from the PBX (inside the static trunk) |
//! | `%%u` + text | the same, LF turned into CRLF and `Content-Length: auto` filled in |
//! | `%%X` / `%%x` + … | a datagram from outside every trunk (digest-authenticated users) |
//! | `%%R` / `%%r` + … | a datagram from the register trunk's registrar |
//! | `%%T` / `%%s` + … | bytes on the PBX's TCP connection (through the stream framer) |
//! | `%%t` + digits | advance the virtual clock that many ms, firing every timer due |
//! | `%%m` | the next media allocation fails |
//! | `%%a` / `%%f` / `%%h` | the newest call's speech agent is ready / failed / hung up |
//! | `%%c` / `%%C` | the newest call's caller RTP stopped / resumed |
//! | `%%e` | the newest call's media ended on its own |
//! | `%%k` + name | the newest call's agent asks for a transfer to `name` |
//! | `%%A` + status [index] | a response to a request voxgate sent (newest first; index 0–3): the
//! first line is the status, further lines are extra headers, a blank line starts a body |
//! | `%%n` | the register trunk's registrar was resolved (its registration starts) |
//! | `%%l` + bytes | the newest call's bridged transfer's next hop was located (RFC 3263): up to
//! four servers the bytes pick, in that order; no bytes, the lookup failed |
//! | `%%E` [index] | a request voxgate sent (newest first; index 0–3) could not be sent (TCP
//! connection refused, name not located) |
//! | `%%z` | the PBX's TCP connection closed (requests voxgate still waits on over it fail) |
//! | `%%d` | draining starts (calls hung up after 30 s) |
//! | `%%L` | after the script, run the clock 4,000 s instead of 40 s |
//!
//! In text records (`u`, `x`, `r`, `s`), `$TOTAG` becomes the To tag of voxgate's newest
//! response, so a script can send in-dialog requests (ACK, BYE, re-INVITE, NOTIFY).
//!
//! Checked besides "never panics": every message voxgate sends parses with its own parser,
//! `poll_timeout` never stays in the past, and no more calls run than `max_concurrent`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use voxgate::call::switchboard::Switchboard;
use voxgate::call::transfer::TransferRequest;
use voxgate::call::{CallKey, Output};
use voxgate::config::Settings;
use voxgate::sip::endpoint::{ClientTxId, ConnectionId, Flow, Target};
use voxgate::sip::framing::{Frame, StreamFramer};
use voxgate::sip::message::{self, Message, Transport};

use super::{t0, trace};

const CONFIG: &str = r#"
[sip]
listen = ["192.0.2.1:5060"]
user_agent = "voxgate-fuzz"
t1_ms = 500
max_message_bytes = 65535
session_expires_secs = 1800
min_se_secs = 90

[calls]
max_concurrent = 4

[[trunks]]
name = "pbx"
allow_from = ["192.0.2.0/24"]
domain = "pbx.example.com"
auth_realm = "voxgate"
auth_algorithms = ["SHA-256", "MD5"]
outbound_username = "voxgate"
outbound_password_env = "FUZZ_OUTBOUND"
[[trunks.users]]
username = "pbx1"
password_env = "FUZZ_PBX1"

[[trunks]]
name = "carrier"
mode = "register"
registrar = "sip:registrar.example.net"
username = "voxgate"
password_env = "FUZZ_REGISTER"
keepalive_secs = 30
expires = 600

[[agents]]
name = "echo"
kind = "echo"
ring_ms = 100

[[agents]]
name = "assistant"
kind = "openai"
[[agents.transfers]]
name = "sales"
extension = "2001"
description = "The sales team."
method = "refer_then_bridge"
announce = "A caller for sales."
[[agents.transfers]]
name = "support"
uri = "sip:support@192.0.2.20"
description = "Support."
method = "bridge"
[[agents.transfers]]
name = "billing"
uri = "sip:billing@agents.example.com"
description = "Billing, located by DNS."
method = "bridge"
[[agents.dtmf_rules]]
digit = "0"
transfer = "sales"

[realtime]
api_key_env = "FUZZ_API_KEY"

[[routes]]
user = "echo"
agent = "echo"

[[routes]]
agent = "assistant"
"#;

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("voxgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("voxgate.toml");
        std::fs::write(&file, CONFIG).expect("write the fuzz config");
        let mut settings =
            Settings::load_from(&file, Vec::new()).unwrap_or_else(|e| panic!("fuzz config: {e}"));
        settings
            .resolve_secrets(&file, |name| Some(format!("secret-of-{name}")))
            .unwrap_or_else(|e| panic!("fuzz config secrets: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
        settings
    })
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("literal address")
}

struct Rig {
    switchboard: Switchboard,
    now: Instant,
    calls: Vec<CallKey>,
    fail_next_media: bool,
    next_port: u16,
    framer: StreamFramer,
    /// The To tag of voxgate's newest response.
    to_tag: String,
    /// The message being handled did not parse (what voxgate sends now answers it statelessly).
    inbound_rejected: bool,
    /// voxgate's newest requests (at most four): their text and where they went.
    requests: Vec<(String, SocketAddr)>,
    /// The client transaction of each of `requests` (`None` for a 2xx's ACK).
    clients: Vec<Option<ClientTxId>>,
}

impl Rig {
    fn flow(&self, remote: &str, transport: Transport) -> Flow {
        Flow {
            transport,
            remote: addr(remote),
            local: addr("192.0.2.1:5060"),
            connection: (transport == Transport::Tcp).then_some(ConnectionId(1)),
        }
    }

    fn datagram(&mut self, remote: &str, bytes: &[u8]) {
        let flow = self.flow(remote, Transport::Udp);
        self.inbound(bytes, flow);
    }

    fn inbound(&mut self, bytes: &[u8], flow: Flow) {
        self.inbound_rejected = message::parse(bytes, flow.transport, 65_535).is_err();
        self.switchboard.handle_inbound(self.now, bytes, flow);
        self.pump();
        self.inbound_rejected = false;
    }

    fn stream(&mut self, bytes: &[u8]) {
        self.framer.push(bytes);
        while let Some(frame) = self.framer.poll_message() {
            if let Ok(Frame::Message(message)) = frame {
                let flow = self.flow("192.0.2.10:5060", Transport::Tcp);
                self.inbound(&message, flow);
            }
        }
        if self.framer.is_failed() {
            // io/ closes such a connection.
            self.framer = StreamFramer::new(65_535);
            self.switchboard.handle_connection_closed(
                self.now,
                ConnectionId(1),
                addr("192.0.2.10:5060"),
            );
            self.pump();
        }
    }

    fn local(&mut self) -> SocketAddr {
        self.next_port = self.next_port.wrapping_add(2).max(40_000);
        SocketAddr::new(addr("192.0.2.1:5060").ip(), self.next_port)
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            while let Some(transmit) = self.switchboard.poll_transmit() {
                if trace() {
                    let text = String::from_utf8_lossy(&transmit.bytes);
                    eprintln!(
                        "{:>8} ms  → {}",
                        self.now.duration_since(t0()).as_millis(),
                        text.lines().next().unwrap_or("")
                    );
                }
                check_header_bytes(&transmit.bytes);
                match message::parse(&transmit.bytes, Transport::Udp, 65_535) {
                    // The stateless answer to a request that did not parse copies its broken
                    // headers (RFC 3261 §8.2.6.2), so it need not parse; it must still be one
                    // well-framed error response.
                    Err(_) if self.inbound_rejected => check_stateless_answer(&transmit.bytes),
                    Err(rejected) => panic!(
                        "voxgate sent a message its own parser refuses ({:?}):\n{}",
                        rejected.error,
                        String::from_utf8_lossy(&transmit.bytes)
                    ),
                    Ok(Message::Response(response)) => {
                        if let Some(tag) = response.to_tag() {
                            self.to_tag = tag.to_owned();
                        }
                    }
                    Ok(Message::Request(_)) => {
                        let to = match transmit.target {
                            Target::Addr(to) => to,
                            Target::Host(..) => addr("192.0.2.10:5060"),
                        };
                        let text = String::from_utf8_lossy(&transmit.bytes).into_owned();
                        self.requests.insert(0, (text, to));
                        self.requests.truncate(4);
                        self.clients.insert(0, transmit.client);
                        self.clients.truncate(4);
                    }
                }
            }
            let mut allocate = Vec::new();
            let mut allocate_agent = Vec::new();
            while let Some(output) = self.switchboard.poll_output() {
                match output {
                    Output::AllocateMedia { call, .. } => allocate.push(call),
                    Output::AllocateAgentMedia { call, .. } => allocate_agent.push(call),
                    _ => {}
                }
            }
            assert!(
                self.switchboard.active_calls() <= settings().calls.max_concurrent,
                "more calls than max_concurrent"
            );
            if allocate.is_empty() && allocate_agent.is_empty() {
                return;
            }
            for call in allocate_agent {
                let local = self.local();
                self.switchboard
                    .handle_agent_media_allocated(self.now, call, Ok(local));
            }
            for call in allocate {
                if std::mem::take(&mut self.fail_next_media) {
                    self.switchboard.handle_media_allocated(
                        self.now,
                        call,
                        Err("no free RTP port".into()),
                    );
                } else {
                    let local = self.local();
                    self.switchboard
                        .handle_media_allocated(self.now, call, Ok(local));
                    self.calls.push(call);
                }
            }
        }
        panic!("the switchboard keeps asking for media");
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        let mut steps = 0u32;
        while let Some(deadline) = self.switchboard.poll_timeout() {
            if deadline > until {
                break;
            }
            steps += 1;
            assert!(
                steps < 100_000,
                "timers keep firing: poll_timeout {:?} after t0, now {:?}",
                deadline.saturating_duration_since(t0()),
                self.now.saturating_duration_since(t0())
            );
            self.now = self.now.max(deadline);
            self.switchboard.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
    }

    /// Answers voxgate's `index`-th newest request with `status`, `extra` headers and `body`.
    fn answer(&mut self, index: usize, status: u16, extra: &str, body: &str) {
        let Some((request, to)) = self.requests.get(index).cloned() else {
            return;
        };
        let mut out = format!("SIP/2.0 {status} Fuzz\r\n");
        for line in request.split("\r\n").skip(1) {
            let name = line.split(':').next().unwrap_or("").trim();
            if ["Via", "From", "Call-ID", "CSeq"].contains(&name) {
                out.push_str(line);
                out.push_str("\r\n");
            } else if name == "To" {
                out.push_str(line);
                if status > 100 && !line.contains(";tag=") {
                    out.push_str(";tag=fz1");
                }
                out.push_str("\r\n");
            }
        }
        for line in extra.lines().filter(|l| !l.is_empty()) {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let flow = Flow {
            transport: Transport::Udp,
            remote: to,
            local: addr("192.0.2.1:5060"),
            connection: None,
        };
        self.switchboard
            .handle_inbound(self.now, out.as_bytes(), flow);
        self.pump();
    }

    /// LF → CRLF, `Content-Length: auto` filled in, `$TOTAG` replaced.
    fn text(&self, payload: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(payload).replace("$TOTAG", &self.to_tag);
        text_message(text.as_bytes())
    }

    fn newest(&self) -> Option<CallKey> {
        self.calls.last().copied()
    }
}

/// The header section of everything voxgate sends: CRLF line ends only, no control characters
/// but HTAB, except escaped (`\` + octet) as a quoted-pair may be (RFC 3261 §25.1). Stricter
/// than voxgate's parser on headers it does not check (Route, Server, Reason …).
fn check_header_bytes(bytes: &[u8]) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let head = &bytes[..end];
    for (i, &b) in head.iter().enumerate() {
        let escaped = i > 0 && head[i - 1] == b'\\';
        let ok = match b {
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\t' => true,
            0..=0x1f | 0x7f => escaped,
            _ => true,
        };
        assert!(
            ok,
            "voxgate sent a control character (0x{b:02x}) at byte {i} of its header section:\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// A 4xx/5xx status line, a Via, CRLF line ends only, one empty line at the end, no body.
fn check_stateless_answer(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let ok = (text.starts_with("SIP/2.0 4") || text.starts_with("SIP/2.0 5"))
        && text.contains("\r\nVia: ")
        && text.ends_with("\r\nContent-Length: 0\r\n\r\n")
        && text.matches("\r\n\r\n").count() == 1
        && text.matches('\r').count() == text.matches('\n').count()
        && text.matches('\r').count() == text.matches("\r\n").count();
    assert!(ok, "a malformed stateless answer:\n{text}");
}

/// LF → CRLF, and `Content-Length: auto` replaced by the body's length (text records).
fn text_message(payload: &[u8]) -> Vec<u8> {
    let mut crlf = Vec::with_capacity(payload.len() + 64);
    for (i, &byte) in payload.iter().enumerate() {
        if byte == b'\n' && (i == 0 || payload[i - 1] != b'\r') {
            crlf.push(b'\r');
        }
        crlf.push(byte);
    }
    let marker = b"Content-Length: auto";
    let Some(at) = crlf.windows(marker.len()).position(|w| w == marker) else {
        return crlf;
    };
    let body = crlf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |end| crlf.len() - (end + 4));
    let mut out = crlf[..at].to_vec();
    out.extend_from_slice(format!("Content-Length: {body}").as_bytes());
    out.extend_from_slice(&crlf[at + marker.len()..]);
    out
}

/// Splits the script into (op, payload) records; text before the first record is ignored.
fn records(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i] == b'%' && data[i + 1] == b'%' && (i == 0 || data[i - 1] == b'\n') {
            starts.push(i);
            i += 2;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(data.len(), |&next| next);
        let op = data[start + 2];
        let mut payload = &data[(start + 3).min(end)..end];
        // The op line's own newline is not part of the payload.
        if payload.first() == Some(&b'\n') {
            payload = &payload[1..];
        }
        out.push((op, payload));
    }
    out
}

/// One input.
pub fn run(data: &[u8]) {
    let mut rig = Rig {
        switchboard: Switchboard::new(settings()),
        now: t0(),
        calls: Vec::new(),
        fail_next_media: false,
        next_port: 40_000,
        framer: StreamFramer::new(65_535),
        to_tag: String::new(),
        inbound_rejected: false,
        requests: Vec::new(),
        clients: Vec::new(),
    };
    let mut long = false;
    for (op, payload) in records(data).into_iter().take(64) {
        match op {
            b'U' => rig.datagram("192.0.2.10:5060", payload),
            b'u' => {
                let bytes = rig.text(payload);
                rig.datagram("192.0.2.10:5060", &bytes);
            }
            b'X' => rig.datagram("198.51.100.7:5060", payload),
            b'x' => {
                let bytes = rig.text(payload);
                rig.datagram("198.51.100.7:5060", &bytes);
            }
            b'R' => rig.datagram("203.0.113.5:5060", payload),
            b'r' => {
                let bytes = rig.text(payload);
                rig.datagram("203.0.113.5:5060", &bytes);
            }
            b'T' => rig.stream(payload),
            b's' => {
                let bytes = rig.text(payload);
                rig.stream(&bytes);
            }
            b'A' => {
                let text = String::from_utf8_lossy(payload);
                let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or("").split_whitespace();
                let status = first.next().and_then(|s| s.parse().ok()).unwrap_or(200);
                let index = first.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let extra: Vec<&str> = lines.collect();
                let body = body.replace('\n', "\r\n");
                rig.answer(index, status, &extra.join("\n"), &body);
            }
            b'E' => {
                let index = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|text| text.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if let Some(Some(tx)) = rig.clients.get(index).copied() {
                    rig.switchboard.handle_send_failed(rig.now, tx);
                    rig.pump();
                }
            }
            b't' => {
                let ms = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok())
                    .unwrap_or(1_000)
                    .min(7_200_000);
                rig.advance(Duration::from_millis(ms.into()));
            }
            b'm' => rig.fail_next_media = true,
            b'L' => long = true,
            b'a' | b'f' | b'h' | b'c' | b'C' | b'e' | b'k' => {
                let Some(call) = rig.newest() else { continue };
                let now = rig.now;
                let board = &mut rig.switchboard;
                match op {
                    b'a' => board.handle_agent_ready(now, call),
                    b'f' => board.handle_agent_failed(now, call, "fuzz: session failed"),
                    b'h' => board.handle_agent_hangup(now, call, "fuzz: end_call"),
                    b'c' => board.handle_caller_media(now, call, false),
                    b'C' => board.handle_caller_media(now, call, true),
                    b'e' => board.handle_media_ended(
                        now,
                        call,
                        "fuzz: no RTP",
                        voxgate::metrics::CallResult::Failed,
                    ),
                    _ => board.handle_transfer_request(
                        now,
                        call,
                        TransferRequest {
                            tool_call_id: Some("call_fuzz".into()),
                            destination: String::from_utf8_lossy(payload).trim().to_owned(),
                            reason: "fuzz".into(),
                            summary: Some("caller wants sales".into()),
                        },
                    ),
                }
                rig.pump();
            }
            b'n' => {
                // The registrar located (RFC 3263): up to four servers in the order the payload
                // picks; again later, a change in DNS.
                const SERVERS: [&str; 4] = [
                    "203.0.113.5:5060",
                    "203.0.113.6:5070",
                    "203.0.113.7:5060",
                    "[2001:db8::5]:5060",
                ];
                let mut targets = Vec::new();
                for byte in payload.iter().take(4) {
                    let server = SERVERS[usize::from(*byte) % SERVERS.len()];
                    if !targets.iter().any(|(_, origin)| origin == server) {
                        targets.push((rig.flow(server, Transport::Udp), server.to_owned()));
                    }
                }
                if targets.is_empty() {
                    let flow = rig.flow(SERVERS[0], Transport::Udp);
                    rig.switchboard.handle_next_hop(rig.now, "carrier", flow);
                } else {
                    rig.switchboard
                        .handle_next_hops(rig.now, "carrier", targets);
                }
                rig.pump();
            }
            b'l' => {
                let Some(call) = rig.newest() else { continue };
                // The servers of the transfer destination's name: a v6 one is left out
                // (the local address is v4).
                const SERVERS: [&str; 4] = [
                    "192.0.2.30:5060",
                    "192.0.2.31:5070",
                    "192.0.2.10:5060",
                    "[2001:db8::30]:5060",
                ];
                let payload = payload.trim_ascii();
                let located = if payload.is_empty() {
                    Err("fuzz: no address".to_owned())
                } else {
                    Ok(payload
                        .iter()
                        .take(4)
                        .map(|byte| {
                            let server = SERVERS[usize::from(*byte) % SERVERS.len()];
                            voxgate::sip::locate::Target {
                                address: addr(server),
                                origin: server.to_owned(),
                            }
                        })
                        .collect())
                };
                rig.switchboard
                    .handle_agent_leg_located(rig.now, call, located);
                rig.pump();
            }
            b'z' => {
                rig.framer = StreamFramer::new(65_535);
                rig.switchboard.handle_connection_closed(
                    rig.now,
                    ConnectionId(1),
                    addr("192.0.2.10:5060"),
                );
                rig.pump();
            }
            b'd' => {
                let deadline = rig.now + Duration::from_secs(30);
                rig.switchboard.begin_drain(rig.now, deadline);
                rig.pump();
            }
            _ => {}
        }
    }
    // Let the transactions' timers run out (64·T1 = 32 s); with `%%L`, also session timers and
    // registration refreshes. The long tail costs ~50 runs a second, so it is the script's choice.
    let tail = if long { 4_000 } else { 40 };
    rig.advance(Duration::from_secs(tail));
}
