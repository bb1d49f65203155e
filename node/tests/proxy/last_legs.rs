//! Origins on their last legs: silent and stalling origins meet the timeouts (with stale content
//! served when there is some), unreachable ones are retried for GET, and answers to requests
//! with credentials stay out of the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::support::*;

/// How long the silent origin keeps a client waiting: far beyond every timeout of the tests.
const SILENCE: Duration = Duration::from_secs(30);

/// Test settings with one-second origin timeouts.
fn impatient_config() -> coral_node::config::NodeConfig {
    let mut config = test_config();
    config.proxy.origin_timeouts.connect = Duration::from_secs(1);
    config.proxy.origin_timeouts.first_byte = Duration::from_secs(1);
    config.proxy.origin_timeouts.idle = Duration::from_secs(1);
    config
}

#[test]
fn a_silent_origin_gets_504_and_a_stalled_body_is_cut_off() {
    in_private_network(|| async {
        // Two origins: a timed-out origin is remembered as down for a while.
        let silent = TestOrigin::start(handler(|_| async {
            tokio::time::sleep(SILENCE).await;
            respond(200, &[], "too late")
        }))
        .await;
        let stalling = TestOrigin::start(handler(|_| async {
            // The head and a first piece, then nothing.
            let pieces = futures::stream::iter(0..2).then(|index| async move {
                if index == 1 {
                    tokio::time::sleep(SILENCE).await;
                }
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"first;")))
            });
            let mut response = respond(200, &[("cache-control", "max-age=60")], "");
            *response.body_mut() = BodyExt::boxed(StreamBody::new(pieces));
            response
        }))
        .await;
        let proxy = TestProxy::start(&impatient_config()).await;

        let answer = proxy.get(&silent.zone_host(), "/silent", &[]).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            String::from_utf8_lossy(&answer.body).contains("the origin sent no response within 2s"),
            "{:?}",
            answer.body
        );

        let host = stalling.zone_host();
        let stalled = proxy.try_get(&host, "/stall").await.expect("a head");
        assert_eq!(stalled.status, StatusCode::OK);
        assert!(!stalled.complete, "a stalled body must not pass for whole");
        // Not kept: the next client is not handed the cut copy.
        let again = proxy.try_get(&host, "/stall").await.expect("a head");
        assert!(!again.complete);
        assert_eq!(stalling.hits("/stall"), 2);
    });
}

#[test]
fn stale_content_is_served_when_the_origin_times_out() {
    in_private_network(|| async {
        let silent = Arc::new(AtomicBool::new(false));
        let state = silent.clone();
        let origin = TestOrigin::start(handler(move |_| {
            let silent = state.load(Ordering::SeqCst);
            async move {
                if silent {
                    tokio::time::sleep(SILENCE).await;
                }
                respond(200, &[("cache-control", "max-age=1")], "v1")
            }
        }))
        .await;
        let proxy = TestProxy::start(&impatient_config()).await;
        let host = origin.zone_host();
        assert_eq!(proxy.get(&host, "/s", &[]).await.body, "v1");
        silent.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let answer = proxy.get(&host, "/s", &[]).await;
        assert_eq!(
            (answer.status, answer.body.as_ref(), answer.cache()),
            (StatusCode::OK, &b"v1"[..], "stale")
        );
        assert!(answer.header("warning").starts_with("110"));
    });
}

#[test]
fn an_unreachable_origin_is_retried_for_get() {
    in_private_network(|| async {
        // A port nothing listens on yet: connections are refused until the origin starts.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("{ORIGIN_HOST}.{port}.{ZONE}");
        let mut config = test_config();
        config.proxy.other_methods = coral_node::config::MethodPolicy::Pass;
        let proxy = Arc::new(TestProxy::start(&config).await);
        let refused = proxy.send("POST", &host, "/form", &[]).await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY);

        // The GET's first attempt is refused; the origin starts 50 ms later, while the GET
        // is being retried (after 100 ms, then 300 ms).
        let get = {
            let (proxy, host) = (proxy.clone(), host.clone());
            tokio::spawn(async move { proxy.get(&host, "/page", &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let origin =
            TestOrigin::start_at(port, handler(|_| async { respond(200, &[], "up") })).await;
        let get = get.await.unwrap();
        assert_eq!(
            (get.status, get.body.as_ref()),
            (StatusCode::OK, &b"up"[..])
        );
        assert_eq!(origin.hits("/page"), 1);
    });
}

#[test]
fn answers_to_requests_with_credentials_are_neither_served_from_nor_kept_in_the_cache() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            let user = parts
                .headers
                .get("authorization")
                .map_or("anonymous", |value| value.to_str().unwrap())
                .to_owned();
            respond(200, &[("cache-control", "max-age=60")], user)
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        let as_alice = [("authorization", "Basic YWxpY2U6")];
        let as_bob = [("authorization", "Basic Ym9iOg==")];

        let public = proxy.get(&host, "/account", &[]).await;
        assert_eq!(public.body, "anonymous");
        assert_eq!(proxy.get(&host, "/account", &[]).await.cache(), "hit");
        for (who, credentials) in [("Basic YWxpY2U6", &as_alice), ("Basic Ym9iOg==", &as_bob)] {
            let answer = proxy.get(&host, "/account", credentials).await;
            assert_eq!(answer.body, who, "served someone else's answer");
            assert_ne!(answer.cache(), "hit");
        }
        // The credentialed answers replaced nothing: anonymous clients still get theirs.
        let public = proxy.get(&host, "/account", &[]).await;
        assert_eq!(
            (public.body.as_ref(), public.cache()),
            (&b"anonymous"[..], "hit")
        );
        assert_eq!(origin.hits("/account"), 3);
    });
}
