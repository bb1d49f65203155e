//! Members from the Kubernetes API: the EndpointSlices of the proxies' Service and of the DNS
//! Service, in the pod's namespace.
//!
//! The EndpointSlice controller lists every pod a Service selects once it has an address,
//! ready or not, each with its node; a pod shutting down is marked terminating. Readiness is
//! not used: the DNS node's own health checks decide who is published (a pod the kubelet has
//! not yet probed may already be healthy, and one it still calls ready may be dead). Pods
//! shutting down are left out, so that new clients go elsewhere at once.
//!
//! The API server is not needed to keep answering: a running node keeps the last list while
//! the watch retries, and every new list is saved to a cache file that a restarted node reads
//! before it reaches the API server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::members::{Member, Members, MembersFeed, replace_if_changed};
use crate::config::MemberServices;

/// The label the EndpointSlice controller puts on a slice: the Service it belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice, and the EndpointSlice controller's value of it.
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// The members the `slices` list: endpoints of `services.proxies` as proxies, of
/// `services.nameservers` as name servers, without the terminating ones.
pub fn members_of<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    services: &MemberServices,
) -> Members {
    let mut members = Members::default();
    for slice in slices {
        let list = match slice.labels().get(SERVICE_NAME_LABEL) {
            Some(service) if *service == services.proxies => &mut members.proxies,
            Some(service) if *service == services.nameservers => &mut members.nameservers,
            _ => continue,
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let terminating = endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.terminating)
                .unwrap_or(false);
            if terminating {
                continue;
            }
            let node = endpoint.node_name.clone().unwrap_or_default();
            // Slices of the FQDN address type hold names, which cannot be published.
            list.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|address| address.parse::<IpAddr>().ok())
                    .map(|address| Member {
                        node: node.clone(),
                        address,
                    }),
            );
        }
    }
    members.deduplicated()
}

/// The slices a watch has seen, as its events say, and the list being read while the watch
/// (re)lists: the old slices stay in use until the new list is complete.
#[derive(Debug, Default)]
pub struct SliceSet {
    slices: BTreeMap<String, EndpointSlice>,
    listing: Option<BTreeMap<String, EndpointSlice>>,
}

impl SliceSet {
    /// Takes one watch event into account; says whether the slices in use changed.
    pub fn apply(&mut self, event: Event<EndpointSlice>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(slice) => {
                self.listing
                    .get_or_insert_default()
                    .insert(slice.name_any(), slice);
                false
            }
            Event::InitDone => {
                self.slices = self.listing.take().unwrap_or_default();
                true
            }
            Event::Apply(slice) => {
                self.slices.insert(slice.name_any(), slice);
                true
            }
            Event::Delete(slice) => self.slices.remove(&slice.name_any()).is_some(),
        }
    }

    /// The slices in use.
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }
}

/// A feed of the members listed by the EndpointSlices of `services` in `client`'s default
/// namespace, until `shutdown`.
///
/// It starts from the cache file when there is one (every member is probed before it is
/// published), then follows the API server, retrying with backoff while it is unreachable and
/// keeping the last list meanwhile. Each new list is written to the cache file. Only slices
/// the EndpointSlice controller manages count: one made by hand cannot add members.
pub fn watch(client: Client, services: MemberServices, shutdown: CancellationToken) -> MembersFeed {
    let (sender, feed) = watch::channel(None);
    let selector = format!(
        "{SERVICE_NAME_LABEL} in ({},{}),{MANAGED_BY_LABEL}={CONTROLLER}",
        services.proxies, services.nameservers
    );
    let api: Api<EndpointSlice> = Api::default_namespaced(client);
    let mut events = watch_objects(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    tokio::spawn(async move {
        let cache = services.cache_file.clone();
        if let Ok(Some(cached)) = tokio::task::spawn_blocking(move || read_cache(&cache)).await {
            tracing::info!(
                proxies = cached.proxies.len(),
                nameservers = cached.nameservers.len(),
                "members from the cache file until the API server answers"
            );
            sender.send_replace(Some(cached.into()));
        }
        let mut slices = SliceSet::default();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            let changed = match event {
                None => {
                    tracing::error!("the EndpointSlice watch ended; keeping the last members list");
                    return;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching EndpointSlices; keeping the last members list");
                    false
                }
                Some(Ok(event)) => slices.apply(event),
            };
            if !changed {
                continue;
            }
            let members = members_of(slices.slices(), &services);
            let latest = members.clone();
            if sender.send_if_modified(|current| replace_if_changed(current, members)) {
                tracing::info!(
                    proxies = latest.proxies.len(),
                    nameservers = latest.nameservers.len(),
                    "members from EndpointSlices"
                );
                write_cache(services.cache_file.clone(), latest).await;
            }
        }
    });
    feed
}

/// The members saved in `path`, if it holds a list.
fn read_cache(path: &Path) -> Option<Members> {
    if !path.exists() {
        return None;
    }
    match Members::load(path) {
        Ok(members) => Some(members),
        Err(error) => {
            tracing::warn!(%error, "ignoring the members cache file");
            None
        }
    }
}

