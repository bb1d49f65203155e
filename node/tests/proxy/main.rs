//! The caching proxy against real origin servers on loopback, each test in a network
//! namespace of its own.

mod connections;
mod last_legs;
mod nasty;
mod semantics;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use coral_node::proxy::sealed;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::*;

/// A body sent in `chunks` pieces of `size` bytes, `pause` apart, with no Content-Length.
fn trickle(chunks: usize, size: usize, pause: Duration) -> OriginBody {
    let pieces = futures::stream::iter(0..chunks).then(move |index| async move {
        if index > 0 {
            tokio::time::sleep(pause).await;
        }
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![
            b'a' + (index % 26) as u8;
            size
        ])))
    });
    BodyExt::boxed(StreamBody::new(pieces))
}

#[test]
fn a_miss_is_fetched_once_then_served_from_the_cache() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                "hello",
            )
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let first = proxy.get(&origin.zone_host(), "/page", &[]).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.body, "hello");
        assert_eq!(first.cache(), "miss");
        assert_eq!(first.header("via"), "1.1 nyud.net (coral)");
        assert_eq!(first.header("x-request-id").len(), 16);
        let second = proxy.get(&origin.zone_host(), "/page", &[]).await;
        assert_eq!(second.body, "hello");
        assert_eq!(second.cache(), "hit");
        assert!(second.headers.contains_key("age"));
        assert_eq!(origin.hits("/page"), 1);
    });
}

#[test]
fn a_flash_crowd_on_one_node_causes_one_origin_fetch() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut response = respond(200, &[("cache-control", "max-age=60")], "");
            *response.body_mut() = trickle(4, 16 * 1024, Duration::from_millis(50));
            response
        }))
        .await;
        let proxy = Arc::new(TestProxy::start(&test_config()).await);
        let host = origin.zone_host();
        let clients: Vec<_> = (0..300)
            .map(|_| {
                let (proxy, host) = (proxy.clone(), host.clone());
                tokio::spawn(async move { proxy.get(&host, "/hot", &[]).await })
            })
            .collect();
        let mut answers = Vec::new();
        for client in clients {
            answers.push(client.await.unwrap());
        }
        let expected: Vec<u8> = (0..4)
            .flat_map(|i| vec![b'a' + i as u8; 16 * 1024])
            .collect();
        assert!(
            answers
                .iter()
                .all(|a| a.status == StatusCode::OK && a.body == expected)
        );
        assert_eq!(origin.hits("/hot"), 1);
        let outcomes = tally(answers.iter().map(|a| a.cache()));
        assert_eq!(outcomes.get("miss"), Some(&1), "{outcomes:?}");
        assert!(
            outcomes.get("coalesced").copied().unwrap_or(0) > 0,
            "{outcomes:?}"
        );
    });
}

/// An origin answering `part0;` at once and `part1;` once `release` is notified.
async fn gated_origin(release: Arc<tokio::sync::Notify>) -> TestOrigin {
    TestOrigin::start(handler(move |_| {
        let gate = release.clone();
        async move {
            let pieces = futures::stream::iter(0..2).then(move |index| {
                let gate = gate.clone();
                async move {
                    if index == 1 {
                        gate.notified().await;
                    }
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!(
                        "part{index};"
                    ))))
                }
            });
            let mut response = respond(200, &[("cache-control", "max-age=60")], "");
            *response.body_mut() = BodyExt::boxed(StreamBody::new(pieces));
            response
        }
    }))
    .await
}

/// Sends a GET to `proxy` and returns the answer's `X-Cache` and body, still arriving.
async fn open_get(proxy: &TestProxy, host: &str, path: &str) -> (String, hyper::body::Incoming) {
    let stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    (cache, response.into_body())
}

/// The next data frame of a body still arriving.
async fn next_data(body: &mut hyper::body::Incoming) -> Bytes {
    body.frame().await.unwrap().unwrap().into_data().unwrap()
}

#[test]
fn clients_get_the_first_bytes_before_the_origin_sends_the_last() {
    in_private_network(|| async {
        let release = Arc::new(tokio::sync::Notify::new());
        let origin = gated_origin(release.clone()).await;
        let proxy = TestProxy::start(&test_config()).await;
        let (_, mut body) = open_get(&proxy, &origin.zone_host(), "/stream").await;
        let first = next_data(&mut body).await;
        assert_eq!(first, "part0;");
        release.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "part1;");
    });
}

#[test]
fn a_node_streams_from_a_peer_whose_fetch_is_still_arriving() {
    in_private_network(|| async {
        let release = Arc::new(tokio::sync::Notify::new());
        let origin = gated_origin(release.clone()).await;
        let cluster = TestCluster::start(&test_config()).await;
        let host = origin.zone_host();
        let (cache, mut fetching) = open_get(&cluster.proxies[0], &host, "/stream").await;
        assert_eq!(cache, "miss");
        assert_eq!(next_data(&mut fetching).await, "part0;");
        let (cache, mut from_peer) = open_get(&cluster.proxies[1], &host, "/stream").await;
        assert_eq!(cache, "peer");
        assert_eq!(
            next_data(&mut from_peer).await,
            "part0;",
            "the peer's bytes so far, before the origin's last"
        );
        release.notify_one();
        assert_eq!(fetching.collect().await.unwrap().to_bytes(), "part1;");
        assert_eq!(from_peer.collect().await.unwrap().to_bytes(), "part1;");
        assert_eq!(origin.hits("/stream"), 1);
    });
}

