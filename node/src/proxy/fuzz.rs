//! Property tests (proptest) of the proxy's own request and response handling, fed with
//! hostile input: host names, header maps as messy servers and clients send them, range and
//! condition headers, peer tokens and cache files. Each property states what must hold
//! whatever the input, beyond not panicking.

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use proptest::prelude::*;

use super::cache::Stored;
use super::cache::tests::{head, request};
use super::headers::{self, Forwarding};
use super::peers::PeerAuth;
use super::respond;
use super::target::{Origin, zone_url};

const ZONE: &str = "nyud.net";

/// Header names: the ones the proxy treats specially, in odd casings, and random tokens.
fn header_name() -> impl Strategy<Value = HeaderName> {
    let special = prop::sample::select(vec![
        "connection",
        "Keep-Alive",
        "TRANSFER-ENCODING",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "cookie",
        "Set-Cookie",
        "location",
        "content-location",
        "age",
        "via",
        "content-length",
        "expect",
        "range",
        "if-range",
        "if-none-match",
        "if-match",
        "if-modified-since",
        "if-unmodified-since",
        "strict-transport-security",
        "alt-svc",
        "x-forwarded-for",
        "host",
        "etag",
        "last-modified",
        "cache-control",
    ])
    .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).expect("valid name"));
    let random = "[a-zA-Z][a-zA-Z0-9-]{0,11}"
        .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).expect("valid name"));
    prop_oneof![special, random]
}

/// Header values: text the proxy parses (lists, URLs, numbers, ranges) and arbitrary bytes a
/// header may legally hold (no CR, LF or NUL).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let structured = prop::sample::select(vec![
        "close, keep-alive, x-secret",
        "x-secret",
        "http://www.example.com/a?b=c",
        "https://Other.Example:8443/x",
        "//evil.example/steal",
        "/relative/path",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "bytes=0-5",
        "bytes=-5",
        "bytes=5-",
        "bytes=9-2",
        "bytes=0-0,2-3",
        "bytes=99999999999999999999-",
        "\"v1\"",
        "W/\"v1\"",
        "*",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "yesterday",
        "4294967296",
        "-1",
        "1.1 nyud.net (coral)",
        "1.0 other, 1.1 NYUD.NET",
    ])
    .prop_map(HeaderValue::from_static);
    let bytes = prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..48)
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("no control bytes"));
    prop_oneof![structured, bytes]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

