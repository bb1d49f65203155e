//! Pod networking for the e2e kubelet: a Linux bridge per kubelet, and per pod a network
//! namespace joined to it by a veth pair.
//!
//! Pods get addresses in their kubelet's own /16 (`10.200+k.0.0/16`, the host side of the
//! bridge is `.0.1`). Pods have no default route and the host does not forward, so nothing a
//! pod sends can leave the bridge: pods reach each other and the host, and nothing else.
//! Tests can cut a pod off by taking its veth down.
//!
//! A kubelet that is killed (SIGKILL, Ctrl-C on a test run) cannot clean up, so each network
//! is owned through a lock file under `/run/coral-e2e` that the kernel releases when its
//! holder dies; the next kubelet to take that network first removes what was left there,
//! killing the processes left in its namespaces.

use std::net::Ipv4Addr;
use std::process::Command;

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// No free bridge index was left.
    #[error("all {0} pod networks on this machine are in use")]
    Exhausted(u8),
}

/// How many kubelets (each with its own bridge and /16) may run at once on this machine.
const MAX_NETWORKS: u8 = 32;

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| NetworkError::Ip {
            args: args.join(" "),
            stderr: err.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// One kubelet's bridge and address range; removed (with every pod namespace) when dropped.
#[derive(Debug)]
pub struct PodNetwork {
    index: u8,
    bridge: String,
    next_host: u32,
    namespaces: Vec<String>,
    /// Held locked while this network lives: the kernel releases it if the process dies.
    _ownership: std::fs::File,
}

/// A pod's network namespace and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// Name of the network namespace (`ip netns exec NAME ...`).
    pub namespace: String,
    /// Host end of the veth pair, on the bridge.
    pub host_veth: String,
    /// The pod's address.
    pub address: Ipv4Addr,
}

impl PodNetwork {
    /// Creates a bridge on the first index no live kubelet owns, reclaiming what a dead one
    /// left there.
    pub fn create() -> Result<Self, NetworkError> {
        for index in 0..MAX_NETWORKS {
            let Some(ownership) = take_ownership(index) else {
                continue;
            };
            let bridge = format!("coralbr{index}");
            reclaim(index, &bridge);
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            let network = Self {
                index,
                bridge,
                next_host: 2,
                namespaces: Vec::new(),
                _ownership: ownership,
            };
            ip(&[
                "addr",
                "add",
                &format!("{}/16", network.gateway()),
                "dev",
                &network.bridge,
            ])?;
            ip(&["link", "set", &network.bridge, "up"])?;
            return Ok(network);
        }
        Err(NetworkError::Exhausted(MAX_NETWORKS))
    }

    /// The host's address on the bridge, which pods can reach.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200 + self.index, 0, 1)
    }

    /// Gives a new pod a namespace and the next address.
    pub fn attach(&mut self) -> Result<PodInterface, NetworkError> {
        let host = self.next_host;
        self.next_host += 1;
        let [_, _, high, low] = host.to_be_bytes();
        let address = Ipv4Addr::new(10, 200 + self.index, high, low);
        let namespace = format!("coral{}-{host}", self.index);
        let host_veth = format!("cv{}h{host}", self.index);
        let pod_veth = format!("cv{}p{host}", self.index);
        ip(&["netns", "add", &namespace])?;
        self.namespaces.push(namespace.clone());
        // This kubelet owns the network, so a link of that name is an earlier owner's: the
        // kernel removes the veths of deleted namespaces in the background, and a kubelet
        // started right after another can find them still there.
        let _ = ip(&["link", "del", &host_veth]);
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &pod_veth,
        ])?;
        ip(&["link", "set", &pod_veth, "netns", &namespace])?;
        ip(&["link", "set", &host_veth, "master", &self.bridge, "up"])?;
        ip(&["-n", &namespace, "link", "set", &pod_veth, "name", "eth0"])?;
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{address}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(PodInterface {
            namespace,
            host_veth,
            address,
        })
    }

    /// Removes a pod's namespace (and with it its veth pair).
    pub fn detach(&mut self, interface: &PodInterface) {
        if let Err(err) = ip(&["netns", "del", &interface.namespace]) {
            eprintln!("kubelet: {err}");
        }
        self.namespaces.retain(|n| n != &interface.namespace);
    }
}

/// Where kubelets lock the networks they own.
const RUN_DIR: &str = "/run/coral-e2e";

