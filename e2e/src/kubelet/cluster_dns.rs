//! Cluster DNS for the pods, as CoreDNS gives a real cluster's: `<service>.<namespace>.svc`
//! (and `.svc.cluster.local`) is answered with the ready addresses of the Service's
//! EndpointSlices, which is what a headless Service's name means (Coral's DHT nodes find their
//! peers through one). Served over UDP on the gateway's port 53; every pod's `/etc/resolv.conf`
//! names it. Other names are refused: pods reach nothing beyond the bridge anyway.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use futures::StreamExt;
use hickory_server::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// TTL of the answers: short, as CoreDNS's default.
const TTL: u32 = 5;
/// The label naming a slice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The `resolv.conf` pods get: the cluster DNS on `gateway`.
pub fn resolv_conf(gateway: Ipv4Addr) -> String {
    format!("nameserver {gateway}\noptions ndots:1 timeout:1 attempts:2\n")
}

/// Serves cluster DNS on `gateway:53` from the EndpointSlices `client` sees, until `shutdown`.
pub async fn serve(
    gateway: Ipv4Addr,
    client: Client,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let socket = UdpSocket::bind((gateway, 53)).await?;
    let (store, writer) = reflector::store();
    let slices = reflector::reflector(
        writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(async move {
        let mut buffer = [0u8; 512];
        let mut slices = std::pin::pin!(slices);
        // The watch retries with backoff and never ends; were it to, the last list keeps
        // answering rather than the loop spinning on an ended stream.
        let mut watching = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = slices.next(), if watching => watching = event.is_some(),
                received = socket.recv_from(&mut buffer) => {
                    let Ok((length, peer)) = received else { continue };
                    if let Some(response) = answer(&store, &buffer[..length]) {
                        let _ = socket.send_to(&response, peer).await;
                    }
                }
            }
        }
    });
    Ok(())
}

/// The response to `query`, or `None` when it is not a query.
fn answer(store: &Store<EndpointSlice>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    let Some(question) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    response.add_query(question.clone());
    let name = question.name().to_lowercase();
    match service_of(&name) {
        None => response.metadata.response_code = ResponseCode::Refused,
        Some((service, namespace)) => {
            let addresses = ready_addresses(store, &service, &namespace);
            if addresses.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            for address in addresses {
                let data = match (address, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(name.clone(), TTL, data));
            }
        }
    }
    response.to_vec().ok()
}

/// The Service and namespace a name such as `web.default.svc.cluster.local.` stands for.
fn service_of(name: &Name) -> Option<(String, String)> {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).into_owned())
        .collect();
    match labels.as_slice() {
        [service, namespace, svc] if svc == "svc" => Some((service.clone(), namespace.clone())),
        [service, namespace, svc, cluster, local]
            if svc == "svc" && cluster == "cluster" && local == "local" =>
        {
            Some((service.clone(), namespace.clone()))
        }
        _ => None,
    }
}

/// The addresses of the ready endpoints of `service` in `namespace`, sorted.
fn ready_addresses(store: &Store<EndpointSlice>, service: &str, namespace: &str) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = store
        .state()
        .iter()
        .filter(|slice| slice.namespace().as_deref() == Some(namespace))
        .filter(|slice| slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service))
        .flat_map(|slice| slice.endpoints.clone().unwrap_or_default())
        .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|endpoint| endpoint.addresses)
        .filter_map(|address| IpAddr::from_str(&address).ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_recognised_with_or_without_the_cluster_domain() {
        let of = |name: &str| service_of(&Name::from_str(name).unwrap());
        assert_eq!(
            of("demo-dht.coral.svc."),
            Some(("demo-dht".into(), "coral".into()))
        );
        assert_eq!(
            of("demo-dht.coral.svc.cluster.local."),
            Some(("demo-dht".into(), "coral".into()))
        );
        assert_eq!(of("www.example.com."), None);
        assert_eq!(of("coral.svc."), None);
    }
}
