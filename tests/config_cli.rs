//! The `voxgate` binary's configuration handling: `check-config` and `serve`'s refusal of a bad
//! file, run as a real process (no SIP traffic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/voxgate.toml");

/// The binary with a clean environment, so a developer's `VOXGATE__*` cannot leak in.
fn voxgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_voxgate"));
    command.env_clear().args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run voxgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("voxgate.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = voxgate(&["check-config", "--config", SHIPPED], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "{SHIPPED}: ok: sip on 0.0.0.0:5060, rtp 10000-20000"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 trunk(s), 2 agent(s), 2 route(s), metrics on 127.0.0.1:9464"),
        "{stdout}"
    );
    // A fresh machine has no API key: the assistant's calls go to the echo agent, and it says so.
    assert!(
        stdout.contains("agent \"assistant\": answered by \"echo\" (no OPENAI_API_KEY)"),
        "{stdout}"
    );
    let out = voxgate(
        &["check-config", "--config", SHIPPED],
        &[("OPENAI_API_KEY", "sk-test-not-shown")],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("agent \"assistant\": OpenAI Realtime gpt-realtime"),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-test-not-shown"), "{stdout}");
}

#[test]
fn check_config_reports_file_key_and_reason_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = std::fs::read_to_string(SHIPPED).expect("shipped file");
    let path = write_config(
        dir.path(),
        &shipped.replace("max_concurrent = 500", "max_concurrent = 0"),
    );
    let out = voxgate(
        &[
            "check-config",
            "--config",
            path.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: calls.max_concurrent: must be at least 1\n",
            path.display()
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn config_path_comes_from_voxgate_config_and_overrides_from_env() {
    let out = voxgate(
        &["check-config"],
        &[
            ("VOXGATE_CONFIG", SHIPPED),
            ("VOXGATE__SIP__LISTEN", "127.0.0.1:5070,[::1]:5070"),
            ("VOXGATE__CALLS__MAX_CONCURRENT", "10"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("sip on 127.0.0.1:5070 [::1]:5070"),
        "{stdout}"
    );
    assert!(stdout.contains("up to 10 calls"), "{stdout}");
}

#[test]
fn serve_refuses_a_missing_file_with_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.toml");
    let out = voxgate(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {}: cannot read", path.display())),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_an_invalid_file_with_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        "[sip]\nlisten = \"127.0.0.1:5060\"\nlisten_port = 1\n",
    );
    let out = voxgate(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: {}: sip.listen_port: unknown key",
            path.display()
        )),
        "{stderr}"
    );
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/examples");

/// Every variable a file names in a `*_env = "NAME"` line, for the test's environment.
fn env_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            (key.ends_with("_env") && !key.starts_with('#'))
                .then(|| value.trim().trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn every_example_profile_loads_with_check_config() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(EXAMPLES)
        .expect("conf/examples")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    for profile in ["asterisk.toml", "freeswitch.toml", "telnyx.toml"] {
        assert!(
            names.iter().any(|n| n == profile),
            "{profile} missing: {names:?}"
        );
    }
    for file in &files {
        let config = std::fs::read_to_string(file).expect("example");
        let env: Vec<(String, String)> = env_names(&config)
            .into_iter()
            .map(|name| (name, "example-secret".to_owned()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let path = file.to_str().expect("utf-8 path");
        let out = voxgate(&["check-config", "--config", path], &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: check-config failed: {}",
            file.display(),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains(": ok: "), "{stdout}");
        if config.contains("[[trunks.users]]") {
            assert!(
                stdout.contains("digest for callers outside allow_from"),
                "{stdout}"
            );
        }
    }
}
