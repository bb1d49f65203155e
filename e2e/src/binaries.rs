//! Building the workspace's own binaries for tests and `coral up`, and finding them.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Why a workspace binary could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// cargo could not run or the build failed (its output went to stderr).
    #[error("building {0} failed; cargo's output is above")]
    Build(String),
}

/// Builds `bin` of `package` (a no-op when it is current) and returns the executable's path,
/// as cargo reports it.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf, BinaryError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--message-format=json",
            "--package",
            package,
            "--bin",
            bin,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|_| BinaryError::Build(bin.to_owned()))?;
    if !output.status.success() {
        return Err(BinaryError::Build(bin.to_owned()));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == bin
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| BinaryError::Build(bin.to_owned()))
}
