//! Coral operator: reconciles `CoralCluster` resources into running Coral nodes.
//!
//! [`api`] defines the custom resource; [`node_config`] turns a spec into the node
//! configuration; [`resources`] holds one pure builder per owned Kubernetes object;
//! [`reconcile`] runs them against the API server and writes status; [`conditions`] decides the
//! status conditions. `main` adds leader election, the HTTP endpoints and the CLI.

pub mod api;
pub mod conditions;
pub mod crd;
pub mod dns_endpoints;
pub mod http;
pub mod metrics;
pub mod node_config;
pub mod quantity;
pub mod reconcile;
pub mod resources;
pub mod runtime;
pub mod validate;
