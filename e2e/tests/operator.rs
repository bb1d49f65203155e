//! The operator against a real kube-apiserver, controller-manager and scheduler.
//!
//! Each test starts its own control plane on loopback (about 4 s), registers six fake Nodes in
//! three zones and two regions, and runs the operator in-process as the binary does. Tests run
//! one at a time: two cores do not host two control planes well.

use std::time::Duration;

use coral_e2e::cluster::LocalCluster;
use coral_e2e::controlplane::ControlPlane;
use coral_e2e::nodes;
use coral_e2e::operator::{RunningOperator, install_crd};
use coral_e2e::wait::eventually;
use coral_operator::api::{CoralCluster, CoralClusterSpec, DnsExposure};
use coral_operator::runtime::LeaseOptions;
use coral_operator::validate::{SpecError, check_rules, schema};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::cel::apply_defaults;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Mutex, MutexGuard};

const NAMESPACE: &str = "coral-e2e";
const WAIT: Duration = Duration::from_secs(60);

static ONE_CONTROL_PLANE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

struct Cluster {
    client: Client,
    _local: LocalCluster,
    _turn: MutexGuard<'static, ()>,
}

async fn cluster() -> Cluster {
    let turn = ONE_CONTROL_PLANE_AT_A_TIME.lock().await;
    let local = LocalCluster::start(NAMESPACE)
        .await
        .expect("local cluster starts");
    install_crd(&local.client).await.expect("CRD installs");
    Cluster {
        client: local.client.clone(),
        _local: local,
        _turn: turn,
    }
}

fn api<K>(client: &Client) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), NAMESPACE)
}

/// An example with the schema's defaults applied, as the API server would store it.
fn example_as_stored(name: &str) -> CoralCluster {
    serde_json::from_value(apply_defaults(schema(), &example(name))).unwrap()
}

