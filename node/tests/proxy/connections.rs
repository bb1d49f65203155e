//! Client connections: keep-alive connections parked between requests and resumed,
//! pipelining, the limits on heads and on silent clients (on raw sockets), and HTTP/2.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::*;

/// An origin answering every path with the path itself, cacheable for a minute.
async fn echo_origin() -> TestOrigin {
    TestOrigin::start(handler(|parts| async move {
        respond(
            200,
            &[("cache-control", "max-age=60")],
            parts.uri.path().to_owned(),
        )
    }))
    .await
}

/// A GET head for `path` on `host`, with extra header lines.
fn get(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// One response read off a raw connection: its status line and body (by Content-Length).
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    let head_end = loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a response head");
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(pending[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    while pending.len() < head_end + length {
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed inside a body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(pending[head_end..head_end + length].to_vec()).unwrap();
    pending.drain(..head_end + length);
    let status = head.lines().next().unwrap().to_owned();
    (status, body)
}

/// Waits until the proxy counts `count` parked connections.
async fn until_idle(proxy: &TestProxy, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.idle_connections() != count {
        assert!(
            Instant::now() < deadline,
            "{} idle connections, not {count}",
            proxy.idle_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP/2 client (prior knowledge) connected to the proxy, and the task running its
/// connection, which finishes when the proxy closes it.
async fn http2_client(
    proxy: &TestProxy,
) -> (SendRequest<Empty<Bytes>>, JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(proxy.address).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

/// An origin that answers with the path, and a proxy whose `headerTimeout` is `header_timeout`.
async fn echo_origin_and_proxy(header_timeout: Duration) -> (TestOrigin, TestProxy) {
    let origin = echo_origin().await;
    let mut config = test_config();
    config.proxy.client_limits.header_timeout = header_timeout;
    (origin, TestProxy::start(&config).await)
}

/// Reads until the proxy closes the connection; what arrived before.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    String::from_utf8_lossy(&rest).into_owned()
}

#[test]
fn idle_keep_alive_connections_are_parked_and_answer_again() {
    in_private_network(|| async {
        let origin = echo_origin().await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(proxy.address).await.unwrap());
        }
        // Connected but silent: parked before the first request.
        until_idle(&proxy, 3).await;
        let mut pending = Vec::new();
        for round in 0..3 {
            for (index, client) in clients.iter_mut().enumerate() {
                let path = format!("/{round}/{index}");
                client
                    .write_all(get(&host, &path, "").as_bytes())
                    .await
                    .unwrap();
                let (status, body) = read_response(client, &mut pending).await;
                assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
                assert_eq!(body, path);
                assert!(pending.is_empty());
            }
            until_idle(&proxy, 3).await;
        }
        let client = &mut clients[0];
        client
            .write_all(get(&host, "/0/0", "Connection: close\r\n").as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(client, &mut pending).await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "/0/0")
        );
        assert_eq!(read_to_close(client).await, "");
        until_idle(&proxy, 2).await;
        assert_eq!(
            origin.hits("/0/0"),
            1,
            "the second answer came from the cache"
        );
    });
}

#[test]
fn pipelined_requests_are_answered_in_order_across_a_pause() {
    in_private_network(|| async {
        let origin = echo_origin().await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let third = get(&host, "/c", "");
        let (third_start, third_end) = third.split_at(20);
        let burst = format!(
            "{}{}{third_start}",
            get(&host, "/a", ""),
            get(&host, "/b", "")
        );
        client.write_all(burst.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        for path in ["/a", "/b"] {
            let (status, body) = read_response(&mut client, &mut pending).await;
            assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", path));
        }
        // The third head stays cut while the connection would otherwise go idle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(third_end.as_bytes()).await.unwrap();
        let (status, body) = read_response(&mut client, &mut pending).await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "/c"));
        until_idle(&proxy, 1).await;
    });
}

#[test]
fn silent_and_slow_clients_are_closed_after_the_header_timeout() {
    in_private_network(|| async {
        let (origin, proxy) = echo_origin_and_proxy(Duration::from_secs(1)).await;
        let host = origin.zone_host();
        let silent = TcpStream::connect(proxy.address).await.unwrap();
        let mut slow = TcpStream::connect(proxy.address).await.unwrap();
        slow.write_all(b"GET /a HTTP/1.1\r\nHost: ").await.unwrap();
        let mut idle = TcpStream::connect(proxy.address).await.unwrap();
        idle.write_all(get(&host, "/a", "").as_bytes())
            .await
            .unwrap();
        let (status, _) = read_response(&mut idle, &mut Vec::new()).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let started = Instant::now();
        for (name, mut client) in [("silent", silent), ("slow", slow), ("idle", idle)] {
            let rest = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut client))
                .await
                .unwrap_or_else(|_| panic!("the {name} client was never closed"));
            assert_eq!(rest, "", "the {name} client was sent {rest:?}");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "closed after {:?}, before the header timeout",
            started.elapsed()
        );
        until_idle(&proxy, 0).await;
    });
}

