//! A local stand-in for the OpenAI Realtime API (GA), for the tests: every Realtime interop test
//! talks to it instead of `wss://api.openai.com/v1/realtime`.
//!
//! It speaks the protocol of `shared/realtime/PROTOCOL.md` faithfully — every event it sends
//! validates against `#/$defs/ServerEvent` of `events.schema.json`, every client event is
//! checked against `#/$defs/ClientEvent` and answered with `error` if it fails — and records
//! what the client did for assertions. What the "model" says and when the caller "speaks" is
//! scripted per session with a [`Behaviour`].
//!
//! ```ignore
//! let standin = RealtimeStandIn::start(
//!     Behaviour::new()
//!         .greeting(Reply::audio(tagged_audio(50, 1)).transcript("Hello!"))
//!         .step(When::caller_audio_ms(600), [Action::SpeechStarted])
//!         .step(When::caller_audio_ms(400), [Action::speech_stopped(),
//!                                            Action::respond(Reply::audio(tagged_audio(25, 2)))]),
//! );
//! // point voxgate at standin.url() (it appends ?model=…), place a call, then:
//! assert!(standin.wait_until(Duration::from_secs(5), |s| {
//!     s.session(0).is_some_and(|s| s.finished_responses().count() == 2)
//! }));
//! let session = standin.session(0);
//! assert_eq!(session.input_format(), Some("audio/pcmu"));
//! standin.assert_no_violations();
//! ```
//!
//! Layout: [`script`] (behaviour), [`record`] (what tests inspect), [`engine`] (the sans-IO
//! protocol machine, one per session), [`connection`] (WebSocket glue), [`schema`] (validators),
//! [`config`] (session defaults and merge), [`audio`] (recognisable test audio).
// The stand-in runs on the wall clock and spawns its own tasks; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

pub mod audio;
pub mod config;
mod connection;
mod engine;
pub mod record;
pub mod schema;
pub mod script;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use audio::{frame_index, tagged_audio, tagged_frame, FRAME_LEN};
pub use record::{
    AppendRecord, AssistantItemRecord, ClientEventRecord, DeltaRecord, FunctionCallRecord,
    FunctionOutputRecord, Handshake, ResponseOrigin, ResponseRecord, ServerEventRecord, SessionEnd,
    SessionRecord, StandInState, TruncateRecord, Violation,
};
pub use schema::schema;
pub use script::{Action, Behaviour, Pace, Reply, Step, When};

/// The stand-in server: listening on `127.0.0.1`, one session per WebSocket connection, its
/// own tokio runtime on a background thread. Stopped (all connections dropped) on drop.
pub struct RealtimeStandIn {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RealtimeStandIn {
    /// Starts with the same behaviour for every session.
    pub fn start(behaviour: Behaviour) -> RealtimeStandIn {
        RealtimeStandIn::start_with(move |_| behaviour.clone())
    }

    /// Starts with a behaviour per session (by index, in order of connection).
    pub fn start_with(
        behaviour_for: impl Fn(usize) -> Behaviour + Send + Sync + 'static,
    ) -> RealtimeStandIn {
        RealtimeStandIn::start_on(Box::new(behaviour_for), None)
    }

    /// Starts serving `wss://` with the test certificate of `tests/tls` (`localhost` and
    /// `127.0.0.1`, signed by `tests/tls/ca.pem`), the same behaviour for every session.
    pub fn start_tls(behaviour: Behaviour) -> RealtimeStandIn {
        RealtimeStandIn::start_on(Box::new(move |_| behaviour.clone()), Some(tls_acceptor()))
    }

