//! SIP robustness against the real voxgate binary: OPTIONS capabilities, malformed requests,
//! unparseable datagrams and every RFC 4475 torture message; the gateway must keep serving.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::sip::{self, Response};
use common::{Gateway, GatewayConfig, Sipp};

const PARSE_ERRORS: &str = "voxgate_sip_parse_errors_total";
const CALLS_TOTAL: &str = "voxgate_calls_total";

fn assert_still_serving(gateway: &mut Gateway) {
    gateway.assert_running();
    let options = sip::options(gateway.sip_addr(), Duration::from_secs(3))
        .expect("OPTIONS answered afterwards");
    assert_eq!(options.status, 200);
    let outcome = Sipp::new("uac_basic.xml", gateway.sip_addr())
        .pause_ms(300)
        .run();
    outcome.assert_success();
}

/// (8) OPTIONS → 200 with Allow, Accept and Supported (checked by the scenario's eregs) .
#[test]
fn options_advertises_allow_accept_and_supported() {
    let gateway = Gateway::start("");
    Sipp::new("uac_options.xml", gateway.sip_addr())
        .run()
        .assert_success();
    let raw = sip::options(gateway.sip_addr(), Duration::from_secs(3)).expect("OPTIONS answered");
    let allow = raw.header("Allow").unwrap_or_default();
    for method in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"] {
        assert!(allow.contains(method), "Allow lacks {method}: {}", raw.text);
    }
    assert!(
        raw.header("Accept")
            .is_some_and(|a| a.contains("application/sdp")),
        "{}",
        raw.text
    );
    assert!(raw.header("Supported").is_some(), "{}", raw.text);
}

