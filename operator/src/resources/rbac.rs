//! Identity of the node pods: a ServiceAccount and the least privilege it needs.
//!
//! Node pods read their configuration, topology and key from mounted files, so the only API
//! access they need is to watch the EndpointSlices of their own namespace (DNS membership).
//! Nothing cluster-scoped is granted.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::names::ClusterNames;
use super::owned_meta;
use crate::api::CoralCluster;

/// The ServiceAccount the node pods run as.
pub fn service_account(cluster: &CoralCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_meta(cluster, ClusterNames::of(cluster).node_identity(), None),
        ..ServiceAccount::default()
    }
}

/// The Role of the node pods: read EndpointSlices in the cluster's namespace.
pub fn role(cluster: &CoralCluster) -> Role {
    Role {
        metadata: owned_meta(cluster, ClusterNames::of(cluster).node_identity(), None),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".to_owned()]),
            resources: Some(vec!["endpointslices".to_owned()]),
            verbs: ["get", "list", "watch"].map(str::to_owned).to_vec(),
            ..PolicyRule::default()
        }]),
    }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(cluster: &CoralCluster) -> RoleBinding {
    let name = ClusterNames::of(cluster).node_identity();
    RoleBinding {
        metadata: owned_meta(cluster, name.clone(), None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name,
            namespace: cluster.namespace(),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::demo;

    #[test]
    fn role_grants_only_reading_endpoint_slices() {
        let role = role(&demo());
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["endpointslices".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert!(rules[0].resource_names.is_none());
    }

    #[test]
    fn binding_ties_the_role_to_the_node_service_account() {
        let cluster = demo();
        let binding = role_binding(&cluster);
        let account = service_account(&cluster);
        assert_eq!(binding.role_ref.name, role(&cluster).metadata.name.unwrap());
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
        assert_eq!(subject.namespace.as_deref(), Some("edge"));
    }

    #[test]
    fn identity_objects_are_owned_by_the_cluster() {
        let owner = &service_account(&demo()).metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "CoralCluster");
        assert_eq!(owner.controller, Some(true));
    }
}
