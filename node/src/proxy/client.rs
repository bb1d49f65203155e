//! Fetching from origins: hyper-util's pooled client over the guarded connector, with rustls
//! for `https` origins, a first-byte timeout, retries of idempotent requests that never
//! reached the origin, a per-origin concurrency limit, and the http-to-https upgrade.
//!
//! Clients name origins by their `http` form. When an origin answers a request with a
//! redirect to the same host over `https`, the client follows it here instead of handing it to
//! the client (who would leave the CDN), and remembers for a day that the origin speaks
//! `https`, so later fetches go there directly.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use moka::sync::Cache;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connect::{ConnectError, GuardedConnector};
use super::guard::{GuardError, OriginGuard};
use super::in_use::InUse;
use super::resolve::OriginResolver;
use super::target::Origin;
use crate::config::ProxyConfig;

/// A boxed error, as request and response bodies carry.
pub type BoxError = Box<dyn StdError + Send + Sync>;
/// A request body sent to an origin.
pub type RequestBody = BoxBody<Bytes, BoxError>;

/// Attempts of an idempotent request whose connection failed before the origin answered.
const ATTEMPTS: u32 = 3;
/// Wait before the first retry; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long an origin is remembered to speak `https`.
const HTTPS_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Origins whose `https` port is remembered.
const HTTPS_MEMORY_ENTRIES: u64 = 100_000;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    /// The resolver could not be set up.
    #[error(transparent)]
    Resolver(#[from] super::resolve::ResolveError),
    /// The extra CA file could not be read or holds no certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The guard refused every address of the origin.
    #[error(transparent)]
    Refused(GuardError),
    /// The origin host has no address.
    #[error("{0}")]
    Unresolvable(String),
    /// No connection could be made.
    #[error("{0}")]
    Unreachable(String),
    /// The origin did not answer in time.
    #[error("the origin sent no response within {0:?}")]
    Timeout(Duration),
    /// The origin already has its maximum of fetches in flight, and none ended in time.
    #[error("{0} already has as many fetches in flight as this node allows")]
    Busy(String),
    /// The origin broke HTTP or closed the connection.
    #[error("the origin's response was unusable: {0}")]
    Protocol(String),
}

/// A request for an origin.
pub struct OriginRequest {
    /// The method.
    pub method: Method,
    /// The origin, as the client named it.
    pub origin: Origin,
    /// Path and query.
    pub path: String,
    /// End-to-end headers to send (the client sets `Host`).
    pub headers: HeaderMap,
    /// The body, for methods that have one; such requests are never retried or redirected.
    pub body: Option<RequestBody>,
}

/// An origin's response, and the concurrency slot it holds until dropped.
pub struct OriginResponse {
    /// The response; its body streams from the origin.
    pub response: Response<Incoming>,
    /// The URL actually fetched (after any http-to-https upgrade).
    pub url: Uri,
    /// The origin's concurrency slot, released when the body is done.
    pub slot: OwnedSemaphorePermit,
}

/// Fetches from origins.
#[derive(Clone)]
pub struct OriginClient {
    http: Client<HttpsConnector<GuardedConnector>, RequestBody>,
    guard: OriginGuard,
    https_ports: Cache<Origin, u16>,
    /// Concurrency limiters of origin hosts, each living while a fetch holds or awaits one
    /// of its slots: an origin busy for hours keeps its limit, an idle one costs nothing.
    limiters: Arc<InUse<String, Semaphore>>,
    fetches_per_origin: usize,
    /// How long a fetch waits for one of its origin's slots.
    slot_timeout: Duration,
    response_timeout: Duration,
}

impl OriginClient {
    /// A client following the proxy configuration.
    pub fn new(config: &ProxyConfig) -> Result<Self, ClientSetupError> {
        let guard = OriginGuard::new(config);
        let resolver = OriginResolver::new(&config.origin_access)?;
        let timeouts = config.origin_timeouts;
        let connector = GuardedConnector::new(resolver, guard.clone(), timeouts.connect);
        let tls = tls_config(config)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .http1_allow_spaces_after_header_name_in_responses(true)
            .http1_allow_obsolete_multiline_headers_in_responses(true)
            .http1_ignore_invalid_headers_in_responses(true)
            .build(https);
        Ok(Self {
            http,
            guard,
            https_ports: Cache::builder()
                .max_capacity(HTTPS_MEMORY_ENTRIES)
                .time_to_live(HTTPS_MEMORY)
                .build(),
            limiters: Arc::new(InUse::new()),
            fetches_per_origin: config.origin_access.max_concurrent_fetches as usize,
            slot_timeout: timeouts.first_byte,
            response_timeout: timeouts.connect + timeouts.first_byte,
        })
    }

