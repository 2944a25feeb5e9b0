//! Per-test port blocks, so tests in one binary (threads) and across binaries never share a port.
//!
//! Blocks come from 20000–32000, below Linux's ephemeral range (32768–60999), so sockets bound to
//! port 0 by SIPp or the kernel can never land inside a block. A block is probed (UDP and TCP bind
//! on 127.0.0.1 for every port) before it is handed out and never handed out twice per process.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const LAST: u32 = 32_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `len` consecutive ports starting at `base` (even), free when reserved.
#[derive(Debug, Clone, Copy)]
pub struct PortBlock {
    /// First port of the block (even).
    pub base: u16,
    /// Number of ports.
    pub len: u16,
}

impl PortBlock {
    /// Reserves a block of `len` ports (rounded up to even) that bound cleanly just now.
    pub fn reserve(len: u16) -> PortBlock {
        let len = u32::from(len + len % 2);
        let span = LAST - FIRST;
        // Different test binaries of one `cargo test` run one after another, but a developer may
        // run several at once: start each process somewhere else in the range (an even offset).
        let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
        let seed = seed - seed % 2;
        // Every reservation takes the next `len` offsets of one counter, taken modulo the range:
        // blocks of one process never overlap (until it has taken the whole range), whatever
        // their sizes. A block that would run past the end is skipped.
        for _ in 0..2_000 {
            let step = NEXT.fetch_add(len, Ordering::SeqCst);
            let offset = (seed + step) % span;
            if offset + len > span {
                continue;
            }
            let block = PortBlock {
                base: (FIRST + offset) as u16,
                len: len as u16,
            };
            if block.is_free() {
                return block;
            }
        }
        panic!("no free block of {len} ports in {FIRST}..{LAST}");
    }

    /// The `i`-th port of the block.
    pub fn port(&self, i: u16) -> u16 {
        assert!(i < self.len, "port {i} outside a block of {}", self.len);
        self.base + i
    }

    fn is_free(&self) -> bool {
        (self.base..self.base + self.len).all(|p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        })
    }
}
