//! The `coral-node` binary: `run` plays the roles a pod was given; `check-config` reads a
//! configuration file the way `run` would and reports the first problem.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use coral_node::admin::{AdminState, NodeInfo};
use coral_node::config::{CONFIG_FILE, NodeConfig, TOPOLOGY_FILE, Topology};
use coral_node::dht::metrics::DhtMetrics;
use coral_node::dns::endpoint_slices;
use coral_node::dns::members::{self, MembersFeed};
use coral_node::dns::metrics::DnsMetrics;
use coral_node::proxy::metrics::ProxyMetrics;
use coral_node::proxy::peers::Peering;
use coral_node::roles::dht::{DhtPlacement, DhtRole};
use coral_node::roles::dns::{DnsPlacement, DnsRole};
use coral_node::roles::proxy::ProxyRole;
use coral_status_http as http;
use tokio_util::sync::CancellationToken;

/// Every request and query allocates (headers, names, records); mimalloc's thread-local free
/// lists make that markedly cheaper than glibc's allocator under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Coral node: cooperative caching proxy, locality-aware DNS and sloppy DHT.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version.
    Version,
    /// Read a node configuration file and report the first problem, naming its field.
    CheckConfig {
        /// The configuration file (`node.yaml` from the cluster's ConfigMap).
        #[arg(long, default_value = CONFIG_FILE)]
        config: PathBuf,
    },
    /// Play the given roles until SIGTERM or Ctrl-C.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Roles to play, comma-separated: `proxy`, `dns`, `dht`.
    #[arg(long, value_delimiter = ',', required = true)]
    roles: Vec<Role>,
    /// The node configuration file.
    #[arg(long, default_value = CONFIG_FILE)]
    config: PathBuf,
    /// The topology file (zone and region of every node).
    #[arg(long, default_value = TOPOLOGY_FILE)]
    topology: PathBuf,
    /// The Kubernetes node this pod runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// This pod's IP: the DHT binds it and peers reach the node there.
    #[arg(long, env = "POD_IP")]
    pod_ip: IpAddr,
    /// The address clients reach this node's proxy at, when not its pod IP: the node's
    /// address, when a host port forwards to the proxy. `/healthz` reports it, and the DNS
    /// nodes publish it instead of the pod IP.
    #[arg(long, env = "PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// A DHT peer to bootstrap from besides the configured DNS name (`host:port`; repeatable).
    #[arg(long = "dht-peer")]
    dht_peers: Vec<String>,
    /// Address of the admin port; defaults to every address at the configured port.
    #[arg(long)]
    admin_address: Option<SocketAddr>,
    /// Address the proxy serves clients on; defaults to every address at the configured port.
    #[arg(long)]
    proxy_address: Option<SocketAddr>,
    /// Address the DNS server answers on (UDP and TCP); defaults to every address at the
    /// configured port.
    #[arg(long)]
    dns_address: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Proxy,
    Dns,
    Dht,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version => {
            println!("coral-node {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match load_config(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // hickory-server logs every query at info: that is a query log, not an event.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    // Colours only for a person at a terminal, never in a pod's log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the configuration, warning about fields this version does not know.
fn load_config(path: &std::path::Path) -> anyhow::Result<NodeConfig> {
    let loaded = NodeConfig::load(path)?;
    for field in &loaded.ignored_fields {
        eprintln!(
            "warning: {}: field `{field}` is unknown to this node version and ignored",
            path.display()
        );
    }
    Ok(loaded.value)
}

/// Raises the soft limit on open files to the hard one, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do: every client connection and every sealed cached body holds a
/// descriptor, and container runtimes may start a process at a soft limit of 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // No process may open more than `fs.nr_open`, whatever its hard limit says.
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard.min(most) => {
            let raised = hard.min(most);
            match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
                Ok(()) => tracing::info!(from = soft, to = raised, "raised the open-file limit"),
                Err(error) => tracing::warn!(%error, soft, "could not raise the open-file limit"),
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open-file limit"),
    }
}

async fn run(args: Box<RunArgs>) -> anyhow::Result<()> {
    raise_open_file_limit();
    let config = load_config(&args.config)?;
    let topology = Topology::load(&args.topology)?.value;
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let mut roles = Vec::new();
    let mut dht_role = None;
    let mut proxy_role = None;
    let mut dns_role = None;
    // The DHT starts first: the proxy cooperates through it.
    let mut requested = dedup(&args.roles);
    requested.sort_by_key(|role| *role != Role::Dht);
    for role in requested {
        match role {
            Role::Dht => {
                let metrics = DhtMetrics::register(&registry).context("registering DHT metrics")?;
                let placement = DhtPlacement {
                    node_name: args.node_name.clone(),
                    bind: SocketAddr::new(args.pod_ip, config.dht.port),
                    advertise: SocketAddr::new(args.pod_ip, config.dht.port),
                    peers: args.dht_peers.clone(),
                };
                let started =
                    DhtRole::start(&config, &topology, placement, metrics, shutdown.clone())
                        .await?;
                roles.push(("dht".to_owned(), started.readiness()));
                dht_role = Some(started);
            }
            Role::Proxy => {
                let metrics =
                    ProxyMetrics::register(&registry).context("registering proxy metrics")?;
                let address = args
                    .proxy_address
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], config.proxy.http_port)));
                let peering = dht_role.as_ref().map(|dht| Peering {
                    dht: dht.dht(),
                    cluster_key: dht.cluster_key(),
                    advertise: SocketAddr::new(args.pod_ip, address.port()),
                });
                let started =
                    ProxyRole::start(&config, address, metrics, peering, shutdown.clone()).await?;
                roles.push(("proxy".to_owned(), started.readiness()));
                proxy_role = Some(started);
            }
            Role::Dns => {
                let metrics = DnsMetrics::register(&registry).context("registering DNS metrics")?;
                let placement = DnsPlacement {
                    node_name: args.node_name.clone(),
                    address: args
                        .dns_address
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], config.dns.port))),
                    pod_ip: args.pod_ip,
                    members: members_feed(&config, shutdown.clone()).await?,
                };
                let dht = dht_role.as_ref().map(DhtRole::dht);
                let started = DnsRole::start(
                    &config,
                    &topology,
                    placement,
                    dht,
                    metrics,
                    shutdown.clone(),
                )
                .await?;
                roles.push(("dns".to_owned(), started.readiness()));
                dns_role = Some(started);
            }
        }
    }
    if roles.is_empty() {
        bail!("no role to play");
    }
    let role_names: Vec<&str> = roles.iter().map(|(name, _)| name.as_str()).collect();
    NodeInfo::new(&args.node_name, &topology, &role_names)
        .register(&registry)
        .context("registering coral_node_info")?;
    let admin_address = args
        .admin_address
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], config.admin_port)));
    let listener = http::bind(admin_address).await?;
    let admin = AdminState {
        registry,
        dht: dht_role.as_ref().map(DhtRole::dht),
        proxy: proxy_role.as_ref().map(ProxyRole::proxy),
        public_address: args.public_ip,
        dns_members: dns_role.as_ref().map(DnsRole::members),
        roles,
        level_names: config.locality.label_keys.iter().rev().cloned().collect(),
    };
    let server = tokio::spawn(http::serve(
        listener,
        admin.into_responder(),
        shutdown.clone(),
    ));
    tracing::info!(%admin_address, "admin port serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = server.await;
    if let Some(role) = dht_role {
        role.stop().await;
    }
    if let Some(role) = proxy_role {
        role.stop().await;
    }
    if let Some(role) = dns_role {
        role.stop().await;
    }
    Ok(())
}

/// Where the DNS role learns its members: the members file, or the EndpointSlices of the
/// configured Services through the API server the pod's service account reaches.
async fn members_feed(
    config: &NodeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<MembersFeed> {
    // The configuration's check has made sure at most one is set.
    match (&config.dns.members_file, &config.dns.member_services) {
        (Some(file), _) => Ok(members::watch_file(
            file.clone(),
            config.health.interval,
            shutdown,
        )),
        (None, Some(services)) => {
            let client = kube::Client::try_default()
                .await
                .context("dns.memberServices: connecting to the Kubernetes API")?;
            Ok(endpoint_slices::watch(client, services.clone(), shutdown))
        }
        (None, None) => bail!("the DNS role needs dns.membersFile or dns.memberServices"),
    }
}

fn dedup(roles: &[Role]) -> Vec<Role> {
    let mut unique = Vec::new();
    for role in roles {
        if !unique.contains(role) {
            unique.push(*role);
        }
    }
    unique
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
