//! The shipped `coral-operator` binary, as a process: its CLI, its refusal without a cluster,
//! and a clean stop on SIGTERM that hands the leader Lease over at once.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use coral_e2e::binaries::workspace_binary;
use coral_e2e::controlplane::ControlPlane;
use coral_e2e::operator::install_crd;
use coral_e2e::wait::eventually;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

fn operator_binary() -> PathBuf {
    workspace_binary("coral-operator", "coral-operator").unwrap()
}

#[test]
fn crd_subcommand_prints_the_shipped_crd() {
    let output = Command::new(operator_binary()).arg("crd").output().unwrap();
    assert!(output.status.success());
    let shipped = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/coral.nyud.net_coralclusters.yaml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), shipped);
}

#[test]
fn run_without_a_reachable_api_server_fails_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let output = Command::new(operator_binary())
        .args(["run", "--metrics-address", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read CustomResourceDefinitions"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_leader_cleanly_and_releases_its_lease() {
    let control_plane = ControlPlane::start().unwrap();
    let client = control_plane.client().await.unwrap();
    install_crd(&client).await.unwrap();
    let operator = Command::new(operator_binary())
        .args([
            "run",
            "--metrics-address",
            "127.0.0.1:0",
            "--leader-election",
            "--identity",
            "replica-1",
        ])
        .env("KUBECONFIG", control_plane.kubeconfig())
        .env("POD_NAMESPACE", "default")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async {
        let lease = leases
            .get_opt("coral-operator")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(lease.and_then(|l| l.spec?.holder_identity))
    };
    eventually(
        "replica-1 to hold the Lease",
        Duration::from_secs(30),
        || async {
            match holder().await? {
                Some(holder) if holder == "replica-1" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let pid = operator.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let operator = std::sync::Mutex::new(operator);
    let exit = eventually("the operator to exit", Duration::from_secs(20), || {
        let waited = operator.lock().unwrap().try_wait();
        async move {
            waited
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_owned())
        }
    })
    .await;
    assert!(exit.success(), "SIGTERM is a clean stop: {exit}");
    assert_eq!(
        holder().await.unwrap(),
        None,
        "the Lease is free for a standby at once"
    );
}

#[tokio::test]
async fn kubectl_shows_the_printer_columns_and_explains_the_spec() {
    let control_plane = ControlPlane::start().unwrap();
    let client = control_plane.client().await.unwrap();
    install_crd(&client).await.unwrap();
    let kubectl = |args: &[&str]| {
        let output = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(control_plane.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl is installed");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let minimal = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/examples/minimal.yaml");
    kubectl(&["apply", "-f", minimal.to_str().unwrap()]);
    let table = kubectl(&["get", "coral"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ZONE", "DESIRED", "READY", "NODES", "READY", "AGE"],
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("minimal"),
        "{table}"
    );
    assert!(table.contains("nyud.net"), "{table}");
    let explained = kubectl(&["explain", "coralcluster.spec.proxy.serveStale"]);
    assert!(
        explained.contains("How long past expiry a cached object is still served"),
        "{explained}"
    );
}
