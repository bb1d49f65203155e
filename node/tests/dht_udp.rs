//! The DHT over real UDP sockets on loopback: 24 nodes in 3 zones and 2 regions.

use std::net::SocketAddr;
use std::time::Duration;

use coral_node::dht::metrics::DhtMetrics;
use coral_node::dht::udp::{UdpDht, UdpNodeConfig, UdpSettings};
use coral_node::dht::wire::{Body, Codec, Packet};
use coral_node::dht::{DhtParams, Id, Locality, Value};
use futures::future::join_all;

/// Each test runs its own cluster with its own key: a node stopped in one test frees its port,
/// which a node of another test may take, and only the key keeps the two clusters apart.
fn secret(test: &str) -> Vec<u8> {
    format!("shared secret of the {test} test cluster").into_bytes()
}
const VERSION: u32 = 1;
/// Zone and region of each zone index: two zones in region r1, one in r2.
const ZONES: [(&str, &str); 3] = [("z1", "r1"), ("z2", "r1"), ("z3", "r2")];
const PER_ZONE: usize = 8;
const HOUR: Duration = Duration::from_secs(3600);

fn settings() -> UdpSettings {
    UdpSettings {
        initial_rto: Duration::from_millis(200),
        retries: 1,
        ..UdpSettings::default()
    }
}

async fn start(zone: usize, secret: &[u8], version: u32) -> UdpDht {
    let (zone, region) = ZONES[zone];
    let config = UdpNodeConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        advertise: None,
        locality: Locality::from_labels(&[zone, region]),
        params: DhtParams::default(),
        codec: Codec::new(secret, version),
        settings: settings(),
    };
    UdpDht::start(config, DhtMetrics::unregistered())
        .await
        .unwrap()
}

/// Nodes 0..8 in z1, 8..16 in z2, 16..24 in z3, started one after another; each joins
/// through the nodes already there, as the headless Service's DNS name lists them, then every
/// node runs one upkeep round.
async fn cluster(secret: &[u8]) -> Vec<UdpDht> {
    let mut nodes: Vec<UdpDht> = Vec::new();
    for index in 0..ZONES.len() * PER_ZONE {
        let node = start(index / PER_ZONE, secret, VERSION).await;
        let listed: Vec<_> = nodes.iter().map(|n| n.dht.contact().addr).collect();
        node.dht.join(&listed).await;
        nodes.push(node);
    }
    let seed = [nodes[0].dht.contact().addr];
    join_all(nodes.iter().map(|node| node.dht.maintain(&seed))).await;
    nodes
}

