//! Which origins the proxy may fetch: the host lists, and the SSRF guard on addresses.
//!
//! An open proxy inside a Kubernetes cluster could be asked to fetch the cloud's metadata
//! service, the API server or any pod. So every address the proxy connects to is checked
//! after DNS resolution, on every connection and redirect: only globally routable unicast
//! addresses pass, unless the configuration names the network or host as an internal origin.
//! IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4) are judged by that address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

use crate::config::ProxyConfig;

/// Networks that are not the public Internet (RFC 6890 and its successors). For IPv6 only the
/// exceptions inside 2000::/3 are listed, since nothing outside it is global unicast.
static NON_PUBLIC: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "2001::/23",
        "2001:db8::/32",
    ]
    .iter()
    .map(|net| net.parse().expect("static network"))
    .collect()
});

/// Why an origin may not be fetched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The host matches the deny list.
    #[error("{0} is on this CDN's deny list")]
    Denied(String),
    /// An allow list is set and the host is not on it.
    #[error("{0} is not on this CDN's allow list")]
    NotAllowed(String),
    /// The host resolved to an address that is not on the public Internet.
    #[error("{host} resolves to {address}, which is not a public address")]
    Internal {
        /// The origin host.
        host: String,
        /// The refused address.
        address: IpAddr,
    },
    /// The address is in a network the configuration blocks.
    #[error("{host} resolves to {address}, in a blocked network")]
    Blocked {
        /// The origin host.
        host: String,
        /// The refused address.
        address: IpAddr,
    },
}

/// A host pattern: `example.com` matches that name; `*.example.com` its subdomains; `*` all.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostPattern(String);

impl HostPattern {
    fn new(pattern: &str) -> Self {
        Self(pattern.trim_end_matches('.').to_ascii_lowercase())
    }

    fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix('*') {
            Some("") => true,
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
            None => self.0 == host,
        }
    }
}

/// The origin rules of one node, built from [`ProxyConfig`].
#[derive(Clone, Debug)]
pub struct OriginGuard {
    allow: Vec<HostPattern>,
    deny: Vec<HostPattern>,
    internal_hosts: Vec<HostPattern>,
    internal_networks: Vec<IpNet>,
    blocked_networks: Vec<IpNet>,
}

impl OriginGuard {
    /// The rules of a configuration.
    pub fn new(config: &ProxyConfig) -> Self {
        let patterns = |list: &[String]| list.iter().map(|p| HostPattern::new(p)).collect();
        Self {
            allow: patterns(&config.origin_allow),
            deny: patterns(&config.origin_deny),
            internal_hosts: patterns(&config.origin_access.internal_hosts),
            internal_networks: config.origin_access.internal_networks.clone(),
            blocked_networks: config.origin_access.blocked_networks.clone(),
        }
    }

    /// Checks the host lists: the deny list wins, then a non-empty allow list must match.
    pub fn check_host(&self, host: &str) -> Result<(), GuardError> {
        if self.deny.iter().any(|pattern| pattern.matches(host)) {
            return Err(GuardError::Denied(host.to_owned()));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|pattern| pattern.matches(host)) {
            return Err(GuardError::NotAllowed(host.to_owned()));
        }
        Ok(())
    }

    /// Checks an address `host` resolved to, before connecting to it. An IPv6 address that
    /// leads to an IPv4 one (mapped, NAT64, 6to4) is blocked when either form is.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), GuardError> {
        let address = canonical(address);
        let leads_to = match address {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let blocked = |candidate: &IpAddr| {
            self.blocked_networks
                .iter()
                .any(|net| net.contains(candidate))
        };
        if blocked(&address) || leads_to.as_ref().is_some_and(blocked) {
            return Err(GuardError::Blocked {
                host: host.to_owned(),
                address,
            });
        }
        let exempt = self
            .internal_networks
            .iter()
            .any(|net| net.contains(&address))
            || self
                .internal_hosts
                .iter()
                .any(|pattern| pattern.matches(host));
        if !exempt && !is_public(address) {
            return Err(GuardError::Internal {
                host: host.to_owned(),
                address,
            });
        }
        Ok(())
    }
}

/// Whether an address is globally routable unicast.
pub fn is_public(address: IpAddr) -> bool {
    let address = canonical(address);
    if let IpAddr::V6(v6) = address
        && let Some(v4) = embedded_v4(v6)
    {
        return is_public(IpAddr::V4(v4));
    }
    if let IpAddr::V6(v6) = address
        && (v6.segments()[0] & 0xe000) != 0x2000
    {
        // Outside 2000::/3, nothing is global unicast.
        return false;
    }
    !NON_PUBLIC.iter().any(|net| net.contains(&address))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; other addresses unchanged.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address leads to.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let octets = v6.octets();
    let segments = v6.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(
            octets[12], octets[13], octets[14], octets[15],
        ));
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str], deny: &[&str], internal: &[&str]) -> OriginGuard {
        let strings = |list: &[&str]| list.iter().map(|s| HostPattern::new(s)).collect();
        OriginGuard {
            allow: strings(allow),
            deny: strings(deny),
            internal_hosts: Vec::new(),
            internal_networks: internal.iter().map(|n| n.parse().unwrap()).collect(),
            blocked_networks: vec!["203.0.112.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn private_loopback_link_local_and_multicast_are_not_public() {
        for address in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.169.254",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn global_unicast_is_public() {
        for address in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
        ] {
            assert!(is_public(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn internal_networks_are_exempt_only_when_listed() {
        let guard = guard(&[], &[], &["127.0.0.0/8"]);
        assert_eq!(
            guard.check_address("origin.test", "127.0.0.5".parse().unwrap()),
            Ok(())
        );
        assert!(matches!(
            guard.check_address("origin.test", "169.254.169.254".parse().unwrap()),
            Err(GuardError::Internal { .. })
        ));
    }

    #[test]
    fn blocked_networks_win_even_when_public() {
        let guard = guard(&[], &[], &[]);
        assert!(matches!(
            guard.check_address("x.com", "203.0.112.9".parse().unwrap()),
            Err(GuardError::Blocked { .. })
        ));
    }

    #[test]
    fn blocked_networks_catch_their_nat64_and_6to4_forms() {
        let guard = guard(&[], &[], &[]);
        for address in ["64:ff9b::cb00:7009", "2002:cb00:7009::1"] {
            assert!(
                matches!(
                    guard.check_address("x.com", address.parse().unwrap()),
                    Err(GuardError::Blocked { .. })
                ),
                "{address}"
            );
        }
    }

    #[test]
    fn deny_list_wins_over_allow_list() {
        let guard = guard(&["*.example.com"], &["bad.example.com"], &[]);
        assert_eq!(guard.check_host("good.example.com"), Ok(()));
        assert_eq!(
            guard.check_host("bad.example.com"),
            Err(GuardError::Denied("bad.example.com".into()))
        );
        assert_eq!(
            guard.check_host("example.com"),
            Err(GuardError::NotAllowed("example.com".into()))
        );
    }

    #[test]
    fn an_empty_allow_list_allows_every_host() {
        assert_eq!(guard(&[], &["*.internal"], &[]).check_host("a.org"), Ok(()));
    }
}
