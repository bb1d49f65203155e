//! Turning origin host names into addresses: the configuration's fixed table first, then DNS.
//!
//! Names are looked up as fully qualified (with a final dot), so a pod's search domains never
//! turn `www.example.com` into `www.example.com.default.svc.cluster.local`. The addresses are
//! not trusted here: the connector checks each one against the [`OriginGuard`] before
//! connecting, so DNS rebinding cannot reach an internal address.
//!
//! [`OriginGuard`]: super::guard::OriginGuard

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::OriginAccess;

/// Why a host has no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The system resolver configuration could not be read.
    #[error("cannot set up the resolver: {0}")]
    Setup(String),
    /// The lookup failed or found nothing.
    #[error("cannot resolve {host}: {reason}")]
    Lookup {
        /// The origin host.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

/// Resolves origin host names.
#[derive(Clone)]
pub struct OriginResolver {
    fixed: BTreeMap<String, Vec<IpAddr>>,
    dns: TokioResolver,
}

impl OriginResolver {
    /// A resolver with the configuration's fixed addresses and DNS servers (the system's when
    /// none are configured).
    pub fn new(access: &OriginAccess) -> Result<Self, ResolveError> {
        let setup = |err: hickory_resolver::net::NetError| ResolveError::Setup(err.to_string());
        let builder = if access.resolvers.is_empty() {
            TokioResolver::builder_tokio().map_err(setup)?
        } else {
            let servers = access
                .resolvers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let fixed = access
            .addresses
            .iter()
            .map(|(host, addresses)| {
                (
                    host.trim_end_matches('.').to_ascii_lowercase(),
                    addresses.clone(),
                )
            })
            .collect();
        Ok(Self {
            fixed,
            dns: builder.build().map_err(setup)?,
        })
    }

    /// The addresses of `host`: itself when it is an address literal.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(address) = host.parse::<IpAddr>() {
            return Ok(vec![address]);
        }
        if let Some(addresses) = self.fixed.get(host) {
            return Ok(addresses.clone());
        }
        let lookup_error = |reason: String| ResolveError::Lookup {
            host: host.to_owned(),
            reason,
        };
        let found = self
            .dns
            .lookup_ip(format!("{host}."))
            .await
            .map_err(|err| lookup_error(err.to_string()))?;
        let addresses: Vec<IpAddr> = found.iter().collect();
        if addresses.is_empty() {
            return Err(lookup_error("no address".to_owned()));
        }
        Ok(addresses)
    }
}
