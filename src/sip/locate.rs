//! Locating the servers of a configured next hop (a registrar or an outbound proxy), as RFC 3263
//! §4 asks of a client, sans-IO: [`plan`] says what to look up, [`order_srv`] puts the SRV
//! records DNS answered in the order to try them (RFC 2782), and `io/` does the lookups. The
//! registration then fails over along the resulting list ([`crate::call::registrations`]).
//!
//! ```text
//!  sip:192.0.2.10         ──▶ Literal: that address (port 5060 unless given)
//!  sip:pbx.example.com:5080 ──▶ Addresses: A/AAAA of pbx.example.com, port 5080   (§4.2)
//!  sip:pbx.example.com    ──▶ Service: SRV _sip._udp.pbx.example.com (or _sip._tcp for TCP);
//!                             no SRV records ──▶ A/AAAA of pbx.example.com, port 5060
//! ```
//!
//! The transport is the trunk's (`transport`, else `;transport=` of the URI, else UDP), so
//! NAPTR is not consulted: like PJSIP's resolver, voxgate looks up SRV for the transport it
//! was told to use. Each address of each SRV target is one element of the list to fail over
//! along, in SRV order, then in the order DNS gave the addresses.

use std::net::{IpAddr, SocketAddr};

use super::message::Transport;

/// The SIP port when neither the URI nor SRV gives one (RFC 3261 §19.1.2; no TLS here).
pub const DEFAULT_PORT: u16 = 5060;

/// At most this many targets are kept: a zone listing more is a mistake, and failing over
/// along dozens of servers only delays the backoff.
pub const MAX_TARGETS: usize = 16;

/// What to ask DNS for a next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An IP literal: no DNS.
    Literal(SocketAddr),
    /// A name with an explicit port: its A/AAAA records only (RFC 3263 §4.2).
    Addresses {
        /// The name.
        host: String,
        /// The port from the URI.
        port: u16,
    },
    /// A name without a port: SRV for the transport, else its A/AAAA records at
    /// [`DEFAULT_PORT`] (RFC 3263 §4.2).
    Service {
        /// The SRV owner name, e.g. `_sip._udp.pbx.example.com`.
        srv: String,
        /// The name itself, for the fallback.
        host: String,
    },
}

/// What to look up for `host` (a name or an IP literal, IPv6 without brackets), the URI's
/// explicit port if any, over `transport`.
pub fn plan(host: &str, port: Option<u16>, transport: Transport) -> Lookup {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Lookup::Literal(SocketAddr::new(ip, port.unwrap_or(DEFAULT_PORT)));
    }
    let host = host.trim_end_matches('.').to_owned();
    match port {
        Some(port) => Lookup::Addresses { host, port },
        None => {
            let service = match transport {
                Transport::Tcp => "_sip._tcp",
                _ => "_sip._udp",
            };
            Lookup::Service {
                srv: format!("{service}.{host}"),
                host,
            }
        }
    }
}

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Within a priority, the share of first choices.
    pub weight: u16,
    /// The server's port.
    pub port: u16,
    /// The server's name (no trailing dot); `.` alone means "no such service here".
    pub target: String,
}

impl SrvRecord {
    /// Whether this is the "service decidedly not available" record (target `.`).
    pub fn is_refusal(&self) -> bool {
        self.target.is_empty() || self.target == "."
    }
}

/// The SRV records in the order to try them (RFC 2782): by priority, lowest first; within a
/// priority, each next one chosen at random with a probability proportional to its weight (the
/// zero-weight ones first only rarely, as the RFC's running-sum selection gives them).
/// `random(n)` returns a number in `0..=n` (a uniform one in production; fixed in tests).
/// A lone record with target `.` (the domain offers no SIP over this transport) gives no
/// target; such records are dropped anyway.
pub fn order_srv(
    mut records: Vec<SrvRecord>,
    mut random: impl FnMut(u32) -> u32,
) -> Vec<SrvRecord> {
    records.retain(|record| !record.is_refusal());
    // Zero weights first within a priority, as the RFC's selection lists them.
    records.sort_by_key(|record| (record.priority, record.weight != 0));
    let mut ordered = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let group_len = records
            .iter()
            .take_while(|record| record.priority == priority)
            .count();
        let mut group: Vec<SrvRecord> = records.drain(..group_len).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|record| u32::from(record.weight)).sum();
            let pick = random(total).min(total);
            let mut running = 0;
            let index = group
                .iter()
                .position(|record| {
                    running += u32::from(record.weight);
                    running >= pick
                })
                .unwrap_or(0);
            ordered.push(group.remove(index));
        }
    }
    ordered
}

/// One element of the list a request fails over along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to send.
    pub address: SocketAddr,
    /// How it was found, for logs: `a.pbx.example.com (SRV priority 10)` or the host.
    pub origin: String,
}

/// The targets of SRV `records` (already in [`order_srv`] order), given each target name's
/// addresses from `addresses` (in DNS order; families voxgate cannot use already left out).
/// Duplicates are dropped, and at most [`MAX_TARGETS`] are kept.
pub fn srv_targets(
    records: &[SrvRecord],
    mut addresses: impl FnMut(&str) -> Vec<IpAddr>,
) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    for record in records {
        for ip in addresses(&record.target) {
            let address = SocketAddr::new(ip, record.port);
            if targets.len() < MAX_TARGETS && !targets.iter().any(|t| t.address == address) {
                targets.push(Target {
                    address,
                    origin: format!("{} (SRV priority {})", record.target, record.priority),
                });
            }
        }
    }
    targets
}

