//! An authoritative DNS stub on loopback for RFC 3263 tests: a zone of A, AAAA and SRV records
//! (others through [`Record::new`]) that a test sets (and may replace mid-test), served over
//! UDP and TCP (RFC 1035 §4.2.2, the 2-byte length prefix) on one port of 127.0.0.1.
//!
//! Answers are authoritative (AA set): the records matching the question's name (compared
//! without case and with or without the trailing dot) and type; NOERROR with no answers when the
//! name has only other types (NODATA); NXDOMAIN when no record has the name. An SRV answer
//! carries the A and AAAA records of its targets in the additional section, as real servers
//! do. A UDP answer longer than the client allows (512 bytes, or its EDNS payload size) goes out
//! empty with TC set, so the client retries over TCP. Every question is logged for
//! [`DnsStub::queries`]. A malformed datagram or stream is dropped; the server never panics.
//!
//! The server is a few std threads polling a stop flag every [`POLL`]; `Drop` sets the flag and
//! joins them, so a test never leaves one running.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record as DnsRecord};

/// How often the server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// The TTL of a [`Record`] unless [`Record::with_ttl`] changes it.
const DEFAULT_TTL: u32 = 60;

/// One record of the stub's zone: an A, AAAA or SRV from the constructors below, or any
/// other type from [`Record::new`]. Names may omit the trailing dot; the TTL is 60 s unless
/// [`Record::with_ttl`] says otherwise. A name that is not a domain name panics (a test bug).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record(DnsRecord);

impl Record {
    /// A record of any type, e.g. `RData::CNAME(CNAME(name))`.
    pub fn new(name: &str, data: RData) -> Record {
        Record(DnsRecord::from_rdata(domain(name), DEFAULT_TTL, data))
    }

    /// An A record.
    pub fn a(name: &str, ip: Ipv4Addr) -> Record {
        Record::new(name, RData::A(A(ip)))
    }

    /// An AAAA record.
    pub fn aaaa(name: &str, ip: Ipv6Addr) -> Record {
        Record::new(name, RData::AAAA(AAAA(ip)))
    }

    /// An SRV record (RFC 2782), e.g. for `_sip._udp.pbx.test.`.
    pub fn srv(name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
        let srv = SRV::new(priority, weight, port, domain(target));
        Record::new(name, RData::SRV(srv))
    }

    /// The same record with a TTL of `ttl` seconds.
    pub fn with_ttl(mut self, ttl: u32) -> Record {
        self.0.ttl = ttl;
        self
    }
}

/// Two servers of `domain` for `transport` (`"udp"` or `"tcp"`) on 127.0.0.1, in this order of
/// preference: SRV `_sip._<transport>.<domain>` lists `a.<domain>` (priority 10) on
/// `ports[0]` and `b.<domain>` (priority 20) on `ports[1]`.
pub fn two_servers(domain: &str, transport: &str, ports: [u16; 2]) -> Vec<Record> {
    let service = format!("_sip._{transport}.{domain}");
    let (a, b) = (format!("a.{domain}"), format!("b.{domain}"));
    vec![
        Record::srv(&service, 10, 0, ports[0], &a),
        Record::srv(&service, 20, 0, ports[1], &b),
        Record::a(&a, Ipv4Addr::LOCALHOST),
        Record::a(&b, Ipv4Addr::LOCALHOST),
    ]
}

/// `name` as a fully qualified domain name.
fn domain(name: &str) -> Name {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&fqdn).unwrap_or_else(|e| panic!("bad DNS name {name:?} in a test: {e}"))
}

/// What the test thread and the server threads share.
struct Shared {
    zone: Mutex<Vec<DnsRecord>>,
    queries: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
}

