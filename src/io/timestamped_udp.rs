//! Reading a non-blocking UDP socket without waiting on it: every queued datagram with the
//! time the kernel received it (`SO_TIMESTAMPNS`), so a media task can drain its sockets at the
//! ptime tick and still give the jitter buffer each packet's real arrival time.

use std::io;
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage,
};
use nix::sys::time::TimeSpec;

/// Asks the kernel to stamp every datagram `socket` receives with its wall-clock arrival time.
///
/// Linux stamps received packets only while some socket asks for it, and switches that on
/// lazily (a deferred static-key flip): the first packets after the first such socket opens,
/// or after the last one closed, would carry their read time. So the first call also opens one
/// socket for the life of the process that keeps stamping on between calls.
pub fn enable_timestamps(socket: &UdpSocket) -> io::Result<()> {
    static KEEPER: std::sync::OnceLock<Option<UdpSocket>> = std::sync::OnceLock::new();
    KEEPER.get_or_init(|| {
        let keeper = UdpSocket::bind("127.0.0.1:0").ok()?;
        setsockopt(keeper.as_raw_fd(), sockopt::ReceiveTimestampns, &true).ok()?;
        Some(keeper)
    });
    setsockopt(socket.as_raw_fd(), sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// One datagram taken from a socket.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    /// Bytes written into the caller's buffer (a longer datagram is cut to the buffer).
    pub length: usize,
    /// The sender (`None`: not an IP address; the datagram is to be skipped).
    pub from: Option<SocketAddr>,
    /// When the kernel received it, on the monotonic clock (never after the read).
    pub arrival: Instant,
    /// The same on the wall clock (RTCP's NTP time).
    pub wall: SystemTime,
}

/// Datagrams one [`recv_batch`] reads at most (one system call).
pub const BATCH: usize = 4;

/// Largest datagram read whole; a longer one is cut to this.
pub const DATAGRAM_MAX: usize = 2_048;

/// Receive buffers for [`recv_batch`].
pub type Buffers = [[u8; DATAGRAM_MAX]; BATCH];

/// The monotonic and wall clocks read together, to convert kernel timestamps.
#[derive(Clone, Copy)]
struct Clocks {
    instant: Instant,
    system: SystemTime,
}

impl Clocks {
    fn now() -> Clocks {
        Clocks {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// The monotonic instant of wall-clock time `wall`, at most `self.instant`: a timestamp
    /// from the future (the wall clock was stepped) reads as now.
    fn arrival(&self, wall: SystemTime) -> Instant {
        self.system
            .duration_since(wall)
            .ok()
            .and_then(|age| self.instant.checked_sub(age))
            .unwrap_or(self.instant)
    }
}

/// The datagrams queued on non-blocking `socket`, up to [`BATCH`], in one system call
/// (`recvmmsg`): datagram `i` into `buffers[i]`, its length, sender and arrival time into
/// `received` (cleared first). Fewer than [`BATCH`] means the queue is empty now. A datagram
/// without a timestamp (not enabled) gets the time of the read; one without an IP sender is
/// skipped.
pub fn recv_batch(
    socket: &UdpSocket,
    buffers: &mut Buffers,
    received: &mut Vec<Datagram>,
) -> io::Result<usize> {
    received.clear();
    // Fresh headers per call: the kernel shortens each header's address and control lengths
    // to what it wrote, so reused headers could cut the next datagram's.
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec)));
    let slices = buffers.each_mut().map(|buffer| [IoSliceMut::new(buffer)]);
    let messages = match recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter(),
        MsgFlags::MSG_DONTWAIT,
        None,
    ) {
        Ok(messages) => messages,
        Err(Errno::EAGAIN) => return Ok(0),
        Err(error) => return Err(io::Error::from(error)),
    };
    let clocks = Clocks::now();
    let mut count = 0;
    for message in messages {
        count += 1;
        let Some(from) = message.address.as_ref().and_then(socket_addr) else {
            // Keep the positions: datagram i is in buffers[i].
            received.push(Datagram {
                length: 0,
                from: None,
                arrival: clocks.instant,
                wall: clocks.system,
            });
            continue;
        };
        let stamp = message.cmsgs().find_map(|control| match control {
            ControlMessageOwned::ScmTimestampns(time) => wall_time(&time),
            _ => None,
        });
        let wall = stamp.unwrap_or(clocks.system);
        received.push(Datagram {
            length: message.bytes.min(DATAGRAM_MAX),
            from: Some(from),
            arrival: clocks.arrival(wall),
            wall,
        });
    }
    Ok(count)
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

