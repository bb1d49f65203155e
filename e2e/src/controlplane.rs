//! Starting and stopping the control plane of `e2e/controlplane` from Rust.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why the control plane could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// A script could not be run or failed; its output went to stderr.
    #[error("{script} failed ({status}); its log is above")]
    Script {
        /// The script.
        script: PathBuf,
        /// How it ended.
        status: String,
    },
    /// The state directory could not be created.
    #[error("cannot create a state directory: {0}")]
    StateDir(#[source] std::io::Error),
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A running control plane; stopped when dropped.
pub struct ControlPlane {
    state: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// The directory of the control-plane scripts.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
}

/// Builds the control-plane binaries if needed (minutes the first time, printing progress)
/// and returns their directory.
pub fn build() -> Result<PathBuf, ControlPlaneError> {
    let stdout = run_script("build.sh", |command| command)?;
    Ok(PathBuf::from(
        stdout.lines().last().unwrap_or_default().trim(),
    ))
}

/// Runs a script of [`scripts_dir`] with its stderr shown to the user; returns its stdout.
fn run_script(
    name: &str,
    configure: impl FnOnce(&mut Command) -> &mut Command,
) -> Result<String, ControlPlaneError> {
    let script = scripts_dir().join(name);
    let mut command = Command::new(&script);
    configure(command.stderr(Stdio::inherit()));
    let output = command.output().map_err(|err| ControlPlaneError::Script {
        script: script.clone(),
        status: err.to_string(),
    })?;
    if !output.status.success() {
        return Err(ControlPlaneError::Script {
            script,
            status: output.status.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.
    pub fn start() -> Result<Self, ControlPlaneError> {
        let state = tempfile::Builder::new()
            .prefix("coral-e2e-")
            .tempdir()
            .map_err(ControlPlaneError::StateDir)?;
        Self::start_in(state)
    }

    /// Starts the control plane with its state in `state`.
    pub fn start_in(state: tempfile::TempDir) -> Result<Self, ControlPlaneError> {
        let bin = build()?;
        run_script("start.sh", |command| {
            command.arg(state.path()).env("CONTROLPLANE_BIN", bin)
        })?;
        let kubeconfig = state.path().join("kubeconfig");
        Ok(Self { state, kubeconfig })
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's address on loopback, read from the state directory's `env` file.
    pub fn api_address(&self) -> Result<std::net::SocketAddr, ControlPlaneError> {
        let path = self.state.path().join("env");
        let error = |message: String| ControlPlaneError::Kubeconfig {
            path: path.clone(),
            message,
        };
        let env = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
        env.lines()
            .find_map(|line| line.strip_prefix("APISERVER=https://"))
            .and_then(|address| address.parse().ok())
            .ok_or_else(|| error("no APISERVER=https://ADDRESS line".to_owned()))
    }

    /// The state directory (logs, certificates, etcd data).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A client authenticated as cluster admin.
    pub async fn client(&self) -> Result<Client, ControlPlaneError> {
        let error = |message: String| ControlPlaneError::Kubeconfig {
            path: self.kubeconfig.clone(),
            message,
        };
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| error(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| error(e.to_string()))?;
        Client::try_from(config).map_err(|e| error(e.to_string()))
    }

    /// Stops every process of the control plane.
    pub fn stop(&self) {
        if let Err(err) = run_script("stop.sh", |command| command.arg(self.state.path())) {
            eprintln!("{err}");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
