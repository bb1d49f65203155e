//! Which origin a request names: the zone form of host names, both ways.
//!
//! A client asks for `http://www.example.com.nyud.net/page`; the proxy strips the zone and
//! fetches `www.example.com`. A port other than 80 goes in a label of digits just before the
//! zone: `www.example.com.8080.nyud.net` is `www.example.com:8080`. Host names never end in
//! an all-digit label (no top-level domain is numeric), so the syntax is unambiguous, and an
//! IPv4 origin keeps working: `192.0.2.7.nyud.net` is `192.0.2.7:80`, `192.0.2.7.8080.nyud.net`
//! is `192.0.2.7:8080`.
//!
//! The reverse, [`Origin::zone_url`], turns an origin URL (from a `Location` header) back into
//! the zone form, so redirects keep clients inside the CDN.

use std::fmt;
use std::net::Ipv4Addr;

use http::Uri;

/// Longest DNS name, in octets, without the final dot.
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// An origin server the proxy fetches from: a lowercase host name or IPv4 address, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Host name (lowercase, no trailing dot) or dotted IPv4 address.
    pub host: String,
    /// TCP port the client named (80 unless the zone form carried one).
    pub port: u16,
}

/// Why a Host does not name an origin in the zone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The request has no Host header and no absolute URI.
    #[error("the request names no host")]
    NoHost,
    /// The host is not under the zone, or is the zone itself.
    #[error("{host} is not under {zone}")]
    OutsideZone {
        /// The host asked for.
        host: String,
        /// The zone served.
        zone: String,
    },
    /// What is left after removing the zone is not a host name.
    #[error("{0} is not a valid origin host name")]
    BadHost(String),
    /// The port label is out of range.
    #[error("{0} is not a valid port")]
    BadPort(String),
}

impl Origin {
    /// Reads the origin from a request's host (with or without `:port`, which is ignored: the
    /// proxy's own port says nothing about the origin's) and the zone served.
    pub fn from_zone_host(host: &str, zone: &str) -> Result<Self, TargetError> {
        let name = strip_port(host).trim_end_matches('.');
        let zone = zone.trim_end_matches('.');
        let inner = below_zone(name, zone).ok_or_else(|| TargetError::OutsideZone {
            host: name.to_ascii_lowercase(),
            zone: zone.to_ascii_lowercase(),
        })?;
        Self::from_labels(&inner.to_ascii_lowercase())
    }

    /// Parses `host` or `host.port` (the part of a zone name before the zone).
    fn from_labels(inner: &str) -> Result<Self, TargetError> {
        if inner.parse::<Ipv4Addr>().is_ok() {
            return Ok(Self {
                host: inner.to_owned(),
                port: 80,
            });
        }
        let (host, port) = match inner.rsplit_once('.') {
            Some((host, last)) if is_digits(last.as_bytes()) => {
                let port = last
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| TargetError::BadPort(last.to_owned()))?;
                (host, port)
            }
            _ => (inner, 80),
        };
        if host.parse::<Ipv4Addr>().is_ok() || is_host_name(host) {
            Ok(Self {
                host: host.to_owned(),
                port,
            })
        } else {
            Err(TargetError::BadHost(inner.to_owned()))
        }
    }

    /// Reads the origin from an origin URL's authority, as found in a `Location` header.
    /// The scheme only sets the default port.
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
        if host.parse::<Ipv4Addr>().is_err() && !is_host_name(&host) {
            return None;
        }
        let default = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        Some(Self {
            host,
            port: uri.port_u16().unwrap_or(default),
        })
    }

    /// The host name clients use for this origin: `www.example.com.nyud.net`, or
    /// `www.example.com.8080.nyud.net` for another port. Port 443 maps to the default form,
    /// since the proxy fetches `https` origins through their `http` name.
    pub fn zone_host(&self, zone: &str) -> String {
        let zone = zone.trim_end_matches('.');
        match self.port {
            80 | 443 => format!("{}.{zone}", self.host),
            port => format!("{}.{port}.{zone}", self.host),
        }
    }

    /// The key of `path` (with its query) at this origin in the cache and the DHT:
    /// `host:port/path`.
    pub fn cache_key(&self, path: &str) -> String {
        let mut port = itoa::Buffer::new();
        [self.host.as_str(), ":", port.format(self.port), path].concat()
    }

    /// Whether this origin is itself a name in the zone (fetching it would loop).
    pub fn is_in_zone(&self, zone: &str) -> bool {
        let zone = zone.trim_end_matches('.');
        self.host.eq_ignore_ascii_case(zone) || below_zone(&self.host, zone).is_some()
    }

    /// The `authority` of requests to this origin, with the port only when it is not 80.
    pub fn authority(&self) -> String {
        match self.port {
            80 => self.host.clone(),
            port => format!("{}:{port}", self.host),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Rewrites an absolute origin URL into the zone form, such as
/// `https://www.example.com/a?b` into `http://www.example.com.nyud.net/a?b`; a
/// scheme-relative `//www.example.com/a` is taken as `http`. Returns `None` for relative or
/// unparsable URLs, which need no rewriting.
pub fn zone_url(location: &str, zone: &str) -> Option<String> {
    let uri: Uri = match location.strip_prefix("//") {
        Some(rest) => format!("http://{rest}").parse().ok()?,
        None => location.parse().ok()?,
    };
    let scheme = uri.scheme_str()?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let origin = Origin::from_uri(&uri)?;
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    Some(format!("http://{}{path}", origin.zone_host(zone)))
}

/// Removes a `:port` suffix from a Host value (IPv6 literals are not origins, so no brackets).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if is_digits(port.as_bytes()) => name,
        _ => host,
    }
}

