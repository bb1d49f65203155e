//! The node's admin port: `/livez` (the process answers: the liveness probe), `/healthz`
//! (able to serve, and the load: what the DNS nodes check before publishing a proxy),
//! `/readyz`, `/metrics`, and the DHT's live state, the cache's (tiers, most asked URLs) and the
//! DNS role's members with their health as JSON (`/dht`, `/cache`, `/dns`) and as a page for
//! people (`/`).
//!
//! The admin port reads the roles through small read-only views (a readiness flag, the DHT's
//! snapshot); the roles do not know it exists. `/readyz` is ready only when every role the pod
//! was asked to play is ready, so a pod asked for a role this build lacks stays unready rather
//! than claiming to serve.

mod info;
mod page;

pub use info::NodeInfo;

use coral_status_http as http;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::dht::Dht;
use crate::dht::udp::UdpNetwork;
use crate::dns::probe::SharedMembers;
use crate::proxy::health::Health;
use crate::proxy::service::Proxy;

/// URLs listed on the admin page and in `/cache`.
const TOP_URLS: usize = 20;

/// What the admin port shows.
pub struct AdminState {
    /// Every metric of the node.
    pub registry: Registry,
    /// The DHT, when the node plays that role.
    pub dht: Option<Arc<Dht<UdpNetwork>>>,
    /// The proxy, when the node plays that role.
    pub proxy: Option<Arc<Proxy>>,
    /// Where clients reach this node's proxy when not at its pod address (reported in
    /// `/healthz` for the DNS nodes to publish).
    pub public_address: Option<IpAddr>,
    /// The members the DNS role checks, when the node plays that role.
    pub dns_members: Option<SharedMembers>,
    /// Each requested role and its readiness.
    pub roles: Vec<(String, Arc<AtomicBool>)>,
    /// What each DHT level above the global one is, broadest first (the node label keys).
    pub level_names: Vec<String>,
}

impl AdminState {
    /// The responder for [`http::serve`].
    pub fn into_responder(self) -> http::Responder {
        let state = Arc::new(self);
        Arc::new(move |request| state.respond(request))
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return http::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match request.uri().path() {
            "/livez" => http::text(StatusCode::OK, "ok\n"),
            "/healthz" => self.healthz(),
            "/readyz" => self.readyz(),
            "/metrics" => {
                if let Some(dht) = &self.dht {
                    dht.update_gauges();
                }
                if let Some(proxy) = &self.proxy {
                    proxy.update_gauges();
                }
                let mut exposition = Vec::new();
                TextEncoder::new()
                    .encode(&self.registry.gather(), &mut exposition)
                    .expect("text encoding of gathered metrics");
                http::metrics(String::from_utf8(exposition).expect("exposition is UTF-8"))
            }
            "/cache" => match &self.proxy {
                Some(proxy) => http::respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec_pretty(&proxy.cache_view(TOP_URLS))
                        .expect("the cache view serialises"),
                ),
                None => http::text(
                    StatusCode::NOT_FOUND,
                    "this node does not play the proxy role\n",
                ),
            },
            "/dns" => match &self.dns_members {
                Some(members) => http::respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec_pretty(&*members.read().expect("members lock poisoned"))
                        .expect("members serialise"),
                ),
                None => http::text(
                    StatusCode::NOT_FOUND,
                    "this node does not play the DNS role\n",
                ),
            },
            "/dht" => match &self.dht {
                Some(dht) => http::respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec_pretty(&dht.snapshot()).expect("snapshot serialises"),
                ),
                None => http::text(
                    StatusCode::NOT_FOUND,
                    "this node does not play the DHT role\n",
                ),
            },
            "/" => http::respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(
                    self.dht.as_ref().map(|dht| dht.snapshot()),
                    self.proxy.as_ref().map(|proxy| proxy.cache_view(TOP_URLS)),
                    self.dns_members
                        .as_ref()
                        .map(|members| members.read().expect("members lock poisoned").clone()),
                    &self.role_states(),
                    &self.level_names,
                ),
            ),
            _ => http::text(
                StatusCode::NOT_FOUND,
                "not found: try /, /dht, /dns, /cache, /livez, /healthz, /readyz or /metrics\n",
            ),
        }
    }

    fn role_states(&self) -> Vec<(String, Result<(), String>)> {
        self.roles
            .iter()
            .map(|(name, ready)| {
                let state = if ready.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("starting".to_owned())
                };
                (name.clone(), state)
            })
            .collect()
    }

    /// The proxy's health and load as JSON, 503 when it should not be given clients; a node
    /// without the proxy role is healthy while it runs.
    fn healthz(&self) -> Response<Full<Bytes>> {
        let Some(proxy) = &self.proxy else {
            return http::respond(
                StatusCode::OK,
                "application/json",
                b"{\"healthy\":true}\n".to_vec(),
            );
        };
        let health = Health {
            public_address: self.public_address,
            ..proxy.health()
        };
        let status = if health.healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut body = serde_json::to_vec(&health).expect("health serialises");
        body.push(b'\n');
        http::respond(status, "application/json", body)
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let states = self.role_states();
        let body: String = states
            .iter()
            .map(|(name, state)| match state {
                Ok(()) => format!("{name}: ready\n"),
                Err(reason) => format!("{name}: {reason}\n"),
            })
            .collect();
        let status = if states.iter().all(|(_, state)| state.is_ok()) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        http::text(status, body)
    }
}