/// Requests answered at once are answered statelessly (RFC 3261 §8.2.7): a retransmission
/// gets the same response, To tag included, and another request another tag. (A stateful
/// answer would repeat the tag too; the switchboard's unit tests check no transaction is kept,
/// and BENCHMARKS.md's OPTIONS flood that memory stays flat.)
#[test]
fn a_retransmitted_options_or_stray_bye_gets_the_same_stateless_answer() {
    let gateway = Gateway::start("");
    let target = gateway.sip_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().expect("local");
    let final_of = |text: &str| {
        sip::exchange(&socket, text.as_bytes(), target, Duration::from_secs(3))
            .into_iter()
            .find(Response::is_final)
            .expect("a final response")
    };
    let to_tag = |response: &Response| {
        let to = response.header("To").unwrap_or_default();
        to.split(";tag=")
            .nth(1)
            .map(|tag| tag.split(';').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no To tag: {}", response.text))
    };
    let mut tags = Vec::new();
    for (method, status) in [("OPTIONS", 200), ("BYE", 481), ("MESSAGE", 405)] {
        let request = sip::request(method, target, local, "").text;
        let first = final_of(&request);
        let again = final_of(&request);
        assert_eq!((first.status, again.status), (status, status), "{method}");
        assert_eq!(to_tag(&first), to_tag(&again), "{method}: the same tag");
        assert_eq!(
            first.text, again.text,
            "{method}: the same response, byte for byte"
        );
        tags.push(to_tag(&first));
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 3, "each request its own tag");
}

/// (7) Missing Call-ID and a bad CSeq get 400 with a reason phrase; random bytes, and what is
/// not recognisably a request with a Via, get nothing but are counted; the gateway still answers OPTIONS and takes a call.
#[test]
fn malformed_requests_get_400_and_garbage_is_counted_and_dropped() {
    let mut gateway = Gateway::start("");
    let target = gateway.sip_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().expect("local");

    let options = sip::request("OPTIONS", target, local, "").text;
    let no_call_id: String = options
        .split("\r\n")
        .filter(|l| !l.starts_with("Call-ID:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let bad_cseq = sip::request("OPTIONS", target, local, "")
        .text
        .replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
    for (what, request) in [("missing Call-ID", no_call_id), ("bad CSeq", bad_cseq)] {
        let responses = sip::exchange(&socket, request.as_bytes(), target, Duration::from_secs(3));
        let last = responses
            .last()
            .unwrap_or_else(|| panic!("{what}: no response"));
        assert_eq!(last.status, 400, "{what}: {}", last.text);
        assert!(
            !last.reason.is_empty(),
            "{what}: 400 without a reason phrase"
        );
    }

    let before = gateway.metrics().sum(PARSE_ERRORS);
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let responses = sip::exchange(&socket, &garbage, target, Duration::from_millis(700));
    assert!(
        responses.is_empty(),
        "garbage got a response: {responses:?}"
    );
    // Found by fuzzing: these drew a 400 to their source, ten times their size (a reflector
    // for spoofed datagrams). Not recognisably requests with a Via: dropped.
    for (what, datagram) in [
        (
            "a start line that is no request line",
            b"0\r\nV:\xaa".to_vec(),
        ),
        (
            "a Via that is not one",
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: garbage\r\nCall-ID: a\r\n\r\n".to_vec(),
        ),
    ] {
        let responses = sip::exchange(&socket, &datagram, target, Duration::from_millis(700));
        assert!(responses.is_empty(), "{what} got a response: {responses:?}");
    }
    let after = gateway.wait_metric(PARSE_ERRORS, &[], Duration::from_secs(5), |v| v > before);
    assert!(after > before, "{PARSE_ERRORS} did not increase ({before})");
    assert_still_serving(&mut gateway);
}

/// A torture message: its name, bytes and the last octet of the loopback address it is sent from.
type TortureMessage = (String, Vec<u8>, u8);

/// The torture test's RFC 3261 T1 and T4, milliseconds.
const T1_MS: u64 = 100;
const T4_MS: u64 = 500;

/// What a torture message must get (RFC 4475, groups per the README beside the files).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A final response whose status is not 400.
    ProcessedNot400,
    /// A final response with one of these codes.
    Status(&'static [u16]),
    /// 400 (or one of the extra codes), or nothing.
    RejectedOrDropped(&'static [u16]),
    /// No response (it is itself a response).
    Nothing,
    /// Anything, as long as the gateway survives.
    Any,
}

fn expectation(file: &str) -> Expect {
    use Expect::*;
    match file {
        // 3.1.1 valid requests / responses
        "wsinv" | "intmeth" | "esc01" | "escnull" | "esc02" | "lwsdisp" | "longreq" | "dblreq"
        | "semiuri" | "transports" | "mpart01" => ProcessedNot400,
        "unreason" | "noreason" => Nothing,
        // 3.1.2 invalid
        "scalarlg" | "bigcode" => Nothing,
        "badvers" => RejectedOrDropped(&[505]),
        "mismatch02" => RejectedOrDropped(&[501]),
        "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri"
        | "lwsstart" | "trws" | "escruri" | "baddate" | "regbadct" | "badaspec" | "baddn"
        | "mismatch01" => RejectedOrDropped(&[]),
        // 3.3 application
        "insuf" | "multi01" | "mcl01" => Status(&[400]),
        "unkscm" | "novelsc" => Status(&[416]),
        "bext01" => Status(&[420]),
        "invut" => Status(&[415]),
        "zeromf" => Status(&[200, 483]),
        "bcast" => Nothing,
        "inv2543" => ProcessedNot400,
        _ => Any,
    }
}

fn torture_dir() -> PathBuf {
    let beside = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/sip-torture"
    ));
    if beside.is_dir() {
        beside
    } else {
        PathBuf::from("/work/shared/sip-torture")
    }
}

/// The top Via's value, unfolded, with the spaces around `/` removed.
fn top_via_value(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut value: Option<String> = None;
    for line in head.split("\r\n").skip(1) {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((name, rest)) = line.split_once(':') {
                    if ["via", "v"].contains(&name.trim().to_ascii_lowercase().as_str()) {
                        value = Some(rest.to_owned());
                    }
                }
            }
        }
    }
    let mut v = value
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    while v.contains(" /") || v.contains("/ ") {
        v = v.replace(" /", "/").replace("/ ", "/");
    }
    v.trim().to_owned()
}

/// The top Via's transport and sent-by port (folded lines and spaces around `/` allowed).
fn top_via(message: &[u8]) -> (String, u16) {
    let v = top_via_value(message);
    let (protocol, rest) = v.split_once(' ').unwrap_or(("SIP/2.0/UDP", ""));
    let transport = protocol
        .rsplit('/')
        .next()
        .unwrap_or("UDP")
        .to_ascii_uppercase();
    let sent_by = rest.split([';', ',']).next().unwrap_or("").trim();
    let port = if let Some(after) = sent_by.strip_prefix('[') {
        after.split_once("]:").and_then(|(_, p)| p.parse().ok())
    } else {
        sent_by
            .split_once(':')
            .and_then(|(_, p)| p.trim().parse().ok())
    };
    (transport, port.unwrap_or(5060))
}

