//! Replays every fuzz seed (`fuzz/seeds/<target>/`) and every saved regression input
//! (`fuzz/regressions/<target>/`, the minimised inputs of crashes the fuzzers found) through the
//! same harnesses the fuzzers run (`fuzz/harness/`), on the stable toolchain: each harness
//! panics on what it checks, so a fixed bug stays fixed and the harnesses keep compiling.
//! The SIP harnesses also take the RFC 4475 torture messages.
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)]
#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.sort();
    files
}

fn torture() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sip-torture");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, files: &[PathBuf], run: fn(&[u8])) {
    assert!(!files.is_empty(), "no inputs for {target}");
    for file in files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target} fails on {}: {why}", file.display());
        }
    }
}

#[test]
fn sip_switchboard_seeds_and_regressions() {
    replay(
        "sip_switchboard",
        &inputs("sip_switchboard"),
        harness::sip_switchboard::run,
    );
}

#[test]
fn sip_switchboard_takes_every_torture_message_as_a_datagram_and_on_tcp() {
    // Each message as a UDP datagram from the PBX, then on its TCP connection.
    let scripts: Vec<Vec<u8>> = torture()
        .iter()
        .map(|file| {
            let message = std::fs::read(file).expect("torture file");
            let mut script = b"%%U\n".to_vec();
            script.extend_from_slice(&message);
            script.extend_from_slice(b"\n%%T\n");
            script.extend_from_slice(&message);
            script
        })
        .collect();
    for script in scripts {
        harness::sip_switchboard::run(&script);
    }
}

#[test]
fn sip_framing_seeds_regressions_and_torture() {
    let mut files = inputs("sip_framing");
    files.extend(torture());
    replay("sip_framing", &files, harness::sip_framing::run);
}

#[test]
fn sdp_offer_seeds_and_regressions() {
    replay("sdp_offer", &inputs("sdp_offer"), harness::sdp_offer::run);
}

#[test]
fn media_packets_seeds_and_regressions() {
    replay(
        "media_packets",
        &inputs("media_packets"),
        harness::media_packets::run,
    );
}

#[test]
fn realtime_bridge_seeds_and_regressions() {
    replay(
        "realtime_bridge",
        &inputs("realtime_bridge"),
        harness::realtime_bridge::run,
    );
}
