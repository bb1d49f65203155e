//! The roles a node plays, each started from the node configuration. Today: the DHT.
//! The proxy and DNS roles come with their own issues; a pod asked to play a role this build
//! does not have keeps running (so it is not restarted in a loop) but never reports ready.

pub mod dht;
