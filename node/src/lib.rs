//! Coral node: one binary with three roles (caching proxy, authoritative DNS, sloppy DHT).
//!
//! - [`config`]: the node configuration, the contract between the operator (which writes it
//!   into a ConfigMap) and the node (which reads the mounted file);
//! - [`dht`]: the hierarchical sloppy DHT, a library that knows nothing of HTTP or DNS;
//! - [`proxy`]: the cooperative caching HTTP proxy;
//! - [`roles`]: each role started from the configuration (today the DHT);
//! - [`admin`]: the admin port (health, readiness, metrics, live state);
//! - [`client_slots`]: connections open at once per client, for the proxy and DNS over TCP.

pub mod admin;
pub mod client_slots;
pub mod config;
pub mod dht;
pub mod dns;
pub mod proxy;
pub mod roles;
