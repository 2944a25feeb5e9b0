//! The Realtime WebSocket: connect (rustls, TCP_NODELAY, a small read buffer, large messages)
//! and the shared HTTP client for tools. Both trust the public roots (webpki-roots) plus the
//! certificates of `realtime.ca_file`, set once at start-up with [`trust`].
//!
//! DEPENDENCIES.md: Nagle on delays 20 ms appends by 40 ms; the default 128 KiB read buffer is
//! zero-filled on every read (half a minimal relay's CPU); a 1 MiB message cap closes the socket
//! on large server events, so allow 32 MiB.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::Secret;

/// A connected Realtime socket.
pub type RealtimeSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest inbound message or frame accepted.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// Read buffer per connection.
pub const READ_BUFFER_BYTES: usize = 8 << 10;

/// Opens the WebSocket for `model` at `url` with the API key; no `OpenAI-Beta` header (GA).
pub async fn connect(url: &str, model: &str, key: &Secret) -> Result<RealtimeSocket, String> {
    let target = format!("{url}?model={}", query_escape(model));
    let mut request = target
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad Realtime URL {url}: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .map_err(|_| "the API key contains characters not allowed in a header".to_owned())?;
    request.headers_mut().insert("Authorization", bearer);
    if let Ok(agent) = HeaderValue::from_str(&format!("voxgate/{}", env!("CARGO_PKG_VERSION"))) {
        request.headers_mut().insert("User-Agent", agent);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connector = Connector::Rustls(Arc::clone(&tls().websocket));
    let (socket, _response) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(connector),
    )
    .await
    .map_err(|e| describe(url, e))?;
    Ok(socket)
}

fn describe(url: &str, error: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Http(response) => refusal(url, &response),
        other => format!("cannot connect to {url}: {other}"),
    }
}

/// What a refused upgrade says: the HTTP status, and the error's `code` (or `type`) when the body
/// is an OpenAI-style error (`{"error": {"code": "invalid_api_key", ...}}`). The message itself
/// is left out: it may quote part of the key, and the text goes into the SIP Reason header.
fn refusal(
    url: &str,
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> String {
    let status = response.status();
    let mut text = format!(
        "{url} refused the WebSocket upgrade: HTTP {}",
        status.as_u16()
    );
    if let Some(phrase) = status.canonical_reason() {
        text.push(' ');
        text.push_str(phrase);
    }
    let code = response
        .body()
        .as_deref()
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
        .and_then(|body| {
            let error = body.get("error")?;
            ["code", "type"]
                .iter()
                .find_map(|field| error.get(field)?.as_str().map(str::to_owned))
        })
        .filter(|code| {
            code.len() <= 64
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if let Some(code) = code {
        text.push_str(&format!(" ({code})"));
    }
    text
}

/// Percent-escapes a query value (model names are plain, but a typo must not break the URL).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The process-wide HTTP client for tools (connection pooling, rustls).
pub fn http_client() -> &'static reqwest::Client {
    &tls().http
}

/// TLS settings shared by every call: the WebSocket's and the HTTP tools' client.
struct Tls {
    websocket: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
}

static TLS: OnceLock<Tls> = OnceLock::new();

/// Trusts `extra` CA certificates (`realtime.ca_file`, already validated) besides the public
/// roots, for every connection from now on. Call once at start-up, before the first call; a
/// later call changes nothing and says so.
pub fn trust(extra: &[CertificateDer<'static>]) {
    if TLS.set(Tls::new(extra)).is_err() {
        tracing::warn!("TLS trust already set up; realtime.ca_file ignored");
    }
}

fn tls() -> &'static Tls {
    TLS.get_or_init(|| Tls::new(&[]))
}

impl Tls {
    fn new(extra: &[CertificateDer<'static>]) -> Tls {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let (added, ignored) = roots.add_parsable_certificates(extra.iter().cloned());
        if ignored > 0 {
            tracing::warn!(
                added,
                ignored,
                "some CA certificates of realtime.ca_file were not usable"
            );
        } else if added > 0 {
            tracing::info!(
                certificates = added,
                "trusting the CA certificates of realtime.ca_file besides the public roots"
            );
        }
        // The ring provider by name: the process-wide default would depend on which rustls
        // features the whole dependency tree happens to enable.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let websocket = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3") // ok: a fixed provider, no input involved
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = reqwest::Client::builder()
            .user_agent(format!("voxgate/{}", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5));
        for cert in extra {
            match reqwest::Certificate::from_der(cert.as_ref()) {
                Ok(cert) => http = http.add_root_certificate(cert),
                Err(error) => tracing::warn!(%error, "a CA certificate unusable for HTTP tools"),
            }
        }
        let http = http.build().unwrap_or_else(|error| {
            tracing::warn!(%error, "HTTP client for tools built with defaults");
            reqwest::Client::new()
        });
        Tls {
            websocket: Arc::new(websocket),
            http,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::{Response, StatusCode};

    #[test]
    fn model_names_are_escaped_in_the_query() {
        assert_eq!(query_escape("gpt-realtime-2.1"), "gpt-realtime-2.1");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
    }

    fn refused(status: StatusCode, body: Option<&str>) -> String {
        let mut response = Response::new(body.map(|text| text.as_bytes().to_vec()));
        *response.status_mut() = status;
        refusal("wss://api.example/v1/realtime", &response)
    }

    #[test]
    fn a_refused_upgrade_names_the_status_and_the_errors_code_but_not_its_message() {
        let body = r#"{"error": {"message": "Incorrect API key provided: sk-ab***yz",
            "type": "invalid_request_error", "code": "invalid_api_key", "param": null}}"#;
        let text = refused(StatusCode::UNAUTHORIZED, Some(body));
        assert_eq!(
            text,
            "wss://api.example/v1/realtime refused the WebSocket upgrade: \
             HTTP 401 Unauthorized (invalid_api_key)"
        );
        assert!(!text.contains("sk-"));
        // No code: the type.
        let body = r#"{"error": {"message": "m", "type": "server_error", "code": null}}"#;
        assert!(refused(StatusCode::INTERNAL_SERVER_ERROR, Some(body))
            .ends_with("HTTP 500 Internal Server Error (server_error)"));
        // Not OpenAI's shape, or a code that is no identifier: the status alone.
        for body in [
            None,
            Some("<html>Forbidden</html>"),
            Some(r#"{"error": {"code": "has spaces \" and quotes"}}"#),
        ] {
            assert!(refused(StatusCode::FORBIDDEN, body).ends_with("HTTP 403 Forbidden"));
        }
    }
}
