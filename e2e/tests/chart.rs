//! The Helm chart, with a real helm (v4): it lints, renders what each value asks for, refuses
//! bad values naming the field, carries dashboards and alerts of valid PromQL, and installs
//! into a real control plane where the operator it runs leads and reconciles, and every metric
//! a dashboard or alert reads is exported by the running binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use coral_e2e::binaries::workspace_binary;
use coral_e2e::chart::{
    ChartError, alert_queries, alert_rules, chart_dir, dashboard_queries, dashboards,
    exported_series, helm, metric_names, promtool, render, selectors, unmatched,
};
use coral_e2e::cluster::{LocalCluster, pod_addresses};
use coral_e2e::http;
use coral_e2e::kubelet::{Kubelet, KubeletConfig};
use coral_e2e::nodes::standard_topology;
use coral_e2e::wait::eventually;
use coral_operator::api::CoralCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const NAMESPACE: &str = "coral-system";
const WAIT: Duration = Duration::from_secs(150);

/// The objects of `kind` among `objects`.
fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The only object of `kind`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "want one {kind}, got {found:#?}");
    found[0]
}

fn full_values() -> String {
    chart_dir()
        .join("ci/full-values.yaml")
        .to_string_lossy()
        .into_owned()
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|var| var["name"] == name)
        .map(|var| &var["value"])
}

#[test]
fn helm_lint_passes_with_default_and_full_values() {
    let chart = chart_dir().to_string_lossy().into_owned();
    helm(&["lint", "--strict", &chart], None).unwrap();
    helm(&["lint", "--strict", &chart, "-f", &full_values()], None).unwrap();
}

#[test]
fn default_values_render_a_leader_elected_restricted_operator_scraped_by_annotations() {
    let objects = render(&[]).unwrap();
    let kinds: BTreeMap<&str, usize> = objects.iter().fold(BTreeMap::new(), |mut kinds, o| {
        *kinds.entry(o["kind"].as_str().unwrap()).or_default() += 1;
        kinds
    });
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("ClusterRole", 1),
            ("ClusterRoleBinding", 1),
            ("ConfigMap", 4),
            ("Deployment", 1),
            ("PodDisruptionBudget", 1),
            ("Role", 1),
            ("RoleBinding", 1),
            ("Service", 1),
            ("ServiceAccount", 1),
        ]),
        "no monitors without monitoring.coreos.com/v1, no example cluster by default"
    );

    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/coral-cdn/coral-operator:0.1.0");
    assert_eq!(container["args"], json!(["run"]));
    assert_eq!(env_var(container, "CORAL_LEADER_ELECTION").unwrap(), "true");
    assert_eq!(env_var(container, "CORAL_LEASE_NAME").unwrap(), "coral");
    // The restricted Pod Security profile.
    let pod_security = &pod["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");

    // Least privilege: nothing deleted, no wildcard, the Lease by name only.
    let cluster_role = one(&objects, "ClusterRole");
    for rule in cluster_role["rules"].as_array().unwrap() {
        let verbs = rule["verbs"].as_array().unwrap();
        assert!(
            !verbs.contains(&json!("delete")) && !verbs.contains(&json!("*")),
            "{rule}"
        );
        assert!(!rule["resources"].as_array().unwrap().contains(&json!("*")));
    }
    let role = one(&objects, "Role");
    assert_eq!(role["rules"][1]["resourceNames"], json!(["coral"]));
    assert_eq!(role["rules"][1]["resources"], json!(["leases"]));

    // Dashboards: one ConfigMap each, for Grafana's sidecar, holding the file as it is.
    let boards = dashboards().unwrap();
    let maps = of_kind(&objects, "ConfigMap");
    assert_eq!(maps.len(), boards.len());
    for (file, board) in &boards {
        let map = maps
            .iter()
            .find(|map| map["data"].get(file).is_some())
            .unwrap_or_else(|| panic!("no ConfigMap holds {file}"));
        assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
        let held: Value = serde_json::from_str(map["data"][file].as_str().unwrap()).unwrap();
        assert_eq!(&held, board, "{file}");
    }
}

#[test]
fn the_crd_is_the_generated_one_not_a_copy() {
    let objects = render(&["--include-crds"]).unwrap();
    let crd = one(&objects, "CustomResourceDefinition");
    let generated: Value =
        serde_norway::from_str(&coral_operator::crd::coral_cluster_crd_yaml()).unwrap();
    assert_eq!(crd, &generated);
}

