use clap::Parser;
use hyper::Method;
use rk3s_api::admin::{
    ForgetResult, KeyRotateResult, ManifestSummary, NodeDetail, NodeSummary, RotateResult,
    StatusResponse, TokenResponse,
};
use rk3s_api::routes::admin as routes;
use rk3sctl::cli::{Cli, Cmd, KeyCmd, ManifestCmd, NodeCmd};
use rk3sctl::output::{self, Format};
use rk3sctl::{Client, ClientError};
use std::process::ExitCode;

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
        Cmd::ServiceAccountKey {
            command: KeyCmd::Rotate { grace },
        } => {
            let mut path = routes::ROTATE_SA_KEY.to_string();
            if let Some(g) = grace {
                let g: String = g.bytes().map(|b| format!("%{b:02X}")).collect();
                path.push_str(&format!("?grace={g}"));
            }
            let r: KeyRotateResult = c.request(Method::POST, &path).await?;
            format!(
                "service-account tokens are now signed by key {}; tokens of the previous keys verify until {}\n",
                r.key_id, r.previous_keys_valid_until
            )
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