    /// The host rules (deny and allow lists), checked before anything is fetched.
    pub fn guard(&self) -> &OriginGuard {
        &self.guard
    }

    /// Sends a request to its origin and returns the response head once it arrives.
    pub async fn fetch(&self, request: OriginRequest) -> Result<OriginResponse, FetchError> {
        self.guard
            .check_host(&request.origin.host)
            .map_err(FetchError::Refused)?;
        let slot = tokio::time::timeout(
            self.slot_timeout,
            self.limiters
                .get_or_make(request.origin.host.as_str(), || {
                    Semaphore::new(self.fetches_per_origin)
                })
                .acquire_owned(),
        )
        .await
        .map_err(|_| FetchError::Busy(request.origin.host.clone()))?
        .expect("origin limiters are never closed");
        let OriginRequest {
            method,
            origin,
            path,
            headers,
            body,
        } = request;
        let Some(body) = body else {
            return self
                .fetch_bodiless(method, &origin, &path, headers, slot)
                .await;
        };
        let url = self.url(&origin, &path)?;
        let response = self.send(method, url.clone(), headers, body).await?;
        Ok(OriginResponse {
            response,
            url,
            slot,
        })
    }

    /// Fetches with retries and the https upgrade, which a bodiless request allows.
    async fn fetch_bodiless(
        &self,
        method: Method,
        origin: &Origin,
        path: &str,
        headers: HeaderMap,
        slot: OwnedSemaphorePermit,
    ) -> Result<OriginResponse, FetchError> {
        let mut url = self.url(origin, path)?;
        let mut upgraded = false;
        loop {
            let response = self.send_with_retries(&method, &url, &headers).await?;
            if !upgraded && let Some(https) = https_upgrade(&url, &response) {
                self.https_ports
                    .insert(origin.clone(), https.port_u16().unwrap_or(443));
                // Only a pure scheme upgrade is followed here; a redirect to another path
                // goes to the client (rewritten into the zone), whose next request will use
                // https directly.
                if https.path_and_query() == url.path_and_query() {
                    tracing::debug!(%origin, %https, "origin upgrades to https; following");
                    url = https;
                    upgraded = true;
                    continue;
                }
            }
            return Ok(OriginResponse {
                response,
                url,
                slot,
            });
        }
    }

    async fn send_with_retries(
        &self,
        method: &Method,
        url: &Uri,
        headers: &HeaderMap,
    ) -> Result<Response<Incoming>, FetchError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let body = Empty::new().map_err(|never| match never {}).boxed();
            match self
                .send(method.clone(), url.clone(), headers.clone(), body)
                .await
            {
                Err(FetchError::Unreachable(reason)) if attempt < ATTEMPTS => {
                    tracing::debug!(%url, attempt, %reason, "origin unreachable; retrying");
                }
                other => return other,
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Uri,
        headers: HeaderMap,
        body: RequestBody,
    ) -> Result<Response<Incoming>, FetchError> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = url;
        *request.headers_mut() = headers;
        match tokio::time::timeout(self.response_timeout, self.http.request(request)).await {
            Err(_) => Err(FetchError::Timeout(self.response_timeout)),
            Ok(Ok(response)) => supported_framing(response),
            Ok(Err(err)) => Err(classify(err)),
        }
    }

    /// The URL to fetch: `https` when the origin is known to speak it.
    fn url(&self, origin: &Origin, path: &str) -> Result<Uri, FetchError> {
        let text = match self.https_ports.get(origin) {
            Some(443) => format!("https://{}{path}", origin.host),
            Some(port) => format!("https://{}:{port}{path}", origin.host),
            None => format!("http://{}{path}", origin.authority()),
        };
        text.parse()
            .map_err(|err| FetchError::Protocol(format!("cannot form a URL from {text}: {err}")))
    }
}

