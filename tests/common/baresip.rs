//! baresip (Debian package `baresip-core`), a real softphone, as the caller: a generated
//! config in a tempdir (UDP on loopback, PCMU only, no registration), the caller's voice played
//! from a WAV file (`aufile`), what it hears played to ALSA's `null` device, and both sides of
//! the call's audio recorded by its `sndfile` module (`*-enc.wav`: what it sent, before
//! encoding; `*-dec.wav`: what it received, decoded). It dials once, hangs up when the file
//! ends, and quits.
//!
//! The process is killed and waited for on drop, so a failing test never leaves it running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::PortBlock;

/// 16-bit mono WAV at 8 kHz.
pub fn write_wav(path: &Path, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&8_000u32.to_le_bytes());
    bytes.extend_from_slice(&16_000u32.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write WAV");
}

/// The samples of a 16-bit mono WAV (its `data` chunk).
pub fn read_wav(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = at + 8;
        if id == b"data" {
            let end = (body + len).min(bytes.len());
            return bytes[body..end]
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                .collect();
        }
        at = body + len + len % 2;
    }
    panic!("{}: no data chunk", path.display());
}

/// One baresip call.
pub struct Baresip {
    child: Child,
    dir: tempfile::TempDir,
}

impl Baresip {
    /// Dials `sip:echo@{target}` over UDP at once, speaking `voice` (8 kHz samples), and hangs
    /// up when it has played it all.
    pub fn call(target: SocketAddr, voice: &[i16]) -> Baresip {
        Baresip::call_over(target, voice, false)
    }

    /// The same, with its SIP over TCP when `tcp` (one connection it opens to voxgate).
    pub fn call_over(target: SocketAddr, voice: &[i16], tcp: bool) -> Baresip {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = PortBlock::reserve(12);
        let path = dir.path();
        write_wav(&path.join("voice.wav"), voice);
        std::fs::create_dir(path.join("rec")).expect("rec dir");
        std::fs::write(
            path.join("config"),
            format!(
                "poll_method epoll\n\
                 sip_listen 127.0.0.1:{sip}\n\
                 sip_transports {transports}\n\
                 audio_source aufile,{voice}\n\
                 audio_player alsa,null\n\
                 audio_alert aufile,/dev/null\n\
                 ausrc_srate 8000\nauplay_srate 8000\n\
                 ausrc_channels 1\nauplay_channels 1\n\
                 rtp_ports {rtp_min}-{rtp_max}\n\
                 module_path /usr/lib/baresip/modules\n\
                 module stdio.so\nmodule g711.so\nmodule aufile.so\nmodule alsa.so\n\
                 module sndfile.so\n\
                 snd_path {rec}\n\
                 module_app account.so\nmodule_app menu.so\n",
                sip = ports.port(0),
                transports = if tcp { "udp,tcp" } else { "udp" },
                voice = path.join("voice.wav").display(),
                rtp_min = ports.port(2),
                rtp_max = ports.port(11),
                rec = path.join("rec").display(),
            ),
        )
        .expect("write baresip config");
        std::fs::write(
            path.join("accounts"),
            "<sip:caller@127.0.0.1>;regint=0;audio_codecs=PCMU\n",
        )
        .expect("write baresip accounts");
        let log = std::fs::File::create(path.join("baresip.log")).expect("log file");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(path)
            .arg("-e")
            .arg(format!(
                "/dial sip:echo@{target}{}",
                if tcp { ";transport=tcp" } else { "" }
            ))
            // Quits this long after it started, whatever happens (it has no "quit when the
            // call ends"); the call itself ends with the voice, after about 3 s.
            .args(["-t", "10"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start `baresip` (Debian package `baresip-core`; scripts/test.sh installs it)");
        Baresip { child, dir }
    }

    /// Waits for baresip to quit (at most `timeout`); panics with its log otherwise.
    pub fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("baresip still running after {timeout:?}:\n{}", self.log());
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// The recording whose name ends with `suffix` (`-enc.wav` or `-dec.wav`).
    pub fn recording(&self, suffix: &str) -> PathBuf {
        std::fs::read_dir(self.dir.path().join("rec"))
            .expect("rec dir")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} recorded:\n{}", self.log()))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
