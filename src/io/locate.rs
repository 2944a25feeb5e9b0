//! The DNS side of RFC 3263 for the registrations and the bridged transfers' INVITEs: asks the
//! name servers what [`crate::sip::locate::plan`] says (SRV, then A/AAAA), and turns the answers
//! into the ordered targets a request fails over along.
//!
//! Name servers: `[dns] servers` when set (every lookup goes to them), else the system's
//! `/etc/resolv.conf` for SRV and the system resolver (`getaddrinfo`, so `/etc/hosts` too) for
//! addresses, which is how names resolved before SRV support.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::DnsSettings;
use crate::sip::locate::{self, Lookup, SrvRecord, Target};
use crate::sip::message::Transport;

/// Re-resolve no sooner than this after an answer, whatever its TTL says (a TTL of 0 is common
/// where a provider steers traffic by DNS; one query per trunk every 10 s costs nothing).
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Re-resolve at least this often (a TTL of a day still sees a change within the hour).
pub const MAX_REFRESH: Duration = Duration::from_secs(3_600);

/// What DNS said for a next hop.
#[derive(Debug, Clone)]
pub struct Located {
    /// In the order to try them; never empty.
    pub targets: Vec<Target>,
    /// When to ask again ([`MIN_REFRESH`]..=[`MAX_REFRESH`] from now; never for a literal).
    pub refresh_in: Option<Duration>,
}

/// Locates next hops; cheap to clone (one resolver, shared).
#[derive(Clone)]
pub struct Locator {
    /// Asks for SRV (and, with configured servers, A/AAAA); `None` when the system's
    /// configuration could not be read and no servers are configured.
    resolver: Option<TokioResolver>,
    /// Addresses come from the resolver too (servers configured), else from the system.
    addresses_by_resolver: bool,
    /// The address families voxgate listens on (IPv4, IPv6).
    families: (bool, bool),
}

impl Locator {
    /// From `[dns]`; logs (and goes on without SRV) when the system's configuration is
    /// unreadable.
    pub fn new(settings: &DnsSettings, families: (bool, bool)) -> Locator {
        let configured = !settings.servers.is_empty();
        let builder = if configured {
            let servers = settings
                .servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            Ok(TokioResolver::builder_with_config(
                config,
                TokioRuntimeProvider::default(),
            ))
        } else {
            TokioResolver::builder_tokio()
        };
        let resolver = builder.and_then(|mut builder| {
            let options = builder.options_mut();
            options.timeout = settings.timeout();
            options.attempts = 2;
            builder.build()
        });
        let resolver = match resolver {
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::warn!(
                    "cannot read the system's DNS configuration ({error}): SIP servers \
                     (registrars, transfer destinations) are located without SRV records; set \
                     [dns] servers to enable them"
                );
                None
            }
        };
        Locator {
            resolver,
            addresses_by_resolver: configured,
            families,
        }
    }

    /// The targets of `host` (with `port` when its URI names one) for `transport`, or why there
    /// are none (ready to log).
    pub async fn locate(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Transport,
    ) -> Result<Located, String> {
        match locate::plan(host, port, transport) {
            Lookup::Literal(address) => {
                if !self.usable(address.ip()) {
                    return Err(format!(
                        "{address} is of an address family voxgate does not listen on"
                    ));
                }
                Ok(Located {
                    targets: vec![Target {
                        address,
                        origin: address.to_string(),
                    }],
                    refresh_in: None,
                })
            }
            Lookup::Addresses { host, port } => {
                let (addresses, valid_until) = self.addresses(&host).await?;
                Ok(Located {
                    targets: locate::address_targets(&host, &addresses, port),
                    refresh_in: Some(refresh_in(valid_until)),
                })
            }
            Lookup::Service { srv, host } => match self.srv(&srv).await? {
                Some((records, valid_until)) => {
                    let ordered = locate::order_srv(records, |total| rand::random_range(0..=total));
                    if ordered.is_empty() {
                        return Err(format!(
                            "{srv} says the domain offers no SIP over {transport:?} (target \".\")"
                        ));
                    }
                    let mut looked_up = Vec::new();
                    let mut until = valid_until;
                    let mut last_error = None;
                    for record in &ordered {
                        if looked_up.iter().any(|(name, _)| name == &record.target) {
                            continue;
                        }
                        match self.addresses(&record.target).await {
                            Ok((addresses, valid)) => {
                                until = until.min(valid);
                                looked_up.push((record.target.clone(), addresses));
                            }
                            Err(error) => last_error = Some(error),
                        }
                    }
                    let targets = locate::srv_targets(&ordered, |name| {
                        looked_up
                            .iter()
                            .find(|(known, _)| known == name)
                            .map(|(_, addresses)| addresses.clone())
                            .unwrap_or_default()
                    });
                    if targets.is_empty() {
                        return Err(last_error
                            .unwrap_or_else(|| format!("no address for the servers of {srv}")));
                    }
                    Ok(Located {
                        targets,
                        refresh_in: Some(refresh_in(until)),
                    })
                }
                None => {
                    let (addresses, valid_until) = self.addresses(&host).await?;
                    Ok(Located {
                        targets: locate::address_targets(&host, &addresses, locate::DEFAULT_PORT),
                        refresh_in: Some(refresh_in(valid_until)),
                    })
                }
            },
        }
    }

    /// The SRV records of `name` with their expiry; `None` when there are none (the name
    /// does not exist, or has no SRV records), so the host's own addresses are used.
    async fn srv(&self, name: &str) -> Result<Option<(Vec<SrvRecord>, Instant)>, String> {
        let Some(resolver) = &self.resolver else {
            return Ok(None);
        };
        match resolver.srv_lookup(format!("{name}.")).await {
            Ok(lookup) => {
                let records: Vec<SrvRecord> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some(SrvRecord {
                            priority: srv.priority,
                            weight: srv.weight,
                            port: srv.port,
                            target: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                        }),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    return Ok(None);
                }
                Ok(Some((records, lookup.valid_until())))
            }
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => Ok(None),
            Err(error) => Err(format!("SRV lookup of {name} failed: {error}")),
        }
    }

    /// `host`'s addresses of a family voxgate listens on, in DNS order, with their expiry.
    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), String> {
        let found: Vec<IpAddr>;
        let valid_until;
        match (&self.resolver, self.addresses_by_resolver) {
            (Some(resolver), true) => {
                let lookup = resolver
                    .lookup_ip(format!("{host}."))
                    .await
                    .map_err(|error| format!("address lookup of {host} failed: {error}"))?;
                found = lookup.iter().collect();
                valid_until = lookup.valid_until();
            }
            _ => {
                let resolved = tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|error| format!("address lookup of {host} failed: {error}"))?;
                found = resolved.map(|address: SocketAddr| address.ip()).collect();
                // getaddrinfo says nothing of TTLs: ask again every 5 minutes.
                valid_until = Instant::now() + Duration::from_secs(300);
            }
        }
        let usable: Vec<IpAddr> = found
            .iter()
            .copied()
            .filter(|ip| self.usable(*ip))
            .collect();
        if usable.is_empty() {
            return Err(if found.is_empty() {
                format!("{host}: no address")
            } else {
                format!("{host}: no address of a family voxgate listens on ({found:?})")
            });
        }
        Ok((usable, valid_until))
    }

    fn usable(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.families.0,
            IpAddr::V6(_) => self.families.1,
        }
    }
}