    fn start_on(
        behaviour_for: Box<dyn Fn(usize) -> Behaviour + Send + Sync>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> RealtimeStandIn {
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        // Compile the schema now, so a missing schema fails here and not inside a session.
        schema::schema();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(StandInState::default()),
            changed: Condvar::new(),
            behaviour_for,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("realtime-standin".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("stand-in runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        () = accept_loop(listener, thread_shared, tls) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every session task and closes its socket.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn stand-in thread");
        RealtimeStandIn {
            addr,
            scheme,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `ws://127.0.0.1:PORT/v1/realtime`, or `wss://` (the client appends `?model=…`).
    pub fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme,
            self.addr,
            connection::REALTIME_PATH
        )
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of everything recorded.
    pub fn state(&self) -> StandInState {
        self.shared.lock().clone()
    }

    /// Reads the state under the lock without copying it.
    pub fn with_state<R>(&self, read: impl FnOnce(&StandInState) -> R) -> R {
        read(&self.shared.lock())
    }

    /// A snapshot of session `index`; panics if there is no such session yet.
    pub fn session(&self, index: usize) -> SessionRecord {
        self.with_state(|state| state.sessions.get(index).cloned())
            .unwrap_or_else(|| panic!("the stand-in has no session {index}"))
    }

    /// Number of sessions so far (refused handshakes included).
    pub fn session_count(&self) -> usize {
        self.with_state(|state| state.sessions.len())
    }

    /// Waits until `condition` holds (checked now and after every change), at most `timeout`;
    /// returns whether it held.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&StandInState) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if condition(&state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Waits until session `index` exists and satisfies `condition`; returns its snapshot, or
    /// panics with `what` and the session's state after `timeout`.
    pub fn wait_for_session(
        &self,
        index: usize,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&SessionRecord) -> bool,
    ) -> SessionRecord {
        let held = self.wait_until(timeout, |state| {
            state.sessions.get(index).is_some_and(&mut condition)
        });
        let snapshot = self.with_state(|state| state.sessions.get(index).cloned());
        match (held, snapshot) {
            (true, Some(session)) => session,
            (_, session) => panic!(
                "stand-in session {index}: timed out after {timeout:?} waiting for {what}; \
                 session: {}",
                session.map_or("none".into(), |s| summary(&s))
            ),
        }
    }

    /// Every violation (and stand-in fault) recorded so far, as readable lines.
    pub fn violations(&self) -> Vec<String> {
        self.with_state(StandInState::problems)
    }

    /// Panics listing every violation: things the client must never do (malformed or beta
    /// events, a `response.create` while a response is active, a bad or zero-length truncate,
    /// an unknown `call_id`, a bad handshake, binary frames, audio before `session.update`) and
    /// any server event of the stand-in that failed the schema.
    pub fn assert_no_violations(&self) {
        let problems = self.violations();
        assert!(
            problems.is_empty(),
            "the Realtime stand-in recorded {} violation(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
}

impl Drop for RealtimeStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// State shared by the server thread and the test.
pub(crate) struct Shared {
    state: Mutex<StandInState>,
    changed: Condvar,
    behaviour_for: Box<dyn Fn(usize) -> Behaviour + Send + Sync>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, StandInState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Mutates session `index` and wakes waiters; `None` if there is no such session.
    pub(crate) fn session<R>(
        &self,
        index: usize,
        update: impl FnOnce(&mut SessionRecord) -> R,
    ) -> Option<R> {
        let result = self.lock().sessions.get_mut(index).map(update);
        self.changed.notify_all();
        result
    }

    /// Adds a session record (built from its index) and returns the index and its behaviour.
    pub(crate) fn register(
        &self,
        record: impl FnOnce(usize) -> SessionRecord,
    ) -> (usize, Behaviour) {
        let index = {
            let mut state = self.lock();
            let index = state.sessions.len();
            state.sessions.push(record(index));
            index
        };
        self.changed.notify_all();
        (index, (self.behaviour_for)(index))
    }
}

/// The test CA that signed the stand-in's certificate (`realtime.ca_file` for voxgate).
pub fn test_ca_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls/ca.pem")
}

/// A TLS acceptor with the test certificate of `tests/tls`.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(test_server_tls())
}

/// A TLS server configuration with the test certificate of `tests/tls` (ring, as voxgate).
pub fn test_server_tls() -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("tests/tls/server.pem")
        .collect::<Result<_, _>>()
        .expect("tests/tls/server.pem holds certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("tests/tls/server.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the test certificate and key match");
    Arc::new(config)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                match tls.clone() {
                    None => {
                        tokio::spawn(connection::serve(stream, shared));
                    }
                    // A client that does not trust the certificate gives up here: no session.
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                connection::serve(stream, shared).await;
                            }
                        });
                    }
                }
            }
            // EMFILE and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// One line per interesting fact of a session, for failure messages.
pub fn summary(session: &SessionRecord) -> String {
    let client_types: Vec<&str> = session
        .client_events
        .iter()
        .filter_map(ClientEventRecord::event_type)
        .filter(|t| *t != "input_audio_buffer.append")
        .collect();
    format!(
        "id {} handshake {:?} confirmed {} appends {} ({} ms) client events {:?} server events \
         {:?} responses {:?} truncates {:?} violations {:?} end {:?}",
        session.id,
        (
            &session.handshake.path,
            &session.handshake.query,
            session.handshake.accepted
        ),
        session.confirmed,
        session.appends.len(),
        session.input_ms(),
        client_types,
        session
            .server_event_types()
            .into_iter()
            .filter(|t| *t != "response.output_audio.delta")
            .collect::<Vec<_>>(),
        session
            .responses
            .iter()
            .map(|r| (r.origin, r.status.as_str(), r.reason.as_deref()))
            .collect::<Vec<_>>(),
        session
            .truncates
            .iter()
            .map(|t| (t.audio_end_ms, t.produced_ms, t.accepted))
            .collect::<Vec<_>>(),
        session
            .violations
            .iter()
            .map(|v| v.message.as_str())
            .collect::<Vec<_>>(),
        session.end,
    )
}
