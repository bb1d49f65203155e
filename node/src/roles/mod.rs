//! The roles a node plays, each started from the node configuration: the DHT, the proxy and
//! the DNS server.
//! A pod asked to play a role it cannot (the DNS role without a members file, until this build
//! reads members from the Kubernetes API) keeps running, so it is not restarted in a loop, but
//! never reports ready.

pub mod dht;
pub mod dns;
pub mod proxy;