fn wall_time(time: &TimeSpec) -> Option<SystemTime> {
    let seconds = u64::try_from(time.tv_sec()).ok()?;
    let nanos = u32::try_from(time.tv_nsec()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;

    fn receiver(timestamps: bool) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        if timestamps {
            enable_timestamps(&socket).unwrap();
        }
        socket
    }

    #[test]
    fn datagrams_carry_their_kernel_arrival_time() {
        let receiver = receiver(true);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buffers = [[0u8; DATAGRAM_MAX]; BATCH];
        let mut received = Vec::new();
        assert_eq!(
            recv_batch(&receiver, &mut buffers, &mut received).unwrap(),
            0
        );
        // The kernel turns stamping on lazily (see `enable_timestamps`): wait, boundedly, until
        // a probe comes back stamped at its arrival rather than at its read.
        let to = receiver.local_addr().unwrap();
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            sender.send_to(b"probe", to).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let read_at = Instant::now();
            recv_batch(&receiver, &mut buffers, &mut received).unwrap();
            if received
                .first()
                .is_some_and(|d| d.arrival + Duration::from_millis(15) < read_at)
            {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "the kernel never stamped arrivals"
            );
        }

        let before = Instant::now();
        let before_wall = SystemTime::now();
        let payloads: [&[u8]; 6] = [b"one", b"two", b"three", b"four", b"five", b"six"];
        for payload in payloads {
            sender.send_to(payload, to).unwrap();
        }
        let sent = Instant::now();
        // Let the datagrams age in the queue: their arrival time must be when they came
        // (before `sent`), not when they are read (after `aged`).
        let aged = sent + Duration::from_millis(200);
        while Instant::now() < aged {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut read = Vec::new();
        loop {
            let count = recv_batch(&receiver, &mut buffers, &mut received).unwrap();
            assert_eq!(count, received.len());
            for (datagram, buffer) in received.iter().zip(&buffers) {
                read.push((buffer.get(..datagram.length).unwrap().to_vec(), *datagram));
            }
            if count < BATCH {
                break;
            }
        }
        let texts: Vec<&[u8]> = read.iter().map(|(text, _)| text.as_slice()).collect();
        assert_eq!(texts, payloads);
        // The kernel stamps with the wall clock; if it was stepped (NTP, a VM's clock sync)
        // while the datagrams waited, their age cannot be told and the check means nothing.
        let mono = before.elapsed();
        let wall = SystemTime::now()
            .duration_since(before_wall)
            .unwrap_or_default();
        if mono.abs_diff(wall) > Duration::from_millis(20) {
            eprintln!(
                "wall clock stepped by {:?} during the test: skipped",
                mono.abs_diff(wall)
            );
            return;
        }
        let mut previous = None;
        for (_, datagram) in &read {
            assert_eq!(datagram.from, Some(sender.local_addr().unwrap()));
            // Read after `aged`, so a read-time stamp would be at or after it; the kernel stamp
            // is ~200 ms earlier (a wide margin: converting between the clocks on a loaded
            // machine may be off by a preemption between the two clock reads).
            assert!(
                datagram.arrival < aged,
                "arrival {:?} after sending ended: the read time, not the kernel's",
                datagram.arrival.saturating_duration_since(sent)
            );
            assert!(datagram.arrival + Duration::from_secs(1) >= before);
            let age = SystemTime::now().duration_since(datagram.wall).unwrap();
            assert!(age >= Duration::from_millis(50), "wall-clock age {age:?}");
            assert!(previous.is_none_or(|previous| previous <= datagram.wall));
            previous = Some(datagram.wall);
        }
    }

    #[test]
    fn without_timestamps_a_datagram_arrives_when_read() {
        let receiver = receiver(false);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(b"x", receiver.local_addr().unwrap())
            .unwrap();
        let mut buffers = [[0u8; DATAGRAM_MAX]; BATCH];
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let before = Instant::now();
            if recv_batch(&receiver, &mut buffers, &mut received).unwrap() > 0 {
                assert!(received.first().unwrap().arrival >= before);
                break;
            }
            assert!(Instant::now() < deadline, "datagram never arrived");
            std::thread::yield_now();
        }
        assert_eq!(received.len(), 1);
        assert_eq!(received.first().unwrap().length, 1);
    }

    #[test]
    fn a_wall_clock_stamp_from_the_future_reads_as_now() {
        let clocks = Clocks::now();
        let future = clocks.system + Duration::from_secs(3);
        assert_eq!(clocks.arrival(future), clocks.instant);
        let past = clocks.system - Duration::from_millis(30);
        assert_eq!(
            clocks.arrival(past),
            clocks.instant - Duration::from_millis(30)
        );
    }
}
