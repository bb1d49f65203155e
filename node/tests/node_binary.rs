//! The shipped `coral-node run` on loopback: two nodes form a DHT through `--dht-peer`, the
//! admin port shows it, a DNS node cut off from the API server is honest about it and serves
//! from its cache after a restart, and bad input is refused with the file named.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coral_node::config::{DhtTuning, MemberServices, NodeConfig, Topology};
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RData, RecordType};

const BINARY: &str = env!("CARGO_BIN_EXE_coral-node");
const DHT_PORT: u16 = 19410;
const ADMIN_PORT: u16 = 19090;
const DNS_PORT: u16 = 15353;

struct Node {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_config(dir: &Path, key: &[u8]) -> PathBuf {
    let key_file = dir.join("key");
    std::fs::write(&key_file, key).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node.yaml");
    let mut config = NodeConfig::load(&fixture).unwrap().value;
    config.dht.port = DHT_PORT;
    config.dht.key_file = key_file;
    config.proxy.cache_disk_bytes = 1 << 20;
    config.proxy.cache_dir = dir.join("cache");
    config.admin_port = ADMIN_PORT;
    config.dns.member_services = Some(MemberServices {
        proxies: "demo-proxy".into(),
        nameservers: "demo-dns".into(),
        cache_file: dir.join("members.yaml"),
    });
    // An API server that is not there: nothing listens on port 9.
    std::fs::write(
        dir.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: down\n  cluster: { server: 'https://127.0.0.1:9', insecure-skip-tls-verify: true }\nusers:\n- name: u\n  user: { token: t }\ncontexts:\n- name: c\n  context: { cluster: down, user: u, namespace: demo }\ncurrent-context: c\n",
    )
    .unwrap();
    // The fixture's bootstrap name is `localhost`, which /etc/hosts answers: the test never
    // asks the machine's resolver.
    config.dht.tuning = DhtTuning {
        refresh_interval: Duration::from_secs(1),
        ..DhtTuning::default()
    };
    let path = dir.join("node.yaml");
    std::fs::write(&path, config.to_yaml()).unwrap();
    let topology = Topology {
        nodes: [("node-a", "z1"), ("node-b", "z2")]
            .into_iter()
            .map(|(node, zone)| (node.to_owned(), vec![zone.to_owned(), "r1".to_owned()]))
            .collect(),
    };
    std::fs::write(dir.join("topology.yaml"), topology.to_yaml()).unwrap();
    path
}

fn start(dir: &Path, node: &str, ip: [u8; 4], roles: &str, peers: &[&str]) -> Node {
    start_through(&[], dir, node, ip, roles, peers)
}

/// Starts a node through `launcher` (a command and its arguments that runs the rest).
fn start_through(
    launcher: &[&str],
    dir: &Path,
    node: &str,
    ip: [u8; 4],
    roles: &str,
    peers: &[&str],
) -> Node {
    let admin = SocketAddr::from((ip, ADMIN_PORT));
    let mut command = match launcher {
        [program, arguments @ ..] => {
            let mut command = Command::new(program);
            command.args(arguments).arg(BINARY);
            command
        }
        [] => Command::new(BINARY),
    };
    command
        .args(["run", "--roles", roles, "--config"])
        .arg(dir.join("node.yaml"))
        .arg("--topology")
        .arg(dir.join("topology.yaml"))
        .args([
            "--node-name",
            node,
            "--pod-ip",
            &std::net::Ipv4Addr::from(ip).to_string(),
        ])
        .args(["--admin-address", &admin.to_string()])
        .args([
            "--dns-address",
            &SocketAddr::from((ip, DNS_PORT)).to_string(),
        ])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args([
            "--proxy-address",
            &SocketAddr::from((ip, 18080)).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{node}.log"))).unwrap());
    for peer in peers {
        command.args(["--dht-peer", peer]);
    }
    Node {
        child: command.spawn().unwrap(),
        admin,
    }
}

fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn wait_for(admin: SocketAddr, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((status, body)) = get(admin, path)
            && (done(status, &body) || Instant::now() > deadline)
        {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "{admin}{path} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_nodes_form_a_dht_and_the_admin_port_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    sample_config(dir.path(), b"a test key of at least thirty-two bytes....");
    let a = start(dir.path(), "node-a", [127, 0, 0, 21], "dht", &[]);
    let b = start(
        dir.path(),
        "node-b",
        [127, 0, 0, 22],
        "dht",
        &[&format!("127.0.0.21:{DHT_PORT}")],
    );

    let (status, body) = wait_for(b.admin, "/readyz", |status, _| status == 200);
    assert_eq!((status, body.as_str()), (200, "dht: ready\n"));
    let a_addr = format!("127.0.0.21:{DHT_PORT}");
    let (_, json) = wait_for(b.admin, "/dht", |_, body| body.contains(&a_addr));
    let snapshot: serde_json::Value = serde_json::from_str(&json).unwrap();
    let levels = snapshot["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 3, "global, region and zone");
    assert!(
        levels[0]["peers"].to_string().contains(&a_addr),
        "A is a global peer: {json}"
    );
    assert!(
        levels[1]["peers"].to_string().contains(&a_addr),
        "and a region peer"
    );
    assert!(
        !levels[2]["peers"].to_string().contains(&a_addr),
        "but not a zone peer"
    );
    let b_addr = format!("127.0.0.22:{DHT_PORT}");
    wait_for(a.admin, "/dht", |_, body| body.contains(&b_addr));

    let (status, page) = get(b.admin, "/").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("<h1>Coral node</h1>") && page.contains(&a_addr),
        "{page}"
    );
    assert!(
        page.contains("level 2: same topology.kubernetes.io/zone"),
        "{page}"
    );
    let (_, metrics) = get(b.admin, "/metrics").unwrap();
    let sent: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("coral_dht_rpcs_sent_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(sent > 0, "no DHT request counted:\n{metrics}");
    assert!(
        metrics.contains("coral_dht_packets_dropped_total{reason=\"bad_mac\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "coral_node_info{node=\"node-b\",roles=\"dht\",version=\"0.1.0\",zone=\"z2\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("coral_dht_routing_peers{level=\"0\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_dns_node_cut_off_from_the_api_server_waits_unready_then_serves_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    sample_config(dir.path(), b"a test key of at least thirty-two bytes....");
    let ip = [127, 0, 0, 23];
    let node = start(dir.path(), "node-a", ip, "proxy,dns,dht", &[]);
    let (status, body) = wait_for(node.admin, "/readyz", |_, body| {
        body.contains("dht: ready") && body.contains("proxy: ready")
    });
    assert_eq!(status, 503);
    assert!(
        body.contains("dns: starting"),
        "no members list yet: {body}"
    );
    assert_eq!(
        get(node.admin, "/livez").unwrap().0,
        200,
        "alive, so not restarted"
    );
    let (status, health) = get(node.admin, "/healthz").unwrap();
    assert_eq!(status, 200, "the proxy can serve: {health}");
    assert!(health.contains(r#""healthy":true"#), "{health}");
    assert!(health.contains(r#""cacheWritable":true"#), "{health}");
    assert!(dir.path().join("cache").is_dir(), "the disk tier is set up");
    let (status, cache) = get(node.admin, "/cache").unwrap();
    assert_eq!(status, 200);
    assert!(cache.contains(r#""diskObjects": 0"#), "{cache}");
    assert!(cache.contains(r#""topUrls": []"#), "{cache}");
    drop(node);

    // The list the node saved from the API server before its restart.
    std::fs::write(
        dir.path().join("members.yaml"),
        "proxies: [{ node: node-a, address: 127.0.0.23 }]\nnameservers: []\n",
    )
    .unwrap();
    let node = start(dir.path(), "node-a", ip, "proxy,dns,dht", &[]);
    let (status, body) = wait_for(node.admin, "/readyz", |status, _| status == 200);
    assert_eq!(status, 200, "{body}");
    // The node's first check of its own proxy may come before that proxy's admin port is
    // up (then it is readmitted a few rounds later): wait for the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ask(
            SocketAddr::from((ip, DNS_PORT)),
            "www.example.com.nyud.net.",
        );
        if answer == ["127.0.0.23"] {
            break;
        }
        assert!(Instant::now() < deadline, "answered {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The A records the DNS server at `server` gives for `name`, over UDP.
fn ask(server: SocketAddr, name: &str) -> Vec<String> {
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send_to(&query.to_vec().unwrap(), server).unwrap();
    let mut buffer = [0; 1232];
    let length = socket.recv(&mut buffer).unwrap();
    let response = Message::from_vec(&buffer[..length]).unwrap();
    response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(address) => Some(address.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    sample_config(dir.path(), b"a test key of at least thirty-two bytes....");
    let mut node = start(dir.path(), "node-a", [127, 0, 0, 24], "dht", &[]);
    wait_for(node.admin, "/livez", |status, _| status == 200);
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = node.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_low_open_file_limit_is_raised_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    sample_config(dir.path(), b"a test key of at least thirty-two bytes....");
    let node = start_through(
        &["prlimit", "--nofile=256:"],
        dir.path(),
        "node-a",
        [127, 0, 0, 26],
        "dht",
        &[],
    );
    wait_for(node.admin, "/livez", |status, _| status == 200);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard): (u64, u64) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
    let most: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(soft, hard.min(most), "soft and hard limits: {line}");
}

#[test]
fn a_proxy_out_of_descriptors_pauses_its_accepts_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    sample_config(dir.path(), b"a test key of at least thirty-two bytes....");
    let ip = [127, 0, 0, 27];
    let node = start_through(
        &["prlimit", "--nofile=64:64"],
        dir.path(),
        "node-a",
        ip,
        "proxy",
        &[],
    );
    wait_for(node.admin, "/livez", |status, _| status == 200);
    let proxy = SocketAddr::from((ip, 18080));
    // More clients than the node has descriptors left: the rest wait in the listen queue.
    let clients: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(proxy).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(dir.path().join("node-a.log")).unwrap();
    let failures = log.matches("accept failed").count();
    // Retrying at once would fail hundreds of thousands of times a second.
    assert!(
        (1..100).contains(&failures),
        "{failures} failed accepts in a second"
    );
    drop(clients);
    let (status, body) = wait_for(proxy, "/", |_, _| true);
    assert_eq!(status, 421, "the proxy answers again: {body}");
}

#[test]
fn a_short_key_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    sample_config(dir.path(), b"too short");
    let mut node = start(dir.path(), "node-a", [127, 0, 0, 25], "dht", &[]);
    assert_eq!(node.child.wait().unwrap().code(), Some(1));
    let log = std::fs::read_to_string(dir.path().join("node-a.log")).unwrap();
    assert!(log.contains("has 9 bytes; at least 32 are needed"), "{log}");
    assert!(
        log.contains(&dir.path().join("key").display().to_string()),
        "{log}"
    );
}
