//! Media runtimes: one single-threaded tokio runtime per core, each running its share of the
//! calls' media tasks (their tick timers, and a speech leg's WebSocket, are that runtime's; the
//! RTP sockets are read at the tick, outside the reactor).
//!
//! Why not the multi-threaded runtime: a media task wakes once per ptime (its tick: packets
//! in, a packet out) and does a few microseconds of work each time. Under the work-stealing
//! scheduler a good part of each wake-up went to waking parked workers (futex) and moving
//! tasks between them; a thread that owns its calls sleeps in `epoll_wait` and only ever
//! wakes itself. Calls are dealt round-robin; the core (SIP) task stays on the main runtime,
//! so signalling latency does not queue behind media.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The media threads and a handle on each one's runtime.
pub struct MediaRuntimes {
    handles: Vec<Handle>,
    next: usize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl MediaRuntimes {
    /// Starts `threads` media threads (at least one), named `voxgate-media-N`, each spreading
    /// its calls' ticks over `phases` phases of the ptime ([`super::tick_grid::set_phases`]).
    pub fn start(threads: usize, phases: u32) -> std::io::Result<MediaRuntimes> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut joins = Vec::new();
        for index in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            joins.push(
                std::thread::Builder::new()
                    .name(format!("voxgate-media-{index}"))
                    // Dropping the runtime at the end cancels the media tasks still on it.
                    .spawn(move || {
                        super::tick_grid::set_phases(phases);
                        runtime.block_on(stop.cancelled())
                    })?,
            );
        }
        Ok(MediaRuntimes {
            handles,
            next: 0,
            stop,
            threads: joins,
        })
    }

    /// The runtime for the next call (round-robin).
    pub fn pick(&mut self) -> &Handle {
        let index = self.next % self.handles.len();
        self.next = self.next.wrapping_add(1);
        &self.handles[index]
    }
}

impl Drop for MediaRuntimes {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
