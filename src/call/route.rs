//! Admission and routing of new calls: which trunk an INVITE came over (by source address, the
//! trunk's `allow_from`; registrations add their own rules, `call/registrations.rs`) and which
//! agent answers it (the first matching `[[routes]]` entry).

use std::net::IpAddr;

use crate::config::{AgentSettings, RouteField, Settings};

/// Why a new call was not routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The source address is in no trunk's `allow_from` (answer 403).
    #[error("source {source_ip} is not allowed by any trunk")]
    UnknownSource {
        /// Where the INVITE came from.
        source_ip: IpAddr,
    },
    /// No route matched the dialled user (answer 404).
    #[error("no route for user {user:?}")]
    NoRoute {
        /// The user looked up.
        user: Option<String>,
    },
}

impl RouteError {
    /// The SIP status the INVITE is refused with.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::UnknownSource { .. } => 403,
            RouteError::NoRoute { .. } => 404,
        }
    }
}

/// A routed call: the trunk it came over and the agent that answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The trunk's name.
    pub trunk: String,
    /// The agent profile.
    pub agent: AgentSettings,
}

/// The routing table, built once from the settings.
#[derive(Debug, Clone)]
pub struct Router {
    settings: Settings,
}

impl Router {
    /// Builds the table (settings were validated at load: route agents and trunks exist).
    pub fn new(settings: &Settings) -> Router {
        Router {
            settings: settings.clone(),
        }
    }

    /// The trunk whose `allow_from` contains `source`, in configuration order.
    pub fn trunk_for(&self, source: IpAddr) -> Option<&str> {
        let source = canonical(source);
        self.settings
            .trunks
            .iter()
            .find(|trunk| trunk.allow_from.iter().any(|net| net.contains(&source)))
            .map(|trunk| trunk.name.as_str())
    }

    /// Routes an INVITE from `source` dialling `request_uri_user` / `to_user`.
    pub fn route(
        &self,
        source: IpAddr,
        request_uri_user: Option<&str>,
        to_user: Option<&str>,
    ) -> Result<Routed, RouteError> {
        let trunk = self
            .trunk_for(source)
            .ok_or(RouteError::UnknownSource { source_ip: source })?;
        self.route_on(trunk, request_uri_user, to_user)
    }

    /// Routes an INVITE already known to come over `trunk` (by source address, by registration
    /// — see `call/registrations.rs` — or because its caller authenticated as one of the trunk's
    /// users) dialling `request_uri_user` / `to_user`.
    pub fn route_on(
        &self,
        trunk: &str,
        request_uri_user: Option<&str>,
        to_user: Option<&str>,
    ) -> Result<Routed, RouteError> {
        let route = self.settings.routes.iter().find(|route| {
            let trunk_matches = route.trunk.as_deref().is_none_or(|name| name == trunk);
            let user = match route.field {
                RouteField::RequestUri => request_uri_user,
                RouteField::To => to_user,
            };
            trunk_matches && user_matches(route.user.as_deref(), user)
        });
        let route = route.ok_or_else(|| RouteError::NoRoute {
            user: request_uri_user.map(str::to_owned),
        })?;
        let agent = self.settings.effective_agent(&route.agent).ok_or_else(
            // Validation at start-up guarantees the agent exists; refuse rather than panic anyway.
            || RouteError::NoRoute {
                user: request_uri_user.map(str::to_owned),
            },
        )?;
        Ok(Routed {
            trunk: trunk.to_owned(),
            agent: agent.clone(),
        })
    }
}

fn user_matches(pattern: Option<&str>, user: Option<&str>) -> bool {
    match (pattern, user) {
        (None, _) => true,
        (Some(pattern), Some(user)) => match pattern.strip_suffix('*') {
            Some(prefix) => user.starts_with(prefix),
            None => pattern == user,
        },
        (Some(_), None) => false,
    }
}

/// IPv4-mapped IPv6 sources (from a dual-stack socket) are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentKind, RouteSettings, SipSettings, TrunkSettings};

    fn settings() -> Settings {
        let agent = |name: &str| AgentSettings {
            name: name.into(),
            kind: AgentKind::Echo,
            ..AgentSettings::default()
        };
        let route = |user: Option<&str>, field, trunk: Option<&str>, agent: &str| RouteSettings {
            user: user.map(Into::into),
            field,
            trunk: trunk.map(Into::into),
            agent: agent.into(),
        };
        Settings {
            sip: SipSettings {
                listen: vec!["127.0.0.1:5060".parse().unwrap()],
                public_address: None,
                user_agent: "t".into(),
                t1_ms: 500,
                t2_ms: 4000,
                t4_ms: 5000,
                max_message_bytes: 65535,
                session_expires_secs: 1800,
                min_se_secs: 90,
                tcp_max_connections: 1_024,
                tcp_first_message_secs: 32,
                tcp_idle_secs: 120,
            },
            rtp: Default::default(),
            calls: Default::default(),
            metrics: Default::default(),
            trunks: vec![
                TrunkSettings {
                    name: "asterisk".into(),
                    allow_from: vec!["10.0.0.0/8".parse().unwrap()],
                    ..TrunkSettings::default()
                },
                TrunkSettings {
                    name: "local".into(),
                    allow_from: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                    ..TrunkSettings::default()
                },
            ],
            agents: vec![agent("sales"), agent("support"), agent("echo")],
            realtime: Default::default(),
            transfer: Default::default(),
            dns: Default::default(),
            routes: vec![
                route(Some("100"), RouteField::RequestUri, None, "sales"),
                route(Some("2*"), RouteField::To, None, "support"),
                route(Some("echo"), RouteField::RequestUri, Some("local"), "echo"),
                route(None, RouteField::RequestUri, Some("asterisk"), "support"),
            ],
        }
    }

    #[test]
    fn picks_trunk_by_source_network_including_v4_mapped_v6() {
        let router = Router::new(&settings());
        assert_eq!(
            router.trunk_for("10.1.2.3".parse().unwrap()),
            Some("asterisk")
        );
        assert_eq!(
            router.trunk_for("::ffff:127.0.0.1".parse().unwrap()),
            Some("local")
        );
        assert_eq!(router.trunk_for("::1".parse().unwrap()), Some("local"));
        assert_eq!(router.trunk_for("192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn unknown_source_is_refused_with_403() {
        let router = Router::new(&settings());
        let error = router
            .route("192.0.2.1".parse().unwrap(), Some("100"), None)
            .unwrap_err();
        assert_eq!(error.status(), 403);
    }

    #[test]
    fn first_matching_route_wins_exact_prefix_to_and_default() {
        let router = Router::new(&settings());
        let local = "127.0.0.1".parse().unwrap();
        let pbx = "10.0.0.1".parse().unwrap();
        assert_eq!(
            router.route(local, Some("100"), None).unwrap().agent.name,
            "sales"
        );
        assert_eq!(
            router
                .route(local, Some("x"), Some("205"))
                .unwrap()
                .agent
                .name,
            "support"
        );
        assert_eq!(
            router.route(local, Some("echo"), None).unwrap().agent.name,
            "echo"
        );
        assert_eq!(
            router.route(pbx, Some("echo"), None).unwrap().agent.name,
            "support"
        );
        assert_eq!(
            router.route(pbx, Some("999"), None).unwrap().trunk,
            "asterisk"
        );
        let error = router.route(local, Some("999"), None).unwrap_err();
        assert_eq!(error.status(), 404);
    }
}
