//! The digest-authentication keys of `[[trunks]]` (RFC 3261 §22, RFC 8760), both ways:
//!
//! - **Inbound**: `[[trunks.users]]` (`username`, `password_env` or `password_file`) plus
//!   `auth_realm`, `auth_algorithms`, `auth_nonce_lifetime_secs`. When any trunk has users,
//!   an INVITE from a source in no trunk's `allow_from` is challenged with 401 instead of
//!   refused; its user name picks the trunk (`call::inbound_auth`).
//! - **Outbound**: `outbound_username` with `outbound_password_env` or `outbound_password_file`:
//!   what voxgate answers a 401/407 to its own in-dialog requests (BYE, session refreshes) with.
//!   [`TrunkSettings::credentials`] is the one accessor the SIP side reads; register-mode trunks
//!   (issue #4, the REGISTER part) extend it with their registration credentials.
//!
//! Passwords are never in the file: they come from the environment or a file (its first line,
//! without the line ending) and are resolved once at start-up by
//! [`Settings::resolve_secrets`](super::Settings::resolve_secrets) into [`Secret`]s, which never
//! print.
//!
//! Checks: a realm is non-empty text without quotes, backslashes or control characters, and
//! each trunk with users has its own (the realm is how a caller's credentials find their trunk);
//! user names are non-empty, without quotes or control characters, and unique in their trunk;
//! every password has exactly one source; the algorithms are a non-empty list of distinct
//! `MD5`, `SHA-256`, `MD5-sess`, `SHA-256-sess`; the nonce lifetime is 5–3600 s; the `auth_*`
//! keys need users, and the `outbound_*` keys come as a user name plus one password source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, Problem, Secret, Settings, TrunkSettings};
use crate::sip::auth::{Algorithm, ClientCredentials};

/// The realm a trunk challenges with when `auth_realm` is not set.
pub const DEFAULT_AUTH_REALM: &str = "voxgate";

/// Algorithms offered when `auth_algorithms` is not set: MD5 alone. RFC 8760 clients answer the
/// topmost challenge they support, so MD5 listed first would be chosen anyway, and some clients
/// fail on a challenge they do not know (SIPp 3.6 answers only the first one, and only MD5).
pub const DEFAULT_AUTH_ALGORITHMS: [Algorithm; 1] = [Algorithm::Md5];

/// How long a nonce stays good when `auth_nonce_lifetime_secs` is not set.
pub const DEFAULT_NONCE_LIFETIME_SECS: u64 = 300;

/// The shortest and longest nonce lifetimes accepted, seconds.
pub const NONCE_LIFETIME_RANGE_SECS: std::ops::RangeInclusive<u64> = 5..=3_600;