#[test]
fn internal_addresses_are_refused_after_resolution() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async { respond(200, &[], "secret") })).await;
        let mut config = test_config();
        config.proxy.origin_timeouts.connect = Duration::from_secs(1);
        config.proxy.origin_access.internal_networks.clear();
        config.proxy.origin_access.addresses.extend([
            (
                "metadata.test".to_owned(),
                vec!["169.254.169.254".parse().unwrap()],
            ),
            ("sneaky.test".to_owned(), vec!["10.0.0.1".parse().unwrap()]),
        ]);
        let proxy = TestProxy::start(&config).await;
        for host in [
            "metadata.test.nyud.net".to_owned(),
            "sneaky.test.nyud.net".to_owned(),
            "10.1.2.3.nyud.net".to_owned(),
            "169.254.169.254.nyud.net".to_owned(),
            origin.zone_host(),
            format!("127.0.0.1.{}.nyud.net", origin.address.port()),
        ] {
            let answer = proxy.get(&host, "/latest/meta-data/", &[]).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{host}");
            assert!(
                String::from_utf8_lossy(&answer.body).contains("not a public address"),
                "{host}: {:?}",
                answer.body
            );
        }
        assert_eq!(origin.hits("/latest/meta-data/"), 0);
        let unknown = proxy.get("nowhere.example.nyud.net", "/", &[]).await;
        assert_eq!(unknown.status, StatusCode::BAD_GATEWAY);
        assert!(String::from_utf8_lossy(&unknown.body).contains("cannot resolve nowhere.example"));
    });
}

#[test]
fn an_internal_host_listed_by_name_may_be_fetched_and_no_other() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async { respond(200, &[], "inside") })).await;
        let mut config = test_config();
        config.proxy.origin_access.internal_networks.clear();
        config.proxy.origin_access.internal_hosts = vec![ORIGIN_HOST.to_owned()];
        resolve_to_loopback(&mut config, "other.test");
        let proxy = TestProxy::start(&config).await;
        let allowed = proxy.get(&origin.zone_host(), "/", &[]).await;
        assert_eq!(
            (allowed.status, allowed.body.as_ref()),
            (StatusCode::OK, b"inside".as_ref())
        );
        let port = origin.address.port();
        for host in [
            format!("other.test.{port}.nyud.net"),
            format!("127.0.0.1.{port}.nyud.net"),
        ] {
            let refused = proxy.get(&host, "/", &[]).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{host}");
        }
        assert_eq!(origin.hits("/"), 1);
    });
}

#[test]
fn redirects_keep_clients_in_the_zone() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(301, &[("location", "https://elsewhere.example/x?y=1")], "")
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let answer = proxy.get(&origin.zone_host(), "/moved", &[]).await;
        assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            answer.header("location"),
            "http://elsewhere.example.nyud.net/x?y=1"
        );
    });
}

#[test]
fn same_host_https_redirects_are_followed_inside_the_proxy() {
    in_private_network(|| async {
        let tls = TestTls::new();
        let secure = TestOrigin::start_tls(
            handler(|_| async { respond(200, &[("cache-control", "no-store")], "secure") }),
            &tls,
        )
        .await;
        let https_port = secure.address.port();
        let plain = TestOrigin::start(handler(move |parts| async move {
            let location = format!("https://{ORIGIN_HOST}:{https_port}{}", parts.uri.path());
            respond(301, &[("location", location.as_str())], "")
        }))
        .await;
        let mut config = test_config();
        config.proxy.origin_access.extra_ca_file = Some(tls.ca_file.clone());
        let proxy = TestProxy::start(&config).await;
        for _ in 0..2 {
            let answer = proxy.get(&plain.zone_host(), "/doc", &[]).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, "secure");
        }
        assert_eq!(plain.hits("/doc"), 1, "the upgrade is remembered");
        assert_eq!(secure.hits("/doc"), 2);
    });
}

#[test]
fn an_untrusted_certificate_is_a_bad_gateway() {
    in_private_network(|| async {
        let tls = TestTls::new();
        let secure =
            TestOrigin::start_tls(handler(|_| async { respond(200, &[], "x") }), &tls).await;
        let https_port = secure.address.port();
        let plain = TestOrigin::start(handler(move |_| async move {
            let location = format!("https://{ORIGIN_HOST}:{https_port}/doc");
            respond(301, &[("location", location.as_str())], "")
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let answer = proxy.get(&plain.zone_host(), "/doc", &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert_eq!(secure.hits("/doc"), 0);
    });
}

#[test]
fn stale_content_is_served_while_the_origin_fails() {
    in_private_network(|| async {
        let broken = Arc::new(AtomicBool::new(false));
        let state = broken.clone();
        let origin = TestOrigin::start(handler(move |_| {
            let broken = state.load(Ordering::SeqCst);
            async move {
                if broken {
                    respond(503, &[], "down")
                } else {
                    respond(200, &[("cache-control", "max-age=1")], "v1")
                }
            }
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        assert_eq!(proxy.get(&origin.zone_host(), "/s", &[]).await.body, "v1");
        broken.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let answer = proxy.get(&origin.zone_host(), "/s", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "v1");
        assert_eq!(answer.cache(), "stale");
        assert!(answer.header("warning").starts_with("110"));
        let zone_host = origin.zone_host();
        drop(origin);
        let answer = proxy.get(&zone_host, "/s", &[]).await;
        assert_eq!((answer.status, answer.cache()), (StatusCode::OK, "stale"));
    });
}

#[test]
fn a_restarted_proxy_serves_what_its_disk_tier_kept() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "kept on disk")
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config();
        config.proxy.cache_disk_bytes = 1 << 20;
        config.proxy.cache_dir = dir.path().to_owned();
        let proxy = TestProxy::start(&config).await;
        assert_eq!(
            proxy.get(&origin.zone_host(), "/d", &[]).await.cache(),
            "miss"
        );
        proxy.stop().await;

        let restarted = TestProxy::start(&config).await;
        let answer = restarted.get(&origin.zone_host(), "/d", &[]).await;
        assert_eq!(
            (answer.body.as_ref(), answer.cache()),
            (&b"kept on disk"[..], "hit")
        );
        assert!(answer.headers.contains_key("age"));
        assert_eq!(origin.hits("/d"), 1);
    });
}

#[test]
fn the_cache_view_lists_the_most_asked_urls_first() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "popular")
        }))
        .await;
        let mut config = test_config();
        config.proxy.cache_disk_bytes = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        config.proxy.cache_dir = dir.path().to_owned();
        let proxy = TestProxy::start(&config).await;
        for (path, times) in [("/hot", 400), ("/warm", 40)] {
            for _ in 0..times {
                proxy.get(&origin.zone_host(), path, &[]).await;
            }
        }
        proxy.flush().await;
        let view = proxy.cache_view();
        assert_eq!(view.memory_objects, 2);
        assert_eq!(view.disk_objects, Some(2));
        let urls: Vec<&str> = view.top_urls.iter().map(|top| top.url.as_str()).collect();
        let port = origin.address.port();
        assert_eq!(
            urls,
            [
                format!("{ORIGIN_HOST}:{port}/hot"),
                format!("{ORIGIN_HOST}:{port}/warm")
            ]
        );
        assert!(
            view.top_urls[0].requests > view.top_urls[1].requests * 4,
            "{view:?}"
        );
    });
}

