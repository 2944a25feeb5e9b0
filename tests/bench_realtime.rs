//! Benchmarks of the OpenAI Realtime bridge (issue #3). Not tests: every function here is
//! `#[ignore]`d, asserts nothing about speed, and prints figures for BENCHMARKS.md. Run them
//! with `scripts/bench_realtime.sh` or, one at a time (they measure the machine),
//!
//! ```sh
//! cargo test --release --test bench_realtime -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Set-up: the release voxgate (`--release` makes `CARGO_BIN_EXE_voxgate` the release binary),
//! the Realtime stand-in (`tests/common/realtime`, in this process) and two kinds of callers:
//! - *probes*: calls placed by this process (raw SIP + its own RTP socket), so every RTP packet
//!   it sends and receives is timestamped on the same monotonic clock the stand-in stamps the
//!   events it receives and sends with;
//! - *load*: SIPp for the N concurrent calls of the CPU/RSS figures: `uac_echo_stream.xml`
//!   (`rtp_stream`, one UDP socket) by default, `uac_echo.xml` (PCMU from a pcap, one raw
//!   socket per call) with `VOXGATE_BENCH_MEDIA=pcap` (see [`LoadMedia`]).
//!
//! Latency method (`realtime_latency`, and the probes of `realtime_load`). voxgate handles each
//! call on a 20 ms tick: pop the jitter buffer, write the `input_audio_buffer.append`, send the
//! next playout frame as RTP. Its ticks are a fixed grid `T_k = T_0 + k·20 ms` (tokio interval,
//! missed ticks caught up), so everything a call outputs lies on that grid plus what voxgate,
//! the scheduler and loopback add. Per call and direction the grid is recovered from the
//! outputs themselves: `T_0` is the lower envelope `min_k (t_k − k·20 ms)` of the arrival times
//! `t_k` of the k-th append at the stand-in (up) or of the RTP packet with timestamp
//! `ts_0 + 160·k` at the caller (down). Then
//! - *added latency* of output k is `t_k − T_k`: the excess over the best tick of the call
//!   (timer lateness, queueing behind other calls' work, processing, loopback jitter);
//! - *deliberate delay* up is `T_k − sent_i` for the caller packet i found in append k (the
//!   payloads are numbered): the jitter buffer's hold plus the wait for the tick;
//! - *deliberate delay* down is `T_k − sent` for the first frame of each agent reply, where
//!   `sent` is when the stand-in sent the delta holding it: the wait for the next tick;
//!   a first frame that waited more than a tick plus 1 ms missed a tick it could have made
//!   (counted: voxgate too slow to queue a delta).
//!
//! The envelope itself sits a constant `c` after the true grid: the best case of timer wake-up,
//! processing and loopback. `c` is not counted as added latency; it is bounded by the criterion
//! figures (`benches/realtime.rs`, microseconds) plus one loopback hop (measured here as half
//! the minimum UDP round trip) plus tokio's timer rounding (the wheel has 1 ms slots, constant
//! per call). Loopback and scheduling noise of the 2-core machine are part of every figure.
//!
//! Layout: this file (behaviours, the runs, the tables), `bench_realtime/probe.rs` (probe calls,
//! the SIPp RTP drain), `bench_realtime/figures.rs` (the grid method, statistics),
//! `bench_realtime/system.rs` (CPU and memory from `/proc`).
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "bench_realtime/figures.rs"]
mod figures;
#[path = "bench_realtime/probe.rs"]
mod probe;
#[path = "bench_realtime/system.rs"]
mod system;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::pcap;
use common::realtime::{
    frame_index, tagged_audio, Action, Behaviour, RealtimeStandIn, Reply, SessionRecord, When,
};
use common::rtp::RtpPacket;
use common::{Gateway, GatewayConfig, Sipp};
use figures::{loopback_hop, micros, probe_figures, tokio_timer_lateness, ProbeFigures, Summary};
use probe::{send_audio, Drain, Probe};
use system::{all_processes_ticks, children_named, clock_ticks_per_second, cpu_ticks, rss_kib};