#[test]
fn full_values_reach_their_objects() {
    let objects = render(&[
        "-f",
        &full_values(),
        "--api-versions",
        "monitoring.coreos.com/v1",
    ])
    .unwrap();
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.net/coral/coral-operator:0.1.0-test"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["ports"][0]["containerPort"], 9102);
    assert_eq!(env_var(container, "CORAL_LOG_FORMAT").unwrap(), "text");
    assert_eq!(env_var(container, "RUST_LOG").unwrap(), "debug");
    assert_eq!(
        env_var(container, "CORAL_METRICS_ADDRESS").unwrap(),
        "0.0.0.0:9102"
    );
    assert_eq!(container["resources"]["limits"]["cpu"], "1");
    assert_eq!(spec["serviceAccountName"], "coral-controller");
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(
        spec["nodeSelector"]["node-role.example.net/control"],
        "true"
    );
    assert_eq!(
        spec["tolerations"][0]["key"],
        "node-role.example.net/control"
    );
    assert!(spec["affinity"]["nodeAffinity"].is_object());
    assert!(spec["affinity"]["podAntiAffinity"].is_null());
    assert_eq!(pod["metadata"]["labels"]["example.net/tier"], "control");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["example.net/owner"], "cdn-team");
    assert!(
        annotations.get("prometheus.io/scrape").is_none(),
        "the ServiceMonitor scrapes it; annotations would scrape it twice"
    );
    let account = one(&objects, "ServiceAccount");
    assert_eq!(account["metadata"]["name"], "coral-controller");
    assert_eq!(
        account["metadata"]["annotations"]["example.net/role"],
        "coral"
    );
    let service = one(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 9102);
    assert_eq!(
        service["metadata"]["annotations"]["example.net/scraped"],
        "yes"
    );

    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let pods = one(&objects, "PodMonitor");
    assert_eq!(pods["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "coral", "app.kubernetes.io/managed-by": "coral-operator"})
    );
    assert_eq!(pods["spec"]["podMetricsEndpoints"][0]["port"], "admin");

    let rule = one(&objects, "PrometheusRule");
    let shipped = alert_rules().unwrap();
    let groups = rule["spec"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), shipped["groups"].as_array().unwrap().len());
    for (group, original) in groups.iter().zip(shipped["groups"].as_array().unwrap()) {
        for (alert, original) in group["rules"]
            .as_array()
            .unwrap()
            .iter()
            .zip(original["rules"].as_array().unwrap())
        {
            assert_eq!(alert["expr"], original["expr"]);
            assert_eq!(alert["labels"]["team"], "cdn", "{}", alert["alert"]);
            assert_eq!(alert["labels"]["severity"], original["labels"]["severity"]);
        }
    }

    for map in of_kind(&objects, "ConfigMap") {
        assert_eq!(map["metadata"]["namespace"], "monitoring");
        assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Coral");
    }
    let example = one(&objects, "CoralCluster");
    assert_eq!(example["metadata"]["name"], "edge");
    assert_eq!(example["metadata"]["namespace"], NAMESPACE);
    assert_eq!(example["spec"]["zone"], "cdn.example.net");
    assert_eq!(example["spec"]["dns"]["exposure"], "ClusterIP");
}

