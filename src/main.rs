//! The `voxgate` binary: command line, logging, configuration, then [`voxgate::io::run`].
//!
//! - `voxgate serve [--config PATH]` loads and validates the configuration and runs the gateway
//!   until it is stopped.
//! - `voxgate check-config [--config PATH]` loads and validates the configuration, prints a
//!   one-line summary and exits 0, or prints the problem and exits 1.
//!
//! `--config` defaults to `$VOXGATE_CONFIG`, else `conf/voxgate.toml`. Logs go to stderr, filtered
//! by `RUST_LOG` (default `info`). Exit codes: 0 success, 1 runtime failure or (check-config)
//! invalid configuration, 2 configuration refused by `serve` or a command-line usage error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use voxgate::config::{ConfigError, Settings};

/// SIP user-agent gateway bridging PBX calls to speech agents.
#[derive(Debug, Parser)]
#[command(name = "voxgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Load and validate the configuration, print a summary, exit 0 if it is usable, else 1.
    CheckConfig(ConfigArg),
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML); VOXGATE__SECTION__KEY variables override its keys.
    #[arg(
        long,
        value_name = "PATH",
        env = "VOXGATE_CONFIG",
        default_value = "conf/voxgate.toml"
    )]
    config: PathBuf,
}

/// Exit code when `serve` refuses its configuration (also clap's code for usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::CheckConfig(args) => check_config(&args.config),
        Command::Serve(args) => serve(&args.config),
    }
}

fn init_logging() {
    // An unparsable RUST_LOG falls back to `info` (with a warning): logging never stops start-up.
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => {
            let set = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some();
            (EnvFilter::new("info"), set.then_some(error))
        }
    };
    // Colour only on a terminal: journald and log files would keep the escape codes.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at info");
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Settings::load(path) {
        Ok(settings) => {
            println!("{}: ok: {}", path.display(), summary(&settings));
            ExitCode::SUCCESS
        }
        Err(error) => {
            report_config_error(&error);
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    let settings = match Settings::load(path) {
        Ok(settings) => settings,
        Err(error) => {
            report_config_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing::info!(
        config = %path.display(),
        version = env!("CARGO_PKG_VERSION"),
        summary = %summary(&settings),
        "starting voxgate"
    );
    for agent in &settings.agents {
        if agent.kind != voxgate::config::AgentKind::Openai {
            continue;
        }
        match settings.effective_agent(&agent.name) {
            Some(answering) if answering.name != agent.name => tracing::warn!(
                agent = %agent.name,
                fallback = %answering.name,
                "no OpenAI API key ({} unset): calls for agent {:?} are answered by {:?}",
                settings.realtime.api_key_env,
                agent.name,
                answering.name
            ),
            _ => tracing::info!(
                agent = %agent.name,
                model = %agent.model,
                url = %settings.realtime.url,
                "calls for agent {:?} are answered by OpenAI Realtime",
                agent.name
            ),
        }
    }
    // The core (SIP, metrics) needs one thread; media runs on per-core threads of its own
    // (`voxgate::io::media_runtime`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Integration point: `voxgate::io::run` (src/io/mod.rs) owns sockets, tasks and shutdown.
    match runtime.block_on(voxgate::io::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `error: <file>: <key>: <reason>` on stderr (the `Display` of [`ConfigError`]).
fn report_config_error(error: &ConfigError) {
    eprintln!("error: {error}");
}

/// One line an admin can eyeball: addresses, ranges and counts.
fn summary(settings: &Settings) -> String {
    let listen = settings
        .sip
        .listen
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    let metrics = match settings.metrics.listen {
        Some(addr) => format!("metrics on {addr}"),
        None => "metrics off".to_owned(),
    };
    format!(
        "sip on {}, rtp {}-{}, up to {} calls, {} trunk(s), {} agent(s), {} route(s), {metrics}",
        listen.join(" "),
        settings.rtp.port_min,
        settings.rtp.port_max,
        settings.calls.max_concurrent,
        settings.trunks.len(),
        settings.agents.len(),
        settings.routes.len(),
    ) + &agent_summary(settings)
        + &digest_summary(settings)
}

/// `; trunk "pbx": digest for callers outside allow_from (realm "voxgate", MD5, 2 user(s))`
/// and `; trunk "pbx": answers challenges as "voxgate"` per trunk that has them.
fn digest_summary(settings: &Settings) -> String {
    let mut text = String::new();
    for trunk in &settings.trunks {
        if trunk.has_users() {
            let algorithms: Vec<&str> = trunk
                .auth_algorithms()
                .into_iter()
                .map(|algorithm| algorithm.as_str())
                .collect();
            text.push_str(&format!(
                "; trunk {:?}: digest for callers outside allow_from (realm {:?}, {}, {} user(s))",
                trunk.name,
                trunk.auth_realm(),
                algorithms.join("/"),
                trunk.users.len()
            ));
        }
        if let Some(credentials) = trunk.credentials() {
            text.push_str(&format!(
                "; trunk {:?}: answers challenges as {:?}",
                trunk.name, credentials.username
            ));
        }
    }
    text
}

/// `; agent "assistant": OpenAI Realtime` or `…: echo (no OPENAI_API_KEY)` per OpenAI agent.
fn agent_summary(settings: &Settings) -> String {
    let mut text = String::new();
    for agent in &settings.agents {
        if agent.kind != voxgate::config::AgentKind::Openai {
            continue;
        }
        let answering = match settings.effective_agent(&agent.name) {
            Some(answering) if answering.name != agent.name => format!(
                "answered by {:?} (no {})",
                answering.name, settings.realtime.api_key_env
            ),
            _ => format!("OpenAI Realtime {}", agent.model),
        };
        text.push_str(&format!("; agent {:?}: {answering}", agent.name));
    }
    text
}
