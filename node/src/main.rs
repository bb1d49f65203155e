//! The `coral-node` binary. The roles (proxy, DNS, DHT) come in their own modules; today the
//! binary reports its version and checks a configuration file the way the node will read it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coral_node::config::{CONFIG_FILE, NodeConfig};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Version => {
            println!("coral-node {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match NodeConfig::load(&config) {
            Ok(loaded) => {
                for field in &loaded.ignored_fields {
                    eprintln!(
                        "warning: {}: field `{field}` is unknown to this node version and ignored",
                        config.display()
                    );
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        },
    }
}
