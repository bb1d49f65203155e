//! The roles a node plays, each started from the node configuration: the DHT and the proxy.
//! The DNS role comes with its own issue; a pod asked to play a role this build does not have
//! keeps running (so it is not restarted in a loop) but never reports ready.

pub mod dht;
pub mod proxy;
