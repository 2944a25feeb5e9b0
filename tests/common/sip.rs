//! Raw SIP over UDP/TCP from the test itself, for what SIPp cannot send: malformed requests,
//! torture messages, a request timed into the drain window.
//!
//! Responses are routed per RFC 3261 §18.2.2 (source IP, Via sent-by port or `rport`); requests
//! built here always carry `rport` and the sending socket's own address as sent-by.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique token for branches, tags and Call-IDs.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A parsed SIP response (enough for assertions).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// The whole message.
    pub text: String,
}

impl Response {
    /// Parses a response; `None` if `bytes` is not a `SIP/2.0 NNN` response.
    pub fn parse(bytes: &[u8]) -> Option<Response> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let line = text.lines().next()?.trim_end();
        let rest = line.strip_prefix("SIP/2.0 ")?;
        let status = rest.get(..3)?.parse().ok()?;
        let reason = rest.get(3..).unwrap_or("").trim().to_owned();
        Some(Response {
            status,
            reason,
            text,
        })
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.text, name)
    }

    /// The body.
    pub fn body(&self) -> &str {
        body_of(&self.text)
    }

    /// Whether it is a final response.
    pub fn is_final(&self) -> bool {
        self.status >= 200
    }
}

const COMPACT: &[(&str, &str)] = &[
    ("call-id", "i"),
    ("contact", "m"),
    ("content-length", "l"),
    ("content-type", "c"),
    ("from", "f"),
    ("to", "t"),
    ("via", "v"),
    ("supported", "k"),
];

/// The first value of header `name` in a message's header block (full or compact name,
/// case-insensitive), folded lines not supported (voxgate does not fold).
pub fn header_in(text: &str, name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let compact = COMPACT
        .iter()
        .find(|(full, _)| *full == lower)
        .map(|(_, c)| *c);
    let head = text.split("\r\n\r\n").next().unwrap_or(text);
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let key = key.trim().to_ascii_lowercase();
        (key == lower || Some(key.as_str()) == compact).then(|| value.trim().to_owned())
    })
}

/// Every value of header `name` (each header line; comma lists not split).
pub fn headers_in(text: &str, name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or(text);
    head.lines()
        .skip(1)
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim().to_ascii_lowercase() == lower).then(|| value.trim().to_owned())
        })
        .collect()
}

/// The body after the first blank line.
pub fn body_of(text: &str) -> &str {
    text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The `tag` parameter of a From/To value.
pub fn tag_of(value: &str) -> Option<String> {
    value
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("tag=").map(str::to_owned))
}

fn host(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    }
}

/// A request built by [`request`], with the identifiers a follow-up (ACK, CANCEL) needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The bytes to send.
    pub text: String,
    /// Via branch.
    pub branch: String,
    /// Call-ID.
    pub call_id: String,
    /// From tag.
    pub from_tag: String,
}

/// Builds `method` from `local` to `target` over UDP with a fresh branch, tag and Call-ID;
/// `body` is sent as `application/sdp` when not empty.
pub fn request(method: &str, target: SocketAddr, local: SocketAddr, body: &str) -> Request {
    let branch = format!("z9hG4bK{}", unique("b"));
    let call_id = unique("cid");
    let from_tag = unique("t");
    let mut text = format!(
        "{method} sip:echo@{t} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {l};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:test@{l}>;tag={from_tag}\r\n\
         To: <sip:echo@{t}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:test@{l}>\r\n",
        t = host(target),
        l = host(local),
    );
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    Request {
        text,
        branch,
        call_id,
        from_tag,
    }
}

/// The ACK for a non-2xx final response to INVITE `invite` (RFC 3261 §17.1.1.3: same branch).
pub fn ack_for_failure(
    invite: &Request,
    response: &Response,
    target: SocketAddr,
    local: SocketAddr,
) -> String {
    let to = response
        .header("To")
        .unwrap_or_else(|| format!("<sip:echo@{}>", host(target)));
    format!(
        "ACK sip:echo@{t} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {l};branch={b};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:test@{l}>;tag={ft}\r\n\
         To: {to}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        t = host(target),
        l = host(local),
        b = invite.branch,
        ft = invite.from_tag,
        cid = invite.call_id,
    )
}