/// voxgate's packetisation time (the SDP offers no other).
const PTIME: Duration = Duration::from_millis(20);
/// [`PTIME`] in microseconds.
const PTIME_US: f64 = 20_000.0;
/// Distinct reply tags (1..=250): replies of one call are told apart by their audio.
const TAGS: usize = 250;

/// One benchmark at a time: they measure the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tag_of_cycle(cycle: usize) -> u8 {
    (cycle % TAGS + 1) as u8
}

/// The model answers every `turn_ms` of caller audio with `reply_frames` of tagged audio (so
/// audio flows both ways all the time; the agent speaks `reply_frames·20 / turn_ms` of it).
/// Steps fire when an append arrives, right after one of voxgate's ticks; the reply starts a
/// further 0–20 ms later (2.713 ms more per cycle) so its first delta meets every phase of the
/// tick.
fn talk_behaviour(cycles: usize, turn_ms: u64, reply_frames: usize) -> Behaviour {
    (0..cycles).fold(Behaviour::new(), |behaviour, cycle| {
        behaviour
            .step(When::caller_audio_ms(turn_ms), [Action::speech_stopped()])
            .step(
                When::Delay(phase(cycle)),
                [Action::respond(Reply::audio(tagged_audio(
                    reply_frames,
                    tag_of_cycle(cycle),
                )))],
            )
    })
}

/// 0–20 ms, moving by 2.713 ms per cycle.
fn phase(cycle: usize) -> Duration {
    Duration::from_micros((cycle as u64 * 2_713) % 20_000)
}

/// Barge-in cycles: after 400 ms of caller audio the model starts a 3 s reply (streamed 4× real
/// time, as by default), and 600–620 ms later the caller "speaks" (`speech_started`). The
/// offset moves by 2.713 ms per cycle so the barge-ins fall at every phase of voxgate's tick.
fn barge_in_behaviour(cycles: usize) -> Behaviour {
    (0..cycles).fold(Behaviour::new(), |behaviour, cycle| {
        let offset = Duration::from_millis(600) + phase(cycle);
        behaviour
            .step(
                When::caller_audio_ms(400),
                [
                    Action::speech_stopped(),
                    Action::respond(Reply::audio(tagged_audio(150, tag_of_cycle(cycle)))),
                ],
            )
            .step(When::Delay(offset), [Action::SpeechStarted])
    })
}

/// voxgate (the binary of this profile) with one OpenAI agent pointed at the stand-in, sized for
/// `calls`, logging warnings only.
fn gateway(standin: &RealtimeStandIn, calls: usize) -> Gateway {
    let extra = format!(
        "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
         voice = \"marin\"\ninstructions = \"You are a benchmark agent.\"\n\n\
         [realtime]\nurl = \"{}\"\nconnect_timeout_ms = 10000\n",
        standin.url()
    );
    Gateway::start_with(GatewayConfig {
        extra,
        route_agent: "assistant".into(),
        max_concurrent: calls + 10,
        rtp_ports: (2 * calls + 40) as u16,
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-bench".into()),
            ("RUST_LOG".into(), "warn".into()),
        ],
        ..GatewayConfig::default()
    })
}

struct Run {
    /// SIPp calls (0: probes only).
    calls: usize,
    /// Probe calls.
    probes: usize,
    /// Seconds of audio per SIPp call (probes run as long as the SIPp calls plus ramp-up).
    secs: u64,
    /// SIPp call rate (calls per second).
    rate: usize,
    /// How SIPp sends the load calls' RTP.
    media: LoadMedia,
    behaviour: Behaviour,
}

/// How SIPp plays the load calls' caller audio (`VOXGATE_BENCH_MEDIA`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LoadMedia {
    /// `rtp_stream` (`uac_echo_stream.xml`, the default): every call's RTP from one ordinary
    /// UDP socket, as a PBX sends it; voxgate's RTP to the calls lands there unread.
    Stream,
    /// `play_pcap_audio` (`uac_echo.xml`): one raw socket per call. The kernel offers every
    /// loopback UDP packet to every raw socket, so each RTP packet voxgate sends costs it a walk
    /// over N raw sockets (`raw_local_deliver`, ~6 % of voxgate's CPU at 200 calls): a cost of
    /// the test caller, growing with N², that a PBX does not impose. voxgate's RTP to the calls
    /// is received and checked by a sink here.
    Pcap,
}