/// What RFC 3261 §17.2.3 matches a request's server transaction on: the top Via's branch and
/// sent-by and the CSeq method. `None` for a response.
fn transaction_key(message: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    if text.starts_with("SIP/") {
        return None;
    }
    let via = top_via_value(message);
    let mut parts = via.split([';', ',']);
    let sent_by = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let branch = parts
        .filter_map(|p| p.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("branch"))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    let method = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("cseq")
                .then(|| value.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    Some(format!("{branch}|{sent_by}|{method}"))
}

/// Sends one torture message the way its top Via says (UDP from 127.0.0.`k`:sent-by-port so the
/// RFC 3261 §18.2.2 response lands here; TCP/TLS over a TCP connection) and returns responses.
fn send_torture(bytes: Vec<u8>, k: u8, target: SocketAddr) -> Result<Vec<Response>, String> {
    let (transport, port) = top_via(&bytes);
    let wait = Duration::from_millis(4_000);
    if transport == "UDP" {
        let local: SocketAddr = format!("127.0.0.{k}:{port}").parse().expect("addr");
        let socket = UdpSocket::bind(local).map_err(|e| format!("bind {local}: {e}"))?;
        // Retransmit like a UAC (RFC 3261 Timer E, T1 = 500 ms) until a final response: a
        // datagram dropped on a loaded machine must not read as "no answer". voxgate absorbs
        // the copies and repeats its response (the outcome is the same).
        let deadline = Instant::now() + wait;
        let mut responses = Vec::new();
        while Instant::now() < deadline && !responses.iter().any(Response::is_final) {
            socket.send_to(&bytes, target).map_err(|e| e.to_string())?;
            responses.extend(sip::collect(&socket, Duration::from_millis(500), true));
        }
        // Keep reading past a first final response to catch a contradictory second one.
        responses.extend(sip::collect(&socket, Duration::from_millis(300), false));
        return Ok(responses);
    }
    let mut stream = TcpStream::connect(target).map_err(|e| e.to_string())?;
    stream.write_all(&bytes).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + wait;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&raw)
            .split("SIP/2.0 ")
            .skip(1)
            .any(|r| {
                r.as_bytes()
                    .first()
                    .is_some_and(|c| (b'2'..=b'6').contains(c))
            })
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    Ok(text
        .split("SIP/2.0 ")
        .skip(1)
        .filter_map(|r| Response::parse(format!("SIP/2.0 {r}").as_bytes()))
        .collect())
}

