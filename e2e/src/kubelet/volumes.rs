//! Materialising a pod's volumes as directories on this machine.
//!
//! ConfigMap and Secret volumes are written as files (one per key, or per listed item);
//! emptyDir volumes are empty directories; projected volumes (the service-account token volume
//! every pod gets) combine a token from the TokenRequest API, ConfigMaps, Secrets and
//! downward-API fields. The container's mount namespace then binds each directory at its
//! `mountPath`. Files are written once, when the pod starts: tokens are not refreshed and
//! ConfigMap changes are not propagated to running pods.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, Pod, Secret, ServiceAccount, ServiceAccountTokenProjection,
    Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// Why a volume could not be materialised.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The ConfigMap or Secret could not be read.
    #[error("volume {volume}: {source}")]
    Api {
        /// The volume.
        volume: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing the files failed.
    #[error("volume {volume}: {source}")]
    Io {
        /// The volume.
        volume: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A mount names a volume the pod does not have, or a kind this kubelet cannot provide.
    #[error(
        "volume {0}: not defined in the pod, or not a configMap, secret, emptyDir or projected volume"
    )]
    Unsupported(String),
}

/// A directory to bind at a path inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory on this machine.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: String,
}

/// Writes every volume `container` mounts under `dir` and returns the mounts.
pub async fn materialise(
    client: &Client,
    pod: &Pod,
    container: &Container,
    dir: &Path,
) -> Result<Vec<Mount>, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for volume_mount in container.volume_mounts.iter().flatten() {
        let name = &volume_mount.name;
        let volume = volumes
            .iter()
            .find(|v| &v.name == name)
            .ok_or_else(|| VolumeError::Unsupported(name.clone()))?;
        let source = dir.join("volumes").join(name);
        let io = |source| VolumeError::Io {
            volume: name.clone(),
            source,
        };
        std::fs::create_dir_all(&source).map_err(io)?;
        for (path, bytes) in contents(client, pod, volume).await? {
            let file = source.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&file, bytes).map_err(io)?;
        }
        mounts.push(Mount {
            source,
            target: volume_mount.mount_path.clone(),
        });
    }
    Ok(binding_order(mounts))
}

/// Orders mounts so that none hides the source of another: a mount at `/tmp` bound first
/// would hide every later source under `/tmp` (as when the repository lives there). Mounts
/// that cover a source are bound last; the order is otherwise kept.
fn binding_order(mut mounts: Vec<Mount>) -> Vec<Mount> {
    let sources: Vec<PathBuf> = mounts.iter().map(|m| m.source.clone()).collect();
    mounts.sort_by_key(|mount| {
        sources
            .iter()
            .any(|source| source.starts_with(&mount.target))
    });
    mounts
}

/// The files of a volume: relative path and content.
async fn contents(
    client: &Client,
    pod: &Pod,
    volume: &Volume,
) -> Result<Vec<(String, Vec<u8>)>, VolumeError> {
    let api_error = |source| VolumeError::Api {
        volume: volume.name.clone(),
        source,
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(source) = &volume.config_map {
        return Ok(select(
            config_map_data(client, &namespace, &source.name)
                .await
                .map_err(api_error)?,
            source.items.as_deref(),
        ));
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        return Ok(select(
            secret_data(client, &namespace, &name)
                .await
                .map_err(api_error)?,
            source.items.as_deref(),
        ));
    }
    if volume.empty_dir.is_some() {
        return Ok(Vec::new());
    }
    let Some(projected) = &volume.projected else {
        return Err(VolumeError::Unsupported(volume.name.clone()));
    };
    let mut files = Vec::new();
    for source in projected.sources.iter().flatten() {
        if let Some(token) = &source.service_account_token {
            files.push((
                token.path.clone(),
                service_account_token(client, pod, token)
                    .await
                    .map_err(api_error)?,
            ));
        }
        if let Some(map) = &source.config_map {
            files.extend(select(
                config_map_data(client, &namespace, &map.name)
                    .await
                    .map_err(api_error)?,
                map.items.as_deref(),
            ));
        }
        if let Some(secret) = &source.secret {
            files.extend(select(
                secret_data(client, &namespace, &secret.name)
                    .await
                    .map_err(api_error)?,
                secret.items.as_deref(),
            ));
        }
        for item in source
            .downward_api
            .iter()
            .flat_map(|d| d.items.iter().flatten())
        {
            let value = match item.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => namespace.clone(),
                Some("metadata.name") => pod.metadata.name.clone().unwrap_or_default(),
                Some("metadata.uid") => pod.metadata.uid.clone().unwrap_or_default(),
                _ => return Err(VolumeError::Unsupported(volume.name.clone())),
            };
            files.push((item.path.clone(), value.into_bytes()));
        }
    }
    Ok(files)
}

async fn config_map_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> kube::Result<Vec<(String, Vec<u8>)>> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(map
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect())
}

async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> kube::Result<Vec<(String, Vec<u8>)>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// A token for the pod's service account, bound to the pod, as the kubelet requests it.
async fn service_account_token(
    client: &Client,
    pod: &Pod,
    projection: &ServiceAccountTokenProjection,
) -> kube::Result<Vec<u8>> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(projection.audience.clone().into_iter().collect()),
            expiration_seconds: projection.expiration_seconds,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let response = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await?;
    Ok(response
        .status
        .and_then(|s| s.token)
        .unwrap_or_default()
        .into_bytes())
}

/// Every key as a file of its own name, or only the listed items at their paths.
fn select(data: Vec<(String, Vec<u8>)>, items: Option<&[KeyToPath]>) -> Vec<(String, Vec<u8>)> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|item| {
                data.iter()
                    .find(|(k, _)| k == &item.key)
                    .map(|(_, v)| (item.path.clone(), v.clone()))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(source: &str, target: &str) -> Mount {
        Mount {
            source: source.into(),
            target: target.to_owned(),
        }
    }

    #[test]
    fn a_mount_covering_the_sources_is_bound_last() {
        let mounts = vec![
            mount("/tmp/clone/.cache/pod/volumes/tmp", "/tmp"),
            mount("/tmp/clone/.cache/pod/volumes/config", "/etc/coral/config"),
            mount("/tmp/clone/.cache/pod/volumes/cache", "/var/cache/coral"),
        ];
        let targets: Vec<_> = binding_order(mounts)
            .into_iter()
            .map(|m| m.target)
            .collect();
        assert_eq!(targets, ["/etc/coral/config", "/var/cache/coral", "/tmp"]);
    }

    #[test]
    fn mounts_that_cover_no_source_keep_their_order() {
        let mounts = vec![
            mount("/work/pod/volumes/tmp", "/tmp"),
            mount("/work/pod/volumes/config", "/etc/coral/config"),
        ];
        assert_eq!(binding_order(mounts.clone()), mounts);
    }
}