#[test]
fn expired_objects_are_revalidated_with_their_validators() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            if parts
                .headers
                .get("if-none-match")
                .is_some_and(|tag| tag == "\"v1\"")
            {
                respond(
                    304,
                    &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                    "",
                )
            } else {
                respond(
                    200,
                    &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                    "body",
                )
            }
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        assert_eq!(
            proxy.get(&origin.zone_host(), "/r", &[]).await.cache(),
            "miss"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let answer = proxy.get(&origin.zone_host(), "/r", &[]).await;
        assert_eq!(
            (answer.status, answer.cache()),
            (StatusCode::OK, "revalidated")
        );
        assert_eq!(answer.body, "body");
        assert_eq!(
            origin.last("/r").unwrap().headers["if-none-match"],
            "\"v1\""
        );
        let again = proxy.get(&origin.zone_host(), "/r", &[]).await;
        assert_eq!(
            (again.cache(), again.body.as_ref()),
            ("hit", b"body".as_ref())
        );
        assert_eq!(origin.hits("/r"), 2);
    });
}

#[test]
fn cookies_and_hop_by_hop_headers_never_cross() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(
                200,
                &[
                    ("set-cookie", "session=secret"),
                    ("cache-control", "max-age=60"),
                ],
                "page",
            )
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let answer = proxy
            .get(
                &origin.zone_host(),
                "/c",
                &[
                    ("cookie", "id=42"),
                    ("connection", "x-private"),
                    ("x-private", "1"),
                ],
            )
            .await;
        assert!(!answer.headers.contains_key("set-cookie"));
        let seen = origin.last("/c").unwrap().headers;
        assert!(!seen.contains_key("cookie") && !seen.contains_key("x-private"));
        assert_eq!(seen["via"], "1.1 nyud.net (coral)");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["x-request-id"], answer.header("x-request-id"));
        assert_eq!(
            seen["host"],
            format!("{ORIGIN_HOST}:{}", origin.address.port())
        );
    });
}

#[test]
fn refusals_have_a_status_and_an_explanation() {
    in_private_network(|| async {
        let proxy = TestProxy::start(&test_config()).await;
        let cases = [
            (
                "GET",
                "www.example.com",
                vec![],
                StatusCode::MISDIRECTED_REQUEST,
                "is not under nyud.net",
            ),
            (
                "GET",
                "a.nyud.net.nyud.net",
                vec![],
                StatusCode::LOOP_DETECTED,
                "leads back into this CDN",
            ),
            (
                "GET",
                "origin.test.nyud.net",
                vec![("via", "1.1 nyud.net (coral)")],
                StatusCode::LOOP_DETECTED,
                "leads back",
            ),
            (
                "POST",
                "origin.test.nyud.net",
                vec![],
                StatusCode::METHOD_NOT_ALLOWED,
                "serves GET and HEAD",
            ),
            (
                "GET",
                "bad_host.nyud.net",
                vec![],
                StatusCode::BAD_REQUEST,
                "not a valid origin host name",
            ),
        ];
        for (method, host, headers, status, text) in cases {
            let answer = proxy.send(method, host, "/", &headers).await;
            assert_eq!(answer.status, status, "{method} {host}");
            assert_eq!(answer.cache(), "refused");
            assert!(
                String::from_utf8_lossy(&answer.body).contains(text),
                "{:?}",
                answer.body
            );
        }
    });
}

#[test]
fn objects_over_the_size_limit_stream_uncached() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            let mut response = respond(200, &[("cache-control", "max-age=60")], "");
            *response.body_mut() = trickle(50, 4096, Duration::ZERO);
            response
        }))
        .await;
        let mut config = test_config();
        config.proxy.max_object_bytes = 64 * 1024;
        let proxy = TestProxy::start(&config).await;
        for _ in 0..2 {
            let answer = proxy.get(&origin.zone_host(), "/big", &[]).await;
            assert_eq!(answer.body.len(), 50 * 4096);
        }
        assert_eq!(origin.hits("/big"), 2);
    });
}

/// Pieces of the large object: 4 KiB each, piece `index` all of one letter.
const PIECES: usize = 64;

fn piece(index: usize) -> Bytes {
    Bytes::from(vec![b'a' + (index % 26) as u8; 4096])
}

fn large_object() -> Vec<u8> {
    (0..PIECES)
        .flat_map(|index| piece(index).to_vec())
        .collect()
}

/// An origin answering with the large object and its Content-Length: the first piece at
/// once, the others once `release` is notified (every time, for later fetches too).
async fn gated_large_origin(release: Arc<tokio::sync::Notify>) -> TestOrigin {
    TestOrigin::start(handler(move |_| {
        let gate = release.clone();
        async move {
            let pieces = futures::stream::iter(0..PIECES).then(move |index| {
                let gate = gate.clone();
                async move {
                    if index == 1 {
                        gate.notified().await;
                    }
                    Ok::<_, std::convert::Infallible>(Frame::data(piece(index)))
                }
            });
            let length = (PIECES * 4096).to_string();
            let headers = [("cache-control", "max-age=60"), ("content-length", &length)];
            let mut response = respond(200, &headers, "");
            *response.body_mut() = BodyExt::boxed(StreamBody::new(pieces));
            response
        }
    }))
    .await
}

/// Asks `proxy` for the large object, a miss, and reads its first piece.
async fn first_piece_of_a_miss(proxy: &TestProxy, host: &str) -> hyper::body::Incoming {
    let (cache, mut body) = open_get(proxy, host, "/iso").await;
    assert_eq!(cache, "miss");
    assert_eq!(next_data(&mut body).await, piece(0));
    body
}

