//! The cooperative caching HTTP proxy: what clients of `<origin>.<zone>` talk to.
//!
//! - [`target`]: the zone form of origin names (`www.example.com.8080.nyud.net`), both ways;
//! - [`guard`]: which origins and addresses may be fetched (the SSRF guard);
//! - [`resolve`], [`connect`], [`client`]: reaching origins (fixed table or DNS, checked
//!   addresses, rustls, retries, the http-to-https upgrade, per-origin concurrency);
//! - [`headers`]: what crosses between clients and origins (hop-by-hop, cookies, `Via`,
//!   `Location`);
//! - [`peers`]: cooperation through the DHT (holders, authenticated peer fetches);
//! - [`transfer`]: one response in flight shared by every client waiting for it; [`spill`]:
//!   a body too large to cache, on disk for the clients sharing its fetch;
//! - [`cache`]: the object cache and the RFC 9111 policy of what it holds; [`disk`]: its
//!   disk tier;
//! - [`respond`]: answers from stored objects (conditional, range, HEAD) or transfers;
//!   [`sealed`]: large cached bodies in sealed memory files, sent with `sendfile` when set;
//! - [`ratelimit`]: request rate limits per client and per origin; [`quota`]: the node's
//!   bandwidth quota, redirecting to the origin; [`shaping`]: each origin's bandwidth, shared
//!   fairly between its clients; [`in_use`]: values shared by key while in use;
//! - [`refusal`]: refusals and their explanation pages;
//! - [`service`]: the request flow; [`server`]: the HTTP server and its limits;
//!   [`send_deadline`]: clients that stop reading are dropped;
//!   [`connection`]: one client connection, parked while idle; [`linger`]: a moment with
//!   hyper before parking;
//! - [`health`]: able to serve or not, and the load, for `/healthz`; [`popular`]: the URLs
//!   asked for most, for the admin page;
//! - [`metrics`]: the `coral_proxy_*` metrics.

pub mod cache;
pub mod client;
pub mod connect;
pub mod connection;
pub mod disk;
#[cfg(test)]
mod fuzz;
pub mod guard;
pub mod headers;
pub mod health;
pub mod in_use;
pub mod linger;
pub mod metrics;
pub mod peers;
pub mod popular;
pub mod quota;
pub mod ratelimit;
pub mod refusal;
pub mod resolve;
pub mod respond;
pub mod sealed;
pub mod send_deadline;
pub mod server;
pub mod service;
pub mod shaping;
pub mod spill;
pub mod target;
pub mod transfer;
