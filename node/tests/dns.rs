//! The DNS role on real sockets: proxies are `coral-node run --roles proxy` processes on
//! loopback addresses (their real `/healthz` is probed), the DNS role runs in the test, and
//! queries go over UDP and TCP as a resolver sends them.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use coral_node::config::{ClientNetwork, HealthConfig, NodeConfig, RateLimit, Topology};
use coral_node::dht::Dht;
use coral_node::dht::metrics::DhtMetrics;
use coral_node::dht::udp::UdpNetwork;
use coral_node::dns::members;
use coral_node::dns::metrics::DnsMetrics;
use coral_node::roles::dht::{DhtPlacement, DhtRole};
use coral_node::roles::dns::{DnsPlacement, DnsRole};
use hickory_server::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_server::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_coral-node");
const ADMIN_PORT: u16 = 19390;
const HTTP_PORT: u16 = 19380;
const DHT_PORT: u16 = 19411;
const ORIGIN: &str = "www.example.com.nyud.net.";
const CLUSTER_KEY: &[u8] = b"the DNS tests' cluster key, 32 bytes or more";

/// A proxy process on its own loopback address.
struct ProxyProcess {
    child: Child,
    ip: IpAddr,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes and their places: the DNS node sits in z2.
fn topology() -> Topology {
    let place = |zone: &str, region: &str| vec![zone.to_owned(), region.to_owned()];
    Topology {
        nodes: [
            ("node-1", place("z1", "r1")),
            ("node-2", place("z1", "r1")),
            ("node-3", place("z2", "r1")),
            ("node-4", place("z3", "r2")),
            ("node-dns", place("z2", "r1")),
        ]
        .into_iter()
        .map(|(node, place)| (node.to_owned(), place))
        .collect(),
    }
}

fn config(dir: &Path) -> NodeConfig {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node.yaml");
    let mut config = NodeConfig::load(&fixture).unwrap().value;
    config.admin_port = ADMIN_PORT;
    config.proxy.cache_dir = dir.join("cache");
    config.health = HealthConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        failure_threshold: 2,
        success_threshold: 2,
    };
    let network = |cidr: &str, zone: &str, region: &str| ClientNetwork {
        cidr: cidr.parse().unwrap(),
        locality: vec![zone.to_owned(), region.to_owned()],
    };
    config.locality.client_networks = vec![
        network("10.1.0.0/16", "z1", "r1"),
        network("10.3.0.0/16", "z3", "r2"),
        network("10.9.0.0/16", "", "r1"),
    ];
    config.dns.answers_per_query = 2;
    config.dns.members_file = Some(dir.join("members.yaml"));
    config.dht.key_file = dir.join("key");
    config.dht.port = DHT_PORT;
    config
}

fn write_files(dir: &Path, proxies: &[(&str, &str)], nameservers: &[(&str, &str)]) {
    std::fs::write(dir.join("node.yaml"), config(dir).to_yaml()).unwrap();
    std::fs::write(dir.join("key"), CLUSTER_KEY).unwrap();
    std::fs::write(dir.join("topology.yaml"), topology().to_yaml()).unwrap();
    let list = |members: &[(&str, &str)]| {
        members
            .iter()
            .map(|(node, ip)| format!("  - {{ node: {node}, address: {ip} }}\n"))
            .collect::<String>()
    };
    std::fs::write(
        dir.join("members.yaml"),
        format!(
            "proxies:\n{}nameservers:\n{}",
            list(proxies),
            list(nameservers)
        ),
    )
    .unwrap();
}

/// Starts a proxy on `ip` and waits until its admin port accepts connections.
async fn start_proxy(dir: &Path, node: &str, ip: &str) -> ProxyProcess {
    start_proxy_with(dir, node, ip, |_| {}).await
}

