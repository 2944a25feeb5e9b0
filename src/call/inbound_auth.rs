//! Digest authentication of new INVITEs whose source is in no trunk's `allow_from` (RFC 3261
//! §22.4 with RFC 8760), for the switchboard's admission. Sans-IO: `now` comes with each check.
//!
//! ```text
//! check(now, method, Authorization values):
//!   credentials for one trunk's realm ──verify──▶ Ok { trunk, user }        → admit on the trunk
//!                                               ├ stale nonce / replayed nc → 401 stale=true
//!                                               ├ unknown user, wrong password,
//!                                               │   algorithm or qop not offered → 403
//!                                               └ (cannot happen: parsed above) → 401
//!   no credentials for any realm of ours ────────────────────────────────────▶ 401, one challenge
//!                                                    per algorithm for each trunk with users
//!   credentials that do not parse (and none of ours) ─────────────────────────▶ 400
//! ```
//! Each trunk with `[[trunks.users]]` is one realm with its own [`DigestVerifier`] (configuration
//! checks give each its own realm), so the realm a caller answers names the trunk, and the user
//! name is looked up among that trunk's users only. A 403 says only "Forbidden": which of user
//! or password was wrong is for the log, not for the peer. Malformed credentials get 400 (a
//! broken client, not a wrong password, and the PBX admin sees "Bad Request"). The verifiers are
//! created at the first check, so their nonce clocks start from a `now` like every other machine.
//!
//! Every decision is counted per trunk and [`AuthResult`] in [`InboundAuthStats`] (`io/`
//! exports it as `voxgate_inbound_auth_total{trunk,result}`); a first challenge counts once for
//! each trunk that offered one, and malformed credentials count for the trunk when only one
//! trunk has users, else with an empty trunk label.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::config::{Secret, Settings};
use crate::sip::auth::{
    AuthHeader, Credentials, DigestVerifier, ForbiddenReason, ParseError, Verdict, VerifierConfig,
};

/// What became of one INVITE's credentials: a bounded set, the `result` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthResult {
    /// The credentials are good: the call is admitted on the user's trunk.
    Ok,
    /// No credentials for our realms yet: 401 with a fresh challenge.
    Challenged,
    /// A right password with a nonce expired or not ours (e.g. from before a restart): 401
    /// with `stale=true`.
    Stale,
    /// A right password with a nonce count already used (a replayed request): 401 with
    /// `stale=true`, so a real client retries with a fresh nonce and a replay gets nowhere.
    Replayed,
    /// The response does not match the user's password: 403.
    WrongPassword,
    /// No such user on the trunk whose realm was answered: 403.
    UnknownUser,
    /// An algorithm or qop voxgate did not offer: 403.
    Unsupported,
    /// The Authorization header does not parse: 400.
    Malformed,
}

impl AuthResult {
    /// Every result, in label order.
    pub const ALL: [AuthResult; 8] = [
        AuthResult::Ok,
        AuthResult::Challenged,
        AuthResult::Stale,
        AuthResult::Replayed,
        AuthResult::WrongPassword,
        AuthResult::UnknownUser,
        AuthResult::Unsupported,
        AuthResult::Malformed,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Challenged => "challenged",
            AuthResult::Stale => "stale",
            AuthResult::Replayed => "replayed",
            AuthResult::WrongPassword => "wrong_password",
            AuthResult::UnknownUser => "unknown_user",
            AuthResult::Unsupported => "unsupported",
            AuthResult::Malformed => "malformed",
        }
    }

    /// The final response (status and reason phrase) for the INVITE; `None` when admitted.
    pub fn response(self) -> Option<(u16, &'static str)> {
        match self {
            AuthResult::Ok => None,
            AuthResult::Challenged | AuthResult::Stale | AuthResult::Replayed => {
                Some((401, "Unauthorized"))
            }
            AuthResult::WrongPassword | AuthResult::UnknownUser | AuthResult::Unsupported => {
                Some((403, "Forbidden"))
            }
            AuthResult::Malformed => Some((400, "Bad Request (malformed Authorization header)")),
        }
    }
}

/// The decision on one request, from [`InboundAuth::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What happened.
    pub result: AuthResult,
    /// The trunk whose realm the credentials answered (the trunk to admit on when `Ok`).
    pub trunk: Option<String>,
    /// The user name in the credentials, when they parsed.
    pub username: Option<String>,
    /// The `WWW-Authenticate` headers for a 401 (empty otherwise).
    pub headers: Vec<AuthHeader>,
}

/// Counts of decisions by trunk and result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundAuthStats {
    counts: BTreeMap<(String, AuthResult), u64>,
}

