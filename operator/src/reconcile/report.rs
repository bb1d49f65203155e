//! Telling users what happened: the CoralCluster's status and Kubernetes Events.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::{Context, Error, namespace_of};
use crate::api::{CoralCluster, CoralClusterStatus, condition_types};
use crate::conditions::{Outcome, next_status};

/// Reports a problem: a Warning Event and a Degraded status.
pub async fn problem(cluster: &CoralCluster, ctx: &Context, outcome: Outcome) -> Result<(), Error> {
    if let Some((reason, message)) = outcome.problem() {
        tracing::warn!(cluster = %cluster.name_any(), error = %message, reason, "cannot act on CoralCluster");
        publish(ctx, cluster, EventType::Warning, reason, message).await;
    }
    write_status(cluster, ctx, None, &outcome).await.map(drop)
}

/// Computes and writes the status (when it changed); publishes an Event when the cluster
/// becomes ready or stops being ready.
/// `key_in_use` names the key Secret once pods have been given it.
pub async fn write_status(
    cluster: &CoralCluster,
    ctx: &Context,
    key_in_use: Option<&str>,
    outcome: &Outcome,
) -> Result<CoralClusterStatus, Error> {
    let previous = cluster.status.as_ref();
    let now = Time(Timestamp::now());
    let status = next_status(
        previous,
        cluster.meta().generation,
        key_in_use,
        outcome,
        &now,
    );
    if previous == Some(&status) {
        return Ok(status);
    }
    // Becoming ready is news, and so is losing readiness; not being ready yet is not.
    let was_ready = previous.is_some_and(CoralClusterStatus::is_ready);
    if was_ready != status.is_ready()
        && let Some(ready) = status.condition(condition_types::READY)
    {
        let kind = if status.is_ready() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(ctx, cluster, kind, &ready.reason, &ready.message).await;
    }
    let api: Api<CoralCluster> = Api::namespaced(ctx.client.clone(), &namespace_of(cluster));
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(&cluster.name_any(), &PatchParams::default(), &patch)
        .await
        .map_err(Error::Status)?;
    Ok(status)
}

/// Publishes an Event about `cluster`; a failure to publish is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    cluster: &CoralCluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(cluster = %cluster.name_any(), %err, "could not publish event");
    }
}
