//! SIP over UDP and TCP (RFC 3261 §18): sockets, TCP framing and connection reuse.
//!
//! Every received message goes to the core task as [`CoreInput::Sip`] with the [`Flow`] it came
//! on. The core's [`Transmit`]s come back through [`Transports::send`]: UDP from the listening
//! socket (so replies leave from the port peers know), TCP on the connection named in the
//! transmit or an open one to the same peer, else a new connection. A transmit to a host name
//! goes to the server [`HostCache`] located for it (RFC 3263). A client transaction's message
//! that cannot be sent (TCP connection refused, name not located, send error) is reported back,
//! so the transaction fails at once instead of at Timer B or F.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::locate::HostCache;
use super::CoreInput;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::sip::endpoint::{ClientTxId, ConnectionId, Flow, Target, Transmit};
use crate::sip::framing::{Frame, StreamFramer};
use crate::sip::message::Transport;

/// A message on its way out over a TCP connection, with the client transaction it belongs to
/// (reported back when the connection cannot carry it).
#[derive(Debug)]
pub struct Outgoing {
    /// The serialised message.
    pub bytes: Bytes,
    /// The client transaction, as in [`Transmit::client`].
    pub client: Option<ClientTxId>,
}

/// Where the core queues messages for one TCP connection.
pub type ConnectionWriter = mpsc::Sender<Outgoing>;

/// How many messages wait on one TCP connection at most before it counts as backed up.
const CONNECTION_QUEUE: usize = 256;

/// How long opening a TCP connection may take. The kernel alone would go on for about two
/// minutes of SYN retries; no transaction waits that long (Timer B and F are 64·T1).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(32);

/// TCP keep-alive probes on every SIP connection: a peer that vanished (power cut, NAT state
/// dropped) is noticed after about four minutes of silence, and a registration over the
/// connection is refreshed on a new one.
const KEEPALIVE_IDLE_SECS: u32 = 120;
const KEEPALIVE_INTERVAL_SECS: u32 = 30;
const KEEPALIVE_PROBES: u32 = 4;

/// The limits on TCP connections (`sip.tcp_max_connections`, `sip.tcp_first_message_secs`,
/// `sip.tcp_idle_secs`).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Most accepted connections open at once.
    pub max_accepted: usize,
    /// How long an accepted connection may stay open without a whole SIP message.
    pub first_message: Duration,
    /// How long a connection (either side's) may carry nothing before the core is asked
    /// whether to close it.
    pub idle: Duration,
}

impl TcpLimits {
    fn from_settings(settings: &Settings) -> TcpLimits {
        TcpLimits {
            max_accepted: settings.sip.tcp_max_connections,
            first_message: Duration::from_secs(u64::from(settings.sip.tcp_first_message_secs)),
            idle: Duration::from_secs(u64::from(settings.sip.tcp_idle_secs)),
        }
    }
}

/// A TCP connection the core can write to: open, or still being opened by voxgate (messages
/// queue until it is up).
struct Connection {
    peer: SocketAddr,
    writer: ConnectionWriter,
    /// `false` until the connection is up ([`CoreInput::ConnectionOpened`]).
    open: bool,
    /// Closes it.
    closer: CancellationToken,
    /// When the core last queued a message on it.
    last_queued: Option<Instant>,
}

/// The bound SIP sockets and the open TCP connections.
pub struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    locals: Vec<SocketAddr>,
    connections: HashMap<ConnectionId, Connection>,
    by_peer: HashMap<SocketAddr, ConnectionId>,
    next_connection: Arc<AtomicU64>,
    core_tx: mpsc::Sender<CoreInput>,
    max_message_bytes: usize,
    /// How long a connection may carry nothing before it is closed, when nothing uses it.
    idle: Duration,
    shutdown: CancellationToken,
    metrics: Metrics,
    /// Locates host names (set with [`Transports::locate_with`]; until then, none resolve).
    hosts: Option<Arc<HostCache>>,
    /// Client transactions whose message could not be sent here and now (see
    /// [`Transports::take_failures`]).
    failures: Vec<ClientTxId>,
}

