//! The Secret holding the cluster's shared key.
//!
//! The key authenticates every DHT packet and peer fetch, so changing it splits the cluster:
//! the operator creates the Secret only when it is absent and never rewrites it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::names::ClusterNames;
use super::owned_meta;
use crate::api::CoralCluster;

/// Length of a generated key in bytes (HMAC-SHA256 wants at least its output size).
pub const KEY_BYTES: usize = 32;

/// Name of the Secret holding the key: the one the spec names, or `<cluster>-dht-key`.
pub fn key_secret_name(cluster: &CoralCluster) -> String {
    cluster
        .spec
        .dht
        .key_secret_ref
        .name
        .clone()
        .unwrap_or_else(|| ClusterNames::of(cluster).default_key_secret())
}

/// A fresh key Secret holding `key` under the spec's key name.
pub fn key_secret(cluster: &CoralCluster, key: &[u8]) -> Secret {
    Secret {
        metadata: owned_meta(cluster, key_secret_name(cluster), None),
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            cluster.spec.dht.key_secret_ref.key.clone(),
            ByteString(key.to_vec()),
        )])),
        ..Secret::default()
    }
}

/// A new random key.
pub fn generate_key() -> [u8; KEY_BYTES] {
    rand::random()
}

/// Why an existing Secret cannot serve as the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The Secret has no entry under the configured key.
    #[error(
        "Secret {secret} has no entry `{key}`; add one of at least {KEY_BYTES} random bytes or delete the Secret to have one generated"
    )]
    Missing {
        /// The Secret.
        secret: String,
        /// The entry looked for.
        key: String,
    },
    /// The entry is too short to be a safe HMAC key.
    #[error("Secret {secret} entry `{key}` holds {len} bytes; a key needs at least {KEY_BYTES}")]
    TooShort {
        /// The Secret.
        secret: String,
        /// The entry.
        key: String,
        /// Its length.
        len: usize,
    },
}

/// Checks that an existing Secret holds a usable key under the spec's key name.
pub fn check_key(cluster: &CoralCluster, secret: &Secret) -> Result<(), KeyError> {
    let key = &cluster.spec.dht.key_secret_ref.key;
    let secret_name = key_secret_name(cluster);
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| bytes.0.len());
    match value {
        None => Err(KeyError::Missing {
            secret: secret_name,
            key: key.clone(),
        }),
        Some(len) if len < KEY_BYTES => Err(KeyError::TooShort {
            secret: secret_name,
            key: key.clone(),
            len,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::demo;

    #[test]
    fn default_secret_is_named_after_the_cluster() {
        assert_eq!(key_secret_name(&demo()), "demo-dht-key");
    }

    #[test]
    fn spec_can_name_its_own_secret_and_entry() {
        let mut cluster = demo();
        cluster.spec.dht.key_secret_ref.name = Some("shared".into());
        cluster.spec.dht.key_secret_ref.key = "hmac".into();
        let secret = key_secret(&cluster, &[7; KEY_BYTES]);
        assert_eq!(secret.metadata.name.as_deref(), Some("shared"));
        assert_eq!(secret.data.unwrap()["hmac"].0, vec![7; KEY_BYTES]);
    }

    #[test]
    fn generated_secret_is_immutable_and_holds_the_key() {
        let secret = key_secret(&demo(), &[1; KEY_BYTES]);
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(check_key(&demo(), &secret), Ok(()));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(generate_key(), generate_key());
    }

    #[test]
    fn short_or_missing_keys_are_refused_with_the_fix() {
        let short = key_secret(&demo(), &[1; 8]);
        assert!(matches!(
            check_key(&demo(), &short),
            Err(KeyError::TooShort { len: 8, .. })
        ));
        let empty = Secret::default();
        let err = check_key(&demo(), &empty).unwrap_err().to_string();
        assert!(err.contains("has no entry `key`"), "{err}");
    }
}