/// The targets of a name's A/AAAA `addresses` at `port`, without duplicates, at most
/// [`MAX_TARGETS`].
pub fn address_targets(host: &str, addresses: &[IpAddr], port: u16) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    for ip in addresses {
        let address = SocketAddr::new(*ip, port);
        if targets.len() < MAX_TARGETS && !targets.iter().any(|t| t.address == address) {
            targets.push(Target {
                address,
                origin: host.to_owned(),
            });
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    fn names(records: &[SrvRecord]) -> Vec<&str> {
        records.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn ip_literals_skip_dns_and_explicit_ports_skip_srv() {
        assert_eq!(
            plan("192.0.2.10", None, Transport::Udp),
            Lookup::Literal("192.0.2.10:5060".parse().unwrap())
        );
        assert_eq!(
            plan("2001:db8::1", Some(5070), Transport::Tcp),
            Lookup::Literal("[2001:db8::1]:5070".parse().unwrap())
        );
        assert_eq!(
            plan("pbx.example.com", Some(5080), Transport::Udp),
            Lookup::Addresses {
                host: "pbx.example.com".into(),
                port: 5080
            }
        );
    }

    #[test]
    fn names_without_a_port_ask_for_the_transports_srv_records() {
        assert_eq!(
            plan("pbx.example.com.", None, Transport::Udp),
            Lookup::Service {
                srv: "_sip._udp.pbx.example.com".into(),
                host: "pbx.example.com".into()
            }
        );
        assert_eq!(
            plan("sip.telnyx.com", None, Transport::Tcp),
            Lookup::Service {
                srv: "_sip._tcp.sip.telnyx.com".into(),
                host: "sip.telnyx.com".into()
            }
        );
    }

    #[test]
    fn lower_priorities_come_first_whatever_the_weights() {
        let records = vec![
            srv(20, 100, "c"),
            srv(10, 0, "a"),
            srv(30, 5, "d"),
            srv(10, 0, "b"),
        ];
        let ordered = order_srv(records, |_| 0);
        assert_eq!(names(&ordered)[..2], ["a", "b"]);
        assert_eq!(names(&ordered)[2..], ["c", "d"]);
    }

    #[test]
    fn within_a_priority_the_pick_follows_the_running_sum_of_weights() {
        let records = || vec![srv(10, 60, "a"), srv(10, 30, "b"), srv(10, 10, "c")];
        // Running sums 60, 90, 100: a pick of 0..=60 takes a, 61..=90 b, 91..=100 c.
        // 60 takes a; then of b and c (sums 30, 40) the pick, capped at 40, takes c.
        assert_eq!(names(&order_srv(records(), |_| 60)), ["a", "c", "b"]);
        let mut picks = vec![95, 0].into_iter();
        let ordered = order_srv(records(), |_| picks.next().unwrap_or(0));
        assert_eq!(names(&ordered), ["c", "a", "b"]);
        // 61 takes b; then of a and c (sums 60, 70) 61 takes c.
        let mut picks = vec![61, 61].into_iter();
        let ordered = order_srv(records(), |_| picks.next().unwrap_or(0));
        assert_eq!(names(&ordered), ["b", "c", "a"]);
    }

    #[test]
    fn weights_share_the_first_choice_in_proportion() {
        // With a uniform pick the first choice goes 3:1 to the heavier record.
        let mut first_a = 0;
        for pick in 0..=400u32 {
            let records = vec![srv(10, 300, "a"), srv(10, 100, "b")];
            if order_srv(records, |_| pick)[0].target == "a" {
                first_a += 1;
            }
        }
        assert_eq!(first_a, 301, "picks 0..=300 choose a, 301..=400 b");
    }

    #[test]
    fn an_out_of_range_pick_or_zero_total_still_orders_everything() {
        let records = vec![srv(10, 0, "a"), srv(10, 0, "b"), srv(5, 1, "c")];
        let ordered = order_srv(records, |_| u32::MAX);
        assert_eq!(names(&ordered), ["c", "a", "b"]);
    }

    #[test]
    fn the_dot_target_means_no_service() {
        assert!(order_srv(vec![srv(0, 0, ".")], |_| 0).is_empty());
    }

    #[test]
    fn srv_targets_take_every_address_of_every_server_in_order_once() {
        let records = vec![srv(10, 0, "a.example"), srv(20, 0, "b.example")];
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a6: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let targets = srv_targets(&records, |name| match name {
            "a.example" => vec![a, a6, a],
            "b.example" => vec![b],
            _ => vec![],
        });
        let addresses: Vec<SocketAddr> = targets.iter().map(|t| t.address).collect();
        assert_eq!(
            addresses,
            [
                SocketAddr::new(a, 5060),
                SocketAddr::new(a6, 5060),
                SocketAddr::new(b, 5060)
            ]
        );
        assert_eq!(targets[2].origin, "b.example (SRV priority 20)");
    }

    #[test]
    fn targets_are_capped() {
        let many: Vec<IpAddr> = (1..=40u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        assert_eq!(address_targets("pbx", &many, 5060).len(), MAX_TARGETS);
        let records: Vec<SrvRecord> = (0..40).map(|i| srv(i, 0, "x")).collect();
        let targets = srv_targets(&records, |_| many.clone());
        assert_eq!(targets.len(), MAX_TARGETS);
    }
}