#[test]
fn prometheus_operator_objects_follow_the_mode_and_the_api() {
    let monitors = |args: &[&str]| -> usize {
        let objects = render(args).unwrap();
        ["ServiceMonitor", "PodMonitor", "PrometheusRule"]
            .iter()
            .map(|kind| of_kind(&objects, kind).len())
            .sum()
    };
    let api = ["--api-versions", "monitoring.coreos.com/v1"];
    assert_eq!(monitors(&api), 3, "auto, with the API");
    assert_eq!(monitors(&[]), 0, "auto, without it");
    assert_eq!(
        monitors(&["--set", "monitoring.prometheusOperator.mode=always"]),
        3
    );
    let never = [
        &api[..],
        &["--set", "monitoring.prometheusOperator.mode=never"],
    ]
    .concat();
    assert_eq!(monitors(&never), 0);
    let no_alerts = [&api[..], &["--set", "monitoring.alerts.enabled=false"]].concat();
    assert_eq!(monitors(&no_alerts), 2);
    let objects = render(&["--set", "dashboards.enabled=false"]).unwrap();
    assert!(of_kind(&objects, "ConfigMap").is_empty());

    // Without the metrics Service no ServiceMonitor can follow it: the pods say where to scrape.
    let objects = render(&[
        "--set",
        "monitoring.prometheusOperator.mode=always",
        "--set",
        "metrics.service.enabled=false",
    ])
    .unwrap();
    assert!(of_kind(&objects, "ServiceMonitor").is_empty());
    assert_eq!(of_kind(&objects, "PodMonitor").len(), 1);
    let pod = &one(&objects, "Deployment")["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
}

#[test]
fn notes_show_a_coral_cluster_to_apply_as_it_is() {
    let chart = chart_dir().to_string_lossy().into_owned();
    let printed = helm(
        &[
            "install",
            "coral",
            &chart,
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ],
        None,
    )
    .unwrap();
    let notes = printed.split_once("NOTES:").unwrap().1;
    let (_, snippet) = notes
        .split_once("kubectl apply -f - <<'YAML'\n")
        .expect("a heredoc to paste");
    let (manifest, _) = snippet.split_once("\nYAML\n").expect("the heredoc ends");
    let cluster: CoralCluster = serde_norway::from_str(manifest).unwrap();
    assert_eq!(cluster.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert!(notes.contains("kubectl -n coral-system get coralcluster cdn -w"));
    assert!(notes.contains("\"Coral / CDN\""), "{notes}");
}

#[test]
fn an_existing_service_account_is_used_by_name() {
    let objects = render(&[
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=platform-operators",
    ])
    .unwrap();
    assert!(of_kind(&objects, "ServiceAccount").is_empty());
    let deployment = one(&objects, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-operators"
    );
    assert_eq!(
        one(&objects, "ClusterRoleBinding")["subjects"][0]["name"],
        "platform-operators"
    );
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    for (value, named) in [
        ("operater.replicas=2", "'operater' not allowed"),
        ("operator.replicas=0", "/operator/replicas"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        (
            "monitoring.prometheusOperator.mode=sometimes",
            "/monitoring/prometheusOperator/mode",
        ),
        ("operator.metricsPort=70000", "/operator/metricsPort"),
        ("exampleCluster.name=Bad_Name", "/exampleCluster/name"),
        (
            "operator.leaderElection.enabled=false",
            "operator.leaderElection.enabled is false",
        ),
        (
            "serviceAccount.create=false",
            "serviceAccount.name must name an existing ServiceAccount",
        ),
    ] {
        match render(&["--set", value]) {
            Err(ChartError::Tool { output, .. }) => {
                assert!(output.contains(named), "{value}: {output}")
            }
            other => panic!("{value} was accepted: {other:?}"),
        }
    }
}

#[test]
fn dashboards_and_alerts_are_well_formed_and_their_queries_valid_promql() {
    let boards = dashboards().unwrap();
    assert_eq!(boards.len(), 4, "CDN, DNS, DHT, operator");
    let mut uids = BTreeSet::new();
    for (file, board) in &boards {
        assert!(
            uids.insert(board["uid"].as_str().unwrap().to_owned()),
            "{file}"
        );
        assert!(board["title"].as_str().unwrap().starts_with("Coral / "));
        let variables = board["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{file}: no data source variable"
        );
        let mut ids = BTreeSet::new();
        for panel in board["panels"].as_array().unwrap() {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{file}: id twice"
            );
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{file}: {} overflows", panel["title"]);
            if panel["type"] != "row" {
                assert_eq!(panel["datasource"]["uid"], "${datasource}");
                assert!(
                    !panel["targets"].as_array().unwrap().is_empty(),
                    "{file}: {} has no query",
                    panel["title"]
                );
            }
        }
    }
    let rules = alert_rules().unwrap();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert!(rule["labels"]["severity"].is_string(), "{rule:?}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule:?}");
        }
    }
    let queries = [dashboard_queries().unwrap(), alert_queries().unwrap()].concat();
    assert!(queries.len() > 60, "{} queries", queries.len());
    for query in queries {
        let names = metric_names(&query.expr)
            .unwrap_or_else(|err| panic!("{}: {err}\n{}", query.source, query.expr));
        assert!(!names.is_empty(), "{} reads no metric", query.source);
    }
}

