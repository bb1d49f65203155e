//! Building client responses: from a stored object (with conditional requests, byte ranges
//! and HEAD answered by the proxy itself) or from a transfer in flight.

use std::time::SystemTime;

use bytes::Bytes;
use futures::stream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use prometheus::IntCounter;

use super::cache::Stored;
use super::client::BoxError;
use super::transfer::{Head, TransferReader};

/// The body of every proxy response.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers a 304 carries over from the full response (RFC 9110 section 15.4.5).
const NOT_MODIFIED_KEEPS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// A body held in memory.
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// No body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body that streams from a transfer as its chunks arrive.
pub fn streamed(reader: TransferReader) -> ProxyBody {
    let chunks = stream::unfold(reader, |mut reader| async move {
        let chunk = reader.next_chunk().await?;
        Some((chunk.map(Frame::data).map_err(BoxError::from), reader))
    });
    BodyExt::boxed(StreamBody::new(chunks))
}

/// `body`, counting its bytes in `served` as they are handed on.
pub fn counted(body: ProxyBody, served: IntCounter) -> ProxyBody {
    metered(body, move |bytes| served.inc_by(bytes))
}

/// `body`, telling `on_bytes` the length of each data frame as it is handed on.
pub fn metered(
    body: ProxyBody,
    mut on_bytes: impl FnMut(u64) + Send + Sync + 'static,
) -> ProxyBody {
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            on_bytes(data.len() as u64);
        }
        frame
    })
    .boxed()
}