/// Starts a proxy on `ip` with the files in `dir`, its command adjusted by `adjust` (more
/// roles, environment), and waits until its admin port accepts connections.
async fn start_proxy_with(
    dir: &Path,
    node: &str,
    ip: &str,
    adjust: impl FnOnce(&mut Command),
) -> ProxyProcess {
    let mut command = Command::new(BINARY);
    command
        .args(["run", "--roles", "proxy", "--config"])
        .arg(dir.join("node.yaml"))
        .arg("--topology")
        .arg(dir.join("topology.yaml"))
        .args(["--node-name", node, "--pod-ip", ip])
        .args(["--admin-address", &format!("{ip}:{ADMIN_PORT}")])
        .args(["--proxy-address", &format!("{ip}:{HTTP_PORT}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{node}.log"))).unwrap());
    adjust(&mut command);
    let child = command.spawn().unwrap();
    let admin = SocketAddr::new(ip.parse().unwrap(), ADMIN_PORT);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "proxy {ip} never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ProxyProcess {
        child,
        ip: ip.parse().unwrap(),
    }
}

/// Starts a proxy for every `(node, address)`, one after another.
async fn start_proxies(dir: &Path, proxies: &[(&str, &str)]) -> Vec<ProxyProcess> {
    let mut running = Vec::new();
    for (node, ip) in proxies {
        running.push(start_proxy(dir, node, ip).await);
    }
    running
}

/// Starts the DNS role on the members file in `dir` and waits until it is ready.
async fn start_dns(dir: &Path, config: &NodeConfig, shutdown: &CancellationToken) -> DnsRole {
    start_dns_with_dht(dir, config, None, DnsMetrics::unregistered(), shutdown).await
}

/// Starts the DNS role as [`start_dns`] does, counting into `metrics`; with `dht`, its checks
/// ping members' DHT nodes.
async fn start_dns_with_dht(
    dir: &Path,
    config: &NodeConfig,
    dht: Option<Arc<Dht<UdpNetwork>>>,
    metrics: DnsMetrics,
    shutdown: &CancellationToken,
) -> DnsRole {
    let members = members::watch_file(
        dir.join("members.yaml"),
        config.health.interval,
        shutdown.clone(),
    );
    let dns = DnsRole::start(
        config,
        &topology(),
        DnsPlacement {
            node_name: "node-dns".into(),
            address: "127.0.0.40:0".parse().unwrap(),
            pod_ip: "127.0.0.40".parse().unwrap(),
            members,
        },
        dht,
        metrics,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let ready = dns.readiness();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the DNS role never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dns
}

/// Waits (10 s at most) until clients in `subnet` get exactly `expected`: a probe that took
/// longer than the test's short timeout on a busy machine costs a round, not the test.
async fn wait_for_answer(server: SocketAddr, subnet: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = addresses(&ask(server, Some(subnet)).await);
        if answer == ips(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subnet} got {answer:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A query for `name`, with EDNS (and a client subnet) when `subnet` is given.
fn query(name: &str, qtype: RecordType, edns: Option<Option<&str>>) -> Message {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    message.metadata.id = rand::random();
    message.metadata.recursion_desired = true;
    if let Some(subnet) = edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        if let Some(subnet) = subnet {
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::from_str(subnet).unwrap()));
        }
        message.set_edns(edns);
    }
    message
}

async fn udp(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buffer[..len]).expect("a well-formed response"))
}

async fn tcp(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buffer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buffer).await.unwrap();
    Message::from_vec(&buffer).expect("a well-formed response")
}

async fn ask(server: SocketAddr, subnet: Option<&str>) -> Message {
    let message = query(ORIGIN, RecordType::A, Some(subnet));
    let response = udp(server, &message.to_vec().unwrap())
        .await
        .expect("an answer");
    assert_eq!(response.metadata.id, message.metadata.id);
    response
}

fn addresses(response: &Message) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    addresses.sort();
    addresses
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = list.iter().map(|ip| ip.parse().unwrap()).collect();
    ips.sort();
    ips
}