#[test]
fn oversized_heads_are_refused_and_a_request_body_keeps_its_connection() {
    in_private_network(|| async {
        let origin = echo_origin().await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        let big_header = format!("X-Big: {}\r\n", "a".repeat(40_000));
        let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
        for extra in [big_header, many_headers] {
            let mut client = TcpStream::connect(proxy.address).await.unwrap();
            client
                .write_all(get(&host, "/a", &extra).as_bytes())
                .await
                .unwrap();
            let answer = read_to_close(&mut client).await;
            assert!(
                answer.starts_with("HTTP/1.1 431 "),
                "{}",
                &answer[..answer.len().min(200)]
            );
        }
        assert_eq!(proxy.refusals("head_too_large"), 2);
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let malformed = format!("GET /a HTTP/1.1\r\nHost: {host}\r\nno colon here\r\n\r\n");
        client.write_all(malformed.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:.200}");
        assert_eq!(proxy.refusals("malformed_head"), 1);
        // A count other than hyper's default of 100 holds too.
        let mut strict = test_config();
        strict.proxy.client_limits.max_headers = 30;
        let strict = TestProxy::start(&strict).await;
        for (fields, status) in [(28, "HTTP/1.1 200 "), (31, "HTTP/1.1 431 ")] {
            let extra: String = (1..fields).map(|i| format!("X-H{i}: v\r\n")).collect();
            let mut client = TcpStream::connect(strict.address).await.unwrap();
            let request = get(&host, "/a", &format!("{extra}Connection: close\r\n"));
            client.write_all(request.as_bytes()).await.unwrap();
            let answer = read_to_close(&mut client).await;
            assert!(answer.starts_with(status), "{fields} fields: {answer:.200}");
        }
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let post = format!(
            "POST /form HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello{}",
            get(&host, "/after", "")
        );
        client.write_all(post.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        let (status, _) = read_response(&mut client, &mut pending).await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let (status, body) = read_response(&mut client, &mut pending).await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "/after")
        );
        until_idle(&proxy, 1).await;
        assert_eq!(origin.hits("/form"), 0);
    });
}

#[test]
fn closing_answers_reach_a_slow_reader_whole() {
    in_private_network(|| async {
        const SIZE: usize = 24 << 20;
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], vec![b'x'; SIZE])
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        for close in ["Connection: close\r\n", ""] {
            let mut client = TcpStream::connect(proxy.address).await.unwrap();
            let request = if close.is_empty() {
                format!("GET /big HTTP/1.0\r\nHost: {host}\r\n\r\n")
            } else {
                get(&host, "/big", close)
            };
            client.write_all(request.as_bytes()).await.unwrap();
            // More than the socket buffers hold is still queued when the answer ends.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let answer = read_to_close(&mut client).await;
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1."), "{head}");
            assert_eq!(body.len(), SIZE, "{request:?} answered {head}");
        }
        // The server stops while a keep-alive answer is still queued: it goes out whole, then
        // the connection closes.
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        client
            .write_all(get(&host, "/big", "").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.stop().await;
        let answer = read_to_close(&mut client).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body.len(), SIZE, "cut at shutdown");
        assert_eq!(origin.hits("/big"), 1);
    });
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    in_private_network(|| async {
        const SIZE: usize = 24 << 20;
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], vec![b'x'; SIZE])
        }))
        .await;
        let mut config = test_config();
        config.proxy.client_limits.send_timeout = Duration::from_secs(1);
        let proxy = TestProxy::start(&config).await;
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let request = get(&origin.zone_host(), "/big", "");
        client.write_all(request.as_bytes()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.open_connections() > 0 {
            assert!(Instant::now() < deadline, "the connection was never closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut received))
            .await
            .expect("the connection was never closed");
        assert!(
            read.is_err() || received.len() < SIZE,
            "{} bytes: the whole answer waited for the client",
            received.len()
        );
    });
}

