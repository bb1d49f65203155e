//! Coral's DNS under a real control plane: the operator turns a CoralCluster into proxy and
//! DNS pods (run by the e2e kubelet as coral-node processes), the DNS pods learn the proxies
//! from the EndpointSlices the controller-manager writes, and answer with the proxies in the
//! client's zone, and the proxies serve an origin's page fetching it once for all; with the
//! operator and the API server gone they keep answering, and still eject a proxy that is cut
//! off.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use coral_e2e::binaries::workspace_binary;
use coral_e2e::cluster::{LocalCluster, pod_addresses};
use coral_e2e::demo_origin::DemoOrigin;
use coral_e2e::dns::a_records;
use coral_e2e::http;
use coral_e2e::kubelet::{Kubelet, KubeletConfig, network};
use coral_e2e::nodes::standard_topology;
use coral_e2e::operator::{RunningOperator, install_crd};
use coral_e2e::wait::eventually;
use coral_operator::api::CoralCluster;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const NAMESPACE: &str = "coral-dns";
const WAIT: Duration = Duration::from_secs(90);
/// Clients the cluster places in zone `eu-1a` and in zone `us-1a`.
const EU_1A_CLIENTS: &str = "10.77.1.0/24";
const US_1A_CLIENTS: &str = "10.77.3.0/24";

/// A pod taken off the network (its veth down) until this is dropped, even by a failing test.
struct CutOff(Ipv4Addr);

impl CutOff {
    fn new(pod: Ipv4Addr) -> Self {
        network::set_connected(pod, false).unwrap();
        Self(pod)
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        let _ = network::set_connected(self.0, true);
    }
}

/// Waits until `server` answers `subnet`'s clients with exactly `expected`.
async fn wait_for_answer(server: IpAddr, subnet: &str, expected: &[IpAddr], why: &str) {
    let mut expected = expected.to_vec();
    expected.sort();
    eventually(why, WAIT, || async {
        let answer = a_records(
            SocketAddr::new(server, 53),
            "www.example.com.nyud.net.",
            Some(subnet),
        )
        .await?;
        if answer == expected {
            Ok(())
        } else {
            Err(format!("answered {answer:?}, want {expected:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn dns_pods_publish_the_proxies_the_api_lists_and_keep_answering_without_it() {
    let started = std::time::Instant::now();
    let local = LocalCluster::start(NAMESPACE).await.unwrap();
    let client = local.client.clone();
    install_crd(&client).await.unwrap();
    let node_binary = workspace_binary("coral-node", "coral-node").unwrap();
    let state = tempfile::tempdir().unwrap();
    let kubelet = Kubelet::start(
        client.clone(),
        KubeletConfig {
            nodes: standard_topology(),
            images: vec![("coral-node".to_owned(), node_binary)],
            state_dir: state.path().to_owned(),
            api_server: Some(local.control_plane.api_address().unwrap()),
        },
    )
    .await
    .unwrap();
    let origin = DemoOrigin::start(kubelet.gateway().into()).await.unwrap();
    let operator = RunningOperator::start(&client, "operator-0", None)
        .await
        .unwrap();
    let cluster: CoralCluster = serde_json::from_value(json!({
        "apiVersion": "coral.nyud.net/v1alpha1",
        "kind": "CoralCluster",
        "metadata": {"name": "cdn"},
        "spec": {
            "proxy": {"originAccess": {
                "internalNetworks": [format!("{}/32", origin.address().ip())],
                "addresses": [{"host": "demo.origin", "addresses": [origin.address().ip().to_string()]}],
            }},
            "locality": {"clientNetworks": [
                {"cidr": EU_1A_CLIENTS, "zone": "eu-1a", "region": "eu-1"},
                {"cidr": US_1A_CLIENTS, "zone": "us-1a", "region": "us-1"},
            ]},
        },
    }))
    .unwrap();
    let clusters: Api<CoralCluster> = Api::namespaced(client.clone(), NAMESPACE);
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    eventually(
        "every node and DNS pod ready, and the cluster Ready",
        WAIT,
        || async {
            let cluster = clusters.get("cdn").await.map_err(|e| e.to_string())?;
            let generation = cluster.metadata.generation;
            let status = cluster.status.unwrap_or_default();
            let all = status.desired_nodes == 6
                && status.ready_nodes == 6
                && status.desired_dns_nodes == 6
                && status.ready_dns_nodes == 6
                && status.observed_generation == generation
                && status.conditions.iter().any(|c| {
                    c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
                });
            if all {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await;

    eprintln!("dns: every pod ready after {:?}", started.elapsed());
    let proxies = pod_addresses(&client, NAMESPACE, "app.kubernetes.io/component=proxy")
        .await
        .unwrap();
    let in_zone = |zone: &str| -> Vec<IpAddr> {
        proxies
            .iter()
            .filter(|(node, _)| node.starts_with(&format!("node-{zone}-")))
            .map(|(_, ip)| *ip)
            .collect()
    };
    let (eu_1a, us_1a) = (in_zone("eu-1a"), in_zone("us-1a"));
    assert_eq!((eu_1a.len(), us_1a.len()), (2, 2), "{proxies:?}");
    let dns = pod_addresses(&client, NAMESPACE, "app.kubernetes.io/component=dns")
        .await
        .unwrap();
    assert_eq!(dns.len(), 6, "{dns:?}");
    for (_, server) in &dns {
        wait_for_answer(*server, EU_1A_CLIENTS, &eu_1a, "eu-1a proxies for eu-1a").await;
        wait_for_answer(*server, US_1A_CLIENTS, &us_1a, "us-1a proxies for us-1a").await;
    }

    // The control plane goes away: the operator first, then the API server, etcd and the
    // controllers. The pods keep running under the kubelet.
    eprintln!("dns: answers checked after {:?}", started.elapsed());

    // A named proxy serves the origin's page, fetching it once.
    let host = format!("demo.origin.{}.nyud.net", origin.address().port());
    let proxy = SocketAddr::new(eu_1a[0], 8080);
    for _ in 0..2 {
        let (status, body) = http::get(proxy, &host, "/").await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(body.contains("request number 1."), "{body}");
    }
    assert_eq!(origin.requests(), 1);
    // A proxy in another region finds the page on that one through the DHT, whose nodes met
    // through the headless Service and the kubelet's cluster DNS.
    let (status, body) = http::get(SocketAddr::new(us_1a[0], 8080), &host, "/")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(
        origin.requests(),
        1,
        "fetched from the peer, not the origin"
    );
    operator.stop().await.unwrap();
    drop(local.heartbeats);
    local.control_plane.stop();
    let server = dns[0].1;
    wait_for_answer(server, EU_1A_CLIENTS, &eu_1a, "answers with no API server").await;

    // A proxy cut off from the network is ejected by the health checks alone.
    let IpAddr::V4(cut) = eu_1a[0] else {
        unreachable!("pod addresses are IPv4")
    };
    let cut_off = CutOff::new(cut);
    let cut_at = std::time::Instant::now();
    wait_for_answer(
        server,
        EU_1A_CLIENTS,
        &eu_1a[1..],
        "the cut-off proxy ejected",
    )
    .await;
    eprintln!(
        "dns: the cut-off proxy ejected after {:?}",
        cut_at.elapsed()
    );
    drop(cut_off);
    wait_for_answer(
        server,
        EU_1A_CLIENTS,
        &eu_1a,
        "the reconnected proxy readmitted",
    )
    .await;
    kubelet.stop().await;
}
