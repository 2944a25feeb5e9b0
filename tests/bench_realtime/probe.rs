//! Probe calls: calls this process places itself (raw SIP, its own RTP socket), so every packet
//! is timestamped on the clock the stand-in uses; and the drain for the SIPp calls' RTP.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::pcap;
use crate::common::realtime::frame_index;
use crate::common::rtp::{rtp_packet, RtpPacket};
use crate::common::sip;
use crate::common::PortBlock;
use crate::PTIME;

/// Every RTP packet a probe received, collected by a thread until stopped.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<RtpPacket>>>,
}

impl Receiver {
    fn start(socket: UdpSocket) -> Receiver {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut packets = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop_thread.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(packet) = RtpPacket::parse(&buf[..n], from) {
                        packets.push(packet);
                    }
                }
            }
            packets
        });
        Receiver {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<RtpPacket> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("receiver thread"))
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What voxgate sent the SIPp calls, counted by a thread that drains the socket every 5 ms
/// instead of blocking on it: a blocked reader would be woken per packet, and on loopback that
/// wake-up is charged to voxgate's `sendto` (a real NIC would not charge it at all).
pub(crate) struct Drain {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<DrainCount>>,
}

#[derive(Debug, Default)]
pub(crate) struct DrainCount {
    pub(crate) packets: usize,
    pub(crate) agent_frames: usize,
    pub(crate) streams: std::collections::BTreeSet<u32>,
}

impl Drain {
    pub(crate) fn bind(addr: SocketAddr) -> Drain {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        socket.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut count = DrainCount::default();
            let mut buf = [0u8; 2048];
            while !stop_thread.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(packet) = RtpPacket::parse(&buf[..n], from) {
                        count.packets += 1;
                        count.streams.insert(packet.ssrc);
                        count.agent_frames += usize::from(frame_index(&packet.payload).is_some());
                    }
                }
            }
            count
        });
        Drain {
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn finish(mut self) -> DrainCount {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("drain thread"))
            .unwrap_or_default()
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A call placed by this process.
pub(crate) struct Probe {
    sip: UdpSocket,
    invite: sip::Request,
    ok: sip::Response,
    /// Its RTP socket (the receiver thread reads a clone).
    pub(crate) rtp: UdpSocket,
    /// voxgate's RTP address from the answer.
    pub(crate) remote_rtp: SocketAddr,
    /// The SSRC this probe sends with.
    pub(crate) ssrc: u32,
    /// INVITE sent → 180 received.
    pub(crate) invite_to_180: Option<Duration>,
    /// INVITE sent → 200 received (the Realtime session is up then).
    pub(crate) invite_to_200: Duration,
    receiver: Option<Receiver>,
}

impl Probe {
    /// INVITE with a PCMU offer, wait for the 200 (the session is up then), ACK.
    pub(crate) fn call(gateway: SocketAddr, ssrc: u32) -> Probe {
        let sip = UdpSocket::bind("127.0.0.1:0").expect("bind SIP");
        let local = sip.local_addr().expect("local addr");
        let media = PortBlock::reserve(2);
        let rtp = UdpSocket::bind(("127.0.0.1", media.port(0))).expect("bind RTP");
        let offer = sip::pcmu_offer(local.ip(), media.port(0));
        let invite = sip::request("INVITE", gateway, local, &offer);
        let started = Instant::now();
        sip.send_to(invite.text.as_bytes(), gateway)
            .expect("send INVITE");
        let deadline = started + Duration::from_secs(15);
        let mut buf = vec![0u8; 65_536];
        let mut invite_to_180 = None;
        let ok = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "probe call: no final response to INVITE");
            sip.set_read_timeout(Some(left)).expect("timeout");
            let Ok((n, _)) = sip.recv_from(&mut buf) else {
                continue;
            };
            let at = Instant::now();
            let Some(response) = sip::Response::parse(&buf[..n]) else {
                continue;
            };
            if response.status == 180 && invite_to_180.is_none() {
                invite_to_180 = Some(at - started);
            }
            if response.is_final() {
                assert_eq!(
                    response.status, 200,
                    "probe call refused: {}",
                    response.text
                );
                break (response, at - started);
            }
        };
        let (ok, invite_to_200) = ok;
        let port: u16 = ok
            .body()
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .expect("m=audio port in the answer");
        sip.send_to(
            sip::in_dialog("ACK", 1, &invite, &ok, local).as_bytes(),
            gateway,
        )
        .expect("send ACK");
        let receiver = Receiver::start(rtp.try_clone().expect("clone RTP socket"));
        Probe {
            sip,
            invite,
            ok,
            rtp,
            remote_rtp: SocketAddr::new(gateway.ip(), port),
            ssrc,
            invite_to_180,
            invite_to_200,
            receiver: Some(receiver),
        }
    }

    /// BYE (bounded wait for its 200); returns every RTP packet received.
    pub(crate) fn hang_up(mut self, gateway: SocketAddr) -> Vec<RtpPacket> {
        let local = self.sip.local_addr().expect("local addr");
        let bye = sip::in_dialog("BYE", 2, &self.invite, &self.ok, local);
        let _ = self.sip.send_to(bye.as_bytes(), gateway);
        let _ = sip::wait_for(&self.sip, Duration::from_secs(5), |r| {
            r.is_final() && r.header("CSeq").is_some_and(|c| c.contains("BYE"))
        });
        self.receiver
            .take()
            .map(Receiver::finish)
            .unwrap_or_default()
    }
}

/// Sends numbered PCMU packets (`pcap::payload_for(i)`) to every probe every 20 ms, probes
/// staggered across the 20 ms; returns per probe the instant each packet was handed to the
/// kernel.
pub(crate) fn send_audio(
    targets: Vec<(UdpSocket, SocketAddr, u32)>,
    packets: usize,
) -> JoinHandle<Vec<Vec<Instant>>> {
    std::thread::spawn(move || {
        let stagger = PTIME / targets.len().max(1) as u32;
        let mut sent = vec![Vec::with_capacity(packets); targets.len()];
        let start = Instant::now() + Duration::from_millis(5);
        for i in 0..packets {
            for (c, (socket, to, ssrc)) in targets.iter().enumerate() {
                let due = start + PTIME * i as u32 + stagger * c as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let packet = rtp_packet(i as u16, (i as u32) * 160, *ssrc, &pcap::payload_for(i));
                sent[c].push(Instant::now());
                let _ = socket.send_to(&packet, to);
            }
        }
        sent
    })
}
