//! Coral node: one binary with three roles (caching proxy, authoritative DNS, sloppy DHT).
//!
//! This library holds what the roles and the operator share. Today that is the node
//! configuration ([`config`]), the contract between the operator, which writes it into a
//! ConfigMap, and the node, which reads it from the mounted file. The roles arrive in their
//! own modules.

pub mod config;
pub mod dht;
