//! Checking a CoralCluster before acting on it.
//!
//! The API server enforces the CRD's schema and CEL rules, but the operator must not trust that
//! every object it sees went through the current CRD (an older CRD, a restored backup). So it
//! runs the very same rules with kube's client-side CEL evaluator, and then the conversions to
//! node configuration (quantities, durations, networks), which name the field they reject.

use std::sync::OnceLock;

use kube::core::cel::Validator;

use crate::api::CoralCluster;
use crate::crd::coral_cluster_crd;

/// Why a CoralCluster's spec cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// One or more of the CRD's validation rules failed; each entry names its field.
    #[error("{}", .0.join("; "))]
    RuleViolations(Vec<String>),
    /// A field's value cannot be turned into node configuration.
    #[error("{field}: {problem}")]
    InvalidField {
        /// Path of the field, such as `spec.proxy.cacheMemorySize`.
        field: String,
        /// What is wrong and what would be valid.
        problem: String,
    },
}

impl SpecError {
    /// An error about one field.
    pub fn field(field: impl Into<String>, problem: impl ToString) -> Self {
        Self::InvalidField {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// Runs the CRD's CEL rules on a CoralCluster, as the API server would on create.
pub fn check_rules(cluster: &CoralCluster) -> Result<(), SpecError> {
    let object = serde_json::to_value(cluster).map_err(|err| SpecError::field("spec", err))?;
    Validator::new()
        .validate(schema(), &object, None)
        .map_err(|errors| {
            SpecError::RuleViolations(
                errors
                    .as_slice()
                    .iter()
                    .map(|error| format!("{}: {}", display_path(&error.field_path), error.message))
                    .collect(),
            )
        })
}

/// The `openAPIV3Schema` of the CRD, built once.
pub fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = coral_cluster_crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the derived CRD has a schema");
        serde_json::to_value(schema).expect("a schema serialises")
    })
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "<object>" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use crate::api::{ClientNetworkSpec, CoralClusterSpec, NameServerSpec};

    fn cluster(spec: CoralClusterSpec) -> CoralCluster {
        CoralCluster::new("demo", spec)
    }

    #[test]
    fn default_spec_passes_every_rule() {
        assert_eq!(check_rules(&cluster(CoralClusterSpec::default())), Ok(()));
    }

    #[test]
    fn zone_that_is_not_a_dns_name_is_refused_by_its_rule() {
        let spec = CoralClusterSpec {
            zone: "Not A Zone".into(),
            ..Default::default()
        };
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.contains("spec.zone") && err.contains("lower-case DNS name"),
            "{err}"
        );
    }

    #[test]
    fn clashing_ports_are_refused() {
        let mut spec = CoralClusterSpec::default();
        spec.proxy.http_port = spec.admin_port;
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(err.contains("must all differ"), "{err}");
    }

    #[test]
    fn dht_and_dns_sharing_a_udp_port_are_refused() {
        let mut spec = CoralClusterSpec::default();
        spec.dht.port = spec.dns.port;
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(err.contains("dht.port and dns.port must differ"), "{err}");
    }

    #[test]
    fn node_port_exposure_needs_its_port_and_only_it_may_have_one() {
        let mut spec = CoralClusterSpec::default();
        spec.dns.exposure = crate::api::DnsExposure::NodePort;
        let err = check_rules(&cluster(spec.clone())).unwrap_err().to_string();
        assert!(
            err.contains("dns.nodePort is required with exposure NodePort"),
            "{err}"
        );
        spec.dns.node_port = Some(30053);
        assert_eq!(check_rules(&cluster(spec.clone())), Ok(()));
        spec.dns.exposure = crate::api::DnsExposure::LoadBalancer;
        assert!(check_rules(&cluster(spec)).is_err());
    }

    #[test]
    fn probe_timeout_above_interval_is_refused() {
        let mut spec = CoralClusterSpec::default();
        spec.health.timeout = std::time::Duration::from_secs(5).into();
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.contains("health.timeout must not exceed health.interval"),
            "{err}"
        );
    }

    #[test]
    fn zero_cache_memory_is_refused() {
        let mut spec = CoralClusterSpec::default();
        spec.proxy.cache_memory_size.0 = "0".into();
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.contains("cacheMemorySize must be a positive quantity"),
            "{err}"
        );
    }

    #[test]
    fn sendfile_below_16_kibibytes_is_refused_and_from_there_accepted() {
        let mut spec = CoralClusterSpec::default();
        spec.proxy.sendfile_min_size = Some(Quantity("1Ki".into()));
        let err = check_rules(&cluster(spec.clone())).unwrap_err().to_string();
        assert!(
            err.contains("sendfileMinSize must be a quantity of at least 16Ki"),
            "{err}"
        );
        spec.proxy.sendfile_min_size = Some(Quantity("16Ki".into()));
        assert_eq!(check_rules(&cluster(spec)), Ok(()));
    }

    #[test]
    fn bad_client_network_is_refused() {
        let mut spec = CoralClusterSpec::default();
        spec.locality.client_networks = vec![ClientNetworkSpec {
            cidr: "10.0.0.0/33".into(),
            zone: Some("a".into()),
            region: None,
        }];
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(err.contains("cidr must be a network"), "{err}");
    }

    #[test]
    fn in_zone_name_server_without_glue_is_refused() {
        let mut spec = CoralClusterSpec::default();
        spec.dns.nameservers = vec![NameServerSpec {
            name: "ns1.nyud.net".into(),
            addresses: vec![],
        }];
        let err = check_rules(&cluster(spec)).unwrap_err().to_string();
        assert!(err.contains("needs glue"), "{err}");
    }
}