fn scope(response: &Message) -> Option<u8> {
    match response
        .edns
        .as_ref()?
        .option(hickory_server::proto::rr::rdata::opt::EdnsCode::Subnet)?
    {
        EdnsOption::Subnet(subnet) => Some(subnet.scope_prefix()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_healthy_proxies_near_them_and_a_killed_one_disappears() {
    let dir = tempfile::tempdir().unwrap();
    let proxies = [
        ("node-1", "127.0.0.41"),
        ("node-2", "127.0.0.42"),
        ("node-3", "127.0.0.43"),
        ("node-4", "127.0.0.44"),
    ];
    write_files(dir.path(), &proxies, &[("node-dns", "127.0.0.40")]);
    let mut running = start_proxies(dir.path(), &proxies).await;
    let shutdown = CancellationToken::new();
    let config = config(dir.path());
    let dns = start_dns(dir.path(), &config, &shutdown).await;
    let server = dns.address();

    // Zone z1's clients get z1's two proxies, with the answer scoped to their /24.
    let response = ask(server, Some("10.1.7.0/24")).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert_eq!(addresses(&response), ips(&["127.0.0.41", "127.0.0.42"]));
    assert!(response.answers.iter().all(|record| record.ttl == 20));
    assert_eq!(scope(&response), Some(24));
    // Zone z3's clients get z3's proxy; region r1's clients (zone unknown) get r1's.
    assert_eq!(
        addresses(&ask(server, Some("10.3.1.0/24")).await),
        ips(&["127.0.0.44"])
    );
    let region = addresses(&ask(server, Some("10.9.1.0/24")).await);
    assert_eq!(region.len(), 2);
    assert!(
        region
            .iter()
            .all(|ip| ips(&["127.0.0.41", "127.0.0.42", "127.0.0.43"]).contains(ip))
    );
    // A resolver on no known network, without a client subnet, gets the DNS node's zone (z2).
    assert_eq!(addresses(&ask(server, None).await), ips(&["127.0.0.43"]));
    // TCP answers the same.
    let over_tcp = tcp(
        server,
        &query(ORIGIN, RecordType::A, Some(Some("10.3.1.0/24")))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(addresses(&over_tcp), ips(&["127.0.0.44"]));

    // SIGKILL z3's proxy: its clients move on, and it is never named again.
    let killed_at = Instant::now();
    let mut z3 = running.pop().unwrap();
    z3.child.kill().unwrap();
    z3.child.wait().unwrap();
    let deadline = killed_at + Duration::from_secs(10);
    loop {
        let answer = addresses(&ask(server, Some("10.3.1.0/24")).await);
        if !answer.contains(&z3.ip) {
            assert_eq!(answer.len(), 2, "{answer:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed proxy is still published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = killed_at.elapsed();
    for subnet in ["10.3.1.0/24", "10.1.7.0/24", "10.9.1.0/24"] {
        for _ in 0..20 {
            assert!(!addresses(&ask(server, Some(subnet)).await).contains(&z3.ip));
        }
    }
    eprintln!("killed proxy gone from answers after {gone_after:?}");

    // Back up: after two good checks it is published again.
    running.push(start_proxy(dir.path(), "node-4", "127.0.0.44").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while addresses(&ask(server, Some("10.3.1.0/24")).await) != ips(&["127.0.0.44"]) {
        assert!(
            Instant::now() < deadline,
            "the recovered proxy never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_answers_refuses_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("node-1", "127.0.0.45")],
        &[("node-dns", "127.0.0.40")],
    );
    let _proxy = start_proxy(dir.path(), "node-1", "127.0.0.45").await;
    let shutdown = CancellationToken::new();
    let dns = start_dns(dir.path(), &config(dir.path()), &shutdown).await;
    let server = dns.address();
    let ask_for = |name: &'static str, qtype| async move {
        let message = query(name, qtype, Some(None));
        udp(server, &message.to_vec().unwrap()).await.unwrap()
    };

    let outside = ask_for("www.example.com.", RecordType::A).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    assert!(!outside.metadata.authoritative);
    assert!(outside.answers.is_empty());

    let ns = ask_for("nyud.net.", RecordType::NS).await;
    assert!(ns.metadata.authoritative);
    assert_eq!(ns.answers.len(), 1);
    assert_eq!(
        ns.answers[0].data,
        RData::NS(hickory_server::proto::rr::rdata::NS(
            Name::from_str("ns-127-0-0-40.nyud.net.").unwrap()
        ))
    );
    let mut glue = ns.clone();
    glue.answers = ns.additionals.clone();
    assert_eq!(addresses(&glue), ips(&["127.0.0.40"]));

    let nodata = ask_for(ORIGIN, RecordType::MX).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(matches!(nodata.authorities[0].data, RData::SOA(_)));
    let nxdomain = ask_for("_bad.nyud.net.", RecordType::A).await;
    assert_eq!(nxdomain.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(nxdomain.authorities[0].data, RData::SOA(_)));
    let any = ask_for(ORIGIN, RecordType::ANY).await;
    assert_eq!(
        addresses(&any),
        ips(&["127.0.0.45"]),
        "ANY gets what A gets, no more"
    );
    let mut future_edns = query(ORIGIN, RecordType::A, Some(None));
    future_edns.edns.as_mut().unwrap().set_version(1);
    let badvers = udp(server, &future_edns.to_vec().unwrap()).await.unwrap();
    // Extended code 16 (hickory decodes it as BADSIG, which shares the number).
    assert_eq!(u16::from(badvers.metadata.response_code), 16);
    assert_eq!(badvers.edns.as_ref().map(Edns::version), Some(0));
    assert!(badvers.answers.is_empty());

    // Garbage: short packets get nothing, a broken question gets FORMERR; the server keeps
    // answering good queries throughout.
    let good = query(ORIGIN, RecordType::A, Some(None)).to_vec().unwrap();
    let mut broken_question = good.clone();
    broken_question.truncate(20);
    let mut wrong_count = good.clone();
    wrong_count[5] = 9;
    for garbage in [
        vec![],
        vec![0u8; 5],
        vec![0xff; 512],
        broken_question,
        wrong_count,
    ] {
        if let Some(response) = udp(server, &garbage).await {
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::FormErr,
                "{garbage:?}"
            );
        }
        let answer = udp(server, &good).await.expect("still answering");
        assert_eq!(addresses(&answer), ips(&["127.0.0.45"]));
    }
    let formerr = tcp(server, &{
        let mut bytes = good.clone();
        bytes.truncate(20);
        bytes
    })
    .await;
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(formerr.metadata.message_type, MessageType::Response);
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_healthy_proxy_the_answer_is_servfail_never_a_dead_address() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on 127.0.0.46: the first check fails and nothing is ever published.
    write_files(dir.path(), &[("node-1", "127.0.0.46")], &[]);
    let shutdown = CancellationToken::new();
    let dns = start_dns(dir.path(), &config(dir.path()), &shutdown).await;
    for _ in 0..5 {
        let response = ask(dns.address(), Some("10.1.7.0/24")).await;
        assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
        assert!(response.answers.is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_over_udp_is_truncated_to_whole_records_and_tcp_has_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let proxies = [("node-1", "127.0.0.47"), ("node-2", "127.0.0.48")];
    write_files(dir.path(), &proxies, &[]);
    let _running = start_proxies(dir.path(), &proxies).await;
    let shutdown = CancellationToken::new();
    let dns = start_dns(dir.path(), &config(dir.path()), &shutdown).await;
    let label = "a".repeat(60);
    let long = format!("{label}.{label}.{label}.example.com.nyud.net.");
    // Without EDNS a response may have 512 bytes: the question and two answers of this name
    // do not fit.
    let plain = query(&long, RecordType::A, None).to_vec().unwrap();
    let truncated = udp(dns.address(), &plain).await.unwrap();
    assert!(truncated.metadata.truncation);
    assert!(truncated.answers.len() < 2, "{truncated:?}");
    let full = tcp(dns.address(), &plain).await;
    assert!(!full.metadata.truncation);
    assert_eq!(addresses(&full), ips(&["127.0.0.47", "127.0.0.48"]));
    // With EDNS's 1232 bytes it fits.
    let edns = query(&long, RecordType::A, Some(None)).to_vec().unwrap();
    let whole = udp(dns.address(), &edns).await.unwrap();
    assert!(!whole.metadata.truncation);
    assert_eq!(whole.answers.len(), 2);
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_network_is_rate_limited_but_tcp_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &[("node-1", "127.0.0.49")], &[]);
    let _proxy = start_proxy(dir.path(), "node-1", "127.0.0.49").await;
    let mut config = config(dir.path());
    config.dns.response_rate = RateLimit {
        requests_per_second: 5,
        burst: 5,
    };
    let shutdown = CancellationToken::new();
    let dns = start_dns(dir.path(), &config, &shutdown).await;
    let bytes = query(ORIGIN, RecordType::A, Some(None)).to_vec().unwrap();
    // 40 queries at once from one socket, then whatever comes back within a second.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..40 {
        socket.send_to(&bytes, dns.address()).await.unwrap();
    }
    let (mut answered, mut slipped) = (0, 0);
    let mut buffer = vec![0u8; 4096];
    while let Ok(received) =
        tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer)).await
    {
        let response = Message::from_vec(&buffer[..received.unwrap().0]).unwrap();
        if response.metadata.truncation {
            assert!(response.answers.is_empty());
            slipped += 1;
        } else {
            answered += 1;
        }
    }
    assert!((5..=7).contains(&answered), "{answered} answered");
    assert!(
        (15..=20).contains(&slipped),
        "{slipped} slipped: one withheld response in two"
    );
    let over_tcp = tcp(dns.address(), &bytes).await;
    assert_eq!(addresses(&over_tcp), ips(&["127.0.0.49"]));
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_proxy_is_ejected_after_consecutive_timeouts_and_readmitted_when_it_thaws() {
    let dir = tempfile::tempdir().unwrap();
    let proxies = [("node-1", "127.0.0.50"), ("node-2", "127.0.0.51")];
    write_files(dir.path(), &proxies, &[]);
    let running = start_proxies(dir.path(), &proxies).await;
    let shutdown = CancellationToken::new();
    let metrics = DnsMetrics::unregistered();
    let dns = start_dns_with_dht(
        dir.path(),
        &config(dir.path()),
        None,
        metrics.clone(),
        &shutdown,
    )
    .await;
    let both = ips(&["127.0.0.50", "127.0.0.51"]);
    assert_eq!(
        addresses(&ask(dns.address(), Some("10.1.7.0/24")).await),
        both
    );

    // SIGSTOP: the process keeps its sockets, so nothing is refused or closed; only the probes'
    // timeouts tell, after failureThreshold of them.
    let signal = |name: &str, pid: u32| {
        let status = Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let frozen = &running[1];
    signal("-STOP", frozen.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while addresses(&ask(dns.address(), Some("10.1.7.0/24")).await).contains(&frozen.ip) {
        assert!(
            Instant::now() < deadline,
            "the frozen proxy is still published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The admin port's view says the same.
    let views = dns.members().read().unwrap().clone();
    let view = |ip: IpAddr| {
        views
            .iter()
            .find(|view| view.address == ip)
            .unwrap()
            .clone()
    };
    assert!(!view(frozen.ip).healthy);
    assert!(view(running[0].ip).healthy);
    assert_eq!(view(running[0].ip).locality, ["z1", "r1"]);
    assert_eq!(view(running[0].ip).role, "proxy");
    // So do the metrics, with the zone the dashboards and alerts group by.
    let healthy = |ip: &str| {
        metrics
            .member_healthy
            .with_label_values(&["proxy", ip, "z1"])
            .get()
    };
    assert_eq!((healthy("127.0.0.50"), healthy("127.0.0.51")), (1, 0));
    let ejections = metrics
        .member_transitions
        .with_label_values(&["proxy", "127.0.0.51", "z1", "ejected"])
        .get();
    assert_eq!(ejections, 1);
    // The healthy proxy's ejection series exists, at 0, so that its first ejection will show.
    let families = prometheus::core::Collector::collect(&metrics.member_transitions);
    let never_ejected = families[0].get_metric().iter().find(|series| {
        let labels: Vec<(&str, &str)> = series
            .get_label()
            .iter()
            .map(|pair| (pair.name(), pair.value()))
            .collect();
        labels.contains(&("address", "127.0.0.50")) && labels.contains(&("to", "ejected"))
    });
    assert_eq!(
        never_ejected.map(|series| series.get_counter().get_value()),
        Some(0.0)
    );
    signal("-CONT", frozen.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while addresses(&ask(dns.address(), Some("10.1.7.0/24")).await) != both {
        assert!(
            Instant::now() < deadline,
            "the thawed proxy never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_behind_a_host_port_is_published_at_the_address_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &[("node-1", "127.0.0.52")], &[]);
    let _proxy = start_proxy_with(dir.path(), "node-1", "127.0.0.52", |command| {
        command.env("PUBLIC_IP", "127.0.0.53");
    })
    .await;
    let shutdown = CancellationToken::new();
    // Without a host port in the configuration, a reported address is not trusted.
    let dns = start_dns(dir.path(), &config(dir.path()), &shutdown).await;
    wait_for_answer(dns.address(), "10.1.7.0/24", &["127.0.0.52"]).await;
    shutdown.cancel();
    dns.stop().await;

    let mut behind_host_port = config(dir.path());
    behind_host_port.proxy.host_port = Some(80);
    let shutdown = CancellationToken::new();
    let dns = start_dns(dir.path(), &behind_host_port, &shutdown).await;
    wait_for_answer(dns.address(), "10.1.7.0/24", &["127.0.0.53"]).await;
    let members = dns.members().read().unwrap().clone();
    assert_eq!(members[0].address, ips(&["127.0.0.52"])[0], "probed at");
    assert_eq!(members[0].public_address, Some(ips(&["127.0.0.53"])[0]));
    shutdown.cancel();
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_dht_role_a_proxy_whose_dht_node_is_silent_or_foreign_is_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = tempfile::tempdir().unwrap();
    let proxies = [
        ("node-1", "127.0.0.54"),
        ("node-2", "127.0.0.55"),
        ("node-3", "127.0.0.56"),
    ];
    write_files(dir.path(), &proxies, &[]);
    write_files(foreign.path(), &[], &[]);
    std::fs::write(
        foreign.path().join("key"),
        b"another cluster's key, 32 bytes or more",
    )
    .unwrap();
    let with_dht = |command: &mut Command| {
        command.args(["--roles", "dht"]);
    };
    let _member = start_proxy_with(dir.path(), "node-1", "127.0.0.54", with_dht).await;
    let _no_dht = start_proxy(dir.path(), "node-2", "127.0.0.55").await;
    let _stranger = start_proxy_with(foreign.path(), "node-3", "127.0.0.56", with_dht).await;

    let config = config(dir.path());
    let shutdown = CancellationToken::new();
    let dht = DhtRole::start(
        &config,
        &topology(),
        DhtPlacement {
            node_name: "node-dns".into(),
            bind: SocketAddr::from(([127, 0, 0, 40], DHT_PORT)),
            advertise: SocketAddr::from(([127, 0, 0, 40], DHT_PORT)),
            peers: Vec::new(),
        },
        DhtMetrics::unregistered(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let dns = start_dns_with_dht(
        dir.path(),
        &config,
        Some(dht.dht()),
        DnsMetrics::unregistered(),
        &shutdown,
    )
    .await;
    // Every proxy's HTTP health check passes; only node-1's DHT node answers this cluster.
    wait_for_answer(dns.address(), "10.9.7.0/24", &["127.0.0.54"]).await;
    for _ in 0..5 {
        let response = ask(dns.address(), Some("10.9.7.0/24")).await;
        assert_eq!(addresses(&response), ips(&["127.0.0.54"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members = dns.members().read().unwrap().clone();
    let healthy: Vec<bool> = members.iter().map(|member| member.healthy).collect();
    assert_eq!(healthy, [true, false, false], "{members:?}");
    shutdown.cancel();
    dns.stop().await;
    dht.stop().await;
}