/// Lets the gated origin send the rest, and checks that `first` (past its first piece) and
/// `others` get the whole large object.
async fn release_and_check(
    release: &tokio::sync::Notify,
    first: hyper::body::Incoming,
    others: Vec<hyper::body::Incoming>,
) {
    release.notify_one();
    let expected = large_object();
    // A second origin fetch would wait at the gate for ever: a failure, not a hang.
    let whole = |body: hyper::body::Incoming| async move {
        let collected = tokio::time::timeout(Duration::from_secs(30), body.collect()).await;
        collected.expect("the rest never came").unwrap().to_bytes()
    };
    assert_eq!(whole(first).await[..], expected[4096..]);
    for body in others {
        assert_eq!(whole(body).await[..], expected[..]);
    }
}

/// A configuration caching objects up to 64 KiB, with a disk tier in `dir`.
fn small_cache_with_disk(dir: &std::path::Path) -> coral_node::config::NodeConfig {
    let mut config = test_config();
    config.proxy.max_object_bytes = 64 * 1024;
    config.proxy.cache_disk_bytes = 64 << 20;
    config.proxy.cache_dir = dir.to_owned();
    config
}

#[test]
fn a_crowd_asking_for_an_object_too_large_to_cache_shares_one_fetch() {
    in_private_network(|| async {
        let release = Arc::new(tokio::sync::Notify::new());
        let origin = gated_large_origin(release.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start(&small_cache_with_disk(dir.path())).await;
        let host = origin.zone_host();
        let first = first_piece_of_a_miss(&proxy, &host).await;
        let mut crowd = Vec::new();
        for _ in 0..20 {
            let (cache, body) = open_get(&proxy, &host, "/iso").await;
            assert_eq!(cache, "coalesced");
            crowd.push(body);
        }
        assert!(proxy.spill_bytes() >= (PIECES * 4096) as i64);
        release_and_check(&release, first, crowd).await;
        assert_eq!(origin.hits("/iso"), 1);
        // Too large to cache: once the shared fetch is over and its file gone, the next
        // client fetches again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while proxy.spill_bytes() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the spill file outlived its readers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let again = tokio::spawn({
            let release = release.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                release.notify_one();
            }
        });
        assert_eq!(proxy.get(&host, "/iso", &[]).await.cache(), "miss");
        again.await.unwrap();
        assert_eq!(origin.hits("/iso"), 2);
    });
}

#[test]
fn nodes_share_one_fetch_of_an_object_too_large_to_cache() {
    in_private_network(|| async {
        let release = Arc::new(tokio::sync::Notify::new());
        let origin = gated_large_origin(release.clone()).await;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let cluster =
            TestCluster::start_each(|node| small_cache_with_disk(dirs[node].path())).await;
        let host = origin.zone_host();
        let first = first_piece_of_a_miss(&cluster.proxies[0], &host).await;
        let mut others = Vec::new();
        for node in 1..3 {
            let (cache, body) = open_get(&cluster.proxies[node], &host, "/iso").await;
            assert_eq!(cache, "peer", "node {node}");
            others.push(body);
        }
        release_and_check(&release, first, others).await;
        assert_eq!(origin.hits("/iso"), 1);
    });
}

#[test]
fn ranges_conditionals_and_head_are_answered_from_the_cache() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
                "0123456789",
            )
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        proxy.get(&host, "/obj", &[]).await;
        let range = proxy.get(&host, "/obj", &[("range", "bytes=2-5")]).await;
        assert_eq!(
            (range.status, range.body.as_ref()),
            (StatusCode::PARTIAL_CONTENT, b"2345".as_ref())
        );
        let conditional = proxy
            .get(&host, "/obj", &[("if-none-match", "\"e\"")])
            .await;
        assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
        let head = proxy.send("HEAD", &host, "/obj", &[]).await;
        assert_eq!((head.header("content-length"), head.body.len()), ("10", 0));
        assert_eq!(origin.hits("/obj"), 1);
    });
}

/// Hits of large objects, copied from memory or, when the node is set to, sent with
/// `sendfile` from a sealed memory file.
#[test]
fn large_cached_objects_are_answered_whole_and_by_range_from_memory() {
    in_private_network(|| async {
        let object: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let served = object.clone();
        let origin = TestOrigin::start(handler(move |_| {
            let served = served.clone();
            async move { respond(200, &[("cache-control", "max-age=60")], served) }
        }))
        .await;
        for sendfile_min_bytes in [None, Some(64 * 1024)] {
            let mut config = test_config();
            config.proxy.sendfile_min_bytes = sendfile_min_bytes;
            let proxy = TestProxy::start(&config).await;
            let host = origin.zone_host();
            let path = format!("/large-{sendfile_min_bytes:?}");
            proxy.get(&host, &path, &[]).await;
            let sent_before = sealed::stats().sent_bytes;
            for _ in 0..2 {
                let whole = proxy.get(&host, &path, &[]).await;
                assert!(whole.body == object, "the whole object differs");
            }
            let range = proxy
                .get(&host, &path, &[("range", "bytes=123457-654320")])
                .await;
            assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
            assert!(range.body == object[123_457..=654_320], "the range differs");
            assert_eq!(origin.hits(&path), 1);
            if sendfile_min_bytes.is_some() {
                // The hits went by sendfile, not by copying.
                let sent = sealed::stats().sent_bytes - sent_before;
                assert!(
                    sent >= 2 * 1_000_003 + 530_864,
                    "{sent} bytes sent by sendfile"
                );
            }
        }
    });
}