/// One `[[trunks.users]]` entry: a caller that may authenticate on this trunk.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkUser {
    /// The digest user name the caller sends (e.g. Asterisk's `outbound_auth` username).
    pub username: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password, once resolved (never read from the configuration file itself).
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl TrunkSettings {
    /// Whether callers outside `allow_from` may authenticate on this trunk (it has users).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// The realm this trunk challenges with.
    pub fn auth_realm(&self) -> &str {
        self.auth_realm.as_deref().unwrap_or(DEFAULT_AUTH_REALM)
    }

    /// The algorithms offered, one challenge each, in order.
    pub fn auth_algorithms(&self) -> Vec<Algorithm> {
        self.auth_algorithms
            .clone()
            .unwrap_or_else(|| DEFAULT_AUTH_ALGORITHMS.to_vec())
    }

    /// How long a nonce stays good.
    pub fn auth_nonce_lifetime(&self) -> Duration {
        Duration::from_secs(
            self.auth_nonce_lifetime_secs
                .unwrap_or(DEFAULT_NONCE_LIFETIME_SECS),
        )
    }

    /// The credentials voxgate answers 401/407 challenges with on this trunk, once
    /// [`Settings::resolve_secrets`] has run; `None` when the trunk has none (a challenge is then
    /// not answered). Today: `outbound_username` + `outbound_password_*`. The one place the SIP
    /// side asks, so register-mode trunks can answer with their registration credentials by
    /// falling back to them here when no `outbound_*` keys are set.
    pub fn credentials(&self) -> Option<ClientCredentials> {
        if let (Some(username), Some(password)) = (
            self.outbound_username.as_ref(),
            self.outbound_password.clone(),
        ) {
            return Some(ClientCredentials::new(username.clone(), password));
        }
        // A register-mode trunk answers with its registration credentials.
        let username = self.username.as_ref()?;
        let password = self.password.clone()?;
        let mut credentials = ClientCredentials::new(username.clone(), password);
        credentials.auth_username = self.auth_username.clone();
        credentials.realm = self.realm.clone();
        Some(credentials)
    }

    /// Checks the digest keys of `trunks[index]`; `realms` collects the realms of the trunks
    /// before it that have users, with their index.
    pub(super) fn validate_digest(
        &self,
        index: usize,
        realms: &mut Vec<(String, usize)>,
    ) -> Result<(), Problem> {
        let key = format!("trunks[{index}]");
        if !self.has_users() {
            let stray = [
                ("auth_realm", self.auth_realm.is_some()),
                ("auth_algorithms", self.auth_algorithms.is_some()),
                (
                    "auth_nonce_lifetime_secs",
                    self.auth_nonce_lifetime_secs.is_some(),
                ),
            ];
            if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(Problem::new(
                    format!("{key}.{name}"),
                    "set, but the trunk has no [[trunks.users]]: add users, or remove the key",
                ));
            }
        } else {
            let realm = self.auth_realm();
            if realm.trim().is_empty()
                || realm
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(Problem::new(
                    format!("{key}.auth_realm"),
                    format!("{realm:?}: use non-empty text without quotes, backslashes or control characters"),
                ));
            }
            if let Some((_, first)) = realms.iter().find(|(r, _)| r == realm) {
                return Err(Problem::new(
                    format!("{key}.auth_realm"),
                    format!(
                        "{realm:?} is already the realm of trunks[{first}]: give each trunk with \
                         users its own auth_realm (a caller's realm tells which trunk it is)"
                    ),
                ));
            }
            realms.push((realm.to_owned(), index));
            if let Some(algorithms) = &self.auth_algorithms {
                if algorithms.is_empty() {
                    return Err(Problem::new(
                        format!("{key}.auth_algorithms"),
                        "empty: list at least one of \"MD5\", \"SHA-256\"",
                    ));
                }
                for (i, algorithm) in algorithms.iter().enumerate() {
                    if algorithms[..i].contains(algorithm) {
                        return Err(Problem::new(
                            format!("{key}.auth_algorithms[{i}]"),
                            format!("{algorithm} is listed twice"),
                        ));
                    }
                }
            }
            if let Some(secs) = self.auth_nonce_lifetime_secs {
                if !NONCE_LIFETIME_RANGE_SECS.contains(&secs) {
                    return Err(Problem::new(
                        format!("{key}.auth_nonce_lifetime_secs"),
                        format!(
                            "{secs} is outside {}..={}",
                            NONCE_LIFETIME_RANGE_SECS.start(),
                            NONCE_LIFETIME_RANGE_SECS.end()
                        ),
                    ));
                }
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            let user_key = format!("{key}.users[{i}]");
            if !is_digest_text(&user.username) {
                return Err(Problem::new(
                    format!("{user_key}.username"),
                    format!(
                        "{:?}: use non-empty text without quotes, backslashes or control \
                         characters",
                        user.username
                    ),
                ));
            }
            if let Some(first) = self.users[..i]
                .iter()
                .position(|other| other.username == user.username)
            {
                return Err(Problem::new(
                    format!("{user_key}.username"),
                    format!("{:?} is already {key}.users[{first}]", user.username),
                ));
            }
            one_password_source(
                &user_key,
                "password_env",
                user.password_env.as_deref(),
                "password_file",
                user.password_file.as_deref(),
            )?;
        }
        match &self.outbound_username {
            Some(username) => {
                if !is_digest_text(username) {
                    return Err(Problem::new(
                        format!("{key}.outbound_username"),
                        format!(
                            "{username:?}: use non-empty text without quotes, backslashes or \
                             control characters"
                        ),
                    ));
                }
                one_password_source(
                    &key,
                    "outbound_password_env",
                    self.outbound_password_env.as_deref(),
                    "outbound_password_file",
                    self.outbound_password_file.as_deref(),
                )?;
            }
            None => {
                if self.outbound_password_env.is_some() || self.outbound_password_file.is_some() {
                    let name = if self.outbound_password_env.is_some() {
                        "outbound_password_env"
                    } else {
                        "outbound_password_file"
                    };
                    return Err(Problem::new(
                        format!("{key}.{name}"),
                        "set without outbound_username: add the user name voxgate answers \
                         challenges with",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Settings {
    /// Reads every trunk password (users and outbound credentials) from the environment
    /// (through `lookup`) or its file.
    pub(super) fn resolve_trunk_secrets(
        &mut self,
        file: &Path,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (index, trunk) in self.trunks.iter_mut().enumerate() {
            let key = format!("trunks[{index}]");
            for (i, user) in trunk.users.iter_mut().enumerate() {
                user.password = Some(read_password(
                    file,
                    &format!("{key}.users[{i}]"),
                    ("password_env", user.password_env.as_deref()),
                    ("password_file", user.password_file.as_deref()),
                    lookup,
                )?);
            }
            if trunk.outbound_username.is_some() {
                trunk.outbound_password = Some(read_password(
                    file,
                    &key,
                    (
                        "outbound_password_env",
                        trunk.outbound_password_env.as_deref(),
                    ),
                    (
                        "outbound_password_file",
                        trunk.outbound_password_file.as_deref(),
                    ),
                    lookup,
                )?);
            }
        }
        Ok(())
    }
}

/// `auth_algorithms`: names as RFC 7616 spells them, case-insensitive.
pub(super) fn algorithms<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Algorithm>>, D::Error> {
    let Some(names) = Option::<Vec<String>>::deserialize(deserializer)? else {
        return Ok(None);
    };
    names
        .iter()
        .map(|name| {
            Algorithm::from_token(name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{name:?} is not a digest algorithm voxgate knows (MD5, SHA-256, MD5-sess, \
                     SHA-256-sess)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Text that can go inside a quoted digest parameter as it is.
fn is_digest_text(text: &str) -> bool {
    !text.trim().is_empty()
        && !text
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
}

fn one_password_source(
    key: &str,
    env_name: &str,
    env: Option<&str>,
    file_name: &str,
    file: Option<&Path>,
) -> Result<(), Problem> {
    match (env, file) {
        (Some(_), Some(_)) => Err(Problem::new(
            format!("{key}.{file_name}"),
            format!("set together with {env_name}: give the password one way"),
        )),
        (None, None) => Err(Problem::new(
            key,
            format!("no password: set {env_name} (an environment variable's name) or {file_name}"),
        )),
        (Some(name), None) if name.trim().is_empty() => Err(Problem::new(
            format!("{key}.{env_name}"),
            "empty: name the environment variable that holds the password",
        )),
        _ => Ok(()),
    }
}

fn read_password(
    file: &Path,
    key: &str,
    (env_key, env): (&str, Option<&str>),
    (file_key, path): (&str, Option<&Path>),
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let error = |key: String, reason: String| ConfigError::Invalid {
        file: file.to_owned(),
        key,
        reason,
    };
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| {
            error(
                format!("{key}.{file_key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let password = text.lines().next().unwrap_or("");
        if password.is_empty() {
            return Err(error(
                format!("{key}.{file_key}"),
                format!(
                    "{} is empty (the password is its first line)",
                    path.display()
                ),
            ));
        }
        return Ok(Secret::new(password));
    }
    let name = env.unwrap_or_default();
    match lookup(name) {
        Some(password) if !password.is_empty() => Ok(Secret::from(password)),
        _ => Err(error(
            format!("{key}.{env_key}"),
            format!("environment variable {name} is not set (or empty)"),
        )),
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

    /// Loads `BASE` plus `trunks` and resolves secrets with `env`; errors as (key, reason).
    fn load(trunks: &str, env: &[(&str, &str)]) -> Result<Settings, (String, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("voxgate.toml");
        std::fs::write(&path, format!("{BASE}\n{trunks}")).expect("write");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(&path, Vec::new())
            .and_then(|mut settings| {
                settings.resolve_secrets(&path, |name| {
                    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
                })?;
                Ok(settings)
            })
            .map_err(|error| match error {
                ConfigError::Invalid { key, reason, .. } => (key, reason),
                ConfigError::Load { reason, .. } => ("<load>".into(), reason),
            })
    }

    #[track_caller]
    fn refused(trunks: &str, env: &[(&str, &str)], key: &str, reason_part: &str) {
        match load(trunks, env) {
            Ok(_) => panic!("loaded:\n{trunks}"),
            Err((got, reason)) => {
                assert_eq!(got, key, "reason: {reason}");
                assert!(reason.contains(reason_part), "{reason}");
            }
        }
    }

    const USERS: &str = r#"
[[trunks]]
name = "pbx"
allow_from = ["192.0.2.10/32"]
auth_algorithms = ["sha-256", "MD5"]
auth_nonce_lifetime_secs = 60
outbound_username = "voxgate"
outbound_password_env = "OUT_PW"
[[trunks.users]]
username = "pbx1"
password_env = "PBX1_PW"
"#;

    #[test]
    fn users_and_outbound_credentials_resolve_from_the_environment_and_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pbx2.pass");
        std::fs::write(&file, "from file  \r\nsecond line\n").expect("write");
        let text = format!(
            "{USERS}[[trunks.users]]\nusername = \"pbx2\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let settings = load(&text, &[("PBX1_PW", "one"), ("OUT_PW", "out")]).expect("loads");
        let trunk = &settings.trunks[0];
        assert!(trunk.has_users());
        assert_eq!(trunk.auth_realm(), "voxgate");
        assert_eq!(trunk.auth_algorithms(), [Algorithm::Sha256, Algorithm::Md5]);
        assert_eq!(trunk.auth_nonce_lifetime(), Duration::from_secs(60));
        let passwords: Vec<&str> = trunk
            .users
            .iter()
            .map(|u| u.password.as_ref().expect("resolved").expose())
            .collect();
        assert_eq!(passwords, ["one", "from file  "], "first line, as written");
        let credentials = trunk.credentials().expect("outbound credentials");
        assert_eq!(credentials.username, "voxgate");
        assert_eq!(credentials.password.expose(), "out");
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("\"one\"")
                && !debug.contains("from file")
                && !debug.contains("\"out\""),
            "passwords never print: {debug}"
        );
    }

    #[test]
    fn defaults_without_auth_keys() {
        let text = "[[trunks]]\nname = \"pbx\"\n[[trunks.users]]\nusername = \"a\"\npassword_env = \"A\"\n";
        let settings = load(text, &[("A", "x")]).expect("loads");
        let trunk = &settings.trunks[0];
        assert_eq!(trunk.auth_realm(), DEFAULT_AUTH_REALM);
        assert_eq!(trunk.auth_algorithms(), DEFAULT_AUTH_ALGORITHMS);
        assert_eq!(
            trunk.auth_nonce_lifetime(),
            Duration::from_secs(DEFAULT_NONCE_LIFETIME_SECS)
        );
        assert!(trunk.credentials().is_none());
    }

    #[test]
    fn missing_passwords_name_the_variable_or_file() {
        refused(
            USERS,
            &[("OUT_PW", "out")],
            "trunks[0].users[0].password_env",
            "environment variable PBX1_PW is not set",
        );
        refused(
            USERS,
            &[("PBX1_PW", "one"), ("OUT_PW", "")],
            "trunks[0].outbound_password_env",
            "OUT_PW is not set (or empty)",
        );
        let missing = "[[trunks]]\nname = \"pbx\"\n[[trunks.users]]\nusername = \"a\"\npassword_file = \"/nonexistent/voxgate.pass\"\n";
        refused(
            missing,
            &[],
            "trunks[0].users[0].password_file",
            "cannot read /nonexistent/voxgate.pass",
        );
    }

    #[test]
    fn password_sources_are_exactly_one() {
        let none = "[[trunks]]\nname = \"pbx\"\n[[trunks.users]]\nusername = \"a\"\n";
        refused(
            none,
            &[],
            "trunks[0].users[0]",
            "no password: set password_env",
        );
        let both = "[[trunks]]\nname = \"pbx\"\n[[trunks.users]]\nusername = \"a\"\npassword_env = \"A\"\npassword_file = \"/x\"\n";
        refused(both, &[], "trunks[0].users[0].password_file", "one way");
        let no_user = "[[trunks]]\nname = \"pbx\"\noutbound_password_env = \"A\"\n";
        refused(
            no_user,
            &[],
            "trunks[0].outbound_password_env",
            "outbound_username",
        );
        let no_password = "[[trunks]]\nname = \"pbx\"\noutbound_username = \"v\"\n";
        refused(no_password, &[], "trunks[0]", "outbound_password_env");
    }

    #[test]
    fn refuses_unusable_names_realms_algorithms_and_lifetimes() {
        let user = "[[trunks.users]]\nusername = \"a\"\npassword_env = \"A\"\n";
        let trunk = |keys: &str| format!("[[trunks]]\nname = \"pbx\"\n{keys}\n{user}");
        refused(
            &trunk("auth_algorithms = [\"SHA-512-256\"]"),
            &[],
            "trunks[0].auth_algorithms",
            "not a digest algorithm voxgate knows",
        );
        refused(
            &trunk("auth_algorithms = []"),
            &[],
            "trunks[0].auth_algorithms",
            "empty",
        );
        refused(
            &trunk("auth_algorithms = [\"MD5\", \"md5\"]"),
            &[],
            "trunks[0].auth_algorithms[1]",
            "twice",
        );
        refused(
            &trunk("auth_realm = \"a\\\"b\""),
            &[],
            "trunks[0].auth_realm",
            "quotes",
        );
        refused(
            &trunk("auth_nonce_lifetime_secs = 4"),
            &[],
            "trunks[0].auth_nonce_lifetime_secs",
            "outside 5..=3600",
        );
        let dup_user = format!("{}{user}", trunk(""));
        refused(&dup_user, &[], "trunks[0].users[1].username", "already");
        let empty_user = "[[trunks]]\nname = \"pbx\"\n[[trunks.users]]\nusername = \" \"\npassword_env = \"A\"\n";
        refused(empty_user, &[], "trunks[0].users[0].username", "non-empty");
        let stray = "[[trunks]]\nname = \"pbx\"\nauth_realm = \"x\"\n";
        refused(stray, &[], "trunks[0].auth_realm", "no [[trunks.users]]");
        let same_realm = format!("{}\n[[trunks]]\nname = \"other\"\n{user}", trunk(""));
        refused(
            &same_realm,
            &[],
            "trunks[1].auth_realm",
            "already the realm of trunks[0]",
        );
        let own_realm = format!(
            "{}\n[[trunks]]\nname = \"other\"\nauth_realm = \"other\"\n{user}",
            trunk("")
        );
        assert!(load(&own_realm, &[("A", "x")]).is_ok());
    }
}

#[cfg(test)]
mod credentials_tests {
    use super::super::Settings;

    fn settings(trunks: &str, env: &[(&str, &str)]) -> Settings {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("voxgate.toml");
        let text = format!(
            "[sip]\nlisten = \"127.0.0.1:5060\"\n[[agents]]\nname = \"echo\"\nkind = \"echo\"\n\
             [[routes]]\nagent = \"echo\"\n{trunks}"
        );
        std::fs::write(&path, text).expect("write");
        let mut settings = Settings::load_from(&path, Vec::new()).expect("valid");
        settings
            .resolve_secrets(&path, |name| {
                env.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
            .expect("secrets");
        settings
    }

    #[test]
    fn a_register_trunk_answers_in_dialog_challenges_with_its_registration_credentials() {
        let settings = settings(
            "[[trunks]]\nname = \"pbx\"\nmode = \"register\"\nregistrar = \"sip:192.0.2.10\"\n\
             username = \"voxgate\"\nauth_username = \"vg-auth\"\nrealm = \"asterisk\"\n\
             password_env = \"REG_PW\"\n",
            &[("REG_PW", "s3cret")],
        );
        let credentials = settings.trunks[0].credentials().expect("credentials");
        assert_eq!(credentials.username, "voxgate");
        assert_eq!(credentials.auth_username.as_deref(), Some("vg-auth"));
        assert_eq!(credentials.password.expose(), "s3cret");
        assert_eq!(credentials.realm.as_deref(), Some("asterisk"));
    }

    #[test]
    fn outbound_credentials_win_and_a_plain_static_trunk_has_none() {
        let settings = settings(
            "[[trunks]]\nname = \"a\"\nallow_from = [\"192.0.2.0/24\"]\n\
             outbound_username = \"out\"\noutbound_password_env = \"OUT_PW\"\n\
             [[trunks]]\nname = \"b\"\nallow_from = [\"198.51.100.0/24\"]\n",
            &[("OUT_PW", "pw")],
        );
        let a = settings.trunks[0].credentials().expect("credentials");
        assert_eq!(a.username, "out");
        assert!(settings.trunks[1].credentials().is_none());
    }
}