impl LoadMedia {
    fn from_env() -> LoadMedia {
        match std::env::var("VOXGATE_BENCH_MEDIA").as_deref() {
            Ok("pcap") => LoadMedia::Pcap,
            Ok("stream") | Err(_) => LoadMedia::Stream,
            Ok(other) => panic!("VOXGATE_BENCH_MEDIA must be stream or pcap, not {other:?}"),
        }
    }
}

/// What a run measured.
struct Outcome {
    /// Still running, for the barge-in figures.
    standin: RealtimeStandIn,
    gateway: Gateway,
    /// Per probe, in session order.
    probes: Vec<ProbeFigures>,
    /// Per probe: INVITE→180 and INVITE→200.
    probe_setup: Vec<(Option<Duration>, Duration)>,
    /// Per probe: every RTP packet it received.
    received: Vec<Vec<RtpPacket>>,
}

/// Starts the stand-in and voxgate, places the probes, runs SIPp, measures the steady window,
/// hangs up and prints the run's table (CPU, memory, signalling, appends, RTP counters).
fn run(spec: Run) -> Outcome {
    let Run {
        calls,
        probes,
        secs,
        rate,
        media,
        behaviour,
    } = spec;
    let standin = RealtimeStandIn::start(behaviour);
    let gateway = gateway(&standin, calls + probes);
    let pid = gateway.pid();
    let clk = clock_ticks_per_second();
    let rss_idle = rss_kib(pid);

    // Probes first (sessions 0..probes), one after another so session i is probe i.
    let ramp = (calls / rate.max(1)) as u64 + 2;
    let probe_secs = if calls > 0 { secs + ramp } else { secs };
    let packets = (probe_secs * 50) as usize;
    assert!(
        packets < 9_216,
        "{probe_secs} s of numbered caller audio is more than the pcap pattern holds (184 s)"
    );
    let mut placed: Vec<Probe> = (0..probes)
        .map(|i| Probe::call(gateway.sip_addr(), 0x5eed_1000 + i as u32))
        .collect();
    let sender = send_audio(
        placed
            .iter()
            .map(|p| {
                (
                    p.rtp.try_clone().expect("clone RTP socket"),
                    p.remote_rtp,
                    p.ssrc,
                )
            })
            .collect(),
        packets,
    );
    let audio_from = Instant::now();

    // SIPp for the load.
    let mut sipp_run = None;
    let mut sink = None;
    if calls > 0 {
        let packets = (secs * 50) as usize;
        let sipp = match media {
            LoadMedia::Pcap => Sipp::new("uac_echo.xml", gateway.sip_addr()).with_audio(packets),
            LoadMedia::Stream => {
                Sipp::new("uac_echo_stream.xml", gateway.sip_addr()).with_ulaw(packets)
            }
        }
        .calls(calls as u32, calls as u32, rate as u32)
        .pause_ms(secs * 1_000)
        .deadline(Duration::from_secs(secs + ramp + 60));
        if media == LoadMedia::Pcap {
            sink = Some(Drain::bind(sipp.echo_addr()));
        }
        sipp_run = Some(sipp.spawn());
    }

    // Steady window: every call up, then a settling second, then half the call length.
    let all = (calls + probes) as f64;
    let up = gateway.wait_metric(
        "voxgate_calls_active",
        &[],
        Duration::from_secs(ramp + 30),
        |v| v >= all,
    );
    if up < all {
        eprintln!("only {up} of {all} calls came up");
    }
    std::thread::sleep(Duration::from_secs(1));
    let window_len = if calls > 0 {
        Duration::from_secs((secs / 2).max(1))
    } else {
        Duration::from_secs(secs.saturating_sub(3).max(1))
    };
    let sipp_pids = children_named("sipp");
    let cpu0 = cpu_ticks(pid);
    let me0 = cpu_ticks(std::process::id());
    let sipp0: Vec<(u64, u64)> = sipp_pids.iter().map(|&p| cpu_ticks(p)).collect();
    let machine0 = all_processes_ticks();
    let w0 = Instant::now();
    // VOXGATE_BENCH_PERF=<file>: profile voxgate over the window (perf's own CPU then disturbs
    // the figures of that run).
    let perf = std::env::var("VOXGATE_BENCH_PERF").ok().map(|file| {
        std::process::Command::new("perf")
            .args(["record", "-F", "997", "-o", &file, "-p", &pid.to_string()])
            .args(
                std::env::var("VOXGATE_BENCH_PERF_ARGS")
                    .unwrap_or_else(|_| "-g".into())
                    .split_whitespace(),
            )
            .args(["--", "sleep", &window_len.as_secs().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run perf")
    });
    std::thread::sleep(window_len);
    let w1 = Instant::now();
    if let Some(mut perf) = perf {
        let _ = perf.wait();
    }
    let cpu1 = cpu_ticks(pid);
    let me1 = cpu_ticks(std::process::id());
    let sipp1: Vec<(u64, u64)> = sipp_pids.iter().map(|&p| cpu_ticks(p)).collect();
    let machine1 = all_processes_ticks();
    let rss_loaded = rss_kib(pid);
    let active = gateway.metrics().sum("voxgate_calls_active");
    let seconds = (w1 - w0).as_secs_f64();
    let pct = |ticks: u64| 100.0 * ticks as f64 / clk / seconds;
    let (user, system) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let sipp_ticks: u64 = sipp0
        .iter()
        .zip(&sipp1)
        .map(|(a, b)| (b.0 + b.1).saturating_sub(a.0 + a.1))
        .sum();

    let sipp_outcome = sipp_run.map(|run| run.wait());
    let echoed = sink.map(Drain::finish).unwrap_or_default();
    let sent = sender.join().expect("sender thread");
    // The last caller packet of every probe reaches the stand-in before the calls end.
    let last = pcap::payload_for(packets - 1);
    standin.wait_until(Duration::from_secs(5), |state| {
        (0..probes).all(|i| {
            state.session(i).is_some_and(|s| {
                s.input_audio
                    .windows(last.len())
                    .rev()
                    .take(20 * 160)
                    .any(|w| w == last)
            })
        })
    });
    let audio_until = Instant::now();
    let probe_setup: Vec<(Option<Duration>, Duration)> = placed
        .iter()
        .map(|p| (p.invite_to_180, p.invite_to_200))
        .collect();
    let received: Vec<Vec<RtpPacket>> = placed
        .drain(..)
        .map(|p| p.hang_up(gateway.sip_addr()))
        .collect();
    standin.wait_until(Duration::from_secs(10), |state| {
        state.sessions.iter().all(SessionRecord::is_ended)
    });

    println!("\n### voxgate Realtime bridge: {calls} SIPp calls + {probes} probe calls\n");
    println!("| figure | value |\n|---|---|");
    println!(
        "| concurrent calls (measured active) | {} ({active}) |",
        calls + probes
    );
    let ours = user + system + sipp_ticks + (me1.0 + me1.1).saturating_sub(me0.0 + me0.1);
    println!(
        "| machine CPU in the window: all processes / the others (not voxgate, SIPp, this test) | \
         {:.1} % / {:.1} % of one core |",
        pct(machine1.saturating_sub(machine0)),
        pct(machine1.saturating_sub(machine0).saturating_sub(ours))
    );
    if calls > 0 {
        println!(
            "| steady window | {seconds:.1} s, {secs} s of PCMU per SIPp call, {rate} calls/s |"
        );
        println!(
            "| voxgate CPU | {:.2} % of one core (user {:.2} %, system {:.2} %) |",
            pct(user + system),
            pct(user),
            pct(system)
        );
        println!(
            "| voxgate CPU per call | **{:.4} %** of one core |",
            pct(user + system) / active.max(1.0)
        );
        println!(
            "| voxgate RSS idle / loaded | {:.1} MB / {:.1} MB |",
            rss_idle as f64 / 1024.0,
            rss_loaded as f64 / 1024.0
        );
        println!(
            "| voxgate RSS per call | **{:.3} MB** |",
            (rss_loaded.saturating_sub(rss_idle)) as f64 / 1024.0 / active.max(1.0)
        );
        println!(
            "| SIPp CPU / test process CPU (stand-in, probes, RTP sink) | {:.1} % / {:.1} % |",
            pct(sipp_ticks),
            pct((me1.0 + me1.1).saturating_sub(me0.0 + me0.1))
        );
    }
    if let Some(outcome) = &sipp_outcome {
        println!(
            "| SIPp exit code | {:?} (0 = every call succeeded) |",
            outcome.code()
        );
        sipp_signalling(outcome);
        match media {
            LoadMedia::Pcap => println!(
                "| RTP from voxgate to the SIPp calls | {} packets on {} streams, {} of them \
                 agent audio |",
                echoed.packets,
                echoed.streams.len(),
                echoed.agent_frames
            ),
            LoadMedia::Stream => println!(
                "| SIPp media | rtp_stream (one UDP socket for all calls; voxgate's RTP to them \
                 is counted below, not checked) |"
            ),
        }
    }
    let metrics = gateway.metrics();
    println!(
        "| voxgate RTP in / out / lost | {} / {} / {} |",
        metrics
            .get("voxgate_rtp_packets_total", &[("direction", "in")])
            .unwrap_or(0.0),
        metrics
            .get("voxgate_rtp_packets_total", &[("direction", "out")])
            .unwrap_or(0.0),
        metrics.sum("voxgate_rtp_packets_lost_total")
    );
    println!(
        "| Realtime session failures / errors / barge-ins | {} / {} / {} |",
        metrics.sum("voxgate_realtime_session_failures_total"),
        metrics.sum("voxgate_realtime_errors_total"),
        metrics.sum("voxgate_barge_ins_total")
    );
    let (count, sum) = (
        metrics.sum("voxgate_jitter_buffer_delay_seconds_count"),
        metrics.sum("voxgate_jitter_buffer_delay_seconds_sum"),
    );
    println!(
        "| jitter buffer delay (voxgate_jitter_buffer_delay_seconds, mean of {count} 1 s \
         samples) | {:.1} ms |",
        1e3 * sum / count.max(1.0)
    );
    standin.with_state(|state| {
        let gaps: Vec<f64> = state
            .sessions
            .iter()
            .flat_map(|s| {
                let inside: Vec<Instant> = s
                    .appends
                    .iter()
                    .map(|a| a.at)
                    .filter(|&at| at >= w0 && at < w1)
                    .collect();
                inside
                    .windows(2)
                    .map(|w| micros(w[1], w[0]))
                    .collect::<Vec<_>>()
            })
            .collect();
        let gaps = Summary::new(gaps);
        let over = |limit: f64| gaps.values.iter().filter(|&&g| g > limit).count();
        println!(
            "| inter-append interval at the stand-in, all calls, steady window: p50 / p99 / \
             p99.9 / max | {:.2} / {:.2} / {:.2} / {:.2} ms (n = {}; > 30 ms: {}, > 40 ms: {}) |",
            gaps.pct(50.0) / 1e3,
            gaps.pct(99.0) / 1e3,
            gaps.pct(99.9) / 1e3,
            gaps.max() / 1e3,
            gaps.len(),
            over(30_000.0),
            over(40_000.0)
        );
        let problems = state.problems();
        println!(
            "| stand-in protocol violations | {} |",
            if problems.is_empty() {
                "none".to_owned()
            } else {
                format!("{}: {}", problems.len(), problems[0])
            }
        );
    });

    let figures: Vec<ProbeFigures> = standin.with_state(|state| {
        (0..probes)
            .map(|i| {
                let from = if calls > 0 {
                    w0
                } else {
                    audio_from + Duration::from_secs(2)
                };
                let until = if calls > 0 { w1 } else { audio_until };
                match state.session(i) {
                    Some(session) => probe_figures(session, &sent[i], &received[i], from, until),
                    None => ProbeFigures::default(),
                }
            })
            .collect()
    });
    Outcome {
        standin,
        gateway,
        probes: figures,
        probe_setup,
        received,
    }
}

/// INVITE→180 and INVITE→200 of every SIPp call, from SIPp's message trace (µs time stamps).
fn sipp_signalling(outcome: &common::sipp::SippOutcome) {
    let mut invites = BTreeMap::new();
    let mut ringing = Vec::new();
    let mut answered = Vec::new();
    for message in outcome.traced() {
        let Some(call_id) = message.header("Call-ID") else {
            continue;
        };
        let is_invite = message.cseq_method().as_deref() == Some("INVITE");
        if message.sent && message.first_line().starts_with("INVITE ") {
            invites.entry(call_id).or_insert(message.at_secs);
        } else if !message.sent && is_invite {
            let Some(&sent) = invites.get(&call_id) else {
                continue;
            };
            let took = (message.at_secs - sent) * 1e6;
            match message.status() {
                Some(180) => ringing.push((call_id, took)),
                Some(200) => answered.push((call_id, took)),
                _ => {}
            }
        }
    }
    let first = |list: Vec<(String, f64)>| {
        let mut seen = BTreeMap::new();
        for (call, took) in list {
            seen.entry(call).or_insert(took);
        }
        Summary::new(seen.into_values().collect())
    };
    let (ringing, answered) = (first(ringing), first(answered));
    println!(
        "| INVITE→180 (SIPp trace, all SIPp calls) p50 / p99 / max | {} |",
        ringing.ms()
    );
    println!(
        "| INVITE→200 (includes the Realtime session set-up) p50 / p99 / max | {} |",
        answered.ms()
    );
}

/// The probes' latency table (the method is in the crate docs).
fn print_probe_figures(outcome: &Outcome) {
    let setup = &outcome.probe_setup;
    let all = |pick: fn(&ProbeFigures) -> &Vec<f64>| {
        Summary::new(
            outcome
                .probes
                .iter()
                .flat_map(|f| pick(f).clone())
                .collect(),
        )
    };
    let (hop_min, hop_p50) = loopback_hop();
    println!("\n| probe figure (all probe calls) | p50 / p99 / max |\n|---|---|");
    println!(
        "| **added latency up**: append arrival − its tick on the call's grid | {} |",
        all(|f| &f.up_added).ms()
    );
    println!(
        "| **added latency down**: RTP arrival − its tick on the call's grid | {} |",
        all(|f| &f.down_added).ms()
    );
    println!(
        "| deliberate up: caller packet sent → its tick (jitter buffer hold + tick wait) | {} |",
        all(|f| &f.up_hold).ms()
    );
    println!(
        "| total up: caller packet sent → append at the stand-in | {} |",
        all(|f| &f.up_total).ms()
    );
    println!(
        "| deliberate down: reply's first delta sent → its tick (wait for the tick) | {} |",
        all(|f| &f.down_wait).ms()
    );
    println!(
        "| total down: reply's first delta sent → its first frame at the caller | {} |",
        all(|f| &f.down_total).ms()
    );
    println!(
        "| gap between RTP packets from voxgate | {} |",
        all(|f| &f.rtp_gaps).ms()
    );
    let missed: usize = outcome.probes.iter().map(|f| f.missed_ticks).sum();
    let up: usize = outcome.probes.iter().map(|f| f.packets_up).sum();
    let down: usize = outcome.probes.iter().map(|f| f.frames_down).sum();
    println!("| first frames that missed a tick they could have made (> 21 ms wait) | {missed} |");
    println!(
        "| caller packets found in appends / agent frames received (window) | {up} / {down} |"
    );
    println!(
        "| one loopback UDP hop in this process: min / p50 | {:.1} / {:.1} µs |",
        hop_min, hop_p50
    );
    let timer = tokio_timer_lateness();
    println!(
        "| reference: a bare tokio 20 ms interval wakes late by (8 on 2 workers, this process) | \
         {} |",
        timer.ms()
    );
    let ringing = Summary::new(
        setup
            .iter()
            .filter_map(|(r, _)| r.map(|d| d.as_secs_f64() * 1e6))
            .collect(),
    );
    let answered = Summary::new(setup.iter().map(|(_, a)| a.as_secs_f64() * 1e6).collect());
    println!(
        "| probe INVITE→180 / INVITE→200 p50 | {:.3} / {:.3} ms |",
        ringing.pct(50.0) / 1e3,
        answered.pct(50.0) / 1e3
    );
}

/// Added latency up and down with only probe calls (default 4 calls, 60 s).
#[test]
#[ignore = "benchmark: scripts/bench_realtime.sh"]
fn realtime_latency() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let probes = env_or("VOXGATE_BENCH_PROBES", 4);
    let secs = env_or("VOXGATE_BENCH_SECS", 60u64);
    let outcome = run(Run {
        calls: 0,
        probes,
        secs,
        rate: 1,
        media: LoadMedia::Stream,
        behaviour: talk_behaviour(secs as usize + 30, 1_000, 25),
    });
    print_probe_figures(&outcome);
}

/// N concurrent SIPp calls (`VOXGATE_BENCH_CALLS`, default 100) of `VOXGATE_BENCH_SECS` (default
/// 60) plus probe calls measuring latency under that load.
#[test]
#[ignore = "benchmark: scripts/bench_realtime.sh"]
fn realtime_load() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let calls = env_or("VOXGATE_BENCH_CALLS", 100usize);
    let probes = env_or("VOXGATE_BENCH_PROBES", 4);
    let secs = env_or("VOXGATE_BENCH_SECS", 60u64);
    let rate = env_or("VOXGATE_BENCH_RATE", 50usize);
    let outcome = run(Run {
        calls,
        probes,
        secs,
        rate,
        media: LoadMedia::from_env(),
        behaviour: talk_behaviour(secs as usize + 60, 2_000, 50),
    });
    print_probe_figures(&outcome);
}