#[test]
fn promtool_accepts_the_rules_and_each_alert_fires_on_its_condition_only() {
    let checked = promtool(&["check", "rules", "coral.rules.yaml"]).unwrap();
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    // coral.rules.test.yaml: every alert fires after its `for` on the condition it names, with
    // its labels and annotations, and not on the series just beside it.
    let tested = promtool(&["test", "rules", "coral.rules.test.yaml"]).unwrap();
    assert!(tested.contains("SUCCESS"), "{tested}");
    let tests = std::fs::read_to_string(chart_dir().join("alerts/coral.rules.test.yaml")).unwrap();
    for query in alert_queries().unwrap() {
        let alert = query.source.rsplit(' ').next().unwrap();
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no test in coral.rules.test.yaml"
        );
    }
}

/// The names of the operator's pods.
async fn operator_pod_names(client: &kube::Client) -> Vec<String> {
    let selector = ListParams::default().labels("app.kubernetes.io/name=coral-operator");
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&selector)
        .await
        .unwrap()
        .iter()
        .map(ResourceExt::name_any)
        .collect()
}

/// The `/metrics` text of the pod at `ip`, port `port`.
async fn scrape(ip: std::net::IpAddr, port: u16) -> String {
    let (status, body) = http::get(SocketAddr::new(ip, port), "metrics", "/metrics")
        .await
        .unwrap();
    assert!(status.contains("200"), "{ip}:{port}: {status}");
    body
}