/// What comes before `.zone` in `name` (compared ignoring ASCII case), when `name` is a name
/// under `zone` and not the zone itself.
fn below_zone<'a>(name: &'a str, zone: &str) -> Option<&'a str> {
    let dot = name.len().checked_sub(zone.len() + 1)?;
    let (inner, suffix) = (name.get(..dot)?, name.get(dot + 1..)?);
    let under =
        !inner.is_empty() && name.as_bytes()[dot] == b'.' && suffix.eq_ignore_ascii_case(zone);
    under.then_some(inner)
}

fn is_digits(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(u8::is_ascii_digit)
}

/// Whether `name` is a DNS host name (letters, digits and hyphens; a non-numeric last label).
fn is_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    let label_ok = |label: &[u8]| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
            && label
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
    };
    let mut labels = name.as_bytes().split(|byte| *byte == b'.');
    labels.clone().all(label_ok) && labels.next_back().is_some_and(|last| !is_digits(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(host: &str, port: u16) -> Origin {
        Origin {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn the_zone_is_stripped() {
        assert_eq!(
            Origin::from_zone_host("www.example.com.nyud.net", "nyud.net"),
            Ok(origin("www.example.com", 80))
        );
    }

    #[test]
    fn case_the_proxy_port_and_a_trailing_dot_do_not_matter() {
        assert_eq!(
            Origin::from_zone_host("WWW.Example.COM.nyud.NET.:8080", "nyud.net."),
            Ok(origin("www.example.com", 80))
        );
    }

    #[test]
    fn a_digit_label_before_the_zone_is_the_port() {
        assert_eq!(
            Origin::from_zone_host("www.example.com.8080.nyud.net", "nyud.net"),
            Ok(origin("www.example.com", 8080))
        );
    }

    #[test]
    fn ipv4_origins_work_with_and_without_a_port() {
        assert_eq!(
            Origin::from_zone_host("192.0.2.7.nyud.net", "nyud.net"),
            Ok(origin("192.0.2.7", 80))
        );
        assert_eq!(
            Origin::from_zone_host("192.0.2.7.8080.nyud.net", "nyud.net"),
            Ok(origin("192.0.2.7", 8080))
        );
    }

    #[test]
    fn hosts_outside_the_zone_are_refused() {
        for host in ["www.example.com", "nyud.net", "evilnyud.net", ".nyud.net"] {
            assert!(
                matches!(
                    Origin::from_zone_host(host, "nyud.net"),
                    Err(TargetError::OutsideZone { .. })
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn malformed_origins_are_refused() {
        for host in [
            "a..b.nyud.net",
            "-a.com.nyud.net",
            "a_b.com.nyud.net",
            "1.2.3.nyud.net",
            "a.com.99999.nyud.net",
            "a.com.0.nyud.net",
        ] {
            assert!(
                Origin::from_zone_host(host, "nyud.net").is_err(),
                "{host} was accepted"
            );
        }
    }

    #[test]
    fn zone_host_inverts_parsing() {
        for (host, port) in [("www.example.com", 80), ("a.b", 8080), ("192.0.2.7", 81)] {
            let original = origin(host, port);
            let zone_host = original.zone_host("nyud.net");
            assert_eq!(Origin::from_zone_host(&zone_host, "nyud.net"), Ok(original));
        }
    }

    #[test]
    fn locations_are_rewritten_into_the_zone() {
        assert_eq!(
            zone_url("https://www.example.com/a/b?c=d", "nyud.net").as_deref(),
            Some("http://www.example.com.nyud.net/a/b?c=d")
        );
        assert_eq!(
            zone_url("http://other.org:8080", "nyud.net").as_deref(),
            Some("http://other.org.8080.nyud.net/")
        );
        assert_eq!(
            zone_url("//evil.example/steal", "nyud.net").as_deref(),
            Some("http://evil.example.nyud.net/steal"),
            "a scheme-relative redirect stays in the zone too"
        );
        assert_eq!(zone_url("/relative/path", "nyud.net"), None);
        assert_eq!(zone_url("ftp://example.com/file", "nyud.net"), None);
    }

    #[test]
    fn cache_keys_are_host_port_and_path() {
        assert_eq!(origin("a.b", 8080).cache_key("/x?y=1"), "a.b:8080/x?y=1");
        assert_eq!(origin("192.0.2.7", 80).cache_key("/"), "192.0.2.7:80/");
    }

    #[test]
    fn hosts_in_the_zone_are_recognised() {
        assert!(origin("x.nyud.net", 80).is_in_zone("nyud.net"));
        assert!(origin("nyud.net", 80).is_in_zone("NYUD.net."));
        assert!(!origin("notnyud.net", 80).is_in_zone("nyud.net"));
    }
}
