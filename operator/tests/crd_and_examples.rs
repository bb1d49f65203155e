//! The shipped CRD and example objects stay true to the Rust types.

use std::path::PathBuf;

use coral_operator::api::{CoralCluster, CoralClusterSpec, DnsExposure};
use coral_operator::crd::coral_cluster_crd_yaml;
use coral_operator::node_config::node_config;
use coral_operator::validate::{check_rules, schema};
use kube::core::cel::apply_defaults;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Reads an example as the API server would store it: with the schema's defaults applied.
fn example(name: &str) -> CoralCluster {
    let text = std::fs::read_to_string(repo_file(&format!("crds/examples/{name}.yaml"))).unwrap();
    let raw: serde_json::Value = serde_norway::from_str(&text).unwrap();
    serde_json::from_value(apply_defaults(schema(), &raw)).unwrap()
}

#[test]
fn crd_file_is_the_output_of_coral_operator_crd() {
    let path = repo_file("crds/coral.nyud.net_coralclusters.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == coral_cluster_crd_yaml(),
        "{} is stale: regenerate it with `cargo run -p coral-operator -- crd > crds/coral.nyud.net_coralclusters.yaml`",
        path.display()
    );
}

#[test]
fn minimal_example_defaults_to_a_working_cdn_for_nyud_net() {
    let cluster = example("minimal");
    assert_eq!(cluster.spec, CoralClusterSpec::default());
    check_rules(&cluster).unwrap();
    let config = node_config(&cluster).unwrap();
    assert_eq!(config.zone, "nyud.net");
    assert_eq!(
        config.locality.label_keys,
        [
            "topology.kubernetes.io/zone",
            "topology.kubernetes.io/region"
        ]
    );
}

#[test]
fn full_example_passes_every_rule_and_converts() {
    let cluster = example("full");
    check_rules(&cluster).unwrap();
    assert_eq!(cluster.spec.dns.exposure, DnsExposure::LoadBalancer);
    let config = node_config(&cluster).unwrap();
    assert_eq!(config.proxy.cache_disk_bytes, 10 << 30);
    assert_eq!(config.proxy.sendfile_min_bytes, Some(64 << 10));
    assert_eq!(config.proxy.client_limits.max_connections_per_client, 500);
    assert_eq!(
        config.health.interval,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(config.locality.client_networks.len(), 2);
    assert_eq!(config.dns.nameservers[0].addresses.len(), 2);
}

#[test]
fn illegal_example_is_refused_naming_each_broken_rule() {
    let err = check_rules(&example("illegal")).unwrap_err().to_string();
    for expected in [
        "zone must be a lower-case DNS name",
        "cacheMemorySize must be a positive quantity",
        "maxObjectSize must fit in one cache tier",
        "sendfileMinSize must be a quantity of at least 16Ki",
        "cidr must be a network",
        "health.timeout must not exceed health.interval",
        "internalNetworks entries must be networks",
        "resolvers entries must be IP addresses",
        "addresses entries must be IP addresses",
        "internalHosts entries must be host names",
        "originBytesPerSecond must be a whole quantity",
    ] {
        assert!(err.contains(expected), "`{expected}` missing from: {err}");
    }
}

#[test]
fn bad_example_passes_the_rules_but_the_operator_refuses_it_by_field() {
    let cluster = example("bad");
    check_rules(&cluster).unwrap();
    let err = node_config(&cluster).unwrap_err().to_string();
    assert!(
        err.starts_with("spec.proxy.maxObjectSize: `1500m`"),
        "{err}"
    );
}