/// Where requests to a host name go (the first target RFC 3263 gives: in-dialog requests to a
/// remote target or Route by name), remembered for the answer's lifetime: every
/// retransmission of a transaction goes to the same server, and a name is not looked up again
/// for each message.
pub struct HostCache {
    locator: Locator,
    known: std::sync::Mutex<HashMap<HostKey, (SocketAddr, Instant)>>,
}

type HostKey = (String, Option<u16>, Transport);

/// Names remembered at most (a flood of requests to ever new names cannot grow it further).
const MAX_HOSTS: usize = 1_024;

impl HostCache {
    /// A cache asking `locator`.
    pub fn new(locator: Locator) -> HostCache {
        HostCache {
            locator,
            known: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The server for `host` (and `port`) over `transport` if it was located and is still
    /// valid.
    pub fn get(&self, host: &str, port: Option<u16>, transport: Transport) -> Option<SocketAddr> {
        let known = self.known.lock().ok()?;
        let (address, until) = known.get(&(host.to_owned(), port, transport))?;
        (Instant::now() < *until).then_some(*address)
    }

    /// Locates `host` (remembering the answer); `None`, logged, when it cannot be.
    pub async fn resolve(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Transport,
    ) -> Option<SocketAddr> {
        if let Some(address) = self.get(host, port, transport) {
            return Some(address);
        }
        let located = match self.locator.locate(host, port, transport).await {
            Ok(located) => located,
            Err(why) => {
                tracing::warn!(host, "could not locate the SIP destination: {why}");
                return None;
            }
        };
        let target = located.targets.first()?;
        let until = Instant::now() + located.refresh_in.unwrap_or(MAX_REFRESH);
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_HOSTS {
                let now = Instant::now();
                known.retain(|_, (_, valid)| *valid > now);
                if known.len() >= MAX_HOSTS {
                    known.clear();
                }
            }
            known.insert((host.to_owned(), port, transport), (target.address, until));
        }
        tracing::debug!(host, server = %target.address, origin = %target.origin, "SIP destination located");
        Some(target.address)
    }
}

fn refresh_in(valid_until: Instant) -> Duration {
    valid_until
        .saturating_duration_since(Instant::now())
        .clamp(MIN_REFRESH, MAX_REFRESH)
}
