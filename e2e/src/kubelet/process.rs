//! Starting a container as a local process inside its pod's network namespace and a private
//! mount namespace of its own.
//!
//! `ip netns exec` enters the pod's network namespace, `unshare --mount` gives the process a
//! private mount table in which each volume directory is bound at its `mountPath`, then the
//! command replaces the shell, so the process the kubelet signals is the container's own.
//! Mount points must exist on this machine (the kubelet creates missing ones and removes them
//! when it stops); the user and read-only-root settings of the pod are not applied.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::volumes::Mount;

/// Opens the program (the first argument, looked up in `PATH` if need be), binds each mount
/// given as `source target` argument pairs up to `--`, then runs the opened program with the
/// rest as its arguments. Opening first matters: a volume mounted over `/tmp` would otherwise
/// hide a program that lives under `/tmp` (a repository cloned there).
const MOUNT_AND_EXEC: &str = r#"set -e
program=$(command -v "$1")
exec 3<"$program"
shift
while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec /proc/self/fd/3 "$@""#;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The environment, on top of a minimal `PATH` and `HOME`.
    pub env: BTreeMap<String, String>,
    /// Volume directories and where the process sees them.
    pub mounts: Vec<Mount>,
}

/// Starts `spec` in network namespace `namespace`, appending its output to `log`.
pub fn spawn(namespace: &str, spec: &ProcessSpec, log: &Path) -> std::io::Result<Child> {
    let output = File::options().create(true).append(true).open(log)?;
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        namespace,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        MOUNT_AND_EXEC,
        "sh",
    ]);
    let (program, arguments) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("a container with no command"))?;
    command.arg(program);
    for mount in &spec.mounts {
        command.arg(&mount.source).arg(&mount.target);
    }
    command
        .arg("--")
        .args(arguments)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        )
        .env("HOME", "/tmp")
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .kill_on_drop(true)
        .spawn()
}
