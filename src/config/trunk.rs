//! The registration part of `[[trunks]]` (mode = "register"): voxgate registers with the PBX or
//! provider like a phone, RFC 3261 §10.
//!
//! A trunk is `static` by default (calls come from the addresses in `allow_from`, today's
//! IP-authenticated trunks). With `mode = "register"` it also names a `registrar` URI, the
//! credentials (`username`, optional `auth_username` and `realm`, the password from the variable
//! named by `password_env` or the first line of `password_file`), and optionally an
//! `outbound_proxy`, `transport`, `expires`, `contact_user`, `keepalive_secs` and `domain`.
//! The password is never in the file: [`Settings::resolve_secrets`] reads it once at start-up
//! into [`TrunkSettings::password`] (a [`Secret`]: never logged).
//!
//! [`TrunkSettings::registration`] gives the switchboard the validated view with defaults
//! applied ([`RegisterSettings`]).
//!
//! [`Settings::resolve_secrets`]: super::Settings::resolve_secrets

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{Problem, Secret, TrunkSettings};
use crate::sip::endpoint::{uri_explicit_port, uri_host_port};

/// The expiry asked for when `expires` is not set, seconds (what PBX phones ask for).
pub const DEFAULT_EXPIRES_SECS: u32 = 3_600;
/// The accepted range of `expires`, seconds (a registrar may still grant less, or answer 423).
pub const EXPIRES_RANGE_SECS: std::ops::RangeInclusive<u32> = 10..=86_400;
/// The accepted range of `keepalive_secs`.
pub const KEEPALIVE_RANGE_SECS: std::ops::RangeInclusive<u32> = 5..=3_600;

/// How calls reach voxgate over a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum TrunkMode {
    /// IP-authenticated: the PBX sends INVITEs from an address in `allow_from`.
    #[default]
    Static,
    /// voxgate registers with `registrar`; calls to the registered Contact (or from the
    /// registrar's address) arrive over this trunk as well as those from `allow_from`.
    Register,
}

/// The SIP transport of a register-mode trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum TrunkTransport {
    /// UDP (default).
    #[default]
    Udp,
    /// TCP.
    Tcp,
}

// `try_from` rather than serde's enum support: the config crate words an unknown variant as
// "does not have variant constructor", which tells an admin nothing about the choices.
impl TryFrom<String> for TrunkMode {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "static" => Ok(TrunkMode::Static),
            "register" => Ok(TrunkMode::Register),
            other => Err(format!("{other:?} is not \"static\" or \"register\"")),
        }
    }
}

impl TryFrom<String> for TrunkTransport {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "udp" => Ok(TrunkTransport::Udp),
            "tcp" => Ok(TrunkTransport::Tcp),
            other => Err(format!(
                "{other:?} is not \"udp\" or \"tcp\" (TLS is not supported)"
            )),
        }
    }
}

impl TrunkTransport {
    /// The token used in URIs (`udp`, `tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkTransport::Udp => "udp",
            TrunkTransport::Tcp => "tcp",
        }
    }
}

/// A register-mode trunk, validated, with defaults applied.
#[derive(Debug, Clone)]
pub struct RegisterSettings {
    /// The registrar URI (the REGISTER's Request-URI), e.g. `sip:pbx.example.com:5060`.
    pub registrar: String,
    /// The outbound proxy URI, when REGISTERs go through one.
    pub outbound_proxy: Option<String>,
    /// UDP or TCP.
    pub transport: TrunkTransport,
    /// The user registered (AOR user, From/To).
    pub username: String,
    /// The digest user name, when it differs from `username`.
    pub auth_username: Option<String>,
    /// Only challenges for this realm are answered, when set.
    pub realm: Option<String>,
    /// The digest password.
    pub password: Secret,
    /// The expiry asked for.
    pub expires: Duration,
    /// The user part of voxgate's Contact (calls to it arrive over this trunk).
    pub contact_user: String,
    /// The OPTIONS keepalive interval toward the registrar, if any.
    pub keepalive: Option<Duration>,
    /// The address-of-record, `sip:username@domain`.
    pub aor: String,
    /// Where REGISTERs go first: the outbound proxy's host, else the registrar's, and the port
    /// its URI gives (none: the servers are located with SRV, RFC 3263).
    pub next_hop: (String, Option<u16>),
}

