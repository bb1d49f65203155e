//! The authoritative DNS role: answers `<origin>.<zone>` with the addresses of healthy
//! proxies near the client.
//!
//! - [`members`], [`endpoint_slices`]: who may be published (a members file, or the
//!   EndpointSlices of the cluster's Services);
//! - [`health`], [`probe`]: the health checks and their state machine;
//! - [`placement`], [`select`]: where a client is, and which proxies it gets;
//! - [`answer`]: the zone's answers, a pure function;
//! - [`handler`]: the hickory-server request handler; [`exchange`]: one message in, its
//!   responses out; [`udp`], [`tcp`]: the transports (TCP with its limits);
//! - [`metrics`]: the Prometheus metrics.

pub mod answer;
pub mod endpoint_slices;
pub mod exchange;
pub mod handler;
pub mod health;
pub mod members;
pub mod metrics;
pub mod placement;
pub mod probe;
pub mod select;
pub mod tcp;
pub mod udp;