#[test]
fn bytes_served_count_the_bodies_clients_get() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            if parts.uri.path() == "/chunked" {
                // No Content-Length: two pieces of 300 bytes.
                let pieces = futures::stream::iter(0..2).map(|_| {
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'c'; 300])))
                });
                let mut response = respond(200, &[("cache-control", "max-age=60")], "");
                *response.body_mut() = BodyExt::boxed(StreamBody::new(pieces));
                return response;
            }
            let headers = [("cache-control", "max-age=60"), ("etag", "\"v1\"")];
            respond(200, &headers, vec![b'x'; 1000])
        }))
        .await;
        let mut config = test_config();
        config.proxy.other_methods = coral_node::config::MethodPolicy::Pass;
        let proxy = TestProxy::start(&config).await;
        let host = origin.zone_host();
        let served = || (proxy.bytes_served("origin"), proxy.bytes_served("cache"));

        proxy.get(&host, "/fixed", &[]).await;
        assert_eq!(served(), (1000, 0), "a miss");
        proxy.get(&host, "/fixed", &[]).await;
        assert_eq!(served(), (1000, 1000), "a hit");
        proxy.send("HEAD", &host, "/fixed", &[]).await;
        assert_eq!(served(), (1000, 1000), "HEAD sends no body");
        let range = proxy.get(&host, "/fixed", &[("range", "bytes=0-99")]).await;
        assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(served(), (1000, 1100), "a range sends its bytes");
        let unchanged = proxy
            .get(&host, "/fixed", &[("if-none-match", "\"v1\"")])
            .await;
        assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
        assert_eq!(served(), (1000, 1100), "a 304 sends no body");
        let chunked = proxy.get(&host, "/chunked", &[]).await;
        assert_eq!(chunked.body.len(), 600);
        assert_eq!(served(), (1600, 1100), "a body without Content-Length");
        proxy.send("POST", &host, "/fixed", &[]).await;
        assert_eq!(served(), (2600, 1100), "a request passed to the origin");
    });
}

#[test]
fn requests_are_counted_and_timed_by_result_and_the_cache_by_tier() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "x".repeat(10_000))
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        assert_eq!(proxy.cached("memory"), (0, 0));
        let host = origin.zone_host();
        assert_eq!(proxy.get(&host, "/a", &[]).await.cache(), "miss");
        assert_eq!(proxy.get(&host, "/b", &[]).await.cache(), "miss");
        for _ in 0..3 {
            assert_eq!(proxy.get(&host, "/a", &[]).await.cache(), "hit");
        }
        let refused = proxy.get("elsewhere.example", "/", &[]).await;
        assert_eq!(refused.cache(), "refused");
        assert_eq!(proxy.requests("miss"), (2, 2));
        assert_eq!(proxy.requests("hit"), (3, 3));
        assert_eq!(proxy.requests("refused"), (1, 1));
        let (objects, bytes) = proxy.cached("memory");
        assert_eq!(objects, 2);
        assert!(
            (20_000..40_000).contains(&bytes),
            "{bytes} bytes for two 10 kB bodies"
        );
    });
}

#[test]
fn a_bodiless_request_never_forwards_the_clients_content_length() {
    in_private_network(|| async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let origin = TestOrigin::start(handler(|_| async { respond(200, &[], "ok") })).await;
        let proxy = TestProxy::start(&test_config()).await;
        let mut stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
        let request = format!(
            "GET /smuggle HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            origin.zone_host()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = origin.last("/smuggle").unwrap().headers;
        assert!(!seen.contains_key("content-length"), "{seen:?}");
    });
}

#[test]
fn private_answers_are_not_shared_between_waiting_clients() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let user = parts.headers["x-user"].to_str().unwrap().to_owned();
            respond(200, &[("cache-control", "private, max-age=60")], user)
        }))
        .await;
        let proxy = Arc::new(TestProxy::start(&test_config()).await);
        let host = origin.zone_host();
        let asks: Vec<_> = ["alice", "bob"]
            .into_iter()
            .map(|user| {
                let (proxy, host) = (proxy.clone(), host.clone());
                tokio::spawn(async move { proxy.get(&host, "/me", &[("x-user", user)]).await })
            })
            .collect();
        let alice = asks.into_iter().next().unwrap().await.unwrap();
        assert_eq!(alice.body, "alice");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(origin.hits("/me"), 2);
        let bob = proxy.get(&host, "/me", &[("x-user", "bob")]).await;
        assert_eq!(bob.body, "bob", "a private answer is never cached either");
    });
}

#[test]
fn absurd_ages_and_lifetimes_do_not_break_the_proxy() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(
                200,
                &[
                    ("cache-control", "max-age=18446744073709551615"),
                    ("age", "18446744073709551615"),
                ],
                "odd",
            )
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        for _ in 0..2 {
            let answer = proxy.get(&origin.zone_host(), "/odd", &[]).await;
            assert_eq!(
                (answer.status, answer.body.as_ref()),
                (StatusCode::OK, b"odd".as_ref())
            );
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let later = proxy.get(&origin.zone_host(), "/odd", &[]).await;
        assert_eq!(later.status, StatusCode::OK);
    });
}

#[test]
fn a_busy_origin_gets_no_more_than_its_share_of_fetches() {
    in_private_network(|| async {
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let origin = TestOrigin::start(handler(move |parts| {
            let gate = gate.clone();
            async move {
                if parts.uri.path() == "/hang" {
                    gate.notified().await;
                }
                respond(200, &[], "done")
            }
        }))
        .await;
        let mut config = test_config();
        config.proxy.origin_access.max_concurrent_fetches = 1;
        // The hanging fetch holds the only slot for connect + first byte (2 s); the second
        // request waits for a slot for the first-byte time (1 s), then gives up.
        config.proxy.origin_timeouts.connect = Duration::from_secs(1);
        config.proxy.origin_timeouts.first_byte = Duration::from_secs(1);
        let proxy = Arc::new(TestProxy::start(&config).await);
        let host = origin.zone_host();
        let hanging = {
            let (proxy, host) = (proxy.clone(), host.clone());
            tokio::spawn(async move { proxy.get(&host, "/hang", &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = proxy.get(&host, "/other", &[]).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(&refused.body).contains("fetches in flight"));
        assert_eq!(origin.hits("/other"), 0);
        release.notify_one();
        assert_eq!(hanging.await.unwrap().body, "done");
    });
}

#[test]
fn a_304_that_does_not_match_the_stored_copy_is_fetched_again_whole() {
    in_private_network(|| async {
        let changed = Arc::new(AtomicBool::new(false));
        let state = changed.clone();
        let origin = TestOrigin::start(handler(move |parts| {
            let changed = state.load(Ordering::SeqCst);
            async move {
                if !changed {
                    respond(
                        200,
                        &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                        "one",
                    )
                } else if parts.headers.contains_key("if-none-match") {
                    respond(304, &[("etag", "\"v2\"")], "")
                } else {
                    respond(
                        200,
                        &[("cache-control", "max-age=60"), ("etag", "\"v2\"")],
                        "two",
                    )
                }
            }
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        assert_eq!(proxy.get(&origin.zone_host(), "/v", &[]).await.body, "one");
        changed.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let answer = proxy.get(&origin.zone_host(), "/v", &[]).await;
        assert_eq!(
            (answer.body.as_ref(), answer.header("etag")),
            (b"two".as_ref(), "\"v2\"")
        );
    });
}

#[test]
fn ranges_of_objects_too_large_to_cache_go_to_the_origin() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            let whole = vec![b'x'; 200 * 1024];
            match parts.headers.get("range") {
                Some(_) => respond(
                    206,
                    &[("content-range", "bytes 0-9/204800")],
                    Bytes::from(whole[..10].to_vec()),
                ),
                None => respond(200, &[("cache-control", "max-age=60")], whole),
            }
        }))
        .await;
        let mut config = test_config();
        config.proxy.max_object_bytes = 64 * 1024;
        let proxy = TestProxy::start(&config).await;
        let answer = proxy
            .get(&origin.zone_host(), "/video", &[("range", "bytes=0-9")])
            .await;
        assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(answer.body.len(), 10);
        assert_eq!(answer.cache(), "pass");
    });
}