impl TrunkSettings {
    /// The domain a transfer destination's `extension` is joined to: `domain`, else the
    /// registrar's host; `None` for a static trunk without `domain` (the call's peer is used).
    pub fn transfer_domain(&self) -> Option<String> {
        if let Some(domain) = &self.domain {
            return Some(domain.clone());
        }
        let registrar = self.registrar.as_deref()?.trim();
        let (host, _) = uri_host_port(registrar)?;
        Some(bracketed(&host))
    }

    /// Whether voxgate registers over this trunk.
    pub fn is_register(&self) -> bool {
        self.mode == TrunkMode::Register
    }

    /// The registration settings of a register-mode trunk whose password was resolved; `None`
    /// for a static trunk (or settings that skipped [`Settings::resolve_secrets`]).
    ///
    /// [`Settings::resolve_secrets`]: super::Settings::resolve_secrets
    pub fn registration(&self) -> Option<RegisterSettings> {
        if !self.is_register() {
            return None;
        }
        let registrar = self.registrar.as_deref()?.trim().to_owned();
        let username = self.username.clone()?;
        let password = self.password.clone()?;
        let (registrar_host, _) = uri_host_port(&registrar)?;
        let next_hop_uri = self.outbound_proxy.as_deref().unwrap_or(&registrar);
        let (next_hop_host, _) = uri_host_port(next_hop_uri)?;
        let next_hop = (next_hop_host, uri_explicit_port(next_hop_uri));
        let domain = self
            .domain
            .clone()
            .unwrap_or_else(|| bracketed(&registrar_host));
        let transport = self
            .transport
            .or_else(|| uri_transport(&registrar).ok().flatten())
            .unwrap_or_default();
        Some(RegisterSettings {
            aor: format!("sip:{username}@{domain}"),
            registrar,
            outbound_proxy: self.outbound_proxy.as_deref().map(|p| p.trim().to_owned()),
            transport,
            contact_user: self
                .contact_user
                .clone()
                .unwrap_or_else(|| username.clone()),
            username,
            auth_username: self.auth_username.clone(),
            realm: self.realm.clone(),
            password,
            expires: Duration::from_secs(self.expires.unwrap_or(DEFAULT_EXPIRES_SECS).into()),
            keepalive: self
                .keepalive_secs
                .map(|secs| Duration::from_secs(secs.into())),
            next_hop,
        })
    }