impl InboundAuthStats {
    /// Every (trunk, result) counted so far with its count.
    pub fn iter(&self) -> impl Iterator<Item = (&str, AuthResult, u64)> {
        self.counts
            .iter()
            .map(|((trunk, result), count)| (trunk.as_str(), *result, *count))
    }

    /// The count for one trunk and result (0 when none).
    pub fn get(&self, trunk: &str, result: AuthResult) -> u64 {
        self.counts
            .get(&(trunk.to_owned(), result))
            .copied()
            .unwrap_or(0)
    }

    fn count(&mut self, trunk: &str, result: AuthResult) {
        *self.counts.entry((trunk.to_owned(), result)).or_default() += 1;
    }
}

/// One trunk with users: its realm's verifier and its users' passwords.
struct Gate {
    trunk: String,
    config: VerifierConfig,
    verifier: Option<DigestVerifier>,
    users: HashMap<String, Secret>,
}

impl Gate {
    fn verifier(&mut self, now: Instant) -> &mut DigestVerifier {
        let config = &self.config;
        self.verifier
            .get_or_insert_with(|| DigestVerifier::new(now, config.clone()))
    }
}

/// The challenge-and-verify gate for callers outside `allow_from`.
pub struct InboundAuth {
    gates: Vec<Gate>,
    stats: InboundAuthStats,
}

impl InboundAuth {
    /// The gate for every trunk with users, or `None` when no trunk has any (then an unknown
    /// source is refused with 403, as without digest authentication). Passwords must have been
    /// resolved ([`Settings::resolve_secrets`]); a user without one is left out.
    pub fn new(settings: &Settings) -> Option<InboundAuth> {
        let gates: Vec<Gate> = settings
            .trunks
            .iter()
            .filter(|trunk| trunk.has_users())
            .map(|trunk| Gate {
                trunk: trunk.name.clone(),
                config: VerifierConfig {
                    algorithms: trunk.auth_algorithms(),
                    nonce_lifetime: trunk.auth_nonce_lifetime(),
                    ..VerifierConfig::new(trunk.auth_realm())
                },
                verifier: None,
                users: trunk
                    .users
                    .iter()
                    .filter_map(|user| Some((user.username.clone(), user.password.clone()?)))
                    .collect(),
            })
            .collect();
        (!gates.is_empty()).then(|| InboundAuth {
            gates,
            stats: InboundAuthStats::default(),
        })
    }

