//! The e2e kubelet under a real control plane: a DaemonSet's pods run as local processes in
//! their own network namespaces, with their environment and volumes, report real status, are
//! restarted when they die, and vanish without a trace when the kubelet stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use coral_e2e::controlplane::ControlPlane;
use coral_e2e::http;
use coral_e2e::kubelet::{Kubelet, KubeletConfig, network};
use coral_e2e::nodes::{self, standard_topology};
use coral_e2e::wait::eventually;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Serves its node, name and address, a file from its ConfigMap, and what the API server said
/// to its service-account token, over HTTP on 8080.
const WEB_SCRIPT: &str = r#"printf '%s %s %s' "$MY_POD_IP" "$MY_NODE" "$MY_NAME" > /srv/env.txt
cp /etc/demo/greeting /srv/greeting
account=/var/run/secrets/kubernetes.io/serviceaccount
curl -sS --cacert $account/ca.crt -H "Authorization: Bearer $(cat $account/token)" \
  "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/secrets" > /srv/api.json 2>&1 || true
touch /srv/ready.txt /srv/alive.txt
exec python3 -m http.server --bind 0.0.0.0 --directory /srv 8080"#;

/// The body of `GET path` from the web pod at `ip`.
async fn get(ip: &str, path: &str) -> Result<String, String> {
    let address = SocketAddr::new(ip.parse().map_err(|e| format!("{ip}: {e}"))?, 8080);
    http::get(address, ip, path).await.map(|(_, body)| body)
}

async fn pods(client: &Client) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
}

