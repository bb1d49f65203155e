//! Fake nodes under the real node lifecycle controller: heartbeats keep them Ready and
//! untainted; a node whose heartbeats stop is declared lost, as a real one would be.

use std::time::Duration;

use coral_e2e::controlplane::ControlPlane;
use coral_e2e::nodes::{self, standard_topology};
use coral_e2e::wait::eventually;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

fn ready_status(node: &Node) -> String {
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status)
        .unwrap_or_default()
}

#[tokio::test]
async fn heartbeats_keep_nodes_ready_and_silent_nodes_are_declared_lost() {
    let control_plane = ControlPlane::start().unwrap();
    let client = control_plane.client().await.unwrap();
    let heartbeats = nodes::register(&client, &standard_topology())
        .await
        .unwrap();
    let api: Api<Node> = Api::all(client.clone());

    // Longer than the controller's 20 s grace period: only heartbeats keep the nodes Ready.
    tokio::time::sleep(Duration::from_secs(30)).await;
    for node in api.list(&Default::default()).await.unwrap() {
        assert_eq!(ready_status(&node), "True", "{node:?}");
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(taints.is_empty(), "{taints:?}");
    }

    drop(heartbeats);
    eventually(
        "silent nodes to be declared lost",
        Duration::from_secs(60),
        || async {
            let nodes = api
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let statuses: Vec<String> = nodes.iter().map(ready_status).collect();
            if statuses.iter().all(|s| s == "Unknown") {
                Ok(())
            } else {
                Err(format!("{statuses:?}"))
            }
        },
    )
    .await;
}
