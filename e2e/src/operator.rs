//! Running the operator in-process, exactly as the binary runs it, against a control plane.

use std::net::SocketAddr;

use coral_operator::crd::coral_cluster_crd;
use coral_operator::metrics::Metrics;
use coral_operator::runtime::{self, LeaseOptions, Options, RuntimeError};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::wait::eventually;

/// Server-side applies the CoralCluster CRD and waits until the API server serves it.
pub async fn install_crd(client: &Client) -> kube::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = coral_cluster_crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("coral-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    eventually(
        "the CRD to be established",
        std::time::Duration::from_secs(30),
        || async {
            let crd = api.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err("not established".to_owned())
            }
        },
    )
    .await;
    Ok(())
}

/// An operator replica running in this process.
pub struct RunningOperator {
    /// Address of its `/healthz`, `/readyz` and `/metrics` endpoints.
    pub address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RuntimeError>>,
}

impl RunningOperator {
    /// Starts a replica named `identity`; with `lease`, it leads only while holding that Lease.
    pub async fn start(
        client: &Client,
        identity: &str,
        lease: Option<LeaseOptions>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let options = Options {
            identity: identity.to_owned(),
            leader_election: lease,
        };
        let task = tokio::spawn(runtime::run(
            client.clone(),
            listener,
            options,
            Metrics::new(),
            shutdown.clone(),
        ));
        Ok(Self {
            address,
            shutdown,
            task,
        })
    }

    /// The body of `GET path` on the replica's HTTP port (status line included).
    pub async fn get(&self, path: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(self.address).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    /// Asks the replica to shut down (as SIGTERM does) and waits for it.
    pub async fn stop(self) -> Result<(), RuntimeError> {
        self.shutdown.cancel();
        self.task.await.expect("operator task panicked")
    }

    /// Whether the replica has ended on its own.
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }
}
