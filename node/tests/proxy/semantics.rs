//! HTTP caching details checked end to end: freshness from `Expires` and from `Last-Modified`
//! alone, revalidation with `If-Modified-Since`, invalidation by a method passed through,
//! variants chosen by `Vary`, and the request target's length limit.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};

use crate::support::*;

#[test]
fn expires_and_last_modified_give_freshness_and_last_modified_revalidates() {
    in_private_network(|| async {
        let long_ago =
            httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10 * 86_400));
        let origin = TestOrigin::start(handler(move |parts| {
            let long_ago = long_ago.clone();
            async move {
                let now = SystemTime::now();
                match parts.uri.path() {
                    "/expires" => {
                        let expires = httpdate::fmt_http_date(now + Duration::from_secs(60));
                        let date = httpdate::fmt_http_date(now);
                        respond(200, &[("expires", &expires), ("date", &date)], "until then")
                    }
                    // Ten days unchanged: fresh for a tenth of that (RFC 9111 section 4.2.2).
                    "/unchanged" => respond(200, &[("last-modified", &long_ago)], "old"),
                    _ if parts
                        .headers
                        .get("if-modified-since")
                        .map(|v| v.to_str().unwrap())
                        == Some(long_ago.as_str()) =>
                    {
                        let headers = [
                            ("cache-control", "max-age=60"),
                            ("last-modified", &long_ago),
                        ];
                        respond(304, &headers, "")
                    }
                    _ => respond(
                        200,
                        &[("cache-control", "max-age=1"), ("last-modified", &long_ago)],
                        "dated",
                    ),
                }
            }
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        for path in ["/expires", "/unchanged"] {
            assert_eq!(proxy.get(&host, path, &[]).await.cache(), "miss", "{path}");
            assert_eq!(proxy.get(&host, path, &[]).await.cache(), "hit", "{path}");
            assert_eq!(origin.hits(path), 1, "{path}");
        }

        assert_eq!(proxy.get(&host, "/dated", &[]).await.body, "dated");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let answer = proxy.get(&host, "/dated", &[]).await;
        assert_eq!(
            (answer.body.as_ref(), answer.cache()),
            (&b"dated"[..], "revalidated")
        );
        assert_eq!(origin.hits("/dated"), 2);
        assert_eq!(proxy.get(&host, "/dated", &[]).await.cache(), "hit");
    });
}

#[test]
fn a_passed_post_invalidates_the_cached_url() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            respond(
                200,
                &[("cache-control", "max-age=60")],
                parts.method.to_string(),
            )
        }))
        .await;
        let mut config = test_config();
        config.proxy.other_methods = coral_node::config::MethodPolicy::Pass;
        let proxy = TestProxy::start(&config).await;
        let host = origin.zone_host();
        proxy.get(&host, "/item", &[]).await;
        assert_eq!(proxy.get(&host, "/item", &[]).await.cache(), "hit");

        let posted = proxy.send("POST", &host, "/item", &[]).await;
        assert_eq!(posted.body, "POST");
        assert_eq!(origin.last("/item").unwrap().method, Method::POST);
        let after = proxy.get(&host, "/item", &[]).await;
        assert_eq!((after.body.as_ref(), after.cache()), (&b"GET"[..], "miss"));
        assert_eq!(origin.hits("/item"), 3);
    });
}

#[test]
fn a_request_target_over_the_limit_gets_414() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|_| async { respond(200, &[], "ok") })).await;
        let mut config = test_config();
        config.proxy.client_limits.max_url_bytes = 256;
        let proxy = TestProxy::start(&config).await;
        let host = origin.zone_host();
        let at_limit = format!("/{}", "a".repeat(255));
        assert_eq!(
            proxy.get(&host, &at_limit, &[]).await.status,
            StatusCode::OK
        );
        let over = format!("/{}", "a".repeat(256));
        let answer = proxy.get(&host, &over, &[]).await;
        assert_eq!(answer.status, StatusCode::URI_TOO_LONG);
        assert!(String::from_utf8_lossy(&answer.body).contains("longer than 256 bytes"));
        assert_eq!(origin.hits(&over), 0);
    });
}

#[test]
fn each_variant_named_by_vary_is_kept_and_served_to_the_clients_that_match_it() {
    in_private_network(|| async {
        let origin = TestOrigin::start(handler(|parts| async move {
            let language = parts
                .headers
                .get("accept-language")
                .map_or("none", |value| value.to_str().unwrap())
                .to_owned();
            let headers = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
            respond(200, &headers, format!("in {language}"))
        }))
        .await;
        let proxy = TestProxy::start(&test_config()).await;
        let host = origin.zone_host();
        let ask = |language: Option<&'static str>| {
            let (proxy, host) = (&proxy, &host);
            async move {
                let headers: Vec<_> = language
                    .map(|l| ("accept-language", l))
                    .into_iter()
                    .collect();
                let answer = proxy.get(host, "/page", &headers).await;
                (
                    answer.cache().to_owned(),
                    String::from_utf8(answer.body.to_vec()).unwrap(),
                )
            }
        };
        let miss = |body: &str| ("miss".to_owned(), body.to_owned());
        let hit = |body: &str| ("hit".to_owned(), body.to_owned());
        assert_eq!(ask(Some("en")).await, miss("in en"));
        assert_eq!(ask(Some("fr")).await, miss("in fr"));
        assert_eq!(ask(None).await, miss("in none"));
        assert_eq!(ask(Some("en")).await, hit("in en"));
        assert_eq!(ask(Some("fr")).await, hit("in fr"));
        assert_eq!(ask(None).await, hit("in none"));
        assert_eq!(ask(Some("de")).await, miss("in de"));
        assert_eq!(origin.hits("/page"), 4);
    });
}
