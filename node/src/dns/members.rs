//! Who the DNS role checks and publishes: the cluster's proxies and its DNS nodes.
//!
//! A member is a pod: the Kubernetes node it runs on (which places it, through the topology)
//! and its address (published in A/AAAA records; its admin port is probed). The list comes from
//! a file (this module) or from EndpointSlices ([`super::endpoint_slices`]), as a
//! [`MembersFeed`]; either way it only says who *might* be published: nothing is published
//! before the health checks say so.
//!
//! The file is YAML:
//!
//! ```yaml
//! proxies:
//!   - { node: worker-1, address: 10.0.1.7 }
//!   - { node: worker-2, address: 10.0.2.9 }
//! nameservers:
//!   - { node: worker-1, address: 10.0.1.8 }
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// The latest members list from its source; `None` until the source has given one.
pub type MembersFeed = watch::Receiver<Option<Arc<Members>>>;

/// One pod the DNS role may publish.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The Kubernetes node it runs on, which the topology places.
    pub node: String,
    /// Its address: published in answers, and where its admin port is probed.
    pub address: IpAddr,
}

/// The proxies and DNS nodes of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// Proxies, published in answers for origin names.
    #[serde(default)]
    pub proxies: Vec<Member>,
    /// DNS nodes, published in the zone's NS records when the configuration names none.
    #[serde(default)]
    pub nameservers: Vec<Member>,
}

impl Members {
    /// Reads a members file. An empty file is an error, not an empty list: it is what a file
    /// being rewritten in place looks like for a moment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::config::load_yaml::<Self>(path).map(|loaded| loaded.value.deduplicated())
    }

    /// The same members, each once, in a stable order.
    pub(crate) fn deduplicated(mut self) -> Self {
        for list in [&mut self.proxies, &mut self.nameservers] {
            list.sort();
            list.dedup();
        }
        self
    }
}

/// A feed of the members listed in `path`, read now and again every `interval` until
/// `shutdown`. A file that cannot be read or parsed keeps the last good list (and is logged).
pub fn watch_file(path: PathBuf, interval: Duration, shutdown: CancellationToken) -> MembersFeed {
    let (sender, feed) = watch::channel(None);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let file = path.clone();
            match tokio::task::spawn_blocking(move || Members::load(&file)).await {
                Ok(Ok(members)) => {
                    sender.send_if_modified(|current| replace_if_changed(current, members));
                }
                Ok(Err(error)) => tracing::warn!(%error, "keeping the last members list"),
                Err(panicked) => tracing::warn!(%panicked, "keeping the last members list"),
            }
        }
    });
    feed
}

/// Puts `members` in `current` unless it already holds the same list; says whether it did.
pub(crate) fn replace_if_changed(current: &mut Option<Arc<Members>>, members: Members) -> bool {
    if current.as_deref() == Some(&members) {
        return false;
    }
    *current = Some(Arc::new(members));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_file_is_read_and_a_wrong_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.yaml");
        std::fs::write(
            &path,
            "proxies:\n  - { node: b, address: 10.0.0.2 }\n  - { node: a, address: 10.0.0.1 }\n  - { node: a, address: 10.0.0.1 }\nnameservers:\n  - { node: a, address: '::1' }\n",
        )
        .unwrap();
        let members = Members::load(&path).unwrap();
        assert_eq!(
            members.proxies,
            [
                Member {
                    node: "a".into(),
                    address: "10.0.0.1".parse().unwrap()
                },
                Member {
                    node: "b".into(),
                    address: "10.0.0.2".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            members.nameservers[0].address,
            "::1".parse::<IpAddr>().unwrap()
        );

        std::fs::write(&path, "proxies:\n  - { node: b, adress: 10.0.0.2 }\n").unwrap();
        let error = Members::load(&path).unwrap_err().to_string();
        assert!(error.contains("adress"), "{error}");
    }

    /// Replaces the file at `path` at once, as a careful writer does (the feed reads it
    /// every few milliseconds).
    fn replace(path: &Path, text: &str) {
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, path).unwrap();
    }

    #[test]
    fn an_empty_members_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.yaml");
        std::fs::write(&path, "\n").unwrap();
        let error = Members::load(&path).unwrap_err().to_string();
        assert!(error.ends_with("is empty"), "{error}");
    }

    #[tokio::test]
    async fn the_file_feed_follows_changes_and_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.yaml");
        replace(&path, "proxies: [{ node: a, address: 10.0.0.1 }]\n");
        let shutdown = CancellationToken::new();
        let mut feed = watch_file(path.clone(), Duration::from_millis(10), shutdown.clone());
        let wait = Duration::from_secs(5);
        let first = tokio::time::timeout(wait, feed.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .clone()
            .unwrap();
        assert_eq!(first.proxies.len(), 1);

        replace(
            &path,
            "proxies: []\nnameservers: [{ node: a, address: 10.0.0.9 }]\n",
        );
        let second = tokio::time::timeout(
            wait,
            feed.wait_for(|members| members.as_ref().is_some_and(|m| m.proxies.is_empty())),
        )
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
        assert_eq!(second.nameservers.len(), 1);

        replace(&path, "proxies: [");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            feed.borrow().as_deref(),
            Some(&*second),
            "a broken file changes nothing"
        );
        shutdown.cancel();
    }
}