/// Saves `members` in `path` off the runtime's threads, replacing the previous list at once
/// (never half written).
async fn write_cache(path: PathBuf, members: Members) {
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        let text = serde_norway::to_string(&members).map_err(std::io::Error::other)?;
        let partial = path.with_extension("partial");
        let mut file = std::fs::File::create(&partial)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        // On disk before it replaces the last list: a crash must not leave an empty cache.
        file.sync_all()?;
        std::fs::rename(&partial, &path)
    })
    .await
    .map_err(std::io::Error::other)
    .flatten();
    if let Err(error) = written {
        tracing::warn!(%error, path = shown, "cannot write the members cache file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn services() -> MemberServices {
        MemberServices {
            proxies: "demo-proxy".into(),
            nameservers: "demo-dns".into(),
            cache_file: "/nonexistent/members.yaml".into(),
        }
    }

    fn endpoint(node: &str, addresses: &[&str], terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            node_name: Some(node.to_owned()),
            conditions: Some(EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating,
            }),
            ..Endpoint::default()
        }
    }

    fn slice(service: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-x")),
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: None,
        }
    }

    fn member(node: &str, address: &str) -> Member {
        Member {
            node: node.into(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn endpoints_become_members_by_service_ready_or_not() {
        let slices = [
            slice(
                "demo-proxy",
                vec![
                    endpoint("n2", &["10.0.2.7"], None),
                    endpoint("n1", &["10.0.1.7"], Some(false)),
                ],
            ),
            slice("demo-dns", vec![endpoint("n1", &["10.0.1.8"], None)]),
            slice("someone-else", vec![endpoint("n3", &["10.0.3.1"], None)]),
        ];
        let members = members_of(&slices, &services());
        assert_eq!(
            members.proxies,
            [member("n1", "10.0.1.7"), member("n2", "10.0.2.7")]
        );
        assert_eq!(members.nameservers, [member("n1", "10.0.1.8")]);
    }

    #[test]
    fn terminating_pods_and_names_are_left_out() {
        let slices = [slice(
            "demo-proxy",
            vec![
                endpoint("n1", &["10.0.1.7"], Some(true)),
                endpoint("n2", &["proxy.example.com", "10.0.2.7"], None),
            ],
        )];
        let members = members_of(&slices, &services());
        assert_eq!(members.proxies, [member("n2", "10.0.2.7")]);
    }

    #[test]
    fn a_pod_in_two_slices_is_one_member_per_address() {
        let slices = [
            slice("demo-proxy", vec![endpoint("n1", &["10.0.1.7"], None)]),
            slice("demo-proxy", vec![endpoint("n1", &["10.0.1.7"], None)]),
            slice("demo-proxy", vec![endpoint("n1", &["fd00::7"], None)]),
        ];
        let members = members_of(&slices, &services());
        assert_eq!(
            members.proxies,
            [member("n1", "10.0.1.7"), member("n1", "fd00::7")]
        );
    }

    fn named(mut slice: EndpointSlice, name: &str) -> EndpointSlice {
        slice.metadata.name = Some(name.to_owned());
        slice
    }

    #[test]
    fn a_relist_replaces_the_slices_only_once_complete() {
        let proxy = |name, ip| named(slice("demo-proxy", vec![endpoint("n1", &[ip], None)]), name);
        let mut set = SliceSet::default();
        assert!(!set.apply(Event::Init));
        assert!(!set.apply(Event::InitApply(proxy("a", "10.0.0.1"))));
        assert!(!set.apply(Event::InitApply(proxy("b", "10.0.0.2"))));
        assert!(set.apply(Event::InitDone));
        assert_eq!(members_of(set.slices(), &services()).proxies.len(), 2);

        assert!(set.apply(Event::Apply(proxy("c", "10.0.0.3"))));
        assert!(set.apply(Event::Delete(proxy("a", "10.0.0.1"))));
        assert!(
            !set.apply(Event::Delete(proxy("a", "10.0.0.1"))),
            "already gone"
        );
        let addresses = |set: &SliceSet| -> Vec<String> {
            members_of(set.slices(), &services())
                .proxies
                .iter()
                .map(|m| m.address.to_string())
                .collect()
        };
        assert_eq!(addresses(&set), ["10.0.0.2", "10.0.0.3"]);

        // The watch broke and lists again: slice b was deleted meanwhile.
        assert!(!set.apply(Event::Init));
        assert!(!set.apply(Event::InitApply(proxy("c", "10.0.0.3"))));
        assert_eq!(
            addresses(&set),
            ["10.0.0.2", "10.0.0.3"],
            "in use until done"
        );
        assert!(set.apply(Event::InitDone));
        assert_eq!(addresses(&set), ["10.0.0.3"]);
    }

    #[tokio::test]
    async fn the_cache_file_round_trips_and_a_broken_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.yaml");
        assert_eq!(read_cache(&path), None);
        let members = Members {
            proxies: vec![member("n1", "10.0.1.7")],
            nameservers: vec![member("n1", "fd00::8")],
        };
        write_cache(path.clone(), members.clone()).await;
        assert_eq!(read_cache(&path), Some(members));
        std::fs::write(&path, "proxies: [").unwrap();
        assert_eq!(read_cache(&path), None);
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            read_cache(&path),
            None,
            "an empty file is not an empty list"
        );
    }
}