    /// Every registration key that is set, by name (refused on a static trunk).
    fn registration_keys_set(&self) -> Vec<&'static str> {
        [
            ("registrar", self.registrar.is_some()),
            ("outbound_proxy", self.outbound_proxy.is_some()),
            ("transport", self.transport.is_some()),
            ("username", self.username.is_some()),
            ("auth_username", self.auth_username.is_some()),
            ("realm", self.realm.is_some()),
            ("password_env", self.password_env.is_some()),
            ("password_file", self.password_file.is_some()),
            ("expires", self.expires.is_some()),
            ("contact_user", self.contact_user.is_some()),
            ("keepalive_secs", self.keepalive_secs.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Checks the registration keys of `trunks[index]`.
pub(super) fn validate_trunk(trunk: &TrunkSettings, index: usize) -> Result<(), Problem> {
    let key = |name: &str| format!("trunks[{index}].{name}");
    if !trunk.is_register() {
        if let Some(first) = trunk.registration_keys_set().first() {
            return Err(Problem::new(
                key(first),
                "only used with mode = \"register\" (this trunk is static: calls come from \
                 allow_from)",
            ));
        }
        return Ok(());
    }
    let Some(registrar) = &trunk.registrar else {
        return Err(Problem::new(
            key("registrar"),
            "required with mode = \"register\" (e.g. \"sip:pbx.example.com\")",
        ));
    };
    check_uri(registrar, false).map_err(|reason| Problem::new(key("registrar"), reason))?;
    if let Some(proxy) = &trunk.outbound_proxy {
        check_uri(proxy, true).map_err(|reason| Problem::new(key("outbound_proxy"), reason))?;
    }
    if let (Some(configured), Ok(Some(in_uri))) = (trunk.transport, uri_transport(registrar)) {
        if configured != in_uri {
            return Err(Problem::new(
                key("transport"),
                format!(
                    "{:?} contradicts the registrar's ;transport={}",
                    configured.as_str(),
                    in_uri.as_str()
                ),
            ));
        }
    }
    let Some(username) = &trunk.username else {
        return Err(Problem::new(
            key("username"),
            "required with mode = \"register\" (the user voxgate registers as)",
        ));
    };
    check_user(username).map_err(|reason| Problem::new(key("username"), reason))?;
    if let Some(user) = &trunk.contact_user {
        check_user(user).map_err(|reason| Problem::new(key("contact_user"), reason))?;
    }
    for (name, value) in [
        ("auth_username", &trunk.auth_username),
        ("realm", &trunk.realm),
    ] {
        if let Some(value) = value {
            check_quoted(value).map_err(|reason| Problem::new(key(name), reason))?;
        }
    }
    match (&trunk.password_env, &trunk.password_file) {
        (None, None) => {
            return Err(Problem::new(
                key("password_env"),
                "required with mode = \"register\": name the environment variable holding the \
                 password, or set password_file",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Problem::new(
                key("password_file"),
                "set only one of password_env and password_file",
            ))
        }
        (Some(name), None) => {
            if name.is_empty()
                || name.contains(['=', '\0'])
                || name.chars().any(char::is_whitespace)
            {
                return Err(Problem::new(
                    key("password_env"),
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        (None, Some(_)) => {}
    }
    if let Some(expires) = trunk.expires {
        if !EXPIRES_RANGE_SECS.contains(&expires) {
            return Err(Problem::new(
                key("expires"),
                format!(
                    "{expires} is outside {}..={} seconds",
                    EXPIRES_RANGE_SECS.start(),
                    EXPIRES_RANGE_SECS.end()
                ),
            ));
        }
    }
    if let Some(keepalive) = trunk.keepalive_secs {
        if !KEEPALIVE_RANGE_SECS.contains(&keepalive) {
            return Err(Problem::new(
                key("keepalive_secs"),
                format!(
                    "{keepalive} is outside {}..={} seconds",
                    KEEPALIVE_RANGE_SECS.start(),
                    KEEPALIVE_RANGE_SECS.end()
                ),
            ));
        }
    }
    if let Some(domain) = &trunk.domain {
        check_host(domain).map_err(|reason| Problem::new(key("domain"), reason))?;
    }
    Ok(())
}

/// Two register-mode trunks cannot share a Contact user: it tells which trunk a call came over.
pub(super) fn validate_contact_users(trunks: &[TrunkSettings]) -> Result<(), Problem> {
    let mut seen: Vec<(usize, String)> = Vec::new();
    for (index, trunk) in trunks.iter().enumerate() {
        if !trunk.is_register() {
            continue;
        }
        let Some(user) = trunk
            .contact_user
            .clone()
            .or_else(|| trunk.username.clone())
        else {
            continue;
        };
        if let Some((first, _)) = seen.iter().find(|(_, seen)| *seen == user) {
            return Err(Problem::new(
                format!("trunks[{index}].contact_user"),
                format!(
                    "{user:?} is already trunks[{first}]'s Contact user: set a distinct \
                     contact_user so calls can be told apart"
                ),
            ));
        }
        seen.push((index, user));
    }
    Ok(())
}

/// Reads the password of `trunks[index]` (a register-mode trunk) into `trunk.password`: from the
/// variable named by `password_env` (looked up with `lookup`), else the first line of
/// `password_file` without its line ending (other white space is kept: it may be part of the
/// password).
pub(super) fn resolve_password(
    trunk: &mut TrunkSettings,
    index: usize,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), Problem> {
    if !trunk.is_register() {
        return Ok(());
    }
    let key = |name: &str| format!("trunks[{index}].{name}");
    let password = match (&trunk.password_env, &trunk.password_file) {
        (Some(name), _) => lookup(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                Problem::new(
                    key("password_env"),
                    format!("environment variable {name} is not set (or empty)"),
                )
            })?,
        (None, Some(path)) => {
            read_first_line(path).map_err(|reason| Problem::new(key("password_file"), reason))?
        }
        (None, None) => return Ok(()),
    };
    trunk.password = Some(Secret::new(password));
    Ok(())
}

fn read_first_line(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!("{}: the first line is empty", path.display()));
    }
    Ok(line.to_owned())
}

/// A `sip:` URI voxgate can send to: host and optional port, optional `;transport=udp|tcp`;
/// no user part for a registrar (RFC 3261 §10.2: "The userinfo and "@" components of the SIP
/// URI MUST NOT be present").
fn check_uri(uri: &str, allow_user: bool) -> Result<(), String> {
    let uri = uri.trim();
    let scheme = uri
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("sip") => {}
        Some("sips") => {
            return Err(format!(
                "{uri:?}: sips (TLS) is not supported; use a sip: URI with transport udp or tcp"
            ))
        }
        _ => {
            return Err(format!(
                "{uri:?} is not a sip: URI (e.g. \"sip:pbx.example.com\")"
            ))
        }
    }
    if uri.contains(['<', '>', '"']) || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{uri:?}: give the bare URI, without <>, quotes or spaces"
        ));
    }
    if !allow_user && uri.contains('@') {
        return Err(format!(
            "{uri:?}: a registrar URI has no user part (RFC 3261 §10.2); put the user in \
             `username`"
        ));
    }
    let Some((host, port)) = uri_host_port(uri) else {
        return Err(format!("{uri:?}: no host, or a port that is not a number"));
    };
    check_host(&bracketed(&host)).map_err(|reason| format!("{uri:?}: {reason}"))?;
    if port == 0 {
        return Err(format!("{uri:?}: port 0"));
    }
    uri_transport(uri).map(|_| ())
}

/// The `;transport=` parameter of a URI; an error for anything but udp and tcp.
fn uri_transport(uri: &str) -> Result<Option<TrunkTransport>, String> {
    let params = uri.split(['?']).next().unwrap_or(uri).split(';').skip(1);
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("transport") {
            return match value.trim().to_ascii_lowercase().as_str() {
                "udp" => Ok(Some(TrunkTransport::Udp)),
                "tcp" => Ok(Some(TrunkTransport::Tcp)),
                other => Err(format!(
                    "{uri:?}: transport {other:?} is not supported (udp or tcp)"
                )),
            };
        }
    }
    Ok(None)
}