#[test]
fn a_node_fetches_from_the_peer_that_holds_the_object() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "shared")
        }))
        .await;
        let cluster = TestCluster::start(&test_config()).await;
        let host = origin.zone_host();
        assert_eq!(
            cluster.proxies[0].get(&host, "/obj", &[]).await.cache(),
            "miss"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let from_peer = cluster.proxies[1].get(&host, "/obj", &[]).await;
        assert_eq!(
            (from_peer.cache(), from_peer.body.as_ref()),
            ("peer", b"shared".as_ref())
        );
        assert_eq!(from_peer.header("via"), "1.1 nyud.net (coral)");
        // The client may have its 6 bytes before the node has stored them: a request arriving
        // meanwhile joins the transfer from the peer. Either way the node now holds the object.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let again = cluster.proxies[1].get(&host, "/obj", &[]).await;
            if again.cache() == "hit" {
                break;
            }
            assert_eq!(again.cache(), "coalesced");
            assert!(std::time::Instant::now() < deadline, "never stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(origin.hits("/obj"), 1);
    });
}

#[test]
fn holders_that_are_dead_or_lack_the_object_are_passed_over_and_see_the_request_id() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "shared")
        }))
        .await;
        // A holder that lost the object (it answers as a proxy does) and one where nothing
        // listens.
        let lost = TestOrigin::start(handler(|_| async {
            respond(404, &[("x-cache", "refused")], "")
        }))
        .await;
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let cluster = TestCluster::start(&test_config()).await;
        let host = origin.zone_host();
        let fetched = cluster.proxies[0].get(&host, "/obj", &[]).await;
        assert_eq!(fetched.cache(), "miss");
        let key = format!("{ORIGIN_HOST}:{}/obj", origin.address.port());
        cluster.announce(2, &key, dead).await;
        cluster.announce(2, &key, lost.address).await;

        let traced = cluster.proxies[2]
            .get(&host, "/obj", &[("x-request-id", "trace-me-7")])
            .await;
        assert_eq!(
            (traced.cache(), traced.body.as_ref()),
            ("peer", b"shared".as_ref())
        );
        assert_eq!(traced.header("x-request-id"), "trace-me-7");
        assert_eq!(
            origin.hits("/obj"),
            1,
            "no holder's failure reached the origin"
        );
        assert_eq!(cluster.proxies[2].peer_fetches("miss"), 2);
        assert_eq!(cluster.proxies[2].peer_fetches("hit"), 1);
        let asked = lost
            .last("/obj")
            .expect("the holder that lost the object was asked");
        assert_eq!(asked.headers["x-request-id"], "trace-me-7");
        assert!(asked.headers.contains_key("x-coral-peer"));
    });
}

#[test]
fn a_flash_crowd_across_three_nodes_fetches_the_origin_once() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut response = respond(200, &[("cache-control", "max-age=60")], "");
            *response.body_mut() = trickle(8, 8 * 1024, Duration::from_millis(50));
            response
        }))
        .await;
        let cluster = Arc::new(TestCluster::start(&test_config()).await);
        let host = origin.zone_host();
        let first = {
            let (cluster, host) = (cluster.clone(), host.clone());
            tokio::spawn(async move { cluster.proxies[0].get(&host, "/slashdotted", &[]).await })
        };
        // The link goes up: the first visitor is a moment ahead of the crowd.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let crowd: Vec<_> = (0..500)
            .map(|index| {
                let (cluster, host) = (cluster.clone(), host.clone());
                tokio::spawn(async move {
                    cluster.proxies[index % 3]
                        .get(&host, "/slashdotted", &[])
                        .await
                })
            })
            .collect();
        let mut answers = vec![first.await.unwrap()];
        for client in crowd {
            answers.push(client.await.unwrap());
        }
        let expected: Vec<u8> = (0..8)
            .flat_map(|i| vec![b'a' + i as u8; 8 * 1024])
            .collect();
        assert!(
            answers
                .iter()
                .all(|a| a.status == StatusCode::OK && a.body == expected)
        );
        let outcomes = tally(answers.iter().map(|a| a.cache()));
        assert_eq!(origin.hits("/slashdotted"), 1, "{outcomes:?}");
        assert_eq!(outcomes.get("miss"), Some(&1), "{outcomes:?}");
        assert_eq!(
            outcomes.get("peer"),
            Some(&2),
            "one peer fetch per other node: {outcomes:?}"
        );
    });
}

