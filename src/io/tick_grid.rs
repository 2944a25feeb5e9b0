//! The ptime tickers of a media thread, shared by the calls on it.
//!
//! Every call ticks on a process-wide grid (`T_0 + phase + k·ptime`). A tokio `Interval` per call
//! would put one timer per call into the wheel: each tick the time driver fires them one by one
//! and each call re-arms its own (a wheel removal and insertion under the driver's lock, and for
//! every one of them an `eventfd` write to unpark a driver that is not parked, because re-arming
//! does not update the driver's next wake-up). Here a media thread has one timer per group of
//! calls: a small driver task awaits it and wakes the group's calls, which only queues them.
//!
//! Groups: a tick does all of a call's media work at once (read RTP, pop the jitter buffer, write
//! the append, send RTP: ~25 µs for a bridged call), so with every call on one instant the last
//! call of a tick would wait for all the others (~5 ms at 200 bridged calls) and its audio, up
//! and down, would be that much later. So calls are spread over `rtp.tick_phases` (up to
//! [`MAX_PHASES`], see [`set_phases`]) phases of the
//! ptime, at most [`GROUP_CALLS`] per group until every phase is in use: one wake-up still serves
//! many calls, and no call waits for more than its group's work. Within a group the wake order
//! rotates every tick, so no call is always last.
//!
//! A group's clock is a periodic `timerfd` (`DriverClock`), not tokio's millisecond timer
//! wheel, so a tick wakes the thread at its instant rather than up to 2 ms later. A late tick is
//! caught up, and each call sees every tick once, so RTP timestamps keep pace with the clock.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;
use tokio::time::MissedTickBehavior;

/// Phases a ptime may be split into (`rtp.tick_phases` at most; never closer than
/// `MIN_PHASE_STEP`).
pub const MAX_PHASES: u32 = crate::config::TICK_PHASES_LIMIT;

thread_local! {
    /// This thread's `rtp.tick_phases` ([`set_phases`]; [`MAX_PHASES`] unless set).
    static PHASES: std::cell::Cell<u32> = const { std::cell::Cell::new(MAX_PHASES) };
}

/// Sets how many phases this (media) thread spreads its calls over, 1 to [`MAX_PHASES`]: 1
/// puts every call on one instant (the fewest wake-ups, so the least CPU; the last call of a
/// tick waits for all the others' work), more bound that wait by a group's work at the price
/// of a wake-up per group. Call before the thread's first call starts.
pub fn set_phases(phases: u32) {
    PHASES.set(phases.clamp(1, MAX_PHASES));
}

/// The closest two phases may be.
const MIN_PHASE_STEP: Duration = Duration::from_millis(2);

/// Calls a group takes before the next phase is opened (once all are open, the smallest group
/// takes the next call).
pub const GROUP_CALLS: usize = 16;

/// Which grid: the ptime and the phase, as an index (offset `phase · ptime / phases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    ptime: Duration,
    phase: u32,
}

impl Key {
    fn phases(ptime: Duration) -> u32 {
        let step = MIN_PHASE_STEP.as_nanos().max(1);
        (ptime.as_nanos() / step).clamp(1, u128::from(PHASES.get())) as u32
    }

    fn offset(self) -> Duration {
        self.ptime * self.phase / Key::phases(self.ptime)
    }
}

/// The ticks of one group on this thread.
struct Grid {
    key: Key,
    /// Ticks since the driver started.
    ticks: u64,
    /// The waker of each subscriber waiting for the next tick, by slot.
    waiters: Vec<Option<Waker>>,
    /// Slots of `waiters` no subscriber holds.
    free: Vec<usize>,
    /// Live subscribers (the driver stops at a tick that finds none).
    subscribers: usize,
}

thread_local! {
    /// This media thread's grids (one per ptime in use: usually one).
    static GRIDS: RefCell<Vec<Grid>> = const { RefCell::new(Vec::new()) };
}

/// A call's view of its thread's grid for one ptime: [`GridTicker::tick`] completes once per
/// ptime, at the grid's instants. Created and polled inside a task of a media thread's
/// (current-thread) runtime; elsewhere it falls back to an interval of its own on the same grid.
pub enum GridTicker {
    /// Subscribed to this thread's grid.
    Shared {
        /// Which grid.
        key: Key,
        /// Its waker's place in the grid.
        slot: usize,
        /// The grid's tick count this subscriber has taken.
        seen: u64,
    },
    /// Not on a current-thread runtime: the grid's driver might run on another thread.
    Own(tokio::time::Interval),
}