fn example(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../crds/examples/{name}.yaml"));
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn create_example(client: &Client, name: &str) -> Result<CoralCluster, kube::Error> {
    let raw = example(name);
    let dynamic: kube::api::DynamicObject = serde_json::from_value(raw).unwrap();
    let resource = kube::api::ApiResource::erase::<CoralCluster>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let created = api.create(&PostParams::default(), &dynamic).await?;
    Ok(serde_json::from_value(serde_json::to_value(created).unwrap()).unwrap())
}

fn condition(cluster: &CoralCluster, kind: &str) -> Option<Condition> {
    cluster
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

async fn wait_for_condition(
    client: &Client,
    name: &str,
    kind: &str,
    status: &str,
    reason: &str,
) -> CoralCluster {
    let clusters: Api<CoralCluster> = api(client);
    eventually(
        &format!("{name}: {kind}={status} ({reason})"),
        WAIT,
        || async {
            let cluster = clusters.get(name).await.map_err(|e| e.to_string())?;
            match condition(&cluster, kind) {
                Some(c) if c.status == status && c.reason == reason => Ok(cluster),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Starts an operator replica named `identity` without leader election.
async fn start_operator(client: &Client, identity: &str) -> RunningOperator {
    RunningOperator::start(client, identity, None)
        .await
        .expect("operator starts")
}

/// Creates a CoralCluster in the test namespace.
async fn create_cluster(client: &Client, name: &str, spec: CoralClusterSpec) {
    let clusters: Api<CoralCluster> = api(client);
    clusters
        .create(&PostParams::default(), &CoralCluster::new(name, spec))
        .await
        .unwrap();
}

/// Changes a CoralCluster's spec; returns its new generation.
async fn update_spec(
    client: &Client,
    name: &str,
    change: impl FnOnce(&mut CoralClusterSpec),
) -> Option<i64> {
    let clusters: Api<CoralCluster> = api(client);
    let mut cluster = clusters.get(name).await.unwrap();
    change(&mut cluster.spec);
    clusters
        .replace(name, &PostParams::default(), &cluster)
        .await
        .unwrap()
        .metadata
        .generation
}

/// The resourceVersion of an object of the test namespace.
async fn resource_version<K>(client: &Client, name: &str) -> Option<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
{
    api::<K>(client).get(name).await.unwrap().resource_version()
}

/// Marks pods ready, as kubelets would, until the cluster's current generation is Ready.
async fn ready_with_kubelets(client: &Client, name: &str) -> CoralCluster {
    let clusters: Api<CoralCluster> = api(client);
    eventually(&format!("{name} to become Ready"), WAIT, || async {
        nodes::ready_bound_pods(client, NAMESPACE, name)
            .await
            .map_err(|e| e.to_string())?;
        let cluster = clusters.get(name).await.map_err(|e| e.to_string())?;
        let ready = condition(&cluster, "Ready");
        let current = cluster.status.as_ref().and_then(|s| s.observed_generation)
            == cluster.metadata.generation;
        match ready {
            Some(c) if current && c.status == "True" => Ok(cluster),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn warning_events(client: &Client, name: &str) -> Vec<Event> {
    let events: Api<Event> = api(client);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name) && e.type_.as_deref() == Some("Warning")
        })
        .collect()
}

#[tokio::test]
async fn minimal_cluster_gets_every_owned_object_and_is_ready_only_when_all_pods_are() {
    let env = cluster().await;
    let client = &env.client;
    let operator = start_operator(client, "operator-0").await;

    let created = create_example(client, "minimal").await.unwrap();
    assert_eq!(
        created.spec,
        CoralClusterSpec::default(),
        "the API server fills every default into spec: {{}}"
    );

    let cluster = wait_for_condition(client, "minimal", "Ready", "False", "PodsNotReady").await;
    let status = cluster.status.clone().unwrap();
    assert_eq!(status.observed_generation, cluster.metadata.generation);
    assert_eq!((status.desired_nodes, status.desired_dns_nodes), (6, 6));
    assert_eq!(
        condition(&cluster, "Progressing").unwrap().reason,
        "RollingOut"
    );
    assert_eq!(condition(&cluster, "Degraded").unwrap().status, "False");

    for name in ["minimal-proxy", "minimal-dns"] {
        let ds = api::<DaemonSet>(client).get(name).await.unwrap();
        assert_eq!(ds.owner_references()[0].name, "minimal");
    }
    api::<ServiceAccount>(client)
        .get("minimal-node")
        .await
        .unwrap();
    api::<Role>(client).get("minimal-node").await.unwrap();
    api::<RoleBinding>(client)
        .get("minimal-node")
        .await
        .unwrap();
    for name in [
        "minimal-proxy",
        "minimal-dns",
        "minimal-dht",
        "minimal-metrics",
    ] {
        api::<Service>(client).get(name).await.unwrap();
    }
    let config = api::<ConfigMap>(client)
        .get("minimal-config")
        .await
        .unwrap();
    let topology = &config.data.unwrap()["topology.yaml"];
    assert!(
        topology.contains("node-us-1a-2:\n  - us-1a\n  - us-1"),
        "{topology}"
    );
    let key = api::<Secret>(client).get("minimal-dht-key").await.unwrap();
    assert_eq!(key.data.unwrap()["key"].0.len(), 32);

    // Play the kubelets: every pod the DaemonSets created (and the scheduler bound) comes up.
    let ready = ready_with_kubelets(client, "minimal").await;
    let status = ready.status.unwrap();
    assert_eq!((status.ready_nodes, status.ready_dns_nodes), (6, 6));
    assert!(
        status.dns_endpoints.is_empty(),
        "no load balancer here: {:?}",
        status.dns_endpoints
    );
    assert!(
        warning_events(client, "minimal").await.is_empty(),
        "a healthy rollout warns no one"
    );

    // A spec change rolls the pods out again; resolvers then reach DNS on the nodes.
    let generation = update_spec(client, "minimal", |spec| {
        spec.dns.exposure = DnsExposure::HostNetwork
    })
    .await;
    let rolled = ready_with_kubelets(client, "minimal").await;
    let status = rolled.status.unwrap();
    assert_eq!(status.observed_generation, generation);
    let node_addresses: Vec<String> = (1..=6).map(|n| format!("127.0.100.{n}:53")).collect();
    assert_eq!(status.dns_endpoints, node_addresses);
    let dns = api::<DaemonSet>(client).get("minimal-dns").await.unwrap();
    assert_eq!(
        dns.spec.unwrap().template.spec.unwrap().host_network,
        Some(true)
    );

    let metrics = operator.get("/metrics").await.unwrap();
    assert!(
        reconciles(&metrics, "ok") > 0,
        "no successful reconcile counted:\n{metrics}"
    );
    assert!(
        metrics.contains("coral_operator_managed_clusters{ready=\"true\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|line| line == "coral_operator_leader 1"),
        "a replica without election leads:\n{metrics}"
    );
    for component in ["proxy", "dns"] {
        let ready = format!(
            "coral_operator_node_pods{{component=\"{component}\",coral_cluster=\"minimal\",coral_namespace=\"{NAMESPACE}\",state=\"ready\"}} 6"
        );
        assert!(metrics.contains(&ready), "{ready} missing from:\n{metrics}");
    }
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn api_server_refuses_the_illegal_example_with_the_operators_own_messages_and_accepts_the_full_one()
 {
    let env = cluster().await;
    let err = create_example(&env.client, "illegal")
        .await
        .unwrap_err()
        .to_string();
    let SpecError::RuleViolations(violations) =
        check_rules(&example_as_stored("illegal")).unwrap_err()
    else {
        panic!("the illegal example breaks CEL rules")
    };
    assert!(violations.len() >= 4, "{violations:?}");
    for violation in violations {
        let (_field, message) = violation.split_once(": ").unwrap();
        assert!(
            err.contains(message),
            "the operator says `{message}`, the API server: {err}"
        );
    }
    let full = create_example(&env.client, "full").await.unwrap();
    assert_eq!(full.spec.zone, "cdn.example.net");
}

#[tokio::test]
async fn spec_the_node_cannot_use_is_degraded_with_an_event_and_recovers_when_fixed() {
    let env = cluster().await;
    let client = &env.client;
    let operator = start_operator(client, "operator-0").await;
    let mut spec = CoralClusterSpec::default();
    // A valid quantity, but not a whole number of bytes: only the operator can catch it.
    spec.proxy.max_object_size.0 = "1500m".into();
    create_cluster(client, "odd", spec).await;

    let degraded = wait_for_condition(client, "odd", "Degraded", "True", "InvalidSpec").await;
    let message = condition(&degraded, "Degraded").unwrap().message;
    assert!(
        message.starts_with("spec.proxy.maxObjectSize: `1500m`"),
        "{message}"
    );
    let events = eventually("a Warning event", WAIT, || async {
        let events = warning_events(client, "odd").await;
        if events
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec"))
        {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    assert!(
        events[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("maxObjectSize")
    );
    assert!(
        api::<DaemonSet>(client)
            .get_opt("odd-proxy")
            .await
            .unwrap()
            .is_none(),
        "nothing applied from a bad spec"
    );
    assert!(!operator.has_ended(), "a bad spec never stops the operator");

    update_spec(client, "odd", |spec| {
        spec.proxy.max_object_size.0 = "10Mi".into()
    })
    .await;
    wait_for_condition(client, "odd", "Degraded", "False", "AsExpected").await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn existing_key_is_used_as_is_and_a_short_key_is_refused_not_replaced() {
    let env = cluster().await;
    let client = &env.client;
    let secrets: Api<Secret> = api(client);
    let user_key = |name: &str, len: usize| Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_owned(), ByteString(vec![42; len]))].into()),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &user_key("good-dht-key", 48))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &user_key("short-dht-key", 8))
        .await
        .unwrap();
    let operator = start_operator(client, "operator-0").await;
    for name in ["good", "short"] {
        create_cluster(client, name, CoralClusterSpec::default()).await;
    }

    wait_for_condition(client, "good", "Ready", "False", "PodsNotReady").await;
    assert_eq!(
        secrets.get("good-dht-key").await.unwrap().data.unwrap()["key"].0,
        vec![42; 48]
    );

    let refused = wait_for_condition(client, "short", "Degraded", "True", "KeyRejected").await;
    let message = condition(&refused, "Degraded").unwrap().message;
    assert!(
        message.contains("holds 8 bytes; a key needs at least 32"),
        "{message}"
    );
    assert_eq!(
        secrets.get("short-dht-key").await.unwrap().data.unwrap()["key"].0,
        vec![42; 8],
        "never rewritten"
    );

    // The key in use disappears: the operator asks instead of splitting the cluster.
    secrets
        .delete("good-dht-key", &DeleteParams::default())
        .await
        .unwrap();
    let missing = wait_for_condition(client, "good", "Degraded", "True", "KeyMissing").await;
    let message = condition(&missing, "Degraded").unwrap().message;
    assert!(
        message.contains("re-create good-dht-key with the old key"),
        "{message}"
    );
    assert!(
        secrets.get_opt("good-dht-key").await.unwrap().is_none(),
        "no key invented"
    );
    secrets
        .create(&PostParams::default(), &user_key("good-dht-key", 48))
        .await
        .unwrap();
    wait_for_condition(client, "good", "Degraded", "False", "AsExpected").await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn failed_apply_is_degraded_with_an_event_retried_with_backoff_and_recovers() {
    let env = cluster().await;
    let client = &env.client;
    let operator = start_operator(client, "operator-0").await;
    let mut spec = CoralClusterSpec::default();
    // Passes the CRD, but the API server refuses a DaemonSet whose request exceeds its limit.
    let memory = |q: &str| [("memory".to_owned(), Quantity(q.into()))].into();
    spec.resources = Some(ResourceRequirements {
        requests: Some(memory("1Gi")),
        limits: Some(memory("512Mi")),
        ..ResourceRequirements::default()
    });
    create_cluster(client, "strict", spec).await;

    let failed = wait_for_condition(client, "strict", "Degraded", "True", "ApiFailed").await;
    let message = condition(&failed, "Degraded").unwrap().message;
    assert!(
        message.starts_with("applying DaemonSet strict-proxy"),
        "{message}"
    );
    assert!(
        message.contains("must be less than or equal to memory limit"),
        "{message}"
    );
    eventually("an ApiFailed event", WAIT, || async {
        let events = warning_events(client, "strict").await;
        let found = events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ApiFailed"));
        if found {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;

    // Backoff (2 s, 4 s, 8 s, ...) bounds the retries: status writes must not retrigger them.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = operator.get("/metrics").await.unwrap();
    let errors = reconciles(&metrics, "error");
    assert!(
        (2..=6).contains(&errors),
        "{errors} failed reconciles in ~10 s"
    );

    update_spec(client, "strict", |spec| spec.resources = None).await;
    wait_for_condition(client, "strict", "Degraded", "False", "AsExpected").await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn standby_replica_takes_over_when_the_leader_shuts_down() {
    let env = cluster().await;
    let client = &env.client;
    let lease = LeaseOptions {
        name: "coral-operator".into(),
        namespace: NAMESPACE.into(),
    };
    let first = RunningOperator::start(client, "operator-a", Some(lease.clone()))
        .await
        .unwrap();
    let is_leader = |metrics: String| {
        metrics
            .lines()
            .any(|line| line == "coral_operator_leader 1")
    };
    eventually("operator-a to lead", WAIT, || async {
        let metrics = first.get("/metrics").await.map_err(|e| e.to_string())?;
        if is_leader(metrics) {
            Ok(())
        } else {
            Err("not leading".into())
        }
    })
    .await;
    let second = RunningOperator::start(client, "operator-b", Some(lease))
        .await
        .unwrap();
    eventually("operator-b to be ready as a standby", WAIT, || async {
        let ready = second.get("/readyz").await.map_err(|e| e.to_string())?;
        if ready.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(ready)
        }
    })
    .await;
    assert!(
        !is_leader(second.get("/metrics").await.unwrap()),
        "only one replica leads"
    );

    first.stop().await.unwrap();
    eventually(
        "operator-b to take over",
        Duration::from_secs(30),
        || async {
            let metrics = second.get("/metrics").await.map_err(|e| e.to_string())?;
            if is_leader(metrics) {
                Ok(())
            } else {
                Err("not leading".into())
            }
        },
    )
    .await;
    create_cluster(client, "after", CoralClusterSpec::default()).await;
    wait_for_condition(client, "after", "Progressing", "True", "RollingOut").await;
    second.stop().await.unwrap();
}

#[tokio::test]
async fn operator_without_the_crd_says_how_to_install_it() {
    let turn = ONE_CONTROL_PLANE_AT_A_TIME.lock().await;
    let control_plane = ControlPlane::start().unwrap();
    let client = control_plane.client().await.unwrap();
    let operator = start_operator(&client, "operator-0").await;
    let err = operator.stop().await.unwrap_err().to_string();
    assert!(
        err.contains("coral-operator crd | kubectl apply --server-side -f -"),
        "{err}"
    );
    drop(turn);
}

#[tokio::test]
async fn deleting_the_cluster_garbage_collects_what_it_owned() {
    let env = cluster().await;
    let client = &env.client;
    let operator = start_operator(client, "operator-0").await;
    let clusters: Api<CoralCluster> = api(client);
    create_cluster(client, "doomed", CoralClusterSpec::default()).await;
    wait_for_condition(client, "doomed", "Ready", "False", "PodsNotReady").await;
    let metrics = operator.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("coral_cluster=\"doomed\"")
            && metrics.contains("coral_operator_managed_clusters{ready=\"false\"} 1"),
        "{metrics}"
    );
    clusters
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    // A deleted cluster is never reconciled again; its series go with the watch event, or
    // it would stay counted as not ready (and alert) until the operator restarts.
    eventually("the deleted cluster's series to go", WAIT, || async {
        let metrics = operator.get("/metrics").await.map_err(|e| e.to_string())?;
        if !metrics.contains("coral_cluster=\"doomed\"")
            && metrics.contains("coral_operator_managed_clusters{ready=\"false\"} 0")
        {
            Ok(())
        } else {
            Err(metrics)
        }
    })
    .await;
    // The garbage collector learns about a new CRD's objects on its next discovery (~30 s).
    eventually(
        "owned objects to be collected",
        Duration::from_secs(120),
        || async {
            let left: Vec<String> = [
                api::<DaemonSet>(client)
                    .get_opt("doomed-proxy")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|o| o.name_any()),
                api::<Service>(client)
                    .get_opt("doomed-dns")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|o| o.name_any()),
                api::<ConfigMap>(client)
                    .get_opt("doomed-config")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|o| o.name_any()),
                api::<Secret>(client)
                    .get_opt("doomed-dht-key")
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|o| o.name_any()),
            ]
            .into_iter()
            .flatten()
            .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await;
    operator.stop().await.unwrap();
}

#[tokio::test]
async fn objects_deleted_by_hand_come_back_and_a_restarted_operator_changes_nothing() {
    let env = cluster().await;
    let client = &env.client;
    let first = start_operator(client, "operator-0").await;
    create_example(client, "minimal").await.unwrap();
    ready_with_kubelets(client, "minimal").await;

    api::<Service>(client)
        .delete("minimal-dht", &DeleteParams::default())
        .await
        .unwrap();
    api::<ConfigMap>(client)
        .delete("minimal-config", &DeleteParams::default())
        .await
        .unwrap();
    api::<Role>(client)
        .delete("minimal-node", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted objects to be recreated", WAIT, || async {
        let service = api::<Service>(client)
            .get_opt("minimal-dht")
            .await
            .map_err(|e| e.to_string())?;
        let config = api::<ConfigMap>(client)
            .get_opt("minimal-config")
            .await
            .map_err(|e| e.to_string())?;
        let role = api::<Role>(client)
            .get_opt("minimal-node")
            .await
            .map_err(|e| e.to_string())?;
        match (service, config, role) {
            (Some(_), Some(_), Some(_)) => Ok(()),
            missing => Err(format!("{missing:?}")),
        }
    })
    .await;
    ready_with_kubelets(client, "minimal").await;

    // Every object's resourceVersion, before and after another replica takes over.
    let versions = || async {
        vec![
            resource_version::<CoralCluster>(client, "minimal").await,
            resource_version::<Secret>(client, "minimal-dht-key").await,
            resource_version::<ConfigMap>(client, "minimal-config").await,
            resource_version::<ServiceAccount>(client, "minimal-node").await,
            resource_version::<Role>(client, "minimal-node").await,
            resource_version::<RoleBinding>(client, "minimal-node").await,
            resource_version::<DaemonSet>(client, "minimal-proxy").await,
            resource_version::<DaemonSet>(client, "minimal-dns").await,
            resource_version::<Service>(client, "minimal-proxy").await,
            resource_version::<Service>(client, "minimal-dns").await,
            resource_version::<Service>(client, "minimal-dht").await,
            resource_version::<Service>(client, "minimal-metrics").await,
        ]
    };
    let before = versions().await;
    first.stop().await.unwrap();
    let second = start_operator(client, "operator-1").await;
    eventually("the new operator to reconcile", WAIT, || async {
        let metrics = second.get("/metrics").await.map_err(|e| e.to_string())?;
        if reconciles(&metrics, "ok") > 0 {
            Ok(())
        } else {
            Err("no reconcile yet".into())
        }
    })
    .await;
    assert_eq!(
        versions().await,
        before,
        "a converged cluster is not rewritten"
    );
    second.stop().await.unwrap();
}

/// The operator's count of reconciles with `result` in its `/metrics` text (0 when absent).
fn reconciles(metrics: &str, result: &str) -> u64 {
    let prefix = format!("coral_operator_reconciles_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}