#[test]
fn the_header_timeout_counts_from_when_the_connection_began_to_wait() {
    in_private_network(|| async {
        let mut config = test_config();
        config.proxy.client_limits.header_timeout = Duration::from_secs(2);
        let proxy = TestProxy::start(&config).await;
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let connected = Instant::now();
        tokio::time::sleep(Duration::from_millis(1800)).await;
        client.write_all(b"GET /a HTTP/1.1\r\n").await.unwrap();
        // One header line every 100 ms, until writing fails because the proxy closed.
        let mut refused_after = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client.write_all(b"X-Slow: 1\r\n").await.is_err() {
                refused_after = Some(connected.elapsed());
                break;
            }
        }
        let refused_after = refused_after.expect("the slow head was never cut off");
        // A fresh headerTimeout from the first byte would have let it run until 3.8 s.
        assert!(
            refused_after < Duration::from_secs(3),
            "the head was still taken {refused_after:?} after connecting"
        );
    });
}

#[test]
fn a_preface_sent_in_pieces_is_still_http2_and_a_head_cut_after_p_still_http1() {
    in_private_network(|| async {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let origin = echo_origin().await;
        let proxy = TestProxy::start(&test_config()).await;
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        for piece in [&PREFACE[..12], &PREFACE[12..20], &PREFACE[20..]] {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // An empty SETTINGS frame; the proxy's own SETTINGS comes first.
        client
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut frame = [0; 9];
        client.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame[3], 4, "{:?}", String::from_utf8_lossy(&frame));

        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        client.write_all(b"P").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rest = format!(
            "OST /form HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            origin.zone_host()
        );
        client.write_all(rest.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    });
}

/// A connection to the proxy from the loopback address `client`.
async fn connect_from(proxy: &TestProxy, client: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(client.parse().unwrap(), 0))
        .unwrap();
    socket.connect(proxy.address).await.unwrap()
}

