//! Header rules between clients and origins.
//!
//! - Hop-by-hop headers (RFC 9110 section 7.6.1, and any named in `Connection`) never cross.
//! - Cookies never cross, in either direction. Every origin lives under the zone, so a cookie
//!   set by one site through the CDN would reach every other site behind it, and a cached
//!   `Set-Cookie` would hand one visitor's session to the next. Coral is for public content;
//!   sites that need sessions are served directly.
//! - `Strict-Transport-Security` and `Alt-Svc` are dropped: they describe the origin's
//!   transports, not the zone's.
//! - `Location` and `Content-Location` are rewritten into the zone form, so redirects keep the
//!   client inside the CDN. Links inside bodies are left alone: relative links work as they
//!   are, and rewriting HTML would break signatures, hashes and byte ranges.
//! - `Via` names the zone (`1.1 nyud.net (coral)`); a request already carrying it came from
//!   this CDN and is a loop.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::target::zone_url;

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers that ask for part of an object or a conditional answer; the proxy answers
/// those itself from a whole object, so they are not sent on cache fills.
const CONDITIONAL_REQUEST: [HeaderName; 6] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Name of the request ID header, sent to origins and peers and returned to clients.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Name of the header telling clients how the proxy answered (`HIT`, `MISS`, ...).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache");

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The `Via` entry of this CDN for a message it received over `version`: the entry names
/// the protocol of the message as received (RFC 9110 section 7.6.3), so `2` for a request
/// from an HTTP/2 client and `1.1` for an answer from an origin.
pub fn via_value(version: Version, zone: &str) -> HeaderValue {
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    HeaderValue::from_str(&format!(
        "{protocol} {} (coral)",
        zone.trim_end_matches('.')
    ))
    .expect("a zone name is valid header text")
}

/// The entries of every `Via` header, trimmed, as bytes (a value need not be text, and an
/// entry that is not must not hide the ones that are).
fn via_hops(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::VIA)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether a request already went through this CDN.
pub fn is_loop(headers: &HeaderMap, zone: &str) -> bool {
    let ours = zone.trim_end_matches('.').as_bytes();
    via_hops(headers)
        .filter_map(|hop| {
            hop.split(u8::is_ascii_whitespace)
                .filter(|word| !word.is_empty())
                .nth(1)
        })
        .any(|received_by| received_by.eq_ignore_ascii_case(ours))
}

/// What a request to an origin carries, which decides the headers it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// A fetch of a whole object for the cache: no body, and no conditional or range headers
    /// (the proxy answers those itself from the whole object).
    CacheFill,
    /// A client's bodiless request, passed uncached with its conditions and ranges.
    Bodiless,
    /// A client's request with its body.
    WithBody,
}

/// The headers to send an origin for a client's request.
///
/// A bodiless request never carries the client's `Content-Length` or `Expect`: the origin
/// would wait for (or, worse, read from the next pooled request) a body that never comes.
pub fn to_origin(
    client: &HeaderMap,
    client_version: Version,
    client_ip: IpAddr,
    zone: &str,
    request_id: &str,
    forwarding: Forwarding,
) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::COOKIE);
    if forwarding != Forwarding::WithBody {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::EXPECT);
    }
    if forwarding == Forwarding::CacheFill {
        for name in &CONDITIONAL_REQUEST {
            headers.remove(name);
        }
    }
    let forwarded_for = match client.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client_ip}"),
        None => client_ip.to_string(),
    };
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&forwarded_for).expect("addresses are valid header text"),
    );
    append_via(&mut headers, &via_value(client_version, zone));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    headers
}

/// The largest `Age` carried on (RFC 9111 section 1.2.2: 2^31 means "older than that").
const MAX_AGE_VALUE: u64 = 1 << 31;

/// An origin's response headers (for a response of `status`) as the proxy keeps and serves
/// them.
///
/// The framing is the proxy's own: a `Content-Length` sent along `Transfer-Encoding` is
/// dropped (the transfer coding decides, RFC 9112 section 6.3, and the proxy serves the
/// decoded body), as is one on a 1xx or 204 answer, which has no body; repeated equal lengths
/// (`5, 5`, or two fields) become one, and lengths that disagree are dropped.
pub fn from_origin(status: StatusCode, origin: &HeaderMap, zone: &str) -> HeaderMap {
    let mut headers = origin.clone();
    strip_hop_by_hop(&mut headers);
    let length = single_length(origin);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(length) = length
        && !origin.contains_key(header::TRANSFER_ENCODING)
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let age = headers.get(header::AGE).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    });
    match age {
        Some(Some(seconds)) if seconds > MAX_AGE_VALUE => {
            headers.insert(header::AGE, HeaderValue::from(MAX_AGE_VALUE));
        }
        Some(None) => {
            headers.remove(header::AGE);
        }
        _ => {}
    }
    headers.remove(header::SET_COOKIE);
    headers.remove(header::STRICT_TRANSPORT_SECURITY);
    headers.remove(header::ALT_SVC);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let rewritten = headers
            .get(&name)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| zone_url(location, zone))
            .and_then(|url| HeaderValue::from_str(&url).ok());
        if let Some(value) = rewritten {
            headers.insert(name, value);
        }
    }
    headers
}