/// Refuses a response whose body is transfer-coded with anything but `chunked`: the proxy
/// decodes no other coding, and would serve the coded bytes as the content.
fn supported_framing(response: Response<Incoming>) -> Result<Response<Incoming>, FetchError> {
    let codings: Vec<String> = response
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(|coding| String::from_utf8_lossy(coding.trim_ascii()).to_ascii_lowercase())
        .filter(|coding| !coding.is_empty())
        .collect();
    match codings.as_slice() {
        [] => Ok(response),
        [only] if only == "chunked" => Ok(response),
        _ => Err(FetchError::Protocol(format!(
            "the body uses the transfer coding {:?}, which the proxy does not decode",
            codings.join(", ")
        ))),
    }
}

/// The `https` URL a response redirects to, when it is the same host's `https` form.
fn https_upgrade<B>(url: &Uri, response: &Response<B>) -> Option<Uri> {
    if url.scheme_str() != Some("http") || !response.status().is_redirection() {
        return None;
    }
    if response.status() == StatusCode::NOT_MODIFIED {
        return None;
    }
    let location: Uri = response
        .headers()
        .get(header::LOCATION)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let same_host = location
        .host()
        .zip(url.host())
        .is_some_and(|(to, from)| to.eq_ignore_ascii_case(from));
    (location.scheme_str() == Some("https") && same_host).then_some(location)
}

/// Names the cause of a client error, finding the connector's own error when there is one.
fn classify(err: hyper_util::client::legacy::Error) -> FetchError {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(cause) = source {
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Refused(refusal) => FetchError::Refused(refusal.clone()),
                ConnectError::Resolve(resolve) => FetchError::Unresolvable(resolve.to_string()),
                other => FetchError::Unreachable(other.to_string()),
            };
        }
        source = cause.source();
    }
    let chain = error_chain(&err);
    if err.is_connect() {
        FetchError::Unreachable(chain)
    } else {
        FetchError::Protocol(chain)
    }
}

/// An error and its causes, joined by `: `.
fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// rustls settings: the public web's roots plus the configured extra CAs.
fn tls_config(config: &ProxyConfig) -> Result<rustls::ClientConfig, ClientSetupError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.origin_access.extra_ca_file {
        let ca_error = |reason: String| ClientSetupError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|err| ca_error(err.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ca_error(err.to_string()))?;
        if certificates.is_empty() {
            return Err(ca_error("no certificate in it".to_owned()));
        }
        for certificate in certificates {
            roots.add(certificate)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(location: &str) -> Response<()> {
        Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, location)
            .body(())
            .unwrap()
    }

    /// The proxy settings of the test fixture's `node.yaml`.
    fn fixture_proxy_config() -> ProxyConfig {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node.yaml");
        crate::config::NodeConfig::load(&fixture)
            .unwrap()
            .value
            .proxy
    }

    #[test]
    fn an_extra_ca_file_without_a_certificate_stops_the_proxy_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [
            ("empty.pem", ""),
            ("junk.pem", "not a certificate\n"),
            (
                "key-only.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let mut config = fixture_proxy_config();
            config.origin_access.extra_ca_file = Some(path.clone());
            let err = tls_config(&config).unwrap_err();
            assert!(
                matches!(err, ClientSetupError::CaFile { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
        let mut config = fixture_proxy_config();
        config.origin_access.extra_ca_file = Some(dir.path().join("missing.pem"));
        assert!(tls_config(&config).is_err());
    }

    #[test]
    fn a_same_host_redirect_to_https_is_an_upgrade() {
        let url: Uri = "http://Example.com/a".parse().unwrap();
        assert_eq!(
            https_upgrade(&url, &redirect("https://example.com/a")),
            Some("https://example.com/a".parse().unwrap())
        );
    }

    #[test]
    fn other_redirects_are_not_upgrades() {
        let url: Uri = "http://example.com/a".parse().unwrap();
        for location in ["https://other.com/a", "http://example.com/b", "/relative"] {
            assert_eq!(https_upgrade(&url, &redirect(location)), None, "{location}");
        }
        let https: Uri = "https://example.com/a".parse().unwrap();
        assert_eq!(
            https_upgrade(&https, &redirect("https://example.com/a")),
            None
        );
    }
}