/// Locks network `index` for this kubelet, unless a live kubelet (of any process) holds it.
/// The lock is an exclusive `flock`, which the kernel drops when its holder dies: a killed
/// kubelet's network is free again at once, and two threads of one process never share one.
fn take_ownership(index: u8) -> Option<std::fs::File> {
    std::fs::create_dir_all(RUN_DIR).ok()?;
    let path = std::path::Path::new(RUN_DIR).join(format!("network-{index}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

/// Cuts a pod off the network (`connected: false` takes the host end of its veth down) or
/// connects it again, found by its address, for partition tests. A cut-off pod is isolated
/// from everything, its kubelet's probes included, as a node that lost its network would be.
pub fn set_connected(pod: Ipv4Addr, connected: bool) -> Result<(), NetworkError> {
    let [ten, network, high, low] = pod.octets();
    let index = network.wrapping_sub(200);
    if ten != 10 || index >= MAX_NETWORKS {
        return Err(NetworkError::Ip {
            args: format!("link of {pod}"),
            stderr: "not a pod address".to_owned(),
        });
    }
    let host = u16::from_be_bytes([high, low]);
    ip(&[
        "link",
        "set",
        &format!("cv{index}h{host}"),
        if connected { "up" } else { "down" },
    ])
}

/// Removes what dead kubelets left behind (for `coral down`); returns how many networks.
pub fn reclaim_abandoned() -> usize {
    (0..MAX_NETWORKS)
        .filter(|&index| {
            let bridge = format!("coralbr{index}");
            let exists = Command::new("ip")
                .args(["link", "show", &bridge])
                .output()
                .is_ok_and(|o| o.status.success());
            // Holding the lock proves no live kubelet owns the network, and keeps one from
            // taking it while it is being cleared.
            let Some(_lock) = take_ownership(index).filter(|_| exists) else {
                return false;
            };
            reclaim(index, &bridge);
            true
        })
        .count()
}

/// Removes what a dead kubelet left of network `index`: processes, namespaces, the bridge.
fn reclaim(index: u8, bridge: &str) {
    let listing = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let prefix = format!("coral{index}-");
    for namespace in String::from_utf8_lossy(&listing)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if !namespace.starts_with(&prefix) {
            continue;
        }
        let pids = Command::new("ip")
            .args(["netns", "pids", namespace])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        for pid in String::from_utf8_lossy(&pids).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = ip(&["netns", "del", namespace]);
    }
    let _ = ip(&["link", "del", bridge]);
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        for namespace in std::mem::take(&mut self.namespaces) {
            let _ = ip(&["netns", "del", &namespace]);
        }
        if let Err(err) = ip(&["link", "del", &self.bridge]) {
            eprintln!("kubelet: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_reach_each_other_and_the_host_but_have_no_route_out() {
        let mut network = PodNetwork::create().unwrap();
        let a = network.attach().unwrap();
        let b = network.attach().unwrap();
        assert_ne!(a.address, b.address);
        let routes = Command::new("ip")
            .args(["-n", &a.namespace, "route"])
            .output()
            .unwrap();
        let routes = String::from_utf8(routes.stdout).unwrap();
        assert!(!routes.contains("default"), "{routes}");
        // A listener in pod b answers a connection from pod a, through the bridge.
        let listener = std::process::Command::new("ip")
            .args(["netns", "exec", &b.namespace, "python3", "-c"])
            .arg("import socket;s=socket.socket();s.bind(('0.0.0.0',7000));s.listen();c,_=s.accept();c.send(b'hi')")
            .spawn()
            .unwrap();
        let mut reply = String::new();
        for _ in 0..50 {
            let out = Command::new("ip")
                .args(["netns", "exec", &a.namespace, "python3", "-c"])
                .arg(format!("import socket;s=socket.create_connection(('{}',7000),1);print(s.recv(2).decode())", b.address))
                .output()
                .unwrap();
            reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if reply == "hi" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = listener.wait_with_output();
        assert_eq!(reply, "hi");
        let namespace = a.namespace.clone();
        drop(network);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&list.stdout).contains(&namespace),
            "torn down"
        );
    }

    #[test]
    fn a_dead_kubelets_network_is_reclaimed_by_the_next_one() {
        let mut crashed = PodNetwork::create().unwrap();
        let orphan = crashed.attach().unwrap();
        let index = crashed.index;
        // The owner dies without cleaning up: its namespaces and bridge stay, its lock goes.
        let PodNetwork { _ownership, .. } = &crashed;
        let lock = _ownership.try_clone().unwrap();
        std::mem::forget(crashed);
        lock.unlock().unwrap();
        drop(lock);

        let next = PodNetwork::create().unwrap();
        assert_eq!(next.index, index, "the dead owner's index is free again");
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listing = String::from_utf8_lossy(&list.stdout);
        assert!(
            !listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(orphan.namespace.as_str())),
            "{listing}"
        );
    }
}