#[test]
fn a_crowd_arriving_at_three_nodes_at_once_fetches_the_origin_once() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            respond(200, &[("cache-control", "max-age=60")], "once")
        }))
        .await;
        let cluster = Arc::new(TestCluster::start(&test_config()).await);
        let host = origin.zone_host();
        let crowd: Vec<_> = (0..300)
            .map(|index| {
                let (cluster, host) = (cluster.clone(), host.clone());
                tokio::spawn(async move {
                    cluster.proxies[index % 3]
                        .get(&host, "/together", &[])
                        .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for client in crowd {
            answers.push(client.await.unwrap());
        }
        assert!(
            answers
                .iter()
                .all(|a| a.status == StatusCode::OK && a.body == "once")
        );
        let outcomes = tally(answers.iter().map(|a| a.cache()));
        assert_eq!(origin.hits("/together"), 1, "{outcomes:?}");
        assert_eq!(outcomes.get("peer"), Some(&2), "{outcomes:?}");
    });
}

#[test]
fn nodes_holding_an_expired_copy_revalidate_it_with_the_origin_once() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            let headers = [("cache-control", "max-age=3"), ("etag", "\"v1\"")];
            if parts.headers.get("if-none-match").is_some() {
                respond(304, &headers, "")
            } else {
                respond(200, &headers, "shared")
            }
        }))
        .await;
        let cluster = Arc::new(TestCluster::start(&test_config()).await);
        let host = origin.zone_host();
        assert_eq!(
            cluster.proxies[0].get(&host, "/obj", &[]).await.cache(),
            "miss"
        );
        for node in 1..3 {
            assert_eq!(
                cluster.proxies[node].get(&host, "/obj", &[]).await.cache(),
                "peer"
            );
        }
        // Date has whole seconds, so a copy is fresh for 2 to 3 s: wait until every copy
        // has expired.
        tokio::time::sleep(Duration::from_millis(4100)).await;
        let expired: Vec<_> = (0..3)
            .map(|node| {
                let (cluster, host) = (cluster.clone(), host.clone());
                tokio::spawn(async move { cluster.proxies[node].get(&host, "/obj", &[]).await })
            })
            .collect();
        let mut results = Vec::new();
        for answer in expired {
            let answer = answer.await.unwrap();
            assert_eq!(answer.body, "shared");
            results.push(answer.cache().to_owned());
        }
        let outcomes = tally(results.iter().map(String::as_str));
        assert_eq!(
            origin.hits("/obj"),
            2,
            "one revalidation for three nodes: {outcomes:?}"
        );
        let revalidation = origin.last("/obj").unwrap();
        assert_eq!(revalidation.headers["if-none-match"], "\"v1\"");
        for node in 0..3 {
            assert_eq!(
                cluster.proxies[node].get(&host, "/obj", &[]).await.cache(),
                "hit"
            );
        }
    });
}

#[test]
fn peers_must_prove_membership_and_never_cause_a_fetch() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async { respond(200, &[], "x") })).await;
        let cluster = TestCluster::start(&test_config()).await;
        let host = origin.zone_host();
        let forged = cluster.proxies[0]
            .get(&host, "/p", &[("x-coral-peer", "1.00")])
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        let key = format!("{ORIGIN_HOST}:{}/p", origin.address.port());
        let token = coral_node::proxy::peers::PeerAuth::new(CLUSTER_KEY)
            .sign(&key, std::time::SystemTime::now());
        let genuine = cluster.proxies[0]
            .get(&host, "/p", &[("x-coral-peer", token.as_str())])
            .await;
        assert_eq!(genuine.status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&genuine.body).contains("no copy"));
        assert_eq!(origin.hits("/p"), 0);
    });
}

#[test]
fn a_node_waiting_on_a_peer_tells_other_peers_no_instead_of_making_them_wait() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "from the origin")
        }))
        .await;
        // A holder that answers only once released, as a node does that waits on another.
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let slow = TestOrigin::start(handler(move |_| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                respond(404, &[("x-cache", "refused")], "")
            }
        }))
        .await;
        let cluster = Arc::new(TestCluster::start(&test_config()).await);
        let host = origin.zone_host();
        let key = format!("{ORIGIN_HOST}:{}/obj", origin.address.port());
        cluster.announce(2, &key, slow.address).await;
        let client = {
            let (cluster, host) = (cluster.clone(), host.clone());
            tokio::spawn(async move { cluster.proxies[2].get(&host, "/obj", &[]).await })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while slow.hits("/obj") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "node 2 never asked the holder"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let token = coral_node::proxy::peers::PeerAuth::new(CLUSTER_KEY)
            .sign(&key, std::time::SystemTime::now());
        let peer_header = [("x-coral-peer", token.as_str())];
        let asked = cluster.proxies[2].get(&host, "/obj", &peer_header);
        let answer = tokio::time::timeout(Duration::from_secs(5), asked)
            .await
            .expect("a peer was made to wait on a node that waits on a peer");
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        // The holder is also the first claim node 2 finds: it is asked twice.
        release.notify_one();
        release.notify_one();
        let served = client.await.unwrap();
        assert_eq!(served.body, "from the origin");
        assert_eq!(origin.hits("/obj"), 1);
    });
}

#[test]
fn a_client_over_its_rate_is_told_when_to_come_back() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "ok")
        }))
        .await;
        let mut config = test_config();
        config.proxy.per_client_rate = coral_node::config::RateLimit {
            requests_per_second: 1,
            burst: 2,
        };
        let proxy = TestProxy::start(&config).await;
        for _ in 0..2 {
            assert_eq!(
                proxy.get(&origin.zone_host(), "/r", &[]).await.status,
                StatusCode::OK
            );
        }
        let limited = proxy.get(&origin.zone_host(), "/r", &[]).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.header("retry-after"), "1");
        assert_eq!(origin.hits("/r"), 1);
    });
}

#[test]
fn an_origin_is_asked_for_no_more_objects_than_its_rate() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "ok")
        }))
        .await;
        let mut config = test_config();
        config.proxy.per_origin_rate = coral_node::config::RateLimit {
            requests_per_second: 1,
            burst: 2,
        };
        let proxy = TestProxy::start(&config).await;
        for path in ["/a", "/b"] {
            assert_eq!(
                proxy.get(&origin.zone_host(), path, &[]).await.status,
                StatusCode::OK
            );
        }
        let held_back = proxy.get(&origin.zone_host(), "/c", &[]).await;
        assert_eq!(held_back.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(held_back.header("retry-after"), "1");
        assert_eq!(origin.hits("/c"), 0);
        let cached = proxy.get(&origin.zone_host(), "/a", &[]).await;
        assert_eq!(cached.cache(), "hit", "cached objects are not limited");
    });
}