impl Transports {
    /// Binds UDP and TCP on every `sip.listen` address and starts their receive loops.
    pub async fn bind(
        settings: &Settings,
        core_tx: mpsc::Sender<CoreInput>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Transports> {
        Transports::bind_to(
            &settings.sip.listen,
            settings.sip.max_message_bytes,
            TcpLimits::from_settings(settings),
            core_tx,
            metrics,
            shutdown,
        )
        .await
    }

    /// [`Transports::bind`] with its settings spelled out.
    pub async fn bind_to(
        listen: &[SocketAddr],
        max_message_bytes: usize,
        limits: TcpLimits,
        core_tx: mpsc::Sender<CoreInput>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Transports> {
        let next_connection = Arc::new(AtomicU64::new(1));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut udp = Vec::new();
        let mut locals = Vec::new();
        for address in listen {
            let socket = UdpSocket::bind(address)
                .await
                .with_context(|| format!("binding SIP UDP on {address}"))?;
            let local = socket
                .local_addr()
                .context("reading the UDP socket's address")?;
            let listener = TcpListener::bind(local)
                .await
                .with_context(|| format!("binding SIP TCP on {local}"))?;
            let socket = Arc::new(socket);
            tokio::spawn(udp_loop(
                socket.clone(),
                core_tx.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            tokio::spawn(
                Acceptor {
                    listener,
                    metrics: metrics.clone(),
                    core_tx: core_tx.clone(),
                    ids: next_connection.clone(),
                    max_message_bytes,
                    limits,
                    accepted: accepted.clone(),
                    shutdown: shutdown.clone(),
                }
                .run(),
            );
            udp.push(socket);
            locals.push(local);
        }
        Ok(Transports {
            udp,
            locals,
            connections: HashMap::new(),
            by_peer: HashMap::new(),
            next_connection,
            core_tx,
            max_message_bytes,
            idle: limits.idle,
            shutdown,
            metrics,
            hosts: None,
            failures: Vec::new(),
        })
    }

    /// Locates the host names of transmits with `hosts` from now on.
    pub fn locate_with(&mut self, hosts: Arc<HostCache>) {
        self.hosts = Some(hosts);
    }

    /// The server already located for a host-name target.
    fn located(&self, target: &Target, transport: Transport) -> Option<SocketAddr> {
        match target {
            Target::Addr(address) => Some(*address),
            Target::Host(host, port) => self.hosts.as_ref()?.get(host, *port, transport),
        }
    }

    /// The bound addresses.
    pub fn local_addresses(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// The local address facing `remote`: a bound address of its family (the port peers know),
    /// with a wildcard IP replaced by the source address the kernel picks toward `remote`.
    /// `None` when voxgate listens on no address of that family.
    pub fn local_toward(&self, remote: SocketAddr) -> Option<SocketAddr> {
        let bound = self
            .locals
            .iter()
            .find(|local| local.is_ipv4() == remote.is_ipv4())?;
        let ip = local_ip_toward(*bound, remote, &mut HashMap::new());
        Some(SocketAddr::new(ip, bound.port()))
    }

    /// Records a TCP connection that is up: one a peer opened, or one voxgate was opening.
    pub fn connection_opened(
        &mut self,
        id: ConnectionId,
        peer: SocketAddr,
        writer: ConnectionWriter,
        closer: CancellationToken,
    ) {
        let last_queued = self
            .connections
            .get(&id)
            .and_then(|connection| connection.last_queued);
        self.connections.insert(
            id,
            Connection {
                peer,
                writer,
                open: true,
                closer,
                last_queued,
            },
        );
        self.by_peer.insert(peer, id);
    }

    /// The peer of an open connection that has carried nothing for `sip.tcp_idle_secs`: nothing
    /// received since `quiet_since` (its link says), nothing queued by the core since either.
    /// `None` when it is not idle, or no longer known.
    pub fn idle_peer(
        &self,
        id: ConnectionId,
        quiet_since: Instant,
        now: Instant,
    ) -> Option<SocketAddr> {
        let connection = self.connections.get(&id).filter(|c| c.open)?;
        let last = connection
            .last_queued
            .map_or(quiet_since, |queued| queued.max(quiet_since));
        (now.saturating_duration_since(last) >= self.idle).then_some(connection.peer)
    }

    /// Closes a connection and forgets it at once: later messages to its peer open a new one.
    /// Anything still queued on it fails (its transactions hear of it).
    pub fn close(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.remove(&id) {
            connection.closer.cancel();
            if self.by_peer.get(&connection.peer) == Some(&id) {
                self.by_peer.remove(&connection.peer);
            }
        }
    }

    /// Forgets a TCP connection that closed, or that voxgate could not open. Returns its peer
    /// when the connection had been up (its closing may matter to a registration).
    pub fn connection_closed(&mut self, id: ConnectionId) -> Option<SocketAddr> {
        let connection = self.connections.remove(&id)?;
        if self.by_peer.get(&connection.peer) == Some(&id) {
            self.by_peer.remove(&connection.peer);
        }
        connection.open.then_some(connection.peer)
    }

    /// TCP connections known now, open or being opened.
    #[cfg(test)]
    fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The client transactions whose messages [`Transports::send`] could not send at once
    /// (for the endpoint's `handle_transport_error`). Failures found later (a TCP connection
    /// refused, a name that cannot be located) come as [`CoreInput::SendFailed`].
    pub fn take_failures(&mut self) -> Vec<ClientTxId> {
        std::mem::take(&mut self.failures)
    }

    /// Puts a message on the wire (never blocks the core task).
    pub fn send(&mut self, transmit: Transmit) {
        match transmit.transport {
            Transport::Udp => self.send_udp(transmit),
            Transport::Tcp => self.send_tcp(transmit),
        }
    }

    fn udp_socket_for(&self, target: IpAddr) -> Option<Arc<UdpSocket>> {
        let same_family = |socket: &&Arc<UdpSocket>| {
            socket
                .local_addr()
                .map(|local| local.is_ipv4() == target.is_ipv4())
                .unwrap_or(false)
        };
        self.udp
            .iter()
            .find(same_family)
            .or(self.udp.first())
            .cloned()
    }

    fn send_udp(&mut self, transmit: Transmit) {
        // Located already (an address, or a name this transaction's first message located):
        // sent at once, so retransmissions keep their order and their server.
        if let Some(address) = self.located(&transmit.target, Transport::Udp) {
            let Some(socket) = self.udp_socket_for(address.ip()) else {
                return;
            };
            match socket.try_send_to(&transmit.bytes, address) {
                Ok(_) => {}
                // The socket's buffer is full: lost like a datagram on the way (UDP
                // transactions retransmit).
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    tracing::warn!(%address, "SIP UDP socket buffer full; message dropped")
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "could not send SIP over UDP");
                    self.failures.extend(transmit.client);
                }
            }
            return;
        }
        self.locate_then_send(transmit);
    }

    /// Locates a transmit's host name (not located yet, or its answer expired), then hands it
    /// back to the core as [`CoreInput::SipLocated`], addressed to the server found, so that it
    /// is sent like any located message (over TCP: on the connection to that server, open or
    /// being opened, rather than on one of its own).
    fn locate_then_send(&mut self, transmit: Transmit) {
        let Target::Host(host, port) = transmit.target.clone() else {
            return;
        };
        let hosts = self.hosts.clone();
        let core_tx = self.core_tx.clone();
        tokio::spawn(async move {
            match resolve(hosts, &host, port, transmit.transport).await {
                Some(address) => {
                    let transmit = Transmit {
                        target: Target::Addr(address),
                        ..transmit
                    };
                    let _ = core_tx.send(CoreInput::SipLocated { transmit }).await;
                }
                None => report_failures(&core_tx, transmit.client).await,
            }
        });
    }

    fn send_tcp(&mut self, transmit: Transmit) {
        let existing = transmit
            .connection
            .filter(|id| self.connections.contains_key(id))
            .or_else(|| {
                let address = self.located(&transmit.target, Transport::Tcp)?;
                self.by_peer.get(&address).copied()
            });
        let outgoing = Outgoing {
            bytes: transmit.bytes.clone(),
            client: transmit.client,
        };
        if let Some(connection) = existing.and_then(|id| self.connections.get_mut(&id)) {
            if connection.writer.try_send(outgoing).is_ok() {
                connection.last_queued = Some(Instant::now());
                return;
            }
            // TCP transactions do not retransmit: the request fails now rather than at
            // Timer B or F.
            tracing::warn!(
                peer = %connection.peer,
                "SIP TCP connection is backed up or closing; message dropped"
            );
            self.failures.extend(transmit.client);
            return;
        }
        let Some(address) = self.located(&transmit.target, Transport::Tcp) else {
            self.locate_then_send(transmit);
            return;
        };
        // No connection to that server yet: open one. Until it is up, it is known here as
        // being opened, so the messages that follow (a CANCEL after its INVITE, a burst of
        // requests to one registrar) queue on it instead of opening connections of their own.
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let (writer, queue) = mpsc::channel(CONNECTION_QUEUE);
        if writer.try_send(outgoing).is_err() {
            return;
        }
        let link = Link {
            id,
            core_tx: self.core_tx.clone(),
            max_message_bytes: self.max_message_bytes,
            idle: self.idle,
            closing: self.shutdown.child_token(),
            metrics: self.metrics.clone(),
        };
        self.connections.insert(
            id,
            Connection {
                peer: address,
                writer: writer.clone(),
                open: false,
                closer: link.closing.clone(),
                last_queued: Some(Instant::now()),
            },
        );
        self.by_peer.insert(address, id);
        tokio::spawn(link.dial(address, writer, queue));
    }
}

/// Tells the core that a client transaction's message could not be sent (when it had one).
async fn report_failures(
    core_tx: &mpsc::Sender<CoreInput>,
    clients: impl IntoIterator<Item = ClientTxId>,
) {
    for tx in clients {
        let _ = core_tx.send(CoreInput::SendFailed { tx }).await;
    }
}

/// Fails every message still queued for a connection that cannot carry them, and refuses new
/// ones (the core's next `try_send` to it fails at once).
async fn fail_queue(core_tx: &mpsc::Sender<CoreInput>, queue: &mut mpsc::Receiver<Outgoing>) {
    queue.close();
    let mut clients = Vec::new();
    while let Ok(outgoing) = queue.try_recv() {
        clients.extend(outgoing.client);
    }
    report_failures(core_tx, clients).await;
}

/// Where a message to `host` goes: the server `hosts` locates (RFC 3263).
async fn resolve(
    hosts: Option<Arc<HostCache>>,
    host: &str,
    port: Option<u16>,
    transport: Transport,
) -> Option<SocketAddr> {
    let Some(hosts) = hosts else {
        tracing::warn!(
            host,
            "SIP destination by name before DNS is set up; dropped"
        );
        return None;
    };
    hosts.resolve(host, port, transport).await
}

async fn udp_loop(
    socket: Arc<UdpSocket>,
    core_tx: mpsc::Sender<CoreInput>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let Ok(bound) = socket.local_addr() else {
        return;
    };
    let mut local_ips: HashMap<IpAddr, IpAddr> = HashMap::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            _ = shutdown.cancelled() => return,
        };
        let (length, remote) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP port unreachable from an earlier send surfaces here on Linux: not fatal.
                tracing::debug!(%error, "UDP receive error");
                continue;
            }
        };
        let local = SocketAddr::new(local_ip_toward(bound, remote, &mut local_ips), bound.port());
        let bytes = Bytes::copy_from_slice(&buffer[..length]);
        let flow = Flow {
            transport: Transport::Udp,
            remote,
            local,
            connection: None,
        };
        if core_tx.try_send(CoreInput::Sip { bytes, flow }).is_err() {
            metrics.sip_parse_errors_total.inc();
            tracing::warn!(%remote, "SIP core overloaded; datagram dropped");
        }
    }
}