impl GridTicker {
    /// Subscribes to this thread's grid for `ptime`, starting its driver if it has none; the
    /// first tick is the grid's next one.
    pub fn new(ptime: Duration) -> GridTicker {
        let runtime = tokio::runtime::Handle::current();
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return GridTicker::Own(aligned_interval(ptime, Duration::ZERO));
        }
        GRIDS.with_borrow_mut(|grids| {
            let key = pick_group(grids, ptime);
            let grid = match grids.iter().position(|grid| grid.key == key) {
                Some(index) => &mut grids[index],
                None => {
                    runtime.spawn(drive(key));
                    grids.push(Grid {
                        key,
                        ticks: 0,
                        waiters: Vec::new(),
                        free: Vec::new(),
                        subscribers: 0,
                    });
                    let last = grids.len() - 1;
                    &mut grids[last]
                }
            };
            grid.subscribers += 1;
            let slot = match grid.free.pop() {
                Some(slot) => slot,
                None => {
                    grid.waiters.push(None);
                    grid.waiters.len() - 1
                }
            };
            GridTicker::Shared {
                key,
                slot,
                seen: grid.ticks,
            }
        })
    }

    /// Completes at the next tick not yet taken (at once for one already due). Cancel-safe.
    pub async fn tick(&mut self) {
        poll_fn(|cx| self.poll_tick(cx)).await
    }

    fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (key, slot, seen) = match self {
            GridTicker::Shared { key, slot, seen } => (*key, *slot, seen),
            GridTicker::Own(interval) => return interval.poll_tick(cx).map(|_| ()),
        };
        GRIDS.with_borrow_mut(|grids| {
            let Some(grid) = grids.iter_mut().find(|grid| grid.key == key) else {
                return Poll::Pending; // unreachable while subscribed
            };
            if grid.ticks > *seen {
                *seen += 1;
                return Poll::Ready(());
            }
            if let Some(waiter) = grid.waiters.get_mut(slot) {
                match waiter {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *waiter = Some(cx.waker().clone()),
                }
            }
            Poll::Pending
        })
    }
}

impl Drop for GridTicker {
    fn drop(&mut self) {
        let GridTicker::Shared { key, slot, .. } = *self else {
            return;
        };
        // try_with: a ticker dropped while the thread shuts down finds its grid gone.
        let _ = GRIDS.try_with(|grids| {
            if let Ok(mut grids) = grids.try_borrow_mut() {
                if let Some(grid) = grids.iter_mut().find(|grid| grid.key == key) {
                    if let Some(waiter) = grid.waiters.get_mut(slot) {
                        *waiter = None;
                    }
                    grid.free.push(slot);
                    grid.subscribers = grid.subscribers.saturating_sub(1);
                }
            }
        });
    }
}

/// The group for a new call of `ptime`: the smallest open group while it has room, else the
/// next phase not open yet, else the smallest group.
fn pick_group(grids: &[Grid], ptime: Duration) -> Key {
    let smallest = grids
        .iter()
        .filter(|grid| grid.key.ptime == ptime)
        .min_by_key(|grid| (grid.subscribers, grid.key.phase));
    if let Some(grid) = smallest.filter(|grid| grid.subscribers < GROUP_CALLS) {
        return grid.key;
    }
    let unopened = (0..Key::phases(ptime))
        .map(|phase| Key { ptime, phase })
        .find(|key| grids.iter().all(|grid| grid.key != *key));
    match (unopened, smallest) {
        (Some(key), _) => key,
        (None, Some(grid)) => grid.key,
        (None, None) => Key { ptime, phase: 0 },
    }
}