/// A running DNS stub; `Drop` stops its threads.
pub struct DnsStub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsStub {
    /// Binds UDP and TCP on one free port of 127.0.0.1 and serves `records` until dropped.
    pub fn start(records: Vec<Record>) -> DnsStub {
        let (udp, tcp) = bind_pair();
        udp.set_read_timeout(Some(POLL))
            .expect("DNS stub UDP read timeout");
        tcp.set_nonblocking(true)
            .expect("DNS stub TCP listener nonblocking");
        let addr = udp.local_addr().expect("DNS stub local address");
        let shared = Arc::new(Shared {
            zone: Mutex::new(records.into_iter().map(|r| r.0).collect()),
            queries: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let (udp_shared, tcp_shared) = (shared.clone(), shared.clone());
        let threads = vec![
            thread::spawn(move || serve_udp(&udp, &udp_shared)),
            thread::spawn(move || serve_tcp(&tcp, &tcp_shared)),
        ];
        DnsStub {
            addr,
            shared,
            threads,
        }
    }

    /// The address to give the resolver (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the whole zone; queries answered after this see only `records`.
    pub fn set_records(&self, records: Vec<Record>) {
        *lock(&self.shared.zone) = records.into_iter().map(|r| r.0).collect();
    }

    /// `(name, type)` of every question received so far, in order, over either transport: the
    /// name in lower case with its trailing dot, the type as written in zone files (`"SRV"`).
    pub fn queries(&self) -> Vec<(String, String)> {
        lock(&self.shared.queries).clone()
    }
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket on a free port of 127.0.0.1 and a TCP listener on the same port number.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("DNS stub UDP bind");
        let addr = udp.local_addr().expect("DNS stub local address");
        // Another process may hold the port for TCP; try another port.
        if let Ok(tcp) = TcpListener::bind(addr) {
            return (udp, tcp);
        }
    }
    panic!("no port of 127.0.0.1 free for both UDP and TCP");
}

/// Locks `mutex`, also after a panic elsewhere (the data is a plain list, never half-updated).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buffer = [0u8; 4096];
    while !shared.stop.load(Ordering::Relaxed) {
        // Timeouts wake the loop to check the flag; other errors concern one datagram only.
        let Ok((len, peer)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        if let Some(reply) = answer(shared, &buffer[..len], true) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut connections = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((stream, _)) = listener.accept() else {
            thread::sleep(POLL);
            continue;
        };
        let shared = shared.clone();
        let spawned = thread::Builder::new().spawn(move || serve_connection(stream, &shared));
        connections.extend(spawned.ok());
        connections.retain(|connection: &JoinHandle<()>| !connection.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Answers length-prefixed queries on one connection until the peer closes it or errs.
fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    // Reads wake every POLL to look at the flag; a client that stops reading must not hold the
    // thread past `Drop` either.
    let timeouts = [
        stream.set_read_timeout(Some(POLL)),
        stream.set_write_timeout(Some(POLL * 20)),
    ];
    if stream.set_nonblocking(false).is_err() || timeouts.iter().any(Result::is_err) {
        return;
    }
    let (mut pending, mut chunk) = (Vec::new(), [0u8; 4096]);
    while !shared.stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(len) => pending.extend_from_slice(&chunk[..len]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while let [high, low, rest @ ..] = pending.as_slice() {
            let len = usize::from(u16::from_be_bytes([*high, *low]));
            let Some(query) = rest.get(..len) else { break };
            let reply = answer(shared, query, false);
            pending.drain(..2 + len);
            let Some(reply) = reply else { continue };
            let Ok(reply_len) = u16::try_from(reply.len()) else {
                continue;
            };
            let framed = [&reply_len.to_be_bytes()[..], &reply].concat();
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

/// The encoded answer to one query, or `None` to ignore it (malformed, or not a query).
fn answer(shared: &Shared, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    if request.message_type != MessageType::Query || request.queries.len() != 1 {
        return None;
    }
    let (name, record_type) = (question.name().clone(), question.query_type());
    let logged = (
        name.to_ascii().to_ascii_lowercase(),
        record_type.to_string(),
    );
    lock(&shared.queries).push(logged);

    let mut response = Message::response(request.id, request.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.recursion_desired;
    response.add_query(question);
    // RFC 6891 §6.1.1: a query with an OPT record gets one back.
    response.edns = request.edns.as_ref().map(|_| Edns::new());
    {
        let zone = lock(&shared.zone);
        let at_name: Vec<&DnsRecord> = (zone.iter())
            .filter(|r| r.name.eq_ignore_root(&name))
            .collect();
        if at_name.is_empty() {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        let matching = at_name
            .into_iter()
            .filter(|r| r.record_type() == record_type);
        response.add_answers(matching.cloned());
        let targets: Vec<Name> = (response.answers.iter())
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.target.clone()),
                _ => None,
            })
            .collect();
        for target in &targets {
            let addresses = zone.iter().filter(|r| {
                r.name.eq_ignore_root(target) && matches!(r.data, RData::A(_) | RData::AAAA(_))
            });
            response.add_additionals(addresses.cloned());
        }
    }
    let reply = response.to_vec().ok()?;
    if udp && reply.len() > usize::from(request.max_payload()) {
        // RFC 2181 §9: too long for this datagram; TC tells the client to ask over TCP.
        response.answers.clear();
        response.additionals.clear();
        response.metadata.truncation = true;
        return response.to_vec().ok();
    }
    Some(reply)
}