/// The answer to a GET or HEAD from a stored whole object.
pub fn from_stored(
    method: &Method,
    request: &HeaderMap,
    stored: &Stored,
    now: SystemTime,
) -> Response<ProxyBody> {
    let mut headers = stored.head.headers.clone();
    let age = stored.policy.age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    if stored.head.status == StatusCode::OK && precondition_failed(request, &headers) {
        return precondition_failed_response();
    }
    if stored.head.status == StatusCode::OK && not_modified(request, &headers) {
        return not_modified_response(&headers);
    }
    let length = stored.body.len() as u64;
    let range = (stored.head.status == StatusCode::OK && *method == Method::GET)
        .then(|| requested_range(request, &headers, length))
        .flatten();
    let (status, body) = match range {
        Some(Ok((start, end))) => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{length}"))
                    .expect("digits are valid header text"),
            );
            let slice = stored.body.slice(start as usize..=end as usize);
            (StatusCode::PARTIAL_CONTENT, slice)
        }
        Some(Err(())) => {
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{length}"))
                    .expect("digits are valid header text"),
            );
            return response;
        }
        None => (stored.head.status, stored.body.clone()),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = if *method == Method::HEAD {
        empty()
    } else {
        full(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The answer to a GET or HEAD from a response head whose body is still arriving; the body's
/// bytes are counted in `served` as they are handed on.
pub fn from_transfer(
    method: &Method,
    request: &HeaderMap,
    head: &Head,
    reader: TransferReader,
    served: IntCounter,
) -> Response<ProxyBody> {
    if head.status == StatusCode::OK && precondition_failed(request, &head.headers) {
        return precondition_failed_response();
    }
    if head.status == StatusCode::OK && not_modified(request, &head.headers) {
        return not_modified_response(&head.headers);
    }
    let body = if *method == Method::HEAD {
        empty()
    } else {
        counted(streamed(reader), served)
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    response
}

fn precondition_failed_response() -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::PRECONDITION_FAILED;
    response
}

/// Whether `If-Match` or `If-Unmodified-Since` fails for a response with these headers
/// (RFC 9110 section 13.2.2: `If-Match` wins; it compares strongly).
pub fn precondition_failed(request: &HeaderMap, response: &HeaderMap) -> bool {
    if let Some(tags) = header_text(request, &header::IF_MATCH) {
        let etag = header_text(response, &header::ETAG).filter(|etag| !etag.starts_with("W/"));
        return !tags
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || Some(tag) == etag);
    }
    let Some(since) = header_date(request, &header::IF_UNMODIFIED_SINCE) else {
        return false;
    };
    header_date(response, &header::LAST_MODIFIED).is_some_and(|modified| modified > since)
}

fn not_modified_response(headers: &HeaderMap) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in NOT_MODIFIED_KEEPS.iter().chain([&header::AGE]) {
        for value in headers.get_all(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Whether a client's conditional request is satisfied by a response with these headers
/// (RFC 9110 section 13.2.2: `If-None-Match` wins over `If-Modified-Since`).
pub fn not_modified(request: &HeaderMap, response: &HeaderMap) -> bool {
    if let Some(tags) = header_text(request, &header::IF_NONE_MATCH) {
        let Some(etag) = header_text(response, &header::ETAG) else {
            return tags.trim() == "*";
        };
        return tags
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || weak_eq(tag, etag));
    }
    let Some(since) = header_date(request, &header::IF_MODIFIED_SINCE) else {
        return false;
    };
    header_date(response, &header::LAST_MODIFIED).is_some_and(|modified| modified <= since)
}

/// The single byte range a request asks for, inclusive, when the proxy should honour it:
/// `Some(Err(()))` when it cannot be satisfied, `None` to send the whole object (no range, an
/// `If-Range` that does not match, several ranges, or a malformed header, which RFC 9110
/// allows a server to ignore).
fn requested_range(
    request: &HeaderMap,
    response: &HeaderMap,
    length: u64,
) -> Option<Result<(u64, u64), ()>> {
    let range = header_text(request, &header::RANGE)?;
    if let Some(condition) = header_text(request, &header::IF_RANGE) {
        let etag = header_text(response, &header::ETAG);
        let modified = header_text(response, &header::LAST_MODIFIED);
        let strong_match = etag.is_some_and(|etag| !etag.starts_with("W/") && etag == condition);
        if !strong_match && modified != Some(condition) {
            return None;
        }
    }
    let parsed = match http_range_header::parse_range_header(range) {
        Ok(parsed) => parsed,
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => return Some(Err(())),
        Err(_) => return None,
    };
    match parsed.validate(length) {
        Ok(ranges) if ranges.len() == 1 => Some(Ok((*ranges[0].start(), *ranges[0].end()))),
        Ok(_) => None,
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => Some(Err(())),
        Err(_) => None,
    }
}

/// Weak comparison of two entity tags (RFC 9110 section 8.8.3.2).
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

fn header_text<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn header_date(headers: &HeaderMap, name: &header::HeaderName) -> Option<std::time::SystemTime> {
    header_text(headers, name).and_then(|text| httpdate::parse_http_date(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::request;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn stored(body: &'static [u8]) -> Stored {
        let request: request::Parts = http::Request::get("http://o.test/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let head = Head {
            status: StatusCode::OK,
            headers: map(&[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", "Tue, 24 Nov 2026 10:00:00 GMT"),
            ]),
        };
        Stored::new(&request, head, Bytes::from_static(body), SystemTime::now())
    }

    async fn body_of(response: Response<ProxyBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[test]
    fn etags_compare_weakly_and_win_over_dates() {
        let response = map(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Tue, 24 Nov 2026 10:00:00 GMT"),
        ]);
        assert!(not_modified(
            &map(&[("if-none-match", "\"v0\", \"v1\"")]),
            &response
        ));
        assert!(!not_modified(
            &map(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Wed, 25 Nov 2026 10:00:00 GMT")
            ]),
            &response
        ));
        assert!(not_modified(
            &map(&[("if-modified-since", "Wed, 25 Nov 2026 10:00:00 GMT")]),
            &response
        ));
        assert!(!not_modified(
            &map(&[("if-modified-since", "Mon, 23 Nov 2026 10:00:00 GMT")]),
            &response
        ));
    }

    #[test]
    fn failed_preconditions_are_detected() {
        let response = map(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 24 Nov 2026 10:00:00 GMT"),
        ]);
        assert!(!precondition_failed(
            &map(&[("if-match", "\"v1\"")]),
            &response
        ));
        assert!(precondition_failed(
            &map(&[("if-match", "\"v2\"")]),
            &response
        ));
        assert!(precondition_failed(
            &map(&[("if-match", "W/\"v1\"")]),
            &map(&[("etag", "W/\"v1\"")])
        ));
        assert!(precondition_failed(
            &map(&[("if-unmodified-since", "Mon, 23 Nov 2026 10:00:00 GMT")]),
            &response
        ));
        assert!(!precondition_failed(&HeaderMap::new(), &response));
    }

    #[tokio::test]
    async fn a_single_range_is_served_from_the_whole_object() {
        let stored = stored(b"0123456789");
        let response = from_stored(
            &Method::GET,
            &map(&[("range", "bytes=2-4")]),
            &stored,
            SystemTime::now(),
        );
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(response.headers()["content-range"], "bytes 2-4/10");
        assert_eq!(response.headers()["content-length"], "3");
        assert_eq!(body_of(response).await, "234");
    }

    #[tokio::test]
    async fn suffix_ranges_unsatisfiable_ranges_and_stale_if_range() {
        let stored = stored(b"0123456789");
        let now = SystemTime::now();
        let suffix = from_stored(&Method::GET, &map(&[("range", "bytes=-3")]), &stored, now);
        assert_eq!(body_of(suffix).await, "789");
        let beyond = from_stored(&Method::GET, &map(&[("range", "bytes=20-")]), &stored, now);
        assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(beyond.headers()["content-range"], "bytes */10");
        let changed = from_stored(
            &Method::GET,
            &map(&[("range", "bytes=0-1"), ("if-range", "\"v0\"")]),
            &stored,
            now,
        );
        assert_eq!(changed.status(), StatusCode::OK);
        assert_eq!(body_of(changed).await, "0123456789");
    }

    #[tokio::test]
    async fn head_keeps_the_length_and_sends_no_body() {
        let stored = stored(b"0123456789");
        let response = from_stored(&Method::HEAD, &HeaderMap::new(), &stored, SystemTime::now());
        assert_eq!(response.headers()["content-length"], "10");
        assert!(body_of(response).await.is_empty());
    }

    #[tokio::test]
    async fn a_matching_conditional_gets_304_with_validators() {
        let stored = stored(b"0123456789");
        let response = from_stored(
            &Method::GET,
            &map(&[("if-none-match", "\"v1\"")]),
            &stored,
            SystemTime::now(),
        );
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()["etag"], "\"v1\"");
        assert!(response.headers().contains_key("age"));
        assert!(!response.headers().contains_key("content-length"));
    }
}