/// The driver of one group on this thread: counts its ticks and wakes the waiting calls, starting
/// one further along each tick; stops at the first tick that finds no subscriber.
async fn drive(key: Key) {
    let mut ticker = DriverClock::new(key.ptime, key.offset());
    loop {
        ticker.tick().await;
        let running = GRIDS.with_borrow_mut(|grids| {
            let Some(index) = grids.iter().position(|grid| grid.key == key) else {
                return false;
            };
            let grid = &mut grids[index];
            if grid.subscribers == 0 {
                grids.swap_remove(index);
                return false;
            }
            grid.ticks += 1;
            // Waking a task of this thread's runtime only queues it: nothing runs in here.
            let start = (grid.ticks % grid.waiters.len().max(1) as u64) as usize;
            let (first, second) = grid.waiters.split_at_mut(start);
            for waker in second.iter_mut().chain(first).filter_map(Option::take) {
                waker.wake();
            }
            true
        });
        if !running {
            return;
        }
    }
}

/// What a driver waits on: a periodic `timerfd` on the grid's instants, else (it could not be
/// made) a tokio interval.
///
/// Why a `timerfd`: tokio's timer wheel has 1 ms slots and its driver sleeps in `epoll_wait`
/// with a timeout rounded up to the next millisecond, so a tick fired 0–2 ms after its instant
/// (1.2 ms at the median on the benchmark machine), varying with where the instant fell in the
/// millisecond and with how the thread was last parked. Every call's audio, up and down, waited
/// that long on top of its work. A `timerfd` is a high-resolution kernel timer whose expiry
/// makes the fd readable at the instant, and one read returns every expiry since the last
/// (so a late tick is still caught up, like `MissedTickBehavior::Burst`).
enum DriverClock {
    TimerFd {
        timer: tokio::io::unix::AsyncFd<TimerFd>,
        /// Expiries read but not yet handed out.
        due: u64,
        ptime: Duration,
        offset: Duration,
    },
    Tokio(tokio::time::Interval),
}

impl DriverClock {
    fn new(ptime: Duration, offset: Duration) -> DriverClock {
        match periodic_timerfd(aligned_start(ptime, offset), ptime) {
            Ok(timer) => DriverClock::TimerFd {
                timer,
                due: 0,
                ptime,
                offset,
            },
            Err(error) => {
                tracing::debug!(%error, "no timerfd for the media ticks; using tokio's timer");
                DriverClock::Tokio(aligned_interval(ptime, offset))
            }
        }
    }

    async fn tick(&mut self) {
        let (timer, due, ptime, offset) = match self {
            DriverClock::TimerFd {
                timer,
                due,
                ptime,
                offset,
            } => (timer, due, *ptime, *offset),
            DriverClock::Tokio(interval) => {
                interval.tick().await;
                return;
            }
        };
        loop {
            if *due > 0 {
                *due -= 1;
                return;
            }
            let failed = match timer.readable().await {
                Ok(mut guard) => {
                    let mut expiries = [0u8; 8];
                    match nix::unistd::read(guard.get_inner().as_raw_fd(), &mut expiries) {
                        Ok(8) => {
                            // One read drains the timer: the next expiry makes it readable.
                            guard.clear_ready();
                            *due = u64::from_ne_bytes(expiries);
                            None
                        }
                        Ok(length) => Some(format!("timerfd read {length} bytes")),
                        Err(Errno::EAGAIN) => {
                            guard.clear_ready();
                            None
                        }
                        Err(error) => Some(error.to_string()),
                    }
                }
                Err(error) => Some(error.to_string()),
            };
            if let Some(error) = failed {
                tracing::warn!(%error, "media tick timer failed; using tokio's timer");
                let mut interval = aligned_interval(ptime, offset);
                interval.tick().await;
                *self = DriverClock::Tokio(interval);
                return;
            }
        }
    }
}

/// A non-blocking `timerfd` (CLOCK_MONOTONIC, the clock of `Instant`) expiring at `start` and
/// every `period` after, registered with the current runtime's reactor.
fn periodic_timerfd(
    start: tokio::time::Instant,
    period: Duration,
) -> std::io::Result<tokio::io::unix::AsyncFd<TimerFd>> {
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    // `start` on CLOCK_MONOTONIC: the clock's reading now plus how far ahead `start` is.
    let now = tokio::time::Instant::now();
    let monotonic = Duration::from(clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?);
    let at = monotonic + start.saturating_duration_since(now);
    timer.set(
        Expiration::IntervalDelayed(TimeSpec::from(at), TimeSpec::from(period)),
        TimerSetTimeFlags::TFD_TIMER_ABSTIME,
    )?;
    // `with_interest` is deprecated because a type could return another fd than the one
    // registered; `TimerFd` returns the one it owns until it is dropped with the `AsyncFd`. (Its
    // replacement is an `unsafe fn`, and this crate forbids `unsafe`.)
    #[allow(deprecated)]
    tokio::io::unix::AsyncFd::with_interest(timer, tokio::io::Interest::READABLE)
}