/// Names a `Connection` header lists.
fn connection_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn origin_headers_are_cleaned_whatever_the_server_sends(
        origin in header_map(),
        status in prop::sample::select(vec![100u16, 200, 204, 206, 301, 304, 404, 503]),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let kept = headers::from_origin(status, &origin, ZONE);
        prop_assert!(kept.get_all(header::CONTENT_LENGTH).iter().count() <= 1, "one length at most");
        if status == StatusCode::NO_CONTENT || status.is_informational() {
            prop_assert!(!kept.contains_key(header::CONTENT_LENGTH), "a bodiless answer with a length");
        }
        for name in HOP_BY_HOP.iter().copied().chain(["set-cookie", "strict-transport-security", "alt-svc"]) {
            prop_assert!(!kept.contains_key(name), "{name} crossed");
        }
        for name in connection_names(&origin) {
            prop_assert!(!kept.contains_key(&name), "{name} was named by Connection");
        }
        if origin.contains_key(header::TRANSFER_ENCODING) {
            prop_assert!(!kept.contains_key(header::CONTENT_LENGTH), "two framings");
        }
        if let Some(age) = kept.get(header::AGE) {
            let seconds: u64 = age.to_str().unwrap().trim().parse().unwrap();
            prop_assert!(seconds <= 1 << 31);
        }
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(before) = origin.get(&name).and_then(|value| value.to_str().ok()) else {
                continue;
            };
            // An absolute URL naming a host the zone can carry must come out in the zone.
            let absolute = before
                .parse::<http::Uri>()
                .ok()
                .filter(|uri| matches!(uri.scheme_str(), Some("http" | "https")))
                .and_then(|uri| Origin::from_uri(&uri));
            if absolute.is_some() {
                let after = kept.get(&name).unwrap().to_str().unwrap();
                let host = after.strip_prefix("http://").unwrap().split('/').next().unwrap();
                prop_assert!(host.ends_with(".nyud.net"), "{before} became {after}");
            }
        }
    }

    #[test]
    fn client_headers_reaching_origins_are_safe(
        client in header_map(),
        forwarding in prop::sample::select(vec![Forwarding::CacheFill, Forwarding::Bodiless, Forwarding::WithBody]),
        request_id in "[ -~]{0,70}",
    ) {
        let client_ip = IpAddr::from(Ipv4Addr::new(192, 0, 2, 7));
        let sent = headers::to_origin(&client, Version::HTTP_11, client_ip, ZONE, &request_id, forwarding);
        for name in HOP_BY_HOP.iter().copied().chain(["cookie", "host"]) {
            prop_assert!(!sent.contains_key(name), "{name} crossed");
        }
        for name in connection_names(&client) {
            let forwarded = ["x-forwarded-for", "via", "x-request-id"].contains(&name.as_str());
            prop_assert!(forwarded || !sent.contains_key(&name), "{name} was named by Connection");
        }
        if forwarding != Forwarding::WithBody {
            prop_assert!(!sent.contains_key(header::CONTENT_LENGTH));
            prop_assert!(!sent.contains_key(header::EXPECT));
        }
        if forwarding == Forwarding::CacheFill {
            prop_assert!(!sent.contains_key(header::RANGE));
            prop_assert!(!sent.contains_key(header::IF_NONE_MATCH));
        }
        let via = sent.get(header::VIA).unwrap().as_bytes();
        prop_assert!(via.ends_with(b"1.1 nyud.net (coral)"), "{via:?}");
        prop_assert!(headers::is_loop(&sent, ZONE));
        let forwarded_for = sent.get("x-forwarded-for").unwrap().to_str().unwrap();
        prop_assert!(forwarded_for.ends_with("192.0.2.7"), "{forwarded_for}");
    }

    #[test]
    fn peer_marks_are_removed_whatever_the_via(via in header_value()) {
        let ours = headers::via_value(Version::HTTP_11, ZONE);
        let mut received = HeaderMap::new();
        received.insert(header::VIA, via);
        let before = received.get(header::VIA).unwrap().as_bytes().to_vec();
        headers::append_via(&mut received, &ours);
        prop_assert!(headers::is_loop(&received, ZONE));
        headers::strip_peer_marks(&mut received, &ours);
        let left = received.get(header::VIA).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        let hops: Vec<&[u8]> = before
            .split(|byte| *byte == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|hop| !hop.is_empty() && *hop != ours.as_bytes())
            .collect();
        prop_assert_eq!(left, hops.join(&b", "[..]), "exactly the earlier hops are left");
    }

    #[test]
    fn zone_hosts_parse_back_to_their_origin(host in "[a-z0-9.-]{1,40}(\\.[0-9]{1,5})?") {
        if let Ok(origin) = Origin::from_zone_host(&format!("{host}.{ZONE}"), ZONE) {
            prop_assert!(!origin.host.is_empty());
            prop_assert!(origin.port != 0);
            let again = Origin::from_zone_host(&origin.zone_host(ZONE), ZONE).unwrap();
            let port = if origin.port == 443 { 80 } else { origin.port };
            prop_assert_eq!(again, Origin { port, ..origin });
        }
    }

    #[test]
    fn arbitrary_hosts_never_panic(host in "\\PC{0,80}") {
        let _ = Origin::from_zone_host(&host, ZONE);
        let _ = zone_url(&host, ZONE);
    }

    #[test]
    fn peer_tokens_cannot_be_guessed(tag in "[0-9a-f]{0,70}", skew in -30i64..30) {
        let auth = PeerAuth::new(b"a cluster key of at least thirty-two bytes");
        let now = SystemTime::now();
        let seconds = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64 + skew;
        let guess = format!("{seconds}.{tag}");
        prop_assert!(!auth.verify("host:80/key", &guess, now), "{guess}");
        let genuine = auth.sign("host:80/key", now);
        prop_assert!(auth.verify("host:80/key", &genuine, now));
        prop_assert!(!auth.verify("host:80/other", &genuine, now), "a token is for one key");
        let other_cluster = PeerAuth::new(b"another cluster key of thirty-two bytes");
        prop_assert!(!other_cluster.verify("host:80/key", &genuine, now));
    }

    #[test]
    fn cached_objects_answer_any_range_or_condition_consistently(
        conditions in prop::collection::vec(
            (prop::sample::select(vec![
                header::RANGE, header::IF_RANGE, header::IF_NONE_MATCH, header::IF_MATCH,
                header::IF_MODIFIED_SINCE, header::IF_UNMODIFIED_SINCE,
            ]), header_value()),
            0..4,
        ),
        length in 0usize..64,
        head_request in any::<bool>(),
    ) {
        let now = SystemTime::now();
        let body: Bytes = (0..length).map(|index| index as u8).collect();
        let stored = Stored::new(
            &request(&[]),
            head(&[("cache-control", "max-age=60"), ("etag", "\"v1\""), ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT")]),
            body.clone(),
            now,
        );
        let mut client = HeaderMap::new();
        for (name, value) in conditions {
            client.append(name, value);
        }
        let method = if head_request { Method::HEAD } else { Method::GET };
        let response = respond::from_stored(&method, &client, &stored, now);
        let status = response.status();
        prop_assert!([
            StatusCode::OK, StatusCode::PARTIAL_CONTENT, StatusCode::NOT_MODIFIED,
            StatusCode::PRECONDITION_FAILED, StatusCode::RANGE_NOT_SATISFIABLE,
        ].contains(&status), "{status}");
        let headers = response.headers().clone();
        let sent = futures::executor::block_on(response.into_body().collect()).unwrap().to_bytes();
        if head_request || status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
            prop_assert!(sent.is_empty());
        }
        if status == StatusCode::OK && !head_request {
            prop_assert_eq!(&sent, &body);
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let range = headers.get(header::CONTENT_RANGE).unwrap().to_str().unwrap();
            let (span, total) = range.strip_prefix("bytes ").unwrap().split_once('/').unwrap();
            let (start, end) = span.split_once('-').unwrap();
            let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
            prop_assert_eq!(total.parse::<usize>().unwrap(), length);
            prop_assert!(start <= end && end < length);
            if !head_request {
                prop_assert_eq!(&sent, &body.slice(start..=end));
            }
        }
        if let Some(declared) = headers.get(header::CONTENT_LENGTH)
            && !head_request
        {
            prop_assert_eq!(declared.to_str().unwrap().parse::<usize>().unwrap(), sent.len());
        }
    }
}