/// Waits until the `web` Service has exactly `count` ready endpoints.
async fn wait_for_ready_endpoints(slices: &Api<EndpointSlice>, count: usize) {
    eventually(&format!("{count} ready endpoints"), WAIT, || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        if ready == count {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await;
}

/// How often the pod's container was restarted so far.
async fn restart_count(pods: &Api<Pod>, name: &str) -> i32 {
    let pod = pods.get(name).await.unwrap();
    let statuses = pod
        .status
        .unwrap_or_default()
        .container_statuses
        .unwrap_or_default();
    statuses.first().map_or(0, |c| c.restart_count)
}

/// Waits until the pod's container was restarted `times` times and is ready again.
async fn wait_for_restarts(pods: &Api<Pod>, name: &str, times: i32) {
    eventually(
        &format!("{name} restarted {times} times and ready"),
        WAIT,
        || async {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            let statuses = pod
                .status
                .unwrap_or_default()
                .container_statuses
                .unwrap_or_default();
            let container = statuses.first().ok_or("no container status")?;
            if container.restart_count >= times && container.ready {
                Ok(())
            } else {
                Err(format!("{container:?}"))
            }
        },
    )
    .await;
}

fn our_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    // `ip netns list` prints `NAME (id: N)`.
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("coral"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn daemon_set_pods_run_as_processes_with_their_env_volumes_and_readiness() {
    let control_plane = ControlPlane::start().unwrap();
    let client = control_plane.client().await.unwrap();
    let topology = standard_topology();
    let _heartbeats = nodes::register(&client, &topology).await.unwrap();
    let namespaces_before = our_namespaces();
    let state = tempfile::tempdir().unwrap();
    let kubelet = Kubelet::start(
        client.clone(),
        KubeletConfig {
            nodes: topology.clone(),
            images: vec![("python".to_owned(), PathBuf::from("/usr/bin/python3"))],
            state_dir: state.path().to_owned(),
            api_server: Some(control_plane.api_address().unwrap()),
        },
    )
    .await
    .unwrap();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let greeting = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("demo".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "greeting".to_owned(),
            "hello from a ConfigMap".to_owned(),
        )])),
        ..ConfigMap::default()
    };
    config_maps
        .create(&PostParams::default(), &greeting)
        .await
        .unwrap();
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let daemon_set: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web",
                        "image": "python:3",
                        "command": ["sh", "-c", WEB_SCRIPT],
                        "env": [field("MY_POD_IP", "status.podIP"), field("MY_NODE", "spec.nodeName"), field("MY_NAME", "metadata.name")],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/ready.txt", "port": "http"}, "periodSeconds": 1},
                        "livenessProbe": {"httpGet": {"path": "/alive.txt", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2},
                        "volumeMounts": [{"name": "demo", "mountPath": "/etc/demo"}, {"name": "srv", "mountPath": "/srv"}],
                    }],
                    "volumes": [{"name": "demo", "configMap": {"name": "demo"}}, {"name": "srv", "emptyDir": {}}],
                }
            }
        }
    }))
    .unwrap();
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    daemon_sets
        .create(&PostParams::default(), &daemon_set)
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    eventually("6 ready web pods", WAIT, || async {
        let ds = daemon_sets.get("web").await.map_err(|e| e.to_string())?;
        let status = ds.status.unwrap_or_default();
        if status.desired_number_scheduled == 6 && status.number_ready == 6 {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;

    // Each pod answers on its own address, with its own downward-API values and the ConfigMap.
    for pod in pods(&client).await {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert_eq!(
            get(&ip, "/env.txt").await.unwrap(),
            format!("{ip} {node} {}", pod.name_any())
        );
        assert_eq!(
            get(&ip, "/greeting").await.unwrap(),
            "hello from a ConfigMap"
        );
        // Reached through the gateway forwarder, over verified TLS, authenticated as the pod's
        // service account (which may not list Secrets).
        let api = get(&ip, "/api.json").await.unwrap();
        assert!(
            api.contains("system:serviceaccount:default:default") && api.contains("Forbidden"),
            "{api}"
        );
        let host_ip = pod.status.as_ref().unwrap().host_ip.clone().unwrap();
        let expected = topology.iter().find(|n| n.name == node).unwrap();
        assert_eq!(host_ip, expected.address);
    }
    // The endpoint-slice controller sees six ready endpoints because the pod statuses are real.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    wait_for_ready_endpoints(&slices, 6).await;

    // A killed process is restarted, and the pod is ready again.
    let victim = pods(&client).await.remove(0);
    let ip = victim.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let namespace = our_namespaces()
        .into_iter()
        .find(|ns| {
            let out = Command::new("ip")
                .args(["-n", ns, "-4", "addr"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/"))
        })
        .expect("the pod's namespace");
    let pids = Command::new("ip")
        .args(["netns", "pids", &namespace])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        Command::new("kill").args(["-KILL", pid]).status().unwrap();
    }
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for_restarts(&pod_api, &victim.name_any(), 1).await;
    assert_eq!(
        get(&ip, "/greeting").await.unwrap(),
        "hello from a ConfigMap"
    );

    // A pod cut off the network fails its readiness probe and leaves the endpoints; healed,
    // it comes back.
    let address: std::net::Ipv4Addr = ip.parse().unwrap();
    network::set_connected(address, false).unwrap();
    wait_for_ready_endpoints(&slices, 5).await;
    let attempt = tokio::time::timeout(Duration::from_secs(2), get(&ip, "/greeting")).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "unreachable while cut off");
    network::set_connected(address, true).unwrap();
    wait_for_ready_endpoints(&slices, 6).await;

    // A container failing its liveness probe is killed and restarted (its script then answers
    // the probe again).
    let alive = state.path().join(format!(
        "pods/default_{}/volumes/srv/alive.txt",
        victim.name_any()
    ));
    let restarts = restart_count(&pod_api, &victim.name_any()).await;
    std::fs::remove_file(&alive).unwrap();
    wait_for_restarts(&pod_api, &victim.name_any(), restarts + 1).await;

    // A deleted pod is stopped and its namespace removed; the DaemonSet gets a new one.
    pod_api
        .delete(&victim.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    eventually("the replacement pod to be ready", WAIT, || async {
        let ds = daemon_sets.get("web").await.map_err(|e| e.to_string())?;
        let status = ds.status.unwrap_or_default();
        let gone = pod_api
            .get_opt(&victim.name_any())
            .await
            .map_err(|e| e.to_string())?
            .is_none();
        if gone && status.number_ready == 6 {
            Ok(())
        } else {
            Err(format!("gone: {gone}, {status:?}"))
        }
    })
    .await;
    assert!(
        !our_namespaces().contains(&namespace),
        "the deleted pod's namespace is gone"
    );

    kubelet.stop().await;
    assert_eq!(
        our_namespaces(),
        namespaces_before,
        "no namespace left behind"
    );
    let servers = Command::new("pgrep")
        .args(["-f", "http.server --bind 0.0.0.0 --directory /srv 8080"])
        .output()
        .unwrap();
    assert!(servers.stdout.is_empty(), "no process left behind");
}