/// The one length every `Content-Length` value states, if they agree.
fn single_length(headers: &HeaderMap) -> Option<u64> {
    let mut lengths = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(|item| {
            std::str::from_utf8(item.trim_ascii())
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
        });
    let first = lengths.next()??;
    lengths.all(|length| length == Some(first)).then_some(first)
}

/// Removes what a peer proxy added to an object's headers (its `Via` entry, `X-Cache`,
/// `X-Request-Id`), so that the copy is served as if fetched here.
pub fn strip_peer_marks(headers: &mut HeaderMap, ours: &HeaderValue) {
    headers.remove(CACHE_STATUS);
    headers.remove(REQUEST_ID);
    let earlier: Vec<&[u8]> = via_hops(headers)
        .filter(|hop| *hop != ours.as_bytes())
        .collect();
    match HeaderValue::from_bytes(&earlier.join(&b", "[..])) {
        Ok(value) if !earlier.is_empty() => {
            headers.insert(header::VIA, value);
        }
        _ => {
            headers.remove(header::VIA);
        }
    }
}

/// Adds this CDN's `Via` entry (from [`via_value`]).
pub fn append_via(headers: &mut HeaderMap, ours: &HeaderValue) {
    let mut hops: Vec<&[u8]> = via_hops(headers).filter(|hop| !hop.is_empty()).collect();
    if hops.is_empty() {
        headers.insert(header::VIA, ours.clone());
        return;
    }
    hops.push(ours.as_bytes());
    let joined = hops.join(&b", "[..]);
    headers.insert(
        header::VIA,
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ours.clone()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const V11: Version = Version::HTTP_11;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, map(&[("accept", "*/*")]));
    }

    #[test]
    fn origin_requests_lose_cookies_and_gain_via_and_forwarded_for() {
        let client = map(&[
            ("host", "a.com.nyud.net"),
            ("cookie", "session=1"),
            ("x-forwarded-for", "198.51.100.1"),
            ("if-none-match", "\"v1\""),
            ("range", "bytes=0-1"),
            ("content-length", "40"),
            ("expect", "100-continue"),
        ]);
        let ip = "192.0.2.9".parse().unwrap();
        let headers = to_origin(&client, V11, ip, "nyud.net", "r1", Forwarding::CacheFill);
        assert_eq!(
            headers,
            map(&[
                ("x-forwarded-for", "198.51.100.1, 192.0.2.9"),
                ("via", "1.1 nyud.net (coral)"),
                ("x-request-id", "r1"),
            ])
        );
        let pass = to_origin(&client, V11, ip, "nyud.net", "r1", Forwarding::Bodiless);
        assert!(pass.contains_key("if-none-match") && pass.contains_key("range"));
        assert!(!pass.contains_key("content-length") && !pass.contains_key("expect"));
        let with_body = to_origin(&client, V11, ip, "nyud.net", "r1", Forwarding::WithBody);
        assert_eq!(with_body["content-length"], "40");
        let from_http2 = to_origin(
            &client,
            Version::HTTP_2,
            ip,
            "nyud.net",
            "r1",
            Forwarding::CacheFill,
        );
        assert_eq!(from_http2["via"], "2 nyud.net (coral)");
    }

    #[test]
    fn a_peers_marks_are_removed_and_the_origins_via_kept() {
        let mut headers = map(&[
            ("via", "1.0 origin-proxy, 1.1 nyud.net (coral)"),
            ("x-cache", "hit"),
            ("x-request-id", "abc"),
            ("etag", "\"e\""),
        ]);
        strip_peer_marks(&mut headers, &via_value(V11, "nyud.net"));
        assert_eq!(
            headers,
            map(&[("via", "1.0 origin-proxy"), ("etag", "\"e\"")])
        );
        let mut only_ours = map(&[("via", "1.1 nyud.net (coral)")]);
        strip_peer_marks(&mut only_ours, &via_value(V11, "nyud.net"));
        assert!(only_ours.is_empty());
    }

    #[test]
    fn absurd_and_malformed_ages_are_tamed() {
        let huge = from_origin(
            StatusCode::OK,
            &map(&[("age", "18446744073709551615")]),
            "nyud.net",
        );
        assert_eq!(huge["age"], "2147483648");
        let malformed = from_origin(StatusCode::OK, &map(&[("age", "soon")]), "nyud.net");
        assert!(!malformed.contains_key("age"));
    }

    #[test]
    fn our_via_is_a_loop_and_others_are_not() {
        assert!(is_loop(
            &map(&[("via", "1.0 fred, 1.1 NYUD.net (coral)")]),
            "nyud.net"
        ));
        assert!(!is_loop(&map(&[("via", "1.1 other.cdn")]), "nyud.net"));
        assert!(!is_loop(&map(&[]), "nyud.net"));
    }

    #[test]
    fn origin_responses_lose_cookies_and_keep_clients_in_the_zone() {
        let origin = map(&[
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("location", "https://www.example.com/next"),
            ("strict-transport-security", "max-age=1"),
            ("link", "</a>; rel=preload"),
            ("link", "</b>; rel=preload"),
        ]);
        let headers = from_origin(StatusCode::OK, &origin, "nyud.net");
        assert_eq!(
            headers,
            map(&[
                ("location", "http://www.example.com.nyud.net/next"),
                ("link", "</a>; rel=preload"),
                ("link", "</b>; rel=preload"),
            ])
        );
    }
}