/// Barge-in → last frame of the interrupted reply on the caller's socket, over many barge-ins.
#[test]
#[ignore = "benchmark: scripts/bench_realtime.sh"]
fn realtime_barge_in() {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let probes = env_or("VOXGATE_BENCH_PROBES", 5);
    let secs = env_or("VOXGATE_BENCH_SECS", 60u64);
    let cycles = (secs as usize).min(TAGS);
    let outcome = run(Run {
        calls: 0,
        probes,
        secs,
        rate: 1,
        media: LoadMedia::Stream,
        behaviour: barge_in_behaviour(cycles),
    });
    let mut latencies = Vec::new();
    let mut late_frames = Vec::new();
    let mut truncates = 0;
    outcome.standin.with_state(|state| {
        for (i, received) in outcome.received.iter().enumerate() {
            let Some(session) = state.session(i) else {
                continue;
            };
            truncates += session.truncates.iter().filter(|t| t.accepted).count();
            let starts: Vec<Instant> = session
                .server_events_of("input_audio_buffer.speech_started")
                .map(|e| e.at)
                .collect();
            for response in &session.responses {
                if response.reason.as_deref() != Some("turn_detected") {
                    continue;
                }
                let (Some(item), Some(done)) = (
                    response
                        .item_id
                        .as_deref()
                        .and_then(|id| session.assistant_item(id)),
                    response.done_at,
                ) else {
                    continue;
                };
                let Some((tag, _)) = item.audio.get(..160).and_then(frame_index) else {
                    continue;
                };
                let Some(&started) = starts.iter().rev().find(|&&s| s <= done) else {
                    continue;
                };
                let frames: Vec<Instant> = received
                    .iter()
                    .filter(|p| frame_index(&p.payload).is_some_and(|(t, _)| t == tag))
                    .map(|p| p.at)
                    .collect();
                let Some(&last) = frames.last() else {
                    continue;
                };
                latencies.push(micros(last, started));
                late_frames.push(frames.iter().filter(|&&at| at > started).count() as f64);
            }
        }
    });
    let latencies = Summary::new(latencies);
    let late = Summary::new(late_frames);
    let after = latencies.values.iter().filter(|&&l| l > 0.0).count();
    println!("\n| barge-in figure | value |\n|---|---|");
    println!(
        "| speech_started sent → last frame of the interrupted reply at the caller: p50 / p99 / \
         max | {} |",
        latencies.ms()
    );
    println!(
        "| min (negative: that frame had arrived before speech_started was sent) | {:.3} ms |",
        latencies.min() / 1e3
    );
    println!(
        "| barge-ins whose last frame arrived after speech_started | {after} of {} |",
        latencies.len()
    );
    println!(
        "| frames of the interrupted reply arriving after speech_started: mean / max | {:.2} / \
         {} |",
        late.mean(),
        late.max()
    );
    println!(
        "| truncates accepted / voxgate_barge_ins_total | {truncates} / {} |",
        outcome.gateway.metrics().sum("voxgate_barge_ins_total")
    );
}