/// (12) Every RFC 4475 message: the outcome its group calls for, never a crash, still serving.
#[test]
fn rfc4475_torture_messages_get_the_right_outcome_and_never_crash() {
    let dir = torture_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("torture messages not found at {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        49,
        "expected the 49 RFC 4475 messages in {}",
        dir.display()
    );

    // Short T1 and T4 so calls created by the valid INVITEs (never ACKed) give up within
    // seconds and server transactions end soon after their final response.
    let mut gateway = Gateway::start_with(GatewayConfig {
        t1_ms: Some(T1_MS),
        sip_extra: format!("t4_ms = {T4_MS}"),
        ..GatewayConfig::default()
    });
    let target = gateway.sip_addr();
    // Each message from its own loopback address 127.0.0.(100+i): responses (and retransmitted
    // 2xx) of one message can never reach another's socket. Messages that RFC 3261 §17.2.3 makes
    // one server transaction (same top-Via branch and sent-by, same CSeq method: escnull and
    // regescrt, for one) are a request and its retransmission to voxgate, whose response goes
    // where the first came from; so they are sent one after another, the next once the
    // previous one's transaction is over (Timer J, or H then I), and each is judged as a fresh
    // request. Everything else is sent at once, a thread per transaction.
    let mut groups: Vec<(Option<String>, Vec<TortureMessage>)> = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        let bytes = std::fs::read(path).expect("read torture file");
        let key = transaction_key(&bytes);
        let member = (name, bytes, 100 + i as u8);
        match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
            Some((_, members)) => members.push(member),
            None => groups.push((key, vec![member])),
        }
    }
    let transaction_over = Duration::from_millis(64 * T1_MS + T4_MS + 1_000);
    let handles: Vec<_> = groups
        .into_iter()
        .map(|(_, members)| {
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for (n, (name, bytes, k)) in members.into_iter().enumerate() {
                    if n > 0 {
                        std::thread::sleep(transaction_over);
                    }
                    outcomes.push((name, send_torture(bytes, k, target)));
                }
                outcomes
            })
        })
        .collect();
    let outcomes = handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("torture thread"));
    let mut failures = Vec::new();
    for (name, result) in outcomes {
        let responses = match result {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let finals: Vec<u16> = responses
            .iter()
            .filter(|r| r.is_final())
            .map(|r| r.status)
            .collect();
        let first = finals.first().copied();
        let consistent = finals.iter().all(|s| Some(*s) == first);
        let ok = consistent
            && match expectation(&name) {
                Expect::ProcessedNot400 => first.is_some_and(|s| s != 400),
                Expect::Status(codes) => first.is_some_and(|s| codes.contains(&s)),
                Expect::RejectedOrDropped(extra) => {
                    first.is_none_or(|s| s == 400 || extra.contains(&s))
                }
                Expect::Nothing => responses.is_empty(),
                Expect::Any => true,
            };
        let line = format!(
            "{name}: expected {:?}, got {:?}",
            expectation(&name),
            responses.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        eprintln!("{line}");
        if !ok {
            failures.push(line);
        }
        gateway.assert_running();
    }
    assert_still_serving(&mut gateway);
    assert!(
        failures.is_empty(),
        "torture outcomes wrong:\n{}",
        failures.join("\n")
    );
}

/// RFC 3261 §8.2.2.2: the same INVITE (From tag, Call-ID, CSeq) arriving on a second branch, as
/// a forking proxy or a loop delivers it, is a merged request: one copy makes the call (200),
/// the other gets 482 Loop Detected, and only one call is counted.
#[test]
fn same_invite_on_two_branches_makes_one_call_and_482_for_the_copy() {
    let gateway = Gateway::start("");
    let before = gateway.metrics().sum(CALLS_TOTAL);
    let target = gateway.sip_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().expect("local");
    let invite = sip::request(
        "INVITE",
        target,
        local,
        &sip::pcmu_offer(local.ip(), local.port() + 2),
    );
    let copy_branch = format!("z9hG4bK{}", sip::unique("copy"));
    let copy = sip::Request {
        text: invite.text.replace(&invite.branch, &copy_branch),
        branch: copy_branch,
        ..invite.clone()
    };
    socket
        .send_to(invite.text.as_bytes(), target)
        .expect("send INVITE");
    socket
        .send_to(copy.text.as_bytes(), target)
        .expect("send the copy");

    // Final responses by branch, until both copies have one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut original, mut merged) = (None, None);
    while (original.is_none() || merged.is_none()) && Instant::now() < deadline {
        for response in sip::collect(&socket, Duration::from_millis(200), false) {
            if !response.is_final() {
                continue;
            }
            let via = response.header("Via").unwrap_or_default();
            if via.contains(&invite.branch) {
                original.get_or_insert(response);
            } else if via.contains(&copy.branch) {
                merged.get_or_insert(response);
            }
        }
    }
    let original = original.expect("final response to the first INVITE");
    let merged = merged.expect("final response to the copy");
    assert_eq!(original.status, 200, "{}", original.text);
    assert_eq!(merged.status, 482, "{}", merged.text);
    assert_eq!(merged.reason, "Loop Detected");
    assert!(
        merged
            .header("To")
            .and_then(|to| sip::tag_of(&to))
            .is_some(),
        "482 without a To tag: {}",
        merged.text
    );
    socket
        .send_to(
            sip::ack_for_failure(&copy, &merged, target, local).as_bytes(),
            target,
        )
        .expect("ACK the 482");
    assert_eq!(
        gateway.metrics().sum("voxgate_calls_active"),
        1.0,
        "one call"
    );

    let bye = sip::hang_up(&socket, &invite, &original, target, Duration::from_secs(3));
    assert_eq!(bye.map(|r| r.status), Some(200), "BYE answered");
    let total = gateway.wait_metric(CALLS_TOTAL, &[], Duration::from_secs(10), |v| v > before);
    assert_eq!(total, before + 1.0, "exactly one call counted");
}

/// Reads `stream` until voxgate closes it (the end of the stream, or a reset); what it sent.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("voxgate did not close the connection within {within:?}: {error}"),
    }
    received
}