/// The local IP a peer reaches us on: the bound IP, or for a wildcard bind the source address the
/// kernel would pick toward the peer (cached per peer IP).
fn local_ip_toward(
    bound: SocketAddr,
    remote: SocketAddr,
    cache: &mut HashMap<IpAddr, IpAddr>,
) -> IpAddr {
    if !bound.ip().is_unspecified() {
        return bound.ip();
    }
    if let Some(ip) = cache.get(&remote.ip()) {
        return *ip;
    }
    let probe_bind: SocketAddr = if remote.is_ipv4() {
        (IpAddr::from([0, 0, 0, 0]), 0).into()
    } else {
        (IpAddr::from([0u16; 8]), 0).into()
    };
    let ip = std::net::UdpSocket::bind(probe_bind)
        .and_then(|probe| {
            probe.connect(remote)?;
            probe.local_addr()
        })
        .map(|local| local.ip())
        .unwrap_or(bound.ip());
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(remote.ip(), ip);
    ip
}

/// Accepts the TCP connections peers open, within [`TcpLimits`].
struct Acceptor {
    listener: TcpListener,
    metrics: Metrics,
    core_tx: mpsc::Sender<CoreInput>,
    ids: Arc<AtomicU64>,
    max_message_bytes: usize,
    limits: TcpLimits,
    /// Accepted connections open now (on every listener).
    accepted: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl Acceptor {
    async fn run(self) {
        // A flood of connections beyond the limit is logged once a minute, not once each.
        let mut refused_since_log = 0u64;
        let mut last_log: Option<tokio::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = self.shutdown.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "TCP accept failed");
                    // Out of file descriptors and the like: do not spin on the error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = AcceptedSlot::take(&self.accepted, self.limits.max_accepted) else {
                refused_since_log += 1;
                self.metrics.sip_tcp_connections_refused_total.inc();
                let now = tokio::time::Instant::now();
                if last_log.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
                    tracing::warn!(
                        %peer,
                        limit = self.limits.max_accepted,
                        refused = refused_since_log,
                        "SIP TCP connection closed at once: sip.tcp_max_connections reached"
                    );
                    refused_since_log = 0;
                    last_log = Some(now);
                }
                drop(stream);
                continue;
            };
            let link = Link {
                id: ConnectionId(self.ids.fetch_add(1, Ordering::Relaxed)),
                core_tx: self.core_tx.clone(),
                max_message_bytes: self.max_message_bytes,
                idle: self.limits.idle,
                closing: self.shutdown.child_token(),
                metrics: self.metrics.clone(),
            };
            let (writer, queue) = mpsc::channel(CONNECTION_QUEUE);
            let first_message = self.limits.first_message;
            tokio::spawn(async move {
                let _slot = slot;
                link.run(stream, writer, queue, OpenedBy::Peer { first_message })
                    .await;
            });
        }
    }
}

