//! End-to-end harness: a real Kubernetes control plane on loopback, fake Nodes with topology
//! labels, and helpers for tests that must wait for controllers to act.
//!
//! The control plane is the upstream kube-apiserver, controller-manager and scheduler built
//! from Go modules by `e2e/controlplane` (no Docker, no downloads). This crate drives it; it
//! does not fake any part of the API.

pub mod binaries;
pub mod chart;
pub mod cluster;
pub mod controlplane;
pub mod demo_origin;
pub mod dns;
pub mod http;
pub mod kubelet;
pub mod nodes;
pub mod operator;
pub mod wait;