/// TCP from peers stays within its limits: with `tcp_max_connections = 2`, a third connection
/// is closed as it is accepted and counted; connections that send no SIP message are closed
/// after `tcp_first_message_secs`; a SIPp call over TCP then comes in as usual.
#[test]
fn tcp_connections_beyond_the_limit_or_silent_are_closed_and_calls_still_come_in() {
    const OPEN: &str = "voxgate_sip_tcp_connections";
    const REFUSED: &str = "voxgate_sip_tcp_connections_refused_total";
    let mut gateway = Gateway::start_with(GatewayConfig {
        sip_extra: "tcp_max_connections = 2\ntcp_first_message_secs = 1".into(),
        ..GatewayConfig::default()
    });
    let target = gateway.sip_addr();
    let inbound = [("direction", "inbound")];

    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(target).expect("connects"))
        .collect();
    assert_eq!(
        gateway.wait_metric(OPEN, &inbound, Duration::from_secs(5), |v| v == 2.0),
        2.0,
        "both connections are open"
    );
    let mut third = TcpStream::connect(target).expect("the kernel accepts it");
    assert!(read_until_closed(&mut third, Duration::from_secs(5)).is_empty());
    assert_eq!(gateway.metrics().get(REFUSED, &[]), Some(1.0));
    let log = gateway.log();
    assert!(
        log.contains("sip.tcp_max_connections reached"),
        "the log says why: {log}"
    );

    // Silent ones are closed once tcp_first_message_secs has passed.
    for stream in &mut silent {
        assert!(read_until_closed(stream, Duration::from_secs(10)).is_empty());
    }
    assert_eq!(
        gateway.wait_metric(OPEN, &inbound, Duration::from_secs(5), |v| v == 0.0),
        0.0
    );
    assert!(gateway
        .log()
        .contains("no SIP message within sip.tcp_first_message_secs"));

    let outcome = Sipp::new("uac_basic.xml", target)
        .transport(common::sipp::Transport::TcpOne)
        .pause_ms(300)
        .run();
    outcome.assert_success();
    assert_eq!(gateway.metrics().get(REFUSED, &[]), Some(1.0));
    assert_still_serving(&mut gateway);
}

/// With `tcp_idle_secs = 1`: a peer's connection that carried one OPTIONS and went quiet is
/// closed (the peer reads its 200, then the end); a SIPp call over TCP that stays quiet for
/// three seconds keeps its connection, and the caller's BYE crosses it.
#[test]
fn idle_tcp_connections_are_closed_unless_a_call_uses_them() {
    const OPEN: &str = "voxgate_sip_tcp_connections";
    let mut gateway = Gateway::start_with(GatewayConfig {
        sip_extra: "tcp_idle_secs = 1".into(),
        ..GatewayConfig::default()
    });
    let target = gateway.sip_addr();
    let inbound = [("direction", "inbound")];

    let mut quiet = TcpStream::connect(target).expect("connects");
    let local = quiet.local_addr().expect("has an address");
    let options = sip::request("OPTIONS", target, local, "").text;
    quiet.write_all(options.as_bytes()).expect("writes");
    let asked = Instant::now();
    let received = String::from_utf8_lossy(&read_until_closed(&mut quiet, Duration::from_secs(10)))
        .into_owned();
    assert!(received.starts_with("SIP/2.0 200"), "{received}");
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "not closed before it was idle for tcp_idle_secs"
    );
    assert_eq!(
        gateway.wait_metric(OPEN, &inbound, Duration::from_secs(5), |v| v == 0.0),
        0.0
    );
    let log = gateway.log();
    assert!(
        log.contains("closing idle SIP TCP connection"),
        "the log says why: {log}"
    );

    // ACK, three quiet seconds, BYE: all on one connection, which stays up under the call.
    let outcome = Sipp::new("uac_basic.xml", target)
        .transport(common::sipp::Transport::TcpOne)
        .pause_ms(3_000)
        .run();
    outcome.assert_success();
    assert_still_serving(&mut gateway);
}

/// voxgate's `Max open files` line in /proc: (soft, hard).
fn open_file_limits(gateway: &Gateway) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gateway.pid()))
        .expect("the process's limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open-file line");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap_or_default().to_owned(),
        values.next().unwrap_or_default().to_owned(),
    )
}

/// Started with a soft open-file limit of 256 under a hard one of 8192 (as systemd starts
/// services with 1024 under 524288), voxgate raises the soft limit to the hard one. Under a
/// hard limit of 512, short of what its 20 calls and 1024 peer connections may need (64 + 5 per
/// call + 1 per connection), it says so and still serves.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_one_and_a_short_one_is_reported() {
    let roomy = Gateway::start_with(GatewayConfig {
        open_files: Some((256, 8_192)),
        ..GatewayConfig::default()
    });
    assert_eq!(open_file_limits(&roomy), ("8192".into(), "8192".into()));
    let log = roomy.log();
    assert!(
        log.contains("open-file limit raised") && log.contains("to=8192"),
        "{log}"
    );
    assert!(!log.contains("open-file limit is below"), "{log}");
    drop(roomy);

    let mut tight = Gateway::start_with(GatewayConfig {
        open_files: Some((256, 512)),
        ..GatewayConfig::default()
    });
    assert_eq!(open_file_limits(&tight), ("512".into(), "512".into()));
    let log = tight.log();
    assert!(
        log.contains("open-file limit is below") && log.contains("limit=512"),
        "{log}"
    );
    assert_still_serving(&mut tight);
}