/// One of the `tcp_max_connections` places for accepted connections, given back when dropped.
struct AcceptedSlot(Arc<AtomicUsize>);

impl AcceptedSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<AcceptedSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| AcceptedSlot(count.clone()))
    }
}

impl Drop for AcceptedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Who opened a TCP connection.
enum OpenedBy {
    /// A peer: it must deliver a whole SIP message within `first_message`.
    Peer { first_message: Duration },
    /// voxgate.
    Voxgate,
}

/// One SIP TCP connection's tasks.
struct Link {
    id: ConnectionId,
    core_tx: mpsc::Sender<CoreInput>,
    max_message_bytes: usize,
    /// After this long without receiving anything, the core is asked whether to close it
    /// ([`CoreInput::ConnectionIdle`]).
    idle: Duration,
    /// Cancelled to close the connection: by the core, or at shutdown (a child of it).
    closing: CancellationToken,
    metrics: Metrics,
}

impl Link {
    /// Opens a connection the core has already queued messages for; when it cannot be opened,
    /// those messages fail and the core forgets the connection.
    async fn dial(
        self,
        address: SocketAddr,
        writer: ConnectionWriter,
        queue: mpsc::Receiver<Outgoing>,
    ) {
        let connected = tokio::select! {
            connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)) => connected,
            _ = self.closing.cancelled() => return,
        };
        let error = match connected {
            Ok(Ok(stream)) => return self.run(stream, writer, queue, OpenedBy::Voxgate).await,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        };
        tracing::warn!(%address, %error, "could not open a SIP TCP connection");
        drop(writer);
        self.give_up(queue).await;
    }

    /// Ends a connection that never came up: what is queued on it fails, and the core forgets
    /// it.
    async fn give_up(self, mut queue: mpsc::Receiver<Outgoing>) {
        fail_queue(&self.core_tx, &mut queue).await;
        let _ = self
            .core_tx
            .send(CoreInput::ConnectionClosed { id: self.id })
            .await;
    }

    /// Reads framed messages from a connection and writes what the core queues for it, until
    /// either side closes it.
    async fn run(
        self,
        stream: TcpStream,
        writer: ConnectionWriter,
        queue: mpsc::Receiver<Outgoing>,
        opened: OpenedBy,
    ) {
        let (Ok(remote), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            // Reset as soon as it was up.
            return self.give_up(queue).await;
        };
        let (direction, first_message) = match opened {
            OpenedBy::Peer { first_message } => ("inbound", Some(first_message)),
            OpenedBy::Voxgate => ("outbound", None),
        };
        let open = self
            .metrics
            .sip_tcp_connections
            .with_label_values(&[direction]);
        open.inc();
        let counted = scopeguard(move || open.dec());
        let _ = stream.set_nodelay(true);
        if let Err(error) = keep_alive(&stream) {
            tracing::debug!(%remote, %error, "TCP keep-alive not set");
        }
        let (mut reader, sink) = stream.into_split();
        if self
            .core_tx
            .send(CoreInput::ConnectionOpened {
                id: self.id,
                peer: remote,
                writer: writer.clone(),
                closer: self.closing.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        // A write that fails ends the connection: the messages behind it fail with it.
        let closing = self.closing.clone();
        let write_task = tokio::spawn(write_loop(
            sink,
            queue,
            self.core_tx.clone(),
            closing.clone(),
        ));
        let mut framer = StreamFramer::new(self.max_message_bytes);
        let mut buffer = vec![0u8; 16 * 1024];
        let flow = Flow {
            transport: Transport::Tcp,
            remote,
            local,
            connection: Some(self.id),
        };
        // Until a peer's connection has delivered a SIP message, it must do so by `deadline`.
        let mut awaiting_first = first_message.is_some();
        let deadline = tokio::time::sleep(first_message.unwrap_or_default());
        tokio::pin!(deadline);
        // Nothing received since `quiet_since`: at `idle_check` the core is asked whether to
        // close it (then again every quarter of the idle time while it stays quiet; the core
        // may have sent on it, or something may still use it).
        let mut quiet_since = tokio::time::Instant::now();
        let idle_check = tokio::time::sleep_until(quiet_since + self.idle);
        tokio::pin!(idle_check);
        'read: loop {
            let read = tokio::select! {
                read = reader.read(&mut buffer) => read,
                _ = closing.cancelled() => break,
                _ = &mut idle_check => {
                    let now = tokio::time::Instant::now();
                    if now >= quiet_since + self.idle {
                        let asked = self.core_tx.send(CoreInput::ConnectionIdle {
                            id: self.id,
                            quiet_since: quiet_since.into_std(),
                        });
                        if asked.await.is_err() {
                            break;
                        }
                        let again = (self.idle / 4).max(Duration::from_millis(100));
                        idle_check.as_mut().reset(now + again);
                    } else {
                        idle_check.as_mut().reset(quiet_since + self.idle);
                    }
                    continue;
                }
                _ = &mut deadline, if awaiting_first => {
                    tracing::info!(
                        %remote,
                        "closing SIP TCP connection: no SIP message within sip.tcp_first_message_secs"
                    );
                    break;
                }
            };
            let length = match read {
                Ok(0) => break,
                Ok(length) => {
                    quiet_since = tokio::time::Instant::now();
                    length
                }
                Err(error) => {
                    tracing::info!(%remote, %error, "SIP TCP connection lost");
                    break;
                }
            };
            framer.push(&buffer[..length]);
            while let Some(frame) = framer.poll_message() {
                match frame {
                    Ok(Frame::Message(bytes)) => {
                        awaiting_first = false;
                        if self
                            .core_tx
                            .send(CoreInput::Sip { bytes, flow })
                            .await
                            .is_err()
                        {
                            break 'read;
                        }
                    }
                    // RFC 5626 §3.5.1: answer a double-CRLF ping with a single CRLF pong.
                    Ok(Frame::KeepAlive) => {
                        let _ = writer.try_send(Outgoing {
                            bytes: Bytes::from_static(b"\r\n"),
                            client: None,
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%remote, %error, "closing SIP TCP connection: bad framing");
                        break 'read;
                    }
                }
            }
        }
        drop(writer);
        closing.cancel();
        let _ = write_task.await;
        drop(counted);
        let _ = self
            .core_tx
            .send(CoreInput::ConnectionClosed { id: self.id })
            .await;
    }
}

/// Writes a connection's queued messages in order until the queue ends, a write fails or
/// `closing` is cancelled; then fails what is left.
async fn write_loop(
    mut sink: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    core_tx: mpsc::Sender<CoreInput>,
    closing: CancellationToken,
) {
    loop {
        let outgoing = tokio::select! {
            outgoing = queue.recv() => outgoing,
            _ = closing.cancelled() => break,
        };
        let Some(outgoing) = outgoing else { break };
        let written = tokio::select! {
            written = sink.write_all(&outgoing.bytes) => written,
            _ = closing.cancelled() => Err(std::io::ErrorKind::ConnectionAborted.into()),
        };
        if let Err(error) = written {
            if !closing.is_cancelled() {
                tracing::info!(%error, "SIP TCP write failed; closing the connection");
            }
            report_failures(&core_tx, outgoing.client).await;
            break;
        }
    }
    closing.cancel();
    fail_queue(&core_tx, &mut queue).await;
}

/// Runs `on_drop` when dropped (however the connection's task ends).
fn scopeguard(on_drop: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(on_drop) = self.0.take() {
                on_drop();
            }
        }
    }
    Guard(Some(on_drop))
}