#[tokio::test]
async fn helm_installs_the_chart_the_operator_leads_and_every_queried_metric_is_exported() {
    let local = LocalCluster::start(NAMESPACE).await.unwrap();
    let client = local.client.clone();
    let operator_binary = workspace_binary("coral-operator", "coral-operator").unwrap();
    let node_binary = workspace_binary("coral-node", "coral-node").unwrap();
    let state = tempfile::tempdir().unwrap();
    let _kubelet = Kubelet::start(
        client.clone(),
        KubeletConfig {
            nodes: standard_topology(),
            images: vec![
                ("coral-operator".to_owned(), operator_binary),
                ("coral-node".to_owned(), node_binary),
            ],
            state_dir: state.path().to_owned(),
            api_server: Some(local.control_plane.api_address().unwrap()),
        },
    )
    .await
    .unwrap();

    // The example cluster's proxies trust an internal CA from a ConfigMap: they start (and
    // get ready) only if the operator mounted it where node.yaml says and it holds a CA.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let bundle = ConfigMap {
        metadata: ObjectMeta {
            name: Some("internal-ca".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some([("bundle.pem".to_owned(), test_ca_pem())].into()),
        ..ConfigMap::default()
    };
    maps.create(&PostParams::default(), &bundle).await.unwrap();

    let kubeconfig = local.control_plane.kubeconfig().to_owned();
    let chart = chart_dir().to_string_lossy().into_owned();
    helm_in(
        &kubeconfig,
        &[
            "install",
            "coral",
            &chart,
            "--namespace",
            NAMESPACE,
            "--set",
            "exampleCluster.enabled=true",
            "--set",
            "exampleCluster.spec.proxy.originAccess.extraCa.configMap=internal-ca",
            "--set",
            "exampleCluster.spec.proxy.originAccess.extraCa.key=bundle.pem",
            "--wait",
            "--timeout",
            "150s",
        ],
    )
    .await;

    // helm --wait returned: both replicas are ready, one leading, one standing by.
    let deployment = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("coral")
        .await
        .unwrap();
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(2));
    let operators = pod_addresses(&client, NAMESPACE, "app.kubernetes.io/name=coral-operator")
        .await
        .unwrap();
    assert_eq!(operators.len(), 2);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder = eventually("a replica to hold the Lease", WAIT, || async {
        let lease = leases.get("coral").await.map_err(|e| e.to_string())?;
        lease
            .spec
            .and_then(|spec| spec.holder_identity)
            .ok_or_else(|| "no holder".to_owned())
    })
    .await;
    let names = operator_pod_names(&client).await;
    assert!(names.contains(&holder), "{holder} is not one of {names:?}");

    // The operator in the cluster, with the chart's RBAC only, makes the example cluster Ready.
    let clusters: Api<CoralCluster> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("the example CoralCluster to be Ready", WAIT, || async {
        let cluster = clusters.get("coral").await.map_err(|e| e.to_string())?;
        let status = cluster.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready && status.ready_nodes == 6 && status.ready_dns_nodes == 6 {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;

    // Ready with the bundle in force: node.yaml points at it, so each proxy read a CA there.
    let config = maps.get("coral-config").await.unwrap();
    let node_yaml = &config.data.unwrap()["node.yaml"];
    assert!(
        node_yaml.contains("extraCaFile: /etc/coral-ca/ca.crt"),
        "{node_yaml}"
    );

    // Every metric the dashboards and alerts read, with the label values they match, from the
    // running binaries.
    let mut exported = Vec::new();
    let mut leaders = 0;
    for (_, ip) in &operators {
        let text = scrape(*ip, 8080).await;
        leaders += usize::from(text.contains("\ncoral_operator_leader 1"));
        exported.extend(exported_series(&text));
    }
    assert_eq!(leaders, 1, "one replica leads");
    for component in ["proxy", "dns"] {
        let pods = pod_addresses(
            &client,
            NAMESPACE,
            &format!("app.kubernetes.io/component={component}"),
        )
        .await
        .unwrap();
        let (_, ip) = pods[0];
        if component == "proxy" {
            // One refusal, so that the proxy has a reason to count.
            let (status, _) = http::get(SocketAddr::new(ip, 8080), "example.com", "/")
                .await
                .unwrap();
            assert!(status.contains("421"), "{status}");
        }
        exported.extend(exported_series(&scrape(ip, 9090).await));
    }
    let mut missing = Vec::new();
    for query in [dashboard_queries().unwrap(), alert_queries().unwrap()].concat() {
        for selector in selectors(&query.expr).unwrap() {
            for absent in unmatched(&selector, &exported) {
                missing.push(format!("{}: {absent}", query.source));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "read by dashboards or alerts, exported by no binary:\n{}",
        missing.join("\n")
    );

    // The leader's pod goes away (a drain): it releases the Lease and the standby takes over.
    let deleted = std::time::Instant::now();
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .delete(&holder, &DeleteParams::default())
        .await
        .unwrap();
    let successor = eventually("another replica to take the Lease", WAIT, || async {
        let lease = leases.get("coral").await.map_err(|e| e.to_string())?;
        match lease.spec.and_then(|spec| spec.holder_identity) {
            Some(next) if next != holder => Ok(next),
            other => Err(format!("held by {other:?}")),
        }
    })
    .await;
    let takeover = deleted.elapsed();
    eprintln!("chart: {successor} took the Lease {takeover:?} after {holder} was deleted");
    // The standby, or the pod the ReplicaSet made at once to replace the deleted one: whichever
    // sees the released Lease first.
    let now = operator_pod_names(&client).await;
    assert!(
        now.contains(&successor),
        "{successor} is not one of {now:?}"
    );
    // Released, not expired: an expired Lease (15 s) would take longer.
    assert!(takeover < Duration::from_secs(8), "{takeover:?}");

    // An upgrade rolls the operator; an uninstall removes the release with its example
    // cluster, and keeps the CRD.
    helm_in(
        &kubeconfig,
        &[
            "upgrade",
            "coral",
            &chart,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "operator.logFormat=text",
            "--wait",
            "--timeout",
            "150s",
        ],
    )
    .await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    let rolled = deployments.get("coral").await.unwrap();
    let status = rolled.status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(
        (status.updated_replicas, status.ready_replicas),
        (Some(2), Some(2))
    );
    helm_in(
        &kubeconfig,
        &[
            "uninstall",
            "coral",
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    assert!(deployments.get_opt("coral").await.unwrap().is_none());
    assert!(clusters.get_opt("coral").await.unwrap().is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("coralclusters.coral.nyud.net")
            .await
            .unwrap()
            .is_some(),
        "helm keeps CRDs (and with them every CoralCluster) on uninstall"
    );
}

/// A self-signed CA certificate in PEM, made by openssl for this test.
fn test_ca_pem() -> String {
    let output = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=coral test CA",
            "-days",
            "1",
            "-keyout",
            "/dev/null",
            "-out",
            "-",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Runs helm against the cluster of `kubeconfig`, off the runtime: helm blocks, and the
/// kubelet runs on this runtime meanwhile.
async fn helm_in(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let kubeconfig = kubeconfig.to_owned();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm(&args, Some(&kubeconfig))
    })
    .await
    .unwrap()
    .unwrap()
}