/// A PCMU-only SDP offer for `ip`/`port`.
pub fn pcmu_offer(ip: std::net::IpAddr, port: u16) -> String {
    let family = if ip.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=test 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// The RTP address in an SDP body (`c=` and `m=audio`).
pub fn sdp_rtp_addr(sdp: &str) -> SocketAddr {
    let ip = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= in {sdp}"));
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no m=audio in {sdp}"));
    format!("{}:{}", ip.trim(), port)
        .parse()
        .expect("RTP address")
}

/// Sends `bytes` to `to` and collects responses until a final one or `timeout`.
pub fn exchange(
    socket: &UdpSocket,
    bytes: &[u8],
    to: SocketAddr,
    timeout: Duration,
) -> Vec<Response> {
    socket
        .send_to(bytes, to)
        .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    collect(socket, timeout, true)
}

/// Collects responses arriving on `socket` for up to `timeout` (stops at the first final one
/// when `until_final`).
pub fn collect(socket: &UdpSocket, timeout: Duration, until_final: bool) -> Vec<Response> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        socket
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .expect("timeout");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Some(response) = Response::parse(&buf[..n]) {
                let done = until_final && response.is_final();
                out.push(response);
                if done {
                    return out;
                }
            }
        }
    }
}

/// Sends OPTIONS from a fresh socket and returns the final response, if any within `timeout`.
pub fn options(target: SocketAddr, timeout: Duration) -> Option<Response> {
    let bind: SocketAddr = if target.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
    .parse()
    .expect("addr");
    let socket = UdpSocket::bind(bind).ok()?;
    let local = socket.local_addr().ok()?;
    let request = request("OPTIONS", target, local, "");
    exchange(&socket, request.text.as_bytes(), target, timeout)
        .into_iter()
        .find(Response::is_final)
}

/// The URI inside a Contact value (`<sip:...>` or bare).
pub fn contact_uri(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}

/// An in-dialog request (ACK for a 2xx, BYE, ...) for the dialog `invite` created with
/// `response` (RFC 3261 §12.2.1.1: Request-URI = remote Contact, To carries the remote tag).
pub fn in_dialog(
    method: &str,
    cseq: u32,
    invite: &Request,
    response: &Response,
    local: SocketAddr,
) -> String {
    let uri = response
        .header("Contact")
        .map(|c| contact_uri(&c))
        .unwrap_or_else(|| "sip:echo@127.0.0.1".into());
    let to = response.header("To").unwrap_or_default();
    let branch = format!("z9hG4bK{}", unique("d"));
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {l};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:test@{l}>;tag={ft}\r\n\
         To: {to}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        l = host(local),
        ft = invite.from_tag,
        cid = invite.call_id,
    )
}

/// Ends a call a raw INVITE set up: ACK the 2xx, BYE, wait for the BYE's 200 (or `timeout`).
pub fn hang_up(
    socket: &UdpSocket,
    invite: &Request,
    ok: &Response,
    target: SocketAddr,
    timeout: Duration,
) -> Option<Response> {
    let local = socket.local_addr().expect("local addr");
    socket
        .send_to(in_dialog("ACK", 1, invite, ok, local).as_bytes(), target)
        .expect("send ACK");
    let bye = in_dialog("BYE", 2, invite, ok, local);
    socket.send_to(bye.as_bytes(), target).expect("send BYE");
    wait_for(socket, timeout, |r| {
        r.is_final() && r.header("CSeq").is_some_and(|c| c.contains("BYE"))
    })
}

/// Reads responses until one satisfies `want` (returned) or `timeout` (None).
pub fn wait_for(
    socket: &UdpSocket,
    timeout: Duration,
    want: impl Fn(&Response) -> bool,
) -> Option<Response> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .expect("timeout");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Some(response) = Response::parse(&buf[..n]) {
                if want(&response) {
                    return Some(response);
                }
            }
        }
    }
}