/// Turns on TCP keep-alive probes (see [`KEEPALIVE_IDLE_SECS`]).
fn keep_alive(stream: &TcpStream) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    setsockopt(fd, sockopt::KeepAlive, &true)?;
    setsockopt(fd, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS)?;
    setsockopt(fd, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS)?;
    setsockopt(fd, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
    Ok(())
}

/// The method of a SIP message for metrics: the request method, or a response's CSeq method.
pub fn method_of(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(2_048)];
    let text = String::from_utf8_lossy(head);
    let first = text.lines().next()?;
    if !first.starts_with("SIP/2.0") {
        return first.split(' ').next().map(str::to_owned);
    }
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("CSeq") {
            value.split_whitespace().nth(1).map(str::to_owned)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    /// Long enough for anything on loopback; reached only when the behaviour under test is
    /// broken.
    const BOUND: Duration = Duration::from_secs(10);

    const OPTIONS: &[u8] = b"OPTIONS sip:voxgate@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    async fn transports(limits: TcpLimits) -> (Transports, mpsc::Receiver<CoreInput>, Metrics) {
        let (core_tx, core_rx) = mpsc::channel(64);
        let listen = ["127.0.0.1:0".parse().expect("an address")];
        let metrics = Metrics::new();
        let transports = Transports::bind_to(
            &listen,
            65_535,
            limits,
            core_tx,
            metrics.clone(),
            CancellationToken::new(),
        )
        .await
        .expect("binds on loopback");
        (transports, core_rx, metrics)
    }

    fn open_connections(metrics: &Metrics, direction: &str) -> i64 {
        metrics
            .sip_tcp_connections
            .with_label_values(&[direction])
            .get()
    }

    fn lenient() -> TcpLimits {
        TcpLimits {
            max_accepted: 16,
            first_message: BOUND,
            idle: BOUND,
        }
    }

    fn tcp_to(address: SocketAddr, bytes: &'static [u8], client: Option<u64>) -> Transmit {
        Transmit {
            transport: Transport::Tcp,
            target: Target::Addr(address),
            connection: None,
            bytes: Bytes::from_static(bytes),
            client: client.map(ClientTxId),
        }
    }

    async fn next_input(core: &mut mpsc::Receiver<CoreInput>) -> CoreInput {
        timeout(BOUND, core.recv())
            .await
            .expect("the core hears something in time")
            .expect("the transports are alive")
    }

    /// The core's next input, which must be a connection coming up; records it as the core
    /// does. Its number and peer.
    async fn opened(
        transports: &mut Transports,
        core: &mut mpsc::Receiver<CoreInput>,
    ) -> (ConnectionId, SocketAddr) {
        let CoreInput::ConnectionOpened {
            id,
            peer,
            writer,
            closer,
        } = next_input(core).await
        else {
            panic!("the core is told the connection is up");
        };
        transports.connection_opened(id, peer, writer, closer);
        (id, peer)
    }

    /// Reads from `stream` until `expected` bytes have arrived.
    async fn read_exactly(stream: &mut TcpStream, expected: usize) -> Vec<u8> {
        let mut received = vec![0u8; expected];
        timeout(BOUND, stream.read_exact(&mut received))
            .await
            .expect("the bytes arrive in time")
            .expect("the connection stays up");
        received
    }

    /// A peer's listening socket on loopback, and its address.
    async fn server() -> (TcpListener, SocketAddr) {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = server.local_addr().expect("has an address");
        (server, address)
    }

    /// The connection voxgate opens to `server`.
    async fn accept(server: &TcpListener) -> TcpStream {
        let (stream, _) = timeout(BOUND, server.accept())
            .await
            .expect("voxgate connects in time")
            .expect("accepts");
        stream
    }

    /// A loopback port where nothing listens (connections to it are refused).
    fn refusing_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("has an address")
    }

    #[tokio::test]
    async fn messages_to_a_server_whose_connection_is_still_opening_queue_on_it() {
        let (mut transports, mut core, metrics) = transports(lenient()).await;
        let (server, address) = server().await;

        // An INVITE and its CANCEL, sent before the connection can be up.
        transports.send(tcp_to(address, b"INVITE;", Some(1)));
        transports.send(tcp_to(address, b"CANCEL;", Some(2)));
        assert_eq!(transports.connection_count(), 1, "one connection for both");
        assert!(transports.take_failures().is_empty());

        let mut stream = accept(&server).await;
        assert_eq!(read_exactly(&mut stream, 14).await, b"INVITE;CANCEL;");
        let (_, peer) = opened(&mut transports, &mut core).await;
        assert_eq!(peer, address);
        assert_eq!(open_connections(&metrics, "outbound"), 1);

        // Once up, later messages use it too.
        transports.send(tcp_to(address, b"ACK;", None));
        assert_eq!(transports.connection_count(), 1);
        assert_eq!(read_exactly(&mut stream, 4).await, b"ACK;");
    }

    #[tokio::test]
    async fn every_message_queued_on_a_refused_connection_fails() {
        let (mut transports, mut core, _) = transports(lenient()).await;
        let address = refusing_port();

        transports.send(tcp_to(address, b"REGISTER;", Some(7)));
        transports.send(tcp_to(address, b"OPTIONS;", Some(8)));
        transports.send(tcp_to(address, b"SIP/2.0 200 OK;", None));

        let mut failed = Vec::new();
        let id = loop {
            match next_input(&mut core).await {
                CoreInput::SendFailed { tx } => failed.push(tx),
                CoreInput::ConnectionClosed { id } => break id,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(failed, [ClientTxId(7), ClientTxId(8)]);
        assert_eq!(
            transports.connection_closed(id),
            None,
            "a connection that never came up is no closed flow for a registration"
        );
        assert_eq!(transports.connection_count(), 0);

        // The next message tries again.
        transports.send(tcp_to(address, b"REGISTER;", Some(9)));
        assert_eq!(transports.connection_count(), 1);
        assert!(matches!(
            next_input(&mut core).await,
            CoreInput::SendFailed { tx: ClientTxId(9) }
        ));
    }

    #[tokio::test]
    async fn a_message_to_a_connection_that_is_gone_fails_at_once() {
        let (mut transports, mut core, _) = transports(lenient()).await;
        let (server, address) = server().await;
        transports.send(tcp_to(address, b"OPTIONS;", Some(1)));
        let stream = accept(&server).await;
        let (id, _) = opened(&mut transports, &mut core).await;

        // The server closes; until the core hears of it, a message to it fails at once.
        drop(stream);
        let CoreInput::ConnectionClosed { id: closed } = next_input(&mut core).await else {
            panic!("the core is told the connection closed");
        };
        assert_eq!(closed, id);
        transports.send(tcp_to(address, b"BYE;", Some(2)));
        assert_eq!(transports.take_failures(), [ClientTxId(2)]);
        assert_eq!(transports.connection_closed(id), Some(address));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_as_they_are_accepted() {
        let limits = TcpLimits {
            max_accepted: 2,
            first_message: BOUND,
            idle: BOUND,
        };
        let (transports, mut core, metrics) = transports(limits).await;
        let listening = transports.local_addresses()[0];
        // Each client's reading half waits for the end of its stream and reports its index.
        let (ended_tx, mut ended) = mpsc::channel(3);
        let mut writers = Vec::new();
        for index in 0..3 {
            let client = TcpStream::connect(listening).await.expect("connects");
            let (mut read, mut write) = client.into_split();
            write.write_all(OPTIONS).await.expect("writes");
            writers.push(write);
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut rest = Vec::new();
                let _ = read.read_to_end(&mut rest).await;
                let _ = ended_tx.send((index, rest)).await;
            });
        }

        // Two are taken: their messages reach the core.
        let (mut opened, mut messages) = (Vec::new(), 0);
        while opened.len() < 2 || messages < 2 {
            match next_input(&mut core).await {
                CoreInput::ConnectionOpened { id, .. } => opened.push(id),
                CoreInput::Sip { flow, .. } => {
                    assert!(opened.contains(&flow.connection.expect("over TCP")));
                    messages += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The third is closed as it is accepted, with nothing sent to it.
        let (closed, rest) = timeout(BOUND, ended.recv())
            .await
            .expect("one connection is closed in time")
            .expect("the readers are alive");
        assert!(rest.is_empty());
        assert_eq!(metrics.sip_tcp_connections_refused_total.get(), 1);
        assert_eq!(open_connections(&metrics, "inbound"), 2);

        // A slot is given back when an accepted connection closes.
        let accepted = (0..3).find(|index| *index != closed).expect("one of three");
        drop(writers.remove(accepted));
        assert!(matches!(
            next_input(&mut core).await,
            CoreInput::ConnectionClosed { .. }
        ));
        assert_eq!(open_connections(&metrics, "inbound"), 1);
        let mut late = TcpStream::connect(listening).await.expect("connects");
        late.write_all(OPTIONS).await.expect("writes");
        assert!(matches!(
            next_input(&mut core).await,
            CoreInput::ConnectionOpened { .. }
        ));
        assert!(matches!(next_input(&mut core).await, CoreInput::Sip { .. }));
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_message_in_time_is_closed() {
        let limits = TcpLimits {
            max_accepted: 16,
            first_message: Duration::from_millis(300),
            idle: BOUND,
        };
        let (transports, mut core, metrics) = transports(limits).await;
        let listening = transports.local_addresses()[0];
        let mut talker = TcpStream::connect(listening).await.expect("connects");
        talker.write_all(OPTIONS).await.expect("writes");
        while !matches!(next_input(&mut core).await, CoreInput::Sip { .. }) {}
        // Keep-alive pings are answered but are no SIP message.
        let mut silent = TcpStream::connect(listening).await.expect("connects");
        silent.write_all(b"\r\n\r\n").await.expect("writes");

        let mut pong = Vec::new();
        timeout(BOUND, silent.read_to_end(&mut pong))
            .await
            .expect("the silent connection is closed in time")
            .expect("reads to the end");
        assert_eq!(pong, b"\r\n", "the ping was answered before the close");
        assert_eq!(metrics.sip_tcp_connections_refused_total.get(), 0);

        // The one that spoke in time stays up past the limit.
        talker.write_all(OPTIONS).await.expect("writes");
        while !matches!(next_input(&mut core).await, CoreInput::Sip { .. }) {}
    }

    #[tokio::test]
    async fn a_quiet_connection_is_reported_idle_and_closed_when_the_core_decides() {
        let idle = Duration::from_millis(300);
        let limits = TcpLimits { idle, ..lenient() };
        let (mut transports, mut core, metrics) = transports(limits).await;
        let listening = transports.local_addresses()[0];
        let mut peer = TcpStream::connect(listening).await.expect("connects");
        peer.write_all(OPTIONS).await.expect("writes");
        let (id, _) = opened(&mut transports, &mut core).await;
        assert!(matches!(next_input(&mut core).await, CoreInput::Sip { .. }));

        // Nothing more arrives: the link asks the core.
        let CoreInput::ConnectionIdle {
            id: quiet,
            quiet_since,
        } = next_input(&mut core).await
        else {
            panic!("the quiet connection is reported idle");
        };
        assert_eq!(quiet, id);
        let now = Instant::now();
        assert!(now.duration_since(quiet_since) >= idle);
        let address = peer.local_addr().expect("has an address");
        assert_eq!(transports.idle_peer(id, quiet_since, now), Some(address));

        // The core closes it: the peer sees the end, later messages to it open a new one.
        transports.close(id);
        let mut rest = Vec::new();
        timeout(BOUND, peer.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("reads to the end");
        assert!(rest.is_empty());
        let CoreInput::ConnectionClosed { id: closed } = next_input(&mut core).await else {
            panic!("the link reports the close");
        };
        assert_eq!(closed, id);
        assert_eq!(
            transports.connection_closed(id),
            None,
            "already forgotten: no registration is told"
        );
        assert_eq!(open_connections(&metrics, "inbound"), 0);
    }

    #[tokio::test]
    async fn sending_on_a_connection_or_receiving_pings_keeps_it_from_being_idle() {
        let idle = Duration::from_millis(600);
        let limits = TcpLimits { idle, ..lenient() };
        let (mut transports, mut core, _) = transports(limits).await;
        let (server, address) = server().await;
        transports.send(tcp_to(address, b"OPTIONS;", Some(1)));
        let mut stream = accept(&server).await;
        let (id, _) = opened(&mut transports, &mut core).await;
        let since = Instant::now();
        assert_eq!(
            transports.idle_peer(id, since, since + idle / 2),
            None,
            "queued on just now"
        );

        // What the core queued counts as much as what arrived.
        let later = since + idle * 2;
        assert_eq!(transports.idle_peer(id, since, later), Some(address));
        transports.send(tcp_to(address, b"BYE;", Some(2)));
        let queued = Instant::now();
        assert_eq!(transports.idle_peer(id, since, queued + idle / 2), None);
        assert_eq!(
            transports.idle_peer(id, since, queued + idle),
            Some(address)
        );
        assert_eq!(read_exactly(&mut stream, 12).await, b"OPTIONS;BYE;");

        // Keep-alive pings every 100 ms for three idle periods: never reported idle.
        for _ in 0..18 {
            stream.write_all(b"\r\n\r\n").await.expect("pings");
            assert_eq!(read_exactly(&mut stream, 2).await, b"\r\n");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while let Ok(input) = core.try_recv() {
            assert!(
                !matches!(input, CoreInput::ConnectionIdle { .. }),
                "a pinged connection is not idle"
            );
        }
        // Silent again, it is reported.
        assert!(matches!(
            next_input(&mut core).await,
            CoreInput::ConnectionIdle { id: quiet, .. } if quiet == id
        ));
    }

    #[test]
    fn method_of_reads_request_line_and_response_cseq() {
        assert_eq!(
            method_of(b"OPTIONS sip:a SIP/2.0\r\n\r\n").as_deref(),
            Some("OPTIONS")
        );
        let response = b"SIP/2.0 200 OK\r\nVia: x\r\nCSeq: 7 INVITE\r\n\r\n";
        assert_eq!(method_of(response).as_deref(), Some("INVITE"));
        assert_eq!(method_of(b"SIP/2.0 200 OK\r\n\r\n"), None);
    }
}