/// The first instant at or after now of a grid every `ptime` shared by every thread of the
/// process (instants `origin + offset + k·ptime`, the origin fixed by the first call).
fn aligned_start(ptime: Duration, offset: Duration) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let now = tokio::time::Instant::now();
    let origin = *ORIGIN.get_or_init(|| now) + offset;
    let step = ptime.as_nanos().max(1);
    let steps = (now.saturating_duration_since(origin))
        .as_nanos()
        .div_ceil(step);
    origin + Duration::from_nanos((steps * step).min(u128::from(u64::MAX)) as u64)
}

/// An interval every `ptime` on the process's grid ([`aligned_start`]), catching up late ticks.
fn aligned_interval(ptime: Duration, offset: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(aligned_start(ptime, offset), ptime);
    // Burst: a late tick is caught up so RTP timestamps keep pace with the clock.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    ticker
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn grids_of(ptime: Duration) -> usize {
        GRIDS.with_borrow(|grids| grids.iter().filter(|grid| grid.key.ptime == ptime).count())
    }

    /// Ticks of its grid `ticker` has not taken yet.
    fn behind(ticker: &GridTicker) -> u64 {
        let GridTicker::Shared { key, seen, .. } = ticker else {
            panic!("not on the grid");
        };
        GRIDS.with_borrow(|grids| {
            let grid = grids
                .iter()
                .find(|grid| grid.key == *key)
                .expect("its grid");
            grid.ticks - seen
        })
    }

    /// Each tick `ticker` is behind completes at once, then none does.
    fn takes_every_tick_due_without_waiting(ticker: &mut GridTicker) {
        for _ in 0..behind(ticker) {
            assert!(
                ticker.tick().now_or_never().is_some(),
                "a due tick is ready"
            );
        }
        assert_eq!(behind(ticker), 0);
        assert!(
            ticker.tick().now_or_never().is_none(),
            "no tick before the grid's next"
        );
    }

    fn phase_of(ticker: &GridTicker) -> u32 {
        match ticker {
            GridTicker::Shared { key, .. } => key.phase,
            GridTicker::Own(_) => panic!("not on the grid"),
        }
    }

    #[test]
    fn one_phase_keeps_every_call_on_the_same_instant() {
        // Its own thread: the phase setting is per media thread.
        std::thread::spawn(|| {
            set_phases(1);
            runtime().block_on(async {
                let ptime = Duration::from_millis(20);
                assert_eq!(Key::phases(ptime), 1);
                let tickers: Vec<GridTicker> = (0..GROUP_CALLS * 3)
                    .map(|_| GridTicker::new(ptime))
                    .collect();
                assert!(tickers.iter().all(|t| phase_of(t) == 0));
                assert_eq!(grids_of(ptime), 1);
            });
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn calls_fill_a_group_then_open_the_next_phase_then_balance() {
        runtime().block_on(async {
            let ptime = Duration::from_millis(20);
            assert_eq!(Key::phases(ptime), MAX_PHASES);
            let phase_step = Key { ptime, phase: 1 }.offset();
            assert_eq!(phase_step, Duration::from_millis(2));
            let mut tickers: Vec<GridTicker> =
                (0..GROUP_CALLS).map(|_| GridTicker::new(ptime)).collect();
            assert!(tickers.iter().all(|t| phase_of(t) == 0));
            tickers.push(GridTicker::new(ptime));
            assert_eq!(phase_of(tickers.last().expect("one")), 1);
            // Fill every phase, then one more: it goes to the smallest group.
            while tickers.len() < GROUP_CALLS * MAX_PHASES as usize {
                tickers.push(GridTicker::new(ptime));
            }
            assert_eq!(grids_of(ptime), MAX_PHASES as usize);
            // A call of phase 3 leaves: the next call takes its place.
            let index = tickers
                .iter()
                .position(|t| phase_of(t) == 3)
                .expect("phase 3");
            tickers.swap_remove(index);
            tickers.push(GridTicker::new(ptime));
            assert_eq!(phase_of(tickers.last().expect("one")), 3);
            tickers.push(GridTicker::new(ptime));
            assert_eq!(phase_of(tickers.last().expect("one")), 0);
            // Every group ticks.
            for ticker in &mut tickers {
                ticker.tick().await;
            }
        });
    }

    #[test]
    fn subscribers_share_one_grid_and_each_takes_every_tick_once() {
        runtime().block_on(async {
            let ptime = Duration::from_millis(5);
            let mut a = GridTicker::new(ptime);
            let mut b = GridTicker::new(ptime);
            assert!(matches!(a, GridTicker::Shared { .. }));
            assert_eq!(grids_of(ptime), 1);
            a.tick().await;
            b.tick().await;
            // A thread that ran late may find more than one tick due (the driver catches up):
            // the checks count the grid's ticks rather than assume one per ptime. The driver
            // only runs when this task awaits, so the counts hold between awaits.
            assert_eq!(behind(&a), behind(&b), "a and b took the same tick");
            takes_every_tick_due_without_waiting(&mut b);
            // b falls behind by at least four ticks and catches up without waiting, one tick
            // per call.
            for _ in 0..4 {
                a.tick().await;
            }
            assert!(behind(&b) >= 4);
            takes_every_tick_due_without_waiting(&mut b);
            // A late subscriber starts at the next tick, not at the grid's first.
            let mut c = GridTicker::new(ptime);
            assert!(c.tick().now_or_never().is_none());
            c.tick().await;
        });
    }

    #[test]
    fn the_driver_stops_without_subscribers_and_restarts_on_demand() {
        runtime().block_on(async {
            let ptime = Duration::from_millis(3);
            let mut a = GridTicker::new(ptime);
            a.tick().await;
            drop(a);
            let stopped = tokio::time::timeout(Duration::from_secs(5), async {
                while grids_of(ptime) > 0 {
                    tokio::time::sleep(ptime).await;
                }
            })
            .await;
            assert!(stopped.is_ok(), "the idle driver removed its grid");
            let mut b = GridTicker::new(ptime);
            assert_eq!(grids_of(ptime), 1);
            let ticked = tokio::time::timeout(Duration::from_secs(5), b.tick()).await;
            assert!(ticked.is_ok(), "a new driver ticks");
        });
    }

    #[test]
    fn the_driver_clock_is_a_timerfd_that_catches_up_missed_ticks() {
        runtime().block_on(async {
            let ptime = Duration::from_millis(4);
            let mut clock = DriverClock::new(ptime, Duration::ZERO);
            assert!(matches!(clock, DriverClock::TimerFd { .. }));
            clock.tick().await;
            // (A slow start may have found two expiries: only what follows counts.)
            if let DriverClock::TimerFd { due, .. } = &mut clock {
                *due = 0;
            }
            // The thread is held up for five ticks: one read of the timer (at the next turn of
            // the reactor) finds them all, and the other four are due at once.
            std::thread::sleep(ptime * 5 + Duration::from_millis(1));
            clock.tick().await;
            for _ in 0..4 {
                assert!(
                    clock.tick().now_or_never().is_some(),
                    "a missed tick is due"
                );
            }
        });
    }

    #[test]
    fn grid_instants_are_shared_by_every_phase_and_thread() {
        let ptime = Duration::from_millis(20);
        let offset = Duration::from_millis(6);
        let a = aligned_start(ptime, offset);
        let b = std::thread::spawn(move || aligned_start(ptime, offset))
            .join()
            .expect("thread");
        let apart = b.max(a) - b.min(a);
        assert_eq!(apart.as_nanos() % ptime.as_nanos(), 0, "{apart:?}");
        let zero = aligned_start(ptime, Duration::ZERO);
        let step = (a.max(zero) - a.min(zero)).as_nanos() % ptime.as_nanos();
        assert!(
            step == offset.as_nanos() || step == (ptime - offset).as_nanos(),
            "{step}"
        );
    }

    #[test]
    fn a_multi_thread_runtime_gets_its_own_interval() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut own = GridTicker::new(Duration::from_millis(4));
            assert!(matches!(own, GridTicker::Own(_)));
            own.tick().await;
        });
    }
}