fn value(port: u16) -> Value {
    Value {
        holder: SocketAddr::from(([127, 0, 0, 1], port)),
        meta: b"complete".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_finds_a_value_put_by_one_node() {
    let nodes = cluster(&secret("every_node_finds_a_value_put_by_one_node")).await;
    let key = Id::of(b"http://www.example.com/page");
    let put = nodes[20].dht.put(key, value(8080), HOUR).await;
    assert!(put.stored_everywhere(), "{put:?}");
    assert_eq!(put.levels.len(), 3, "zone, region and global");
    let gets = join_all(nodes.iter().map(|node| node.dht.get(key))).await;
    for (index, got) in gets.iter().enumerate() {
        assert_eq!(got.values.len(), 1, "node {index}: {got:?}");
        assert_eq!(got.values[0].value, value(8080));
    }
    let levels: Vec<_> = gets.iter().map(|got| got.level.unwrap()).collect();
    assert!(
        levels[16..].iter().all(|level| *level == 2),
        "z3 finds it in its zone: {levels:?}"
    );
    assert!(
        levels[..16].iter().all(|level| *level == 0),
        "r1 only globally: {levels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_finds_a_holder_in_its_own_zone_when_there_is_one() {
    let nodes = cluster(&secret(
        "a_get_finds_a_holder_in_its_own_zone_when_there_is_one",
    ))
    .await;
    let key = Id::of(b"http://www.example.com/shared");
    for (holder, port) in [(2, 1001), (10, 1002), (18, 1003)] {
        let put = nodes[holder].dht.put(key, value(port), HOUR).await;
        assert!(put.stored_everywhere(), "{put:?}");
    }
    let gets = join_all(nodes.iter().map(|node| node.dht.get(key))).await;
    for (index, got) in gets.iter().enumerate() {
        let own_zone_holder = value(1001 + (index / PER_ZONE) as u16);
        assert_eq!(got.level, Some(2), "node {index} answered in its zone");
        assert_eq!(got.values[0].value, own_zone_holder, "node {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_survive_a_quarter_of_the_nodes_dying() {
    let mut nodes = cluster(&secret("gets_survive_a_quarter_of_the_nodes_dying")).await;
    let keys: Vec<Id> = (0..10)
        .map(|n| Id::of(format!("http://o/{n}").as_bytes()))
        .collect();
    for (n, key) in keys.iter().enumerate() {
        let holder = &nodes[(n * 5) % nodes.len()];
        assert!(
            holder
                .dht
                .put(*key, value(2000 + n as u16), HOUR)
                .await
                .stored_everywhere()
        );
    }
    // Kill six nodes (two per zone), none of them node 0, then have live nodes put again, as
    // holders do every half TTL: puts and gets must route around the dead entries.
    for index in [21, 17, 13, 9, 5, 1] {
        nodes.remove(index).stop().await;
    }
    for (n, key) in keys.iter().enumerate() {
        let put = nodes[n % nodes.len()]
            .dht
            .put(*key, value(3000 + n as u16), HOUR)
            .await;
        assert!(put.stored_everywhere(), "{put:?}");
    }
    for key in &keys {
        let gets = join_all(nodes.iter().map(|node| node.dht.get(*key))).await;
        for (index, got) in gets.iter().enumerate() {
            assert!(
                !got.values.is_empty(),
                "live node {index} found nothing for {key:?}"
            );
        }
    }
    let timeouts: u64 = ["find_node", "get", "probe", "store", "ping"]
        .iter()
        .flat_map(|kind| {
            nodes.iter().map(move |n| {
                n.dht
                    .metrics()
                    .rpc_timeouts
                    .with_label_values(&[kind])
                    .get()
            })
        })
        .sum();
    assert!(timeouts > 0, "the dead nodes were asked and noticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_another_secret_or_version_never_join() {
    let nodes = cluster(&secret("nodes_with_another_secret_or_version_never_join")).await;
    let seed = [nodes[0].dht.contact().addr];
    let stranger = start(0, b"another cluster's secret, also 32+ bytes", VERSION).await;
    let old = start(
        0,
        &secret("nodes_with_another_secret_or_version_never_join"),
        VERSION + 1,
    )
    .await;
    assert_eq!(stranger.dht.join(&seed).await, 0);
    assert_eq!(old.dht.join(&seed).await, 0);
    let dropped = |reason| {
        nodes[0]
            .dht
            .metrics()
            .packets_dropped
            .with_label_values(&[reason])
            .get()
    };
    assert!(dropped("bad_mac") >= 1, "the stranger's ping is counted");
    assert!(
        dropped("bad_version") >= 1,
        "the old node's ping is counted"
    );
    for outsider in [&stranger, &old] {
        let addr = outsider.dht.contact().addr;
        for node in &nodes {
            let known = node
                .dht
                .snapshot()
                .levels
                .iter()
                .flat_map(|l| l.peers.clone())
                .any(|p| p.peer.addr == addr);
            assert!(!known, "{addr} entered a routing table");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_expire_and_a_restarted_node_rejoins_and_announces_again() {
    let mut nodes = cluster(&secret(
        "values_expire_and_a_restarted_node_rejoins_and_announces_again",
    ))
    .await;
    let seed = [nodes[0].dht.contact().addr];
    let short = Id::of(b"http://o/short-lived");
    nodes[3]
        .dht
        .put(short, value(4000), Duration::from_secs(1))
        .await;
    assert!(!nodes[12].dht.get(short).await.values.is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(nodes[12].dht.get(short).await.values.is_empty(), "expired");

    let key = Id::of(b"http://o/announced");
    let restarted_zone = 1;
    let victim = nodes.remove(11);
    let addr = victim.dht.contact().addr;
    victim.stop().await;
    // The same pod comes back: same address, so the same ID, and empty tables.
    let config = UdpNodeConfig {
        bind: addr,
        advertise: None,
        locality: Locality::from_labels(&[ZONES[restarted_zone].0, ZONES[restarted_zone].1]),
        params: DhtParams::default(),
        codec: Codec::new(
            &secret("values_expire_and_a_restarted_node_rejoins_and_announces_again"),
            VERSION,
        ),
        settings: settings(),
    };
    let back = UdpDht::start(config, DhtMetrics::unregistered())
        .await
        .unwrap();
    assert!(back.dht.join(&seed).await > 0);
    assert!(
        back.dht
            .announce(key, value(5000), HOUR)
            .await
            .stored_everywhere()
    );
    for node in &nodes {
        assert_eq!(node.dht.get(key).await.values[0].value, value(5000));
    }
}

/// Sends `bytes` from a fresh socket and says whether any answer came back within 300 ms.
async fn answered(to: SocketAddr, bytes: &[u8]) -> bool {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, to).await.unwrap();
    let mut buffer = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buffer))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_packets_are_dropped_unanswered() {
    let secret = secret("replayed_and_stale_packets_are_dropped_unanswered");
    let node = start(0, &secret, VERSION).await;
    let to = node.dht.contact().addr;
    let codec = Codec::new(&secret, VERSION);
    let ping = |sender: SocketAddr| Packet {
        request_id: 7,
        sender: Id::of(sender.to_string().as_bytes()),
        locality: Locality::from_labels(&["z1", "r1"]),
        level: 0,
        trace: "".into(),
        body: Body::Ping,
    };
    let dropped = |reason| {
        node.dht
            .metrics()
            .packets_dropped
            .with_label_values(&[reason])
            .get()
    };

    // A packet captured from another node, replayed from here: its ID is not this source's.
    let elsewhere = SocketAddr::from(([127, 0, 0, 99], 4242));
    assert!(!answered(to, &codec.encode(&ping(elsewhere))).await);
    assert_eq!(dropped("sender_mismatch"), 1);

    // A packet whose sender ID matches its source but that was sent two minutes ago.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stale = codec.encode_at(&ping(socket.local_addr().unwrap()), now - 120);
    socket.send_to(&stale, to).await.unwrap();
    let mut buffer = [0u8; 2048];
    let reply =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buffer)).await;
    assert!(reply.is_err(), "a stale packet was answered");
    assert_eq!(dropped("stale"), 1);

    // The same ping, fresh and from its own address, is answered.
    let fresh = codec.encode(&ping(socket.local_addr().unwrap()));
    socket.send_to(&fresh, to).await.unwrap();
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
        .await
        .expect("a fresh ping is answered")
        .unwrap();
    assert_eq!(codec.decode(&buffer[..len]).unwrap().body, Body::Pong);
    assert!(node.dht.peers(0) == 1, "the pinger became a peer");
}

/// Log lines written while a test runs, for asserting on what a node logged.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

// One thread, so that the nodes' receive tasks log to this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_lookup_carries_its_request_id_into_the_logs_of_the_nodes_it_asks() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let secret = secret("a_lookup_carries_its_request_id_into_the_logs_of_the_nodes_it_asks");
    let asking = start(0, &secret, VERSION).await;
    let asked = start(2, &secret, VERSION).await;
    // Stored before the other node joins, so only the asked node holds it.
    let key = Id::of(b"http://origin.test/traced");
    asked.dht.put(key, value(8080), HOUR).await;
    assert_eq!(asking.dht.join(&[asked.dht.contact().addr]).await, 1);
    let before = logs.lines().len();

    let found = coral_node::dht::traced("req-7f3a", asking.dht.get(key)).await;
    assert_eq!(found.values[0].value, value(8080));
    let asked_addr = asked.dht.contact().addr.to_string();
    let answered: Vec<_> = logs.lines()[before..]
        .iter()
        .filter(|line| line.contains("answered a DHT request"))
        .cloned()
        .collect();
    assert!(
        answered
            .iter()
            .any(|line| line.contains("request_id=req-7f3a")
                && line.contains(&format!("node={asked_addr}"))
                && line.contains("asked=\"get\"")),
        "{answered:#?}"
    );

    // Upkeep is not traced, and a get outside a traced scope logs nothing of the kind.
    let before = logs.lines().len();
    asking.dht.get(key).await;
    assert!(
        !logs.lines()[before..]
            .iter()
            .any(|line| line.contains("answered a DHT request"))
    );
}