    /// Decides on a request (`method`, its `Authorization` values) from a source no trunk
    /// allows; see the module table.
    pub fn check<S: AsRef<str>>(
        &mut self,
        now: Instant,
        method: &str,
        authorizations: &[S],
    ) -> Checked {
        let mut broken = None;
        let mut ours = None;
        for value in authorizations {
            let value = value.as_ref();
            match Credentials::parse(value) {
                Ok(credentials) => {
                    if let Some(index) = self
                        .gates
                        .iter()
                        .position(|gate| gate.config.realm == credentials.realm)
                    {
                        ours = Some((index, credentials.username, value));
                        break;
                    }
                }
                // Another scheme (Basic, Bearer) is not for us: as if absent.
                Err(ParseError::NotDigest { .. }) => {}
                Err(ParseError::UnsupportedAlgorithm(_) | ParseError::UnsupportedQop(_)) => {
                    broken.get_or_insert(AuthResult::Unsupported);
                }
                Err(_) => broken = Some(AuthResult::Malformed),
            }
        }
        if let Some((index, username, value)) = ours {
            return self.verify(now, method, index, username, value);
        }
        if let Some(result) = broken {
            // The realm is unknown: the trunk is the only one that could be meant, if any.
            let trunk = match self.gates.as_slice() {
                [gate] => Some(gate.trunk.clone()),
                _ => None,
            };
            self.stats
                .count(trunk.as_deref().unwrap_or_default(), result);
            return Checked {
                result,
                trunk,
                username: None,
                headers: Vec::new(),
            };
        }
        let mut headers = Vec::new();
        for gate in &mut self.gates {
            headers.extend(gate.verifier(now).challenge(now, false));
            self.stats.count(&gate.trunk, AuthResult::Challenged);
        }
        Checked {
            result: AuthResult::Challenged,
            trunk: None,
            username: None,
            headers,
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> &InboundAuthStats {
        &self.stats
    }

    fn verify(
        &mut self,
        now: Instant,
        method: &str,
        index: usize,
        username: String,
        value: &str,
    ) -> Checked {
        let Some(gate) = self.gates.get_mut(index) else {
            // `index` came from a search of `gates` just before.
            return Checked {
                result: AuthResult::Malformed,
                trunk: None,
                username: Some(username),
                headers: Vec::new(),
            };
        };
        let replays_before = gate.verifier(now).stats().replays;
        let users = &gate.users;
        let verifier = gate
            .verifier
            .get_or_insert_with(|| DigestVerifier::new(now, gate.config.clone()));
        let verdict = verifier.verify(now, method, [value], |user| users.get(user));
        let replayed = verifier.stats().replays > replays_before;
        let (result, headers) = match verdict {
            Verdict::Authorized { .. } => (AuthResult::Ok, Vec::new()),
            Verdict::Challenge {
                stale: true,
                headers,
            } if replayed => (AuthResult::Replayed, headers),
            Verdict::Challenge {
                stale: true,
                headers,
            } => (AuthResult::Stale, headers),
            Verdict::Challenge {
                stale: false,
                headers,
            } => (AuthResult::Challenged, headers),
            Verdict::Forbidden(reason) => (
                match reason {
                    ForbiddenReason::UnknownUser => AuthResult::UnknownUser,
                    ForbiddenReason::WrongPassword => AuthResult::WrongPassword,
                    ForbiddenReason::UnsupportedAlgorithm | ForbiddenReason::UnsupportedQop => {
                        AuthResult::Unsupported
                    }
                    ForbiddenReason::Malformed => AuthResult::Malformed,
                },
                Vec::new(),
            ),
        };
        let trunk = gate.trunk.clone();
        self.stats.count(&trunk, result);
        Checked {
            result,
            trunk: Some(trunk),
            username: Some(username),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TrunkSettings, TrunkUser};
    use crate::sip::auth::{
        Algorithm, ChallengeOrigin, ChallengeOutcome, ClientCredentials, DigestClient,
    };
    use crate::testkit::{secs, settings, t0};

    const URI: &str = "sip:echo@192.0.2.1:5060";

    fn user(name: &str, password: &str) -> TrunkUser {
        TrunkUser {
            username: name.into(),
            password_env: Some("X".into()),
            password: Some(Secret::new(password)),
            ..TrunkUser::default()
        }
    }

    fn two_trunks() -> InboundAuth {
        let mut settings = settings();
        settings.trunks.push(TrunkSettings {
            name: "branch".into(),
            users: vec![user("pbx1", "pw1"), user("pbx2", "pw2")],
            ..TrunkSettings::default()
        });
        settings.trunks.push(TrunkSettings {
            name: "cloud".into(),
            users: vec![user("pbx1", "other")],
            auth_realm: Some("cloud.example".into()),
            auth_algorithms: Some(vec![Algorithm::Sha256, Algorithm::Md5]),
            ..TrunkSettings::default()
        });
        InboundAuth::new(&settings).expect("trunks with users")
    }

    /// A client that answered `auth`'s first challenge (for `realm`).
    fn client(auth: &mut InboundAuth, name: &str, password: &str, realm: &str) -> DigestClient {
        let first = auth.check(t0(), "INVITE", &[""; 0]);
        assert_eq!(first.result, AuthResult::Challenged);
        let mut client = DigestClient::new(ClientCredentials {
            realm: Some(realm.into()),
            ..ClientCredentials::new(name, Secret::new(password))
        });
        let values: Vec<&str> = first.headers.iter().map(|h| h.value.as_str()).collect();
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, values, [""; 0]),
            ChallengeOutcome::Retry { stale: false }
        );
        client
    }

    fn answer(auth: &mut InboundAuth, client: &mut DigestClient) -> (Checked, String) {
        let value = client.authorize("INVITE", URI, b"").remove(0).value;
        (auth.check(t0() + secs(1), "INVITE", &[&value]), value)
    }

    #[test]
    fn no_trunk_with_users_means_no_gate() {
        assert!(InboundAuth::new(&settings()).is_none());
    }

    #[test]
    fn first_challenge_offers_every_trunks_realm_in_order() {
        let mut auth = two_trunks();
        let first = auth.check(t0(), "INVITE", &["Basic dXNlcjpwdw=="]);
        assert_eq!(first.result.response(), Some((401, "Unauthorized")));
        let offered: Vec<(String, Algorithm)> = first
            .headers
            .iter()
            .map(|h| {
                assert_eq!(h.name, "WWW-Authenticate");
                let challenge = crate::sip::auth::Challenge::parse(&h.value).unwrap();
                (challenge.realm, challenge.algorithm)
            })
            .collect();
        assert_eq!(
            offered,
            [
                ("voxgate".to_owned(), Algorithm::Md5),
                ("cloud.example".to_owned(), Algorithm::Sha256),
                ("cloud.example".to_owned(), Algorithm::Md5),
            ]
        );
        assert_eq!(auth.stats().get("branch", AuthResult::Challenged), 1);
        assert_eq!(auth.stats().get("cloud", AuthResult::Challenged), 1);
    }

    #[test]
    fn the_realm_answered_picks_the_trunk_and_its_users() {
        let mut auth = two_trunks();
        let mut branch = client(&mut auth, "pbx2", "pw2", "voxgate");
        let (checked, _) = answer(&mut auth, &mut branch);
        assert_eq!(
            (
                checked.result,
                checked.trunk.as_deref(),
                checked.username.as_deref()
            ),
            (AuthResult::Ok, Some("branch"), Some("pbx2"))
        );
        // The same user name on the other trunk has that trunk's password.
        let mut cloud = client(&mut auth, "pbx1", "other", "cloud.example");
        let (checked, _) = answer(&mut auth, &mut cloud);
        assert_eq!(
            (checked.result, checked.trunk.as_deref()),
            (AuthResult::Ok, Some("cloud"))
        );
        let mut wrong = client(&mut auth, "pbx1", "pw1", "cloud.example");
        let (checked, _) = answer(&mut auth, &mut wrong);
        assert_eq!(checked.result, AuthResult::WrongPassword);
        assert_eq!(checked.result.response(), Some((403, "Forbidden")));
        assert_eq!(auth.stats().get("cloud", AuthResult::WrongPassword), 1);
    }

    #[test]
    fn unknown_user_is_forbidden_on_the_realms_trunk() {
        let mut auth = two_trunks();
        let mut stranger = client(&mut auth, "mallory", "pw1", "voxgate");
        let (checked, _) = answer(&mut auth, &mut stranger);
        assert_eq!(
            (
                checked.result,
                checked.trunk.as_deref(),
                checked.username.as_deref()
            ),
            (AuthResult::UnknownUser, Some("branch"), Some("mallory"))
        );
    }

    #[test]
    fn replayed_credentials_get_a_stale_challenge_and_are_counted_apart() {
        let mut auth = two_trunks();
        let mut branch = client(&mut auth, "pbx1", "pw1", "voxgate");
        let (first, value) = answer(&mut auth, &mut branch);
        assert_eq!(first.result, AuthResult::Ok);
        let replay = auth.check(t0() + secs(2), "INVITE", &[&value]);
        assert_eq!(replay.result, AuthResult::Replayed);
        assert_eq!(replay.result.response(), Some((401, "Unauthorized")));
        let stale = crate::sip::auth::Challenge::parse(&replay.headers[0].value).unwrap();
        assert!(stale.stale && stale.realm == "voxgate");
        assert_eq!(replay.headers.len(), 1, "only the answered realm");
        assert_eq!(auth.stats().get("branch", AuthResult::Replayed), 1);
        assert_eq!(auth.stats().get("branch", AuthResult::Stale), 0);
    }

    #[test]
    fn expired_nonce_is_stale_not_replayed() {
        let mut auth = two_trunks();
        let mut branch = client(&mut auth, "pbx1", "pw1", "voxgate");
        let value = branch.authorize("INVITE", URI, b"").remove(0).value;
        let late = auth.check(t0() + secs(301), "INVITE", &[&value]);
        assert_eq!(late.result, AuthResult::Stale);
    }

    #[test]
    fn broken_credentials_are_malformed_and_unknown_algorithms_unsupported() {
        let mut auth = two_trunks();
        let broken = r#"Digest username="pbx1", realm="voxgate""#;
        let checked = auth.check(t0(), "INVITE", &[broken]);
        assert_eq!(checked.result, AuthResult::Malformed);
        assert_eq!(checked.result.response().map(|(s, _)| s), Some(400));
        assert_eq!(checked.trunk, None, "two trunks could be meant");
        assert_eq!(auth.stats().get("", AuthResult::Malformed), 1);
        let exotic = r#"Digest username="pbx1", realm="voxgate", nonce="n", uri="sip:a", response="r", algorithm=SHA-512-256"#;
        assert_eq!(
            auth.check(t0(), "INVITE", &[exotic]).result,
            AuthResult::Unsupported
        );
    }

    #[test]
    fn credentials_for_a_foreign_realm_are_challenged() {
        let mut auth = two_trunks();
        let foreign =
            r#"Digest username="pbx1", realm="elsewhere", nonce="n", uri="sip:a", response="r""#;
        let checked = auth.check(t0(), "INVITE", &[foreign]);
        assert_eq!(checked.result, AuthResult::Challenged);
        assert_eq!(checked.headers.len(), 3);
    }
}