#[test]
fn one_address_gets_its_share_of_connections_and_the_node_its_maximum() {
    in_private_network(|| async {
        let origin = echo_origin().await;
        let host = origin.zone_host();
        let mut config = test_config();
        config.proxy.client_limits.max_connections = 3;
        config.proxy.client_limits.max_connections_per_client = 2;
        let proxy = TestProxy::start(&config).await;
        let mut pending = Vec::new();
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut client = connect_from(&proxy, "127.0.0.2").await;
            client
                .write_all(get(&host, "/a", "").as_bytes())
                .await
                .unwrap();
            let (status, _) = read_response(&mut client, &mut pending).await;
            assert_eq!(status, "HTTP/1.1 200 OK");
            open.push(client);
        }
        // A third from the same address is told why and closed.
        let mut third = connect_from(&proxy, "127.0.0.2").await;
        let _ = third.write_all(get(&host, "/a", "").as_bytes()).await;
        let refusal = read_to_close(&mut third).await;
        assert!(refusal.starts_with("HTTP/1.1 429 "), "{refusal:.200}");
        assert!(refusal.contains("as many connections open"), "{refusal}");

        // Another address is served, up to the node's maximum of three.
        let mut other = connect_from(&proxy, "127.0.0.3").await;
        other
            .write_all(get(&host, "/b", "").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            read_response(&mut other, &mut Vec::new()).await.0,
            "HTTP/1.1 200 OK"
        );
        let mut waiting = connect_from(&proxy, "127.0.0.4").await;
        waiting
            .write_all(get(&host, "/c", "").as_bytes())
            .await
            .unwrap();
        let mut byte = [0; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut byte)).await;
        assert!(early.is_err(), "a fourth connection was served");

        // A connection closing makes room for the one waiting, and gives its address its
        // share back.
        drop(open.pop());
        let (status, body) = read_response(&mut waiting, &mut Vec::new()).await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "/c"));
        drop((other, waiting));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = connect_from(&proxy, "127.0.0.2").await;
            let request = get(&host, "/d", "Connection: close\r\n");
            let _ = again.write_all(request.as_bytes()).await;
            let answer = read_to_close(&mut again).await;
            if answer.starts_with("HTTP/1.1 200 ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the share never came back: {answer:.100}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn http2_clients_get_concurrent_answers_on_one_connection() {
    in_private_network(|| async {
        let origin = echo_origin().await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        let (sender, _connection) = http2_client(&proxy).await;
        let ask = |path: String| {
            let mut sender = sender.clone();
            let request = Request::get(format!("http://{host}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            async move {
                let response = sender.send_request(request).await.unwrap();
                let (parts, body) = response.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                (parts, String::from_utf8(body.to_vec()).unwrap(), path)
            }
        };
        // Twenty streams at once, two per path.
        let crowd = (0..20).map(|index| ask(format!("/h2/{}", index % 10)));
        for (parts, body, path) in futures::future::join_all(crowd).await {
            assert_eq!(parts.status, StatusCode::OK, "{path}");
            assert_eq!(parts.version, Version::HTTP_2);
            assert_eq!(body, path);
        }
        for index in 0..10 {
            assert_eq!(origin.hits(&format!("/h2/{index}")), 1, "/h2/{index}");
        }
        // The proxy received the request over HTTP/2 (RFC 9110 section 7.6.3).
        let fetched = origin.last("/h2/0").unwrap();
        assert_eq!(fetched.headers["via"], "2 nyud.net (coral)");
        let (parts, body, _) = ask("/h2/3".to_owned()).await;
        assert_eq!(body, "/h2/3");
        assert_eq!(parts.headers["x-cache"], "hit");
        let oversized = Request::get(format!("http://{host}/h2/big"))
            .header("x-big", "a".repeat(40_000))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let refused = sender.clone().send_request(oversized).await.unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(origin.hits("/h2/big"), 0);
        // The field count holds as in HTTP/1: at most `maxHeaders`.
        let mut strict = test_config();
        strict.proxy.client_limits.max_headers = 30;
        let strict = TestProxy::start(&strict).await;
        let (strict_sender, _strict_connection) = http2_client(&strict).await;
        // Cookies an HTTP/2 client sends one per field count as one, as in HTTP/1.
        for (fields, cookies, status) in [
            (30, 0, StatusCode::OK),
            (29, 5, StatusCode::OK),
            (31, 0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        ] {
            let mut many = Request::get(format!("http://{host}/h2/many-{fields}"));
            for index in 0..fields {
                many = many.header(format!("x-h{index}"), "v");
            }
            for index in 0..cookies {
                many = many.header("cookie", format!("c{index}=v"));
            }
            let answer = strict_sender
                .clone()
                .send_request(many.body(Empty::<Bytes>::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                status,
                "{fields} fields, {cookies} cookies"
            );
        }
        assert_eq!(origin.hits("/h2/many-31"), 0);
    });
}

#[test]
fn idle_http2_connections_are_closed_and_busy_ones_kept() {
    in_private_network(|| async {
        let (origin, proxy) = echo_origin_and_proxy(Duration::from_secs(1)).await;
        let host = origin.zone_host();
        let (_idle_sender, idle) = http2_client(&proxy).await;
        let (mut busy_sender, busy) = http2_client(&proxy).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            let request = Request::get(format!("http://{host}/busy"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = busy_sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(idle.is_finished(), "the idle connection is still open");
        assert!(!busy.is_finished(), "the busy connection was closed");
    });
}
