//! rk3sctl's command line (shared with the man page and completion generator).

use crate::output::Format;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "rk3sctl",
    version,
    about = "Operate an rk3s server or agent through its local admin socket"
)]
pub struct Cli {
    /// Admin socket [default: /run/rk3s/rk3s.sock as root, ~/.rancher/rk3s/rk3s.sock otherwise].
    #[arg(long, global = true, env = rk3s_api::paths::SOCKET_ENV)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Nodes of the cluster (run on a server).
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Auto-deployed manifests (run on a server).
    Manifest {
        #[command(subcommand)]
        command: ManifestCmd,
    },
    /// Mode, version, uptime and health of the local daemon.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The key that signs service-account tokens (server only).
    ServiceAccountKey {
        #[command(subcommand)]
        command: KeyCmd,
    },
    /// Print the cluster join token (server only).
    Token {
        /// Print the agent token instead (if the server has one).
        #[arg(long)]
        agent: bool,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Sign with a new key on every server; tokens of the old key keep working for the grace period.
    Rotate {
        /// How long tokens signed by the old key stay valid (e.g. 1h, 30m) [default: 24h].
        #[arg(long)]
        grace: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ManifestCmd {
    /// Each manifest file with its Addon: checksum, objects, last apply, error.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes with their status and connection.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Details of one node: labels, conditions, addresses, password age.
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Delete a node with its lease and password secret (for a rebuilt or retired host).
    Forget {
        name: String,
        /// Also forget a node that is connected right now (its tunnel is closed).
        #[arg(long)]
        force: bool,
    },
    /// Give a connected node a new random password.
    RotatePassword { name: String },
}