#[test]
fn an_unreachable_origin_is_remembered_briefly_and_not_hammered() {
    in_private_network(|| async {
        let port = {
            let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            closed.local_addr().unwrap().port()
        };
        let proxy = TestProxy::start(&test_config()).await;
        let host = format!("{ORIGIN_HOST}.{port}.{ZONE}");
        let down = proxy.get(&host, "/a", &[]).await;
        assert_eq!(down.status, StatusCode::BAD_GATEWAY);
        let origin =
            TestOrigin::start_at(port, handler(|_| async { respond(200, &[], "back") })).await;
        let remembered = proxy.get(&host, "/b", &[]).await;
        assert_eq!(remembered.status, StatusCode::BAD_GATEWAY);
        assert!(String::from_utf8_lossy(&remembered.body).contains("remembered for 5s"));
        assert_eq!(
            origin.hits("/b"),
            0,
            "the proxy did not try while it remembered"
        );
        tokio::time::sleep(Duration::from_millis(5200)).await;
        let back = proxy.get(&host, "/b", &[]).await;
        assert_eq!(
            (back.status, back.body.as_ref()),
            (StatusCode::OK, b"back".as_ref())
        );
    });
}

#[test]
fn an_origin_server_error_is_remembered_briefly_per_url() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            if parts.uri.path() == "/fine" {
                respond(200, &[], "fine")
            } else {
                respond(503, &[("retry-after", "30")], "overloaded")
            }
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let first = proxy.get(&origin.zone_host(), "/busy", &[]).await;
        assert_eq!(
            (first.status, first.body.as_ref(), first.cache()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                b"overloaded".as_ref(),
                "miss"
            )
        );
        for _ in 0..20 {
            let again = proxy.get(&origin.zone_host(), "/busy", &[]).await;
            assert_eq!(
                (again.status, again.body.as_ref(), again.cache()),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"overloaded".as_ref(),
                    "remembered_error"
                )
            );
            assert_eq!(again.header("retry-after"), "30");
        }
        assert_eq!(origin.hits("/busy"), 1, "20 retries, no new fetch");
        let other = proxy.get(&origin.zone_host(), "/fine", &[]).await;
        assert_eq!(other.status, StatusCode::OK, "only that URL is remembered");
        // The 503 counts as the origin failing (what the origin error alert watches).
        assert_eq!(
            (proxy.origin_fetches("error"), proxy.origin_fetches("ok")),
            (1, 1)
        );
        tokio::time::sleep(Duration::from_millis(5200)).await;
        let later = proxy.get(&origin.zone_host(), "/busy", &[]).await;
        assert_eq!(later.cache(), "miss");
        assert_eq!(
            origin.hits("/busy"),
            2,
            "asked again once the memory lapsed"
        );
    });
}

#[test]
fn over_the_node_quota_the_heaviest_origin_is_sent_to_the_origin() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            let size = if parts.uri.path() == "/big" {
                1 << 20
            } else {
                100
            };
            respond(200, &[("cache-control", "max-age=60")], "x".repeat(size))
        }))
        .await;
        let mut config = test_config();
        config.proxy.bandwidth.node_bytes_per_second = 100_000;
        resolve_to_loopback(&mut config, "light.test");
        let proxy = TestProxy::start(&config).await;
        let heavy_host = origin.zone_host();
        let light_host = format!("light.test.{}.{ZONE}", origin.address.port());
        assert_eq!(
            proxy.get(&heavy_host, "/big", &[]).await.status,
            StatusCode::OK
        );
        assert_eq!(
            proxy.get(&light_host, "/small", &[]).await.status,
            StatusCode::OK
        );

        let redirected = proxy.get(&heavy_host, "/big", &[]).await;
        assert_eq!(redirected.status, StatusCode::FOUND);
        assert_eq!(redirected.cache(), "redirected");
        assert_eq!(
            redirected.header("location"),
            format!("http://{ORIGIN_HOST}:{}/big", origin.address.port())
        );
        assert_eq!(redirected.header("cache-control"), "no-store");
        let served = proxy.get(&light_host, "/small", &[]).await;
        assert_eq!(
            (served.status, served.cache()),
            (StatusCode::OK, "hit"),
            "the light origin still gets its share"
        );
        assert_eq!(origin.hits("/big"), 1);
    });
}

#[test]
fn an_origin_over_its_bandwidth_is_slowed_down_and_shared_fairly_between_clients() {
    in_private_network(|| async {
        const SIZE: usize = 1 << 20;
        const RATE: u64 = 4_000_000;
        let origin = TestOrigin::start(handler(|_| async {
            respond(200, &[("cache-control", "max-age=60")], "x".repeat(SIZE))
        }))
        .await;
        let mut config = test_config();
        config.proxy.bandwidth.origin_bytes_per_second = RATE;
        let proxy = TestProxy::start(&config).await;
        let host = origin.zone_host();
        assert_eq!(proxy.get(&host, "/big", &[]).await.body.len(), SIZE);

        let heavy = std::net::Ipv4Addr::new(127, 0, 0, 2);
        let light = std::net::Ipv4Addr::new(127, 0, 0, 3);
        let start = std::time::Instant::now();
        // The light client asks last, so that it cannot finish first by arriving first.
        let download = |(client, delay)| {
            let (proxy, host) = (&proxy, &host);
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let answer = proxy.get_from(client, host, "/big").await;
                assert_eq!((answer.cache(), answer.body.len()), ("hit", SIZE));
                (client, start.elapsed())
            }
        };
        let mut finished = futures::future::join_all(
            [(heavy, 0), (heavy, 0), (heavy, 0), (light, 100)].map(download),
        )
        .await;
        finished.sort_by_key(|(_, at)| *at);
        let elapsed = finished.last().unwrap().1.as_secs_f64();
        let least = (4 * SIZE) as f64 / RATE as f64 - 0.1;
        assert!(elapsed > least, "4 MiB in {elapsed} s at 4 MB/s");
        assert_eq!(
            finished[0].0, light,
            "the client with one download finishes first: {finished:?}"
        );
        assert!(proxy.shaping_wait() > 1.0, "{} s", proxy.shaping_wait());
    });
}
