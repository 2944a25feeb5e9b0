//! `[dns]`: the name servers voxgate asks to locate registrars and outbound proxies (RFC 3263:
//! SRV, then A/AAAA; `sip::locate`).
//!
//! Without `servers`, SRV records come from the servers of the system's `/etc/resolv.conf`, and
//! addresses from the system's resolver (`/etc/hosts` included), as before. With `servers`,
//! every lookup goes to them: a site resolver, or the tests' local stub.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::Problem;

/// The default time one DNS query may take before the next server (or attempt) is asked.
pub const DEFAULT_DNS_TIMEOUT_MS: u64 = 2_000;
/// The accepted range of `dns.timeout_ms`.
pub const DNS_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=30_000;

/// `[dns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Name servers (`ip` or `ip:port`, port 53 by default); empty: the system's.
    #[serde(deserialize_with = "name_servers")]
    pub servers: Vec<SocketAddr>,
    /// How long one query may take, milliseconds.
    pub timeout_ms: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            timeout_ms: DEFAULT_DNS_TIMEOUT_MS,
        }
    }
}

impl DnsSettings {
    /// How long one query may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), Problem> {
        if !DNS_TIMEOUT_RANGE_MS.contains(&self.timeout_ms) {
            return Err(Problem::new(
                "dns.timeout_ms",
                format!(
                    "{} is outside {}..={} ms",
                    self.timeout_ms,
                    DNS_TIMEOUT_RANGE_MS.start(),
                    DNS_TIMEOUT_RANGE_MS.end()
                ),
            ));
        }
        if let Some(server) = self.servers.iter().find(|s| s.port() == 0) {
            return Err(Problem::new(
                "dns.servers",
                format!("{server}: port 0 cannot be asked"),
            ));
        }
        Ok(())
    }
}

/// A list (or a comma-separated string, for `VOXGATE__DNS__SERVERS`) of `ip` or `ip:port`.
fn name_servers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    super::string_list(d)?
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not an IP address or IP:port (IPv6 with a port: [2001:db8::53]:53)"
                    ))
                })
        })
        .collect()
}
