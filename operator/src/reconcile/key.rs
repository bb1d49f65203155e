//! Making sure the shared DHT key exists, without ever replacing one.
//!
//! The key authenticates every DHT packet and peer fetch, so a new key splits the cluster until
//! every pod restarts. The operator therefore generates a key only for a cluster that never had
//! one; when the Secret of a key already in use disappears it stops and asks the user, who
//! decides between restoring the old key and rotating to a new one.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::events::EventType;

use super::report::publish;
use super::{Context, Error};
use crate::api::CoralCluster;
use crate::conditions::Outcome;
use crate::resources::names::MANAGER;
use crate::resources::secret::{self, KEY_BYTES};

/// Ensures the key Secret exists and holds a usable key; returns the problem the user must
/// fix, if any.
pub async fn ensure(
    cluster: &CoralCluster,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<Outcome>, Error> {
    let name = secret::key_secret_name(cluster);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let key_error = |source| Error::Key {
        name: name.clone(),
        source,
    };
    let existing = match api.get_opt(&name).await.map_err(key_error)? {
        Some(existing) => existing,
        None if was_in_use(cluster, &name) => {
            return Ok(Some(Outcome::KeyMissing(format!(
                "Secret {name} held the DHT key in use and was deleted; a new key would split the \
                 cluster, so the operator does not invent one: re-create {name} with the old key, or \
                 with a new one of at least {KEY_BYTES} random bytes under `{}` to rotate",
                cluster.spec.dht.key_secret_ref.key
            ))));
        }
        None => {
            let fresh = secret::key_secret(cluster, &secret::generate_key());
            let params = PostParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PostParams::default()
            };
            match api.create(&params, &fresh).await {
                Ok(created) => {
                    let note = format!("generated the shared DHT key in Secret {name}");
                    publish(ctx, cluster, EventType::Normal, "KeyGenerated", &note).await;
                    created
                }
                // Another reconcile (or a user) created it first: use theirs, never overwrite.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    api.get(&name).await.map_err(key_error)?
                }
                Err(err) => return Err(key_error(err)),
            }
        }
    };
    Ok(secret::check_key(cluster, &existing)
        .err()
        .map(|err| Outcome::KeyRejected(err.to_string())))
}

/// Whether the cluster's status says this Secret's key was already handed to pods.
fn was_in_use(cluster: &CoralCluster, name: &str) -> bool {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.key_secret_name.as_deref())
        == Some(name)
}
