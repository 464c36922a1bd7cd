use clap::{Parser, Subcommand};
use hyper::Method;
use rk3s_api::admin::{
    ForgetResult, ManifestSummary, NodeDetail, NodeSummary, RotateResult, StatusResponse,
    TokenResponse,
};
use rk3s_api::routes::admin as routes;
use rk3sctl::output::{self, Format};
use rk3sctl::{Client, ClientError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rk3sctl",
    version,
    about = "Operate an rk3s server or agent through its local admin socket"
)]
struct Cli {
    /// Admin socket [default: /run/rk3s/rk3s.sock as root, ~/.rancher/rk3s/rk3s.sock otherwise].
    #[arg(long, global = true, env = rk3s_api::paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// Print the cluster join token (server only).
    Token {
        /// Print the agent token instead (if the server has one).
        #[arg(long)]
        agent: bool,
    },
}

#[derive(Subcommand)]
enum ManifestCmd {
    /// Each manifest file with its Addon: checksum, objects, last apply, error.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
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

async fn run(cli: Cli) -> Result<String, ClientError> {
    let socket = cli
        .socket
        .unwrap_or_else(rk3s_api::paths::default_ctl_socket);
    let c = Client::new(socket);
    Ok(match cli.command {
        Cmd::Status { output: f } => {
            let s: StatusResponse = c.request(Method::GET, routes::STATUS).await?;
            match f {
                Format::Table => output::status(&s),
                f => output::structured(&s, f),
            }
        }
        Cmd::Token { agent } => {
            let t: TokenResponse = c.request(Method::GET, routes::TOKEN).await?;
            if agent {
                match t.agent_token {
                    Some(a) => a + "\n",
                    None => return Err(ClientError::Api {
                        status: 404,
                        code: "not_found".into(),
                        message:
                            "this server has no separate agent token; agents use the cluster token"
                                .into(),
                    }),
                }
            } else {
                t.token + "\n"
            }
        }
        Cmd::Manifest {
            command: ManifestCmd::List { output: f },
        } => {
            let m: Vec<ManifestSummary> = c.request(Method::GET, routes::MANIFESTS).await?;
            match f {
                Format::Table => output::manifests(&m),
                f => output::structured(&m, f),
            }
        }
        Cmd::Node { command } => match command {
            NodeCmd::List { output: f } => {
                let n: Vec<NodeSummary> = c.request(Method::GET, routes::NODES).await?;
                match f {
                    Format::Table => output::nodes(&n),
                    f => output::structured(&n, f),
                }
            }
            NodeCmd::Show { name, output: f } => {
                let d: NodeDetail = c.request(Method::GET, &routes::node(&name)).await?;
                match f {
                    Format::Table => output::node_detail(&d),
                    f => output::structured(&d, f),
                }
            }
            NodeCmd::Forget { name, force } => {
                let path = format!("{}?force={force}", routes::node(&name));
                let r: ForgetResult = c.request(Method::DELETE, &path).await?;
                let mut parts = Vec::new();
                for (done, what) in [
                    (r.node_deleted, "node"),
                    (r.lease_deleted, "lease"),
                    (r.password_secret_deleted, "password secret"),
                    (r.tunnel_closed, "tunnel"),
                ] {
                    if done {
                        parts.push(what);
                    }
                }
                format!(
                    "node {} forgotten (removed: {})\n",
                    r.name,
                    parts.join(", ")
                )
            }
            NodeCmd::RotatePassword { name } => {
                let r: RotateResult = c
                    .request(Method::POST, &routes::rotate_password(&name))
                    .await?;
                format!(
                    "node {} has a new password (set {})\n",
                    r.name, r.password_set
                )
            }
        },
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rk3sctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rk3sctl: {e}");
            ExitCode::FAILURE
        }
    }
}