/// A host name, an IPv4 address, or an IPv6 address in brackets.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host:?} is not an IPv6 address"));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name or IP address"))
    }
}

/// The user part of a SIP URI, restricted to characters that need no escaping in any header
/// (RFC 3261 §25.1 `unreserved` plus a few `user-unreserved`).
fn check_user(user: &str) -> Result<(), String> {
    let valid = !user.is_empty()
        && user.len() <= 128
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,%".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{user:?}: use letters, digits and -_.!~*'()&=+$,% (1 to 128 characters)"
        ))
    }
}

/// A value that goes inside a quoted string (`username="…"`, `realm="…"`).
fn check_quoted(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if value.contains(['"', '\\']) || value.chars().any(char::is_control) {
        return Err(format!(
            "{value:?}: no quotes, backslashes or control characters"
        ));
    }
    Ok(())
}

/// An IPv6 literal in brackets, anything else as it is.
fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, Settings};
    use super::*;

    const BASE: &str = r#"
[sip]
listen = "127.0.0.1:5060"

[[agents]]
name = "echo"
kind = "echo"

[[routes]]
agent = "echo"
"#;

    const REGISTER: &str = r#"
[[trunks]]
name = "asterisk"
mode = "register"
registrar = "sip:pbx.example.com:5080"
username = "voxgate"
password_env = "PBX_PASSWORD"
"#;

    /// Loads `BASE` plus `trunks`, resolving secrets with `env`; (key, reason) on error.
    fn load(trunks: &str, env: &[(&str, &str)]) -> Result<Settings, (String, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("voxgate.toml");
        std::fs::write(&path, format!("{BASE}\n{trunks}")).expect("write");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let result = Settings::load_from(&path, Vec::new()).and_then(|mut settings| {
            settings.resolve_secrets(&path, |name| {
                env.iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
            })?;
            Ok(settings)
        });
        result.map_err(|error| match error {
            ConfigError::Invalid { key, reason, .. } => (key, reason),
            ConfigError::Load { reason, .. } => ("<load>".into(), reason),
        })
    }

    #[track_caller]
    fn assert_refused(trunks: &str, env: &[(&str, &str)], key: &str, reason_part: &str) {
        let (got, reason) = load(trunks, env).expect_err(key);
        assert_eq!(got, key, "reason: {reason}");
        assert!(
            reason.contains(reason_part),
            "{reason:?} lacks {reason_part:?}"
        );
    }

    #[test]
    fn a_register_trunk_takes_documented_defaults() {
        let settings = load(REGISTER, &[("PBX_PASSWORD", "s3cret pw")]).expect("valid");
        let trunk = &settings.trunks[0];
        assert!(trunk.is_register());
        let registration = trunk.registration().expect("register settings");
        assert_eq!(registration.registrar, "sip:pbx.example.com:5080");
        assert_eq!(registration.aor, "sip:voxgate@pbx.example.com");
        assert_eq!(registration.contact_user, "voxgate");
        assert_eq!(registration.transport, TrunkTransport::Udp);
        assert_eq!(registration.expires, Duration::from_secs(3_600));
        assert_eq!(registration.keepalive, None);
        assert_eq!(
            registration.next_hop,
            ("pbx.example.com".to_owned(), Some(5080))
        );
        assert_eq!(registration.password.expose(), "s3cret pw");
        assert!(
            !format!("{settings:?}").contains("s3cret"),
            "the password never shows"
        );
    }

    #[test]
    fn every_register_key_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("password");
        std::fs::write(&file, " pw with spaces \nsecond line\n").expect("write");
        let trunk = format!(
            r#"
[[trunks]]
name = "telnyx"
mode = "register"
registrar = "sip:sip.telnyx.com;transport=tcp"
outbound_proxy = "sip:[2001:db8::1]:5070;lr"
username = "user1"
auth_username = "auth-user1"
realm = "sip.telnyx.com"
password_file = {:?}
expires = 600
contact_user = "bot"
keepalive_secs = 30
domain = "example.net"
"#,
            file.display().to_string()
        );
        let settings = load(&trunk, &[]).expect("valid");
        let registration = settings.trunks[0]
            .registration()
            .expect("register settings");
        assert_eq!(registration.transport, TrunkTransport::Tcp);
        assert_eq!(registration.aor, "sip:user1@example.net");
        assert_eq!(registration.auth_username.as_deref(), Some("auth-user1"));
        assert_eq!(registration.realm.as_deref(), Some("sip.telnyx.com"));
        assert_eq!(registration.password.expose(), " pw with spaces ");
        assert_eq!(registration.expires, Duration::from_secs(600));
        assert_eq!(registration.contact_user, "bot");
        assert_eq!(registration.keepalive, Some(Duration::from_secs(30)));
        assert_eq!(
            registration.next_hop,
            ("2001:db8::1".to_owned(), Some(5070))
        );
        assert_eq!(
            registration.outbound_proxy.as_deref(),
            Some("sip:[2001:db8::1]:5070;lr")
        );
    }

    #[test]
    fn an_ipv6_registrar_is_bracketed_in_the_aor() {
        let trunk = REGISTER.replace("pbx.example.com:5080", "[2001:db8::5]");
        let settings = load(&trunk, &[("PBX_PASSWORD", "pw")]).expect("valid");
        let registration = settings.trunks[0]
            .registration()
            .expect("register settings");
        assert_eq!(registration.aor, "sip:voxgate@[2001:db8::5]");
        assert_eq!(registration.next_hop, ("2001:db8::5".to_owned(), None));
    }

    #[test]
    fn a_static_trunk_is_unchanged_and_refuses_registration_keys() {
        let settings = load(
            "[[trunks]]\nname = \"pbx\"\nallow_from = [\"10.0.0.0/8\"]\n",
            &[],
        )
        .expect("valid");
        assert!(!settings.trunks[0].is_register());
        assert!(settings.trunks[0].registration().is_none());
        assert_refused(
            "[[trunks]]\nname = \"pbx\"\nusername = \"u\"\n",
            &[],
            "trunks[0].username",
            "only used with mode = \"register\"",
        );
    }

    #[test]
    fn refused_register_settings_name_their_key() {
        let env = [("PBX_PASSWORD", "pw")];
        let cases: [(String, &str, &str); 16] = [
            (
                REGISTER.replace("registrar = \"sip:pbx.example.com:5080\"\n", ""),
                "trunks[0].registrar",
                "required",
            ),
            (
                REGISTER.replace("sip:pbx.example.com:5080", "sips:pbx.example.com"),
                "trunks[0].registrar",
                "TLS",
            ),
            (
                REGISTER.replace("sip:pbx.example.com:5080", "pbx.example.com"),
                "trunks[0].registrar",
                "not a sip: URI",
            ),
            (
                REGISTER.replace("sip:pbx.example.com:5080", "sip:1001@pbx.example.com"),
                "trunks[0].registrar",
                "no user part",
            ),
            (
                REGISTER.replace("pbx.example.com:5080", "pbx.example.com:port"),
                "trunks[0].registrar",
                "not a number",
            ),
            (
                REGISTER.replace("pbx.example.com:5080", "pbx.example.com;transport=tls"),
                "trunks[0].registrar",
                "udp or tcp",
            ),
            (
                format!("{REGISTER}outbound_proxy = \"proxy.example.com\"\n"),
                "trunks[0].outbound_proxy",
                "not a sip: URI",
            ),
            (
                REGISTER.replace("5080\"", "5080;transport=tcp\"\ntransport = \"udp\""),
                "trunks[0].transport",
                "contradicts",
            ),
            (
                REGISTER.replace("username = \"voxgate\"\n", ""),
                "trunks[0].username",
                "required",
            ),
            (
                REGISTER.replace("username = \"voxgate\"", "username = \"vox gate\""),
                "trunks[0].username",
                "use letters",
            ),
            (
                REGISTER.replace("password_env = \"PBX_PASSWORD\"\n", ""),
                "trunks[0].password_env",
                "required",
            ),
            (
                format!("{REGISTER}password_file = \"/etc/pw\"\n"),
                "trunks[0].password_file",
                "only one",
            ),
            (
                format!("{REGISTER}expires = 5\n"),
                "trunks[0].expires",
                "outside 10..=86400",
            ),
            (
                format!("{REGISTER}keepalive_secs = 0\n"),
                "trunks[0].keepalive_secs",
                "outside 5..=3600",
            ),
            (
                format!("{REGISTER}realm = \"a\\\"b\"\n"),
                "trunks[0].realm",
                "no quotes",
            ),
            (
                format!("{REGISTER}domain = \"pbx example\"\n"),
                "trunks[0].domain",
                "not a host",
            ),
        ];
        for (trunk, key, reason) in cases {
            assert_refused(&trunk, &env, key, reason);
        }
        assert_refused(
            &REGISTER.replace("mode = \"register\"", "mode = \"phone\""),
            &env,
            "trunks[0].mode",
            "\"phone\" is not \"static\" or \"register\"",
        );
        assert_refused(
            &format!("{REGISTER}transport = \"tls\"\n"),
            &env,
            "trunks[0].transport",
            "\"tls\" is not \"udp\" or \"tcp\"",
        );
    }

    #[test]
    fn a_missing_password_is_refused_at_start_up() {
        assert_refused(
            REGISTER,
            &[],
            "trunks[0].password_env",
            "environment variable PBX_PASSWORD is not set",
        );
        assert_refused(
            REGISTER,
            &[("PBX_PASSWORD", "")],
            "trunks[0].password_env",
            "not set (or empty)",
        );
        let unreadable = REGISTER.replace(
            "password_env = \"PBX_PASSWORD\"",
            "password_file = \"/nonexistent/voxgate-password\"",
        );
        assert_refused(&unreadable, &[], "trunks[0].password_file", "cannot read");
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\nsecret on line two\n").expect("write");
        let empty_first_line = REGISTER.replace(
            "password_env = \"PBX_PASSWORD\"",
            &format!("password_file = {:?}", empty.display().to_string()),
        );
        assert_refused(
            &empty_first_line,
            &[],
            "trunks[0].password_file",
            "first line is empty",
        );
    }

    #[test]
    fn the_shipped_register_example_loads_when_uncommented() {
        let shipped = include_str!("../../conf/voxgate.toml");
        let start = shipped
            .find("# [[trunks]]")
            .expect("a commented register-mode trunk in conf/voxgate.toml");
        let block: String = shipped[start..]
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| format!("{}\n", line.trim_start_matches('#').trim_start()))
            .collect();
        let settings =
            load(&block, &[("VOXGATE_ASTERISK_PASSWORD", "pw")]).expect("the example loads");
        let registration = settings.trunks[0]
            .registration()
            .expect("register settings");
        assert_eq!(registration.registrar, "sip:pbx.example.com");
        assert_eq!(registration.keepalive, Some(Duration::from_secs(30)));
        assert_eq!(
            registration.next_hop,
            ("proxy.example.com".to_owned(), None)
        );
    }

    #[test]
    fn two_register_trunks_need_distinct_contact_users() {
        let second = REGISTER.replace("asterisk", "freeswitch");
        let env = [("PBX_PASSWORD", "pw")];
        assert_refused(
            &format!("{REGISTER}{second}"),
            &env,
            "trunks[1].contact_user",
            "already trunks[0]'s Contact user",
        );
        let distinct = format!("{second}contact_user = \"bot2\"\n");
        assert!(load(&format!("{REGISTER}{distinct}"), &env).is_ok());
    }
}
