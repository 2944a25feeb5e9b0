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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// The bound SIP sockets and the open TCP connections.
pub struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    locals: Vec<SocketAddr>,
    connections: HashMap<ConnectionId, (SocketAddr, mpsc::Sender<Bytes>)>,
    by_peer: HashMap<SocketAddr, ConnectionId>,
    next_connection: Arc<AtomicU64>,
    core_tx: mpsc::Sender<CoreInput>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
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
        let next_connection = Arc::new(AtomicU64::new(1));
        let max = settings.sip.max_message_bytes;
        let mut udp = Vec::new();
        let mut locals = Vec::new();
        for address in &settings.sip.listen {
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
            tokio::spawn(accept_loop(
                listener,
                core_tx.clone(),
                next_connection.clone(),
                max,
                shutdown.clone(),
            ));
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
            max_message_bytes: max,
            shutdown,
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

    /// Records a TCP connection's writer.
    pub fn connection_opened(
        &mut self,
        id: ConnectionId,
        peer: SocketAddr,
        writer: mpsc::Sender<Bytes>,
    ) {
        self.connections.insert(id, (peer, writer));
        self.by_peer.insert(peer, id);
    }

    /// Forgets a closed TCP connection; returns its peer.
    pub fn connection_closed(&mut self, id: ConnectionId) -> Option<SocketAddr> {
        let (peer, _) = self.connections.remove(&id)?;
        if self.by_peer.get(&peer) == Some(&id) {
            self.by_peer.remove(&peer);
        }
        Some(peer)
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
        // A name not located yet (or whose answer expired): locate it, then send.
        let Target::Host(host, port) = transmit.target else {
            return;
        };
        let sockets = self.udp.clone();
        let hosts = self.hosts.clone();
        let core_tx = self.core_tx.clone();
        tokio::spawn(async move {
            let failed = SendFailure {
                core_tx,
                client: transmit.client,
            };
            let Some(address) = resolve(hosts, &host, port, Transport::Udp).await else {
                failed.report().await;
                return;
            };
            let socket = sockets
                .iter()
                .find(|s| {
                    s.local_addr()
                        .map(|l| l.is_ipv4() == address.is_ipv4())
                        .unwrap_or(false)
                })
                .or(sockets.first());
            if let Some(socket) = socket {
                if let Err(error) = socket.send_to(&transmit.bytes, address).await {
                    tracing::warn!(%address, %error, "could not send SIP over UDP");
                    failed.report().await;
                }
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
        if let Some((_, writer)) = existing.and_then(|id| self.connections.get(&id)) {
            if writer.try_send(transmit.bytes.clone()).is_ok() {
                return;
            }
            // TCP transactions do not retransmit: the request fails now rather than at
            // Timer B or F.
            tracing::warn!("SIP TCP connection is backed up or closing; message dropped");
            self.failures.extend(transmit.client);
            return;
        }
        let core_tx = self.core_tx.clone();
        let ids = self.next_connection.clone();
        let max = self.max_message_bytes;
        let shutdown = self.shutdown.clone();
        let hosts = self.hosts.clone();
        tokio::spawn(async move {
            let failed = SendFailure {
                core_tx: core_tx.clone(),
                client: transmit.client,
            };
            let address = match transmit.target {
                Target::Addr(address) => address,
                Target::Host(host, port) => match resolve(hosts, &host, port, Transport::Tcp).await
                {
                    Some(address) => address,
                    None => return failed.report().await,
                },
            };
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let id = ConnectionId(ids.fetch_add(1, Ordering::Relaxed));
                    run_connection(stream, id, core_tx, max, Some(transmit.bytes), shutdown).await;
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "could not open a SIP TCP connection");
                    failed.report().await;
                }
            }
        });
    }
}

/// Tells the core that a client transaction's message could not be sent (when it had one).
struct SendFailure {
    core_tx: mpsc::Sender<CoreInput>,
    client: Option<ClientTxId>,
}

impl SendFailure {
    async fn report(self) {
        if let Some(tx) = self.client {
            let _ = self.core_tx.send(CoreInput::SendFailed { tx }).await;
        }
    }
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

async fn accept_loop(
    listener: TcpListener,
    core_tx: mpsc::Sender<CoreInput>,
    ids: Arc<AtomicU64>,
    max: usize,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let id = ConnectionId(ids.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(run_connection(
                    stream,
                    id,
                    core_tx.clone(),
                    max,
                    None,
                    shutdown.clone(),
                ));
            }
            Err(error) => tracing::warn!(%error, "TCP accept failed"),
        }
    }
}

/// Reads framed messages from a TCP connection and writes what the core sends it.
async fn run_connection(
    stream: TcpStream,
    id: ConnectionId,
    core_tx: mpsc::Sender<CoreInput>,
    max: usize,
    first: Option<Bytes>,
    shutdown: CancellationToken,
) {
    let (Ok(remote), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (writer_tx, mut writer_rx) = mpsc::channel::<Bytes>(256);
    if core_tx
        .send(CoreInput::ConnectionOpened {
            id,
            peer: remote,
            writer: writer_tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    if let Some(first) = first {
        let _ = writer_tx.try_send(first);
    }
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = writer_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new(max);
    let mut buffer = vec![0u8; 16 * 1024];
    let flow = Flow {
        transport: Transport::Tcp,
        remote,
        local,
        connection: Some(id),
    };
    'read: loop {
        let read = tokio::select! {
            read = reader.read(&mut buffer) => read,
            _ = shutdown.cancelled() => break,
        };
        let length = match read {
            Ok(0) | Err(_) => break,
            Ok(length) => length,
        };
        framer.push(&buffer[..length]);
        while let Some(frame) = framer.poll_message() {
            match frame {
                Ok(Frame::Message(bytes)) => {
                    if core_tx.send(CoreInput::Sip { bytes, flow }).await.is_err() {
                        break 'read;
                    }
                }
                // RFC 5626 §3.5.1: answer a double-CRLF ping with a single CRLF pong.
                Ok(Frame::KeepAlive) => {
                    let _ = writer_tx.try_send(Bytes::from_static(b"\r\n"));
                }
                Err(error) => {
                    tracing::warn!(%remote, %error, "closing SIP TCP connection: bad framing");
                    break 'read;
                }
            }
        }
    }
    drop(writer_tx);
    write_task.abort();
    let _ = core_tx.send(CoreInput::ConnectionClosed { id }).await;
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
