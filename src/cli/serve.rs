//! `gridship serve` and the commands that are its clients: `session`,
//! `operation`, and `promote` without a container.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{GlobalOpts, print_json};
use crate::Error;
use crate::serve::client::{ServiceClient, session_socket};
use crate::serve::config::ServeConfig;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file holding the serve: section (default: the first of
    /// $XDG_CONFIG_HOME/gridship/config.yaml, /etc/gridship/config.yaml
    /// that exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the serve: section, its certificate and key, CA directory and
    /// token keys, print what it says, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// How a client reaches the service.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// The `gridship serve` to act through (https://HOST:PORT), with your
    /// proxy or bearer token. Inside a session the service started, its
    /// socket is used without this.
    #[arg(long, value_name = "URL", env = "GRIDSHIP_SERVICE")]
    pub service: Option<String>,
}

impl ServiceArgs {
    /// The service's client: --service, else the session's socket.
    pub fn client(&self) -> crate::Result<ServiceClient> {
        match (&self.service, session_socket()) {
            (Some(url), _) => ServiceClient::https(url),
            (None, Some(sock)) => ServiceClient::socket(&sock),
            (None, None) => Err(Error::BadInput {
                input: "--service".into(),
                place: String::new(),
                reason:
                    "no service: not inside a session with a service socket, and no --service URL"
                        .into(),
                hint: Some("pass --service https://NODE:PORT (or set GRIDSHIP_SERVICE)".into()),
            }),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn serve(_global: &GlobalOpts, a: &ServeArgs) -> anyhow::Result<()> {
    let path = match &a.config {
        Some(p) => p.clone(),
        None => crate::config::file::config_files()
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::bad_input(
                    "serve",
                    "no config file with a serve: section; pass --config FILE",
                )
            })?,
    };
    let cfg = ServeConfig::load(&path)?;
    if a.check_config {
        let mut lines = vec![format!("{}: serve: section is valid", path.display())];
        let ca = match &cfg.client_ca {
            Some(dir) => {
                let ca = crate::serve::x509::CaDirectory::load(dir)
                    .map_err(|e| Error::bad_input("serve.client_ca", e.to_string()))?;
                lines.push(format!(
                    "  client CAs: {} in {}",
                    ca.root_hint_subjects().len(),
                    dir.display()
                ));
                Some(std::sync::Arc::new(ca))
            }
            None => None,
        };
        if !cfg.tokens.issuers.is_empty() {
            crate::serve::token::TokenVerifier::new(&cfg.tokens.issuers, &cfg.tokens.audiences)
                .map_err(|e| Error::bad_input("serve.tokens", e.to_string()))?;
            lines.push(format!(
                "  token issuers: {}",
                cfg.tokens
                    .issuers
                    .iter()
                    .map(|i| i.issuer.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let (Some(listen), Some(tls)) = (&cfg.listen, &cfg.tls) {
            let ca =
                ca.unwrap_or_else(|| std::sync::Arc::new(crate::serve::x509::CaDirectory::empty()));
            crate::serve::x509::server_config(ca, &tls.cert, &tls.key)
                .map_err(|e| Error::bad_input("serve.tls", e.to_string()))?;
            lines.push(format!("  HTTPS on {listen} with {}", tls.cert.display()));
        } else {
            lines.push("  no HTTPS (listen: not set): session sockets only".into());
        }
        lines.push(format!(
            "  limits: node {}, user {}, waiting per user {}; artifacts kept {} days",
            cfg.limits.node, cfg.limits.user, cfg.limits.queued_per_user, cfg.retention_days
        ));
        println!("{}", lines.join("\n"));
        return Ok(());
    }
    runtime()?.block_on(crate::serve::run(cfg))?;
    Ok(())
}

/// Die with the service that started this process (`serve` runs each
/// operation as a child): a killed service leaves nothing running unseen.
pub fn die_with_parent() {
    let Some(want) = std::env::var(crate::serve::service::DIE_WITH_PARENT)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // The parent may have died before the line above.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(want) {
        std::process::exit(1);
    }
}

/// The options typed after `promote`, less the client's own (global
/// options and --service): what the service parses again.
fn typed_promote_args() -> Vec<String> {
    let all: Vec<String> = std::env::args().collect();
    let Some(at) = all.iter().position(|a| a == "promote") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut it = all[at + 1..].iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a.clone());
            out.extend(it.by_ref().cloned());
            break;
        }
        let flag = a.split('=').next().unwrap_or(a);
        match flag {
            "--json" | "--quiet" | "--events" | "-q" => {}
            _ if a.starts_with("-v") && a[1..].chars().all(|c| c == 'v') => {}
            "--verbose" => {}
            "--service" | "--store" => {
                if !a.contains('=') {
                    it.next();
                }
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

/// `gridship promote` through the service: this session (over its socket)
/// or a named one (--service); results into ~/gridship/TAG or --out.
pub fn promote_remote(global: &GlobalOpts, a: &super::promote::PromoteArgs) -> anyhow::Result<()> {
    let session = match (&a.source, &a.service.service) {
        (None, Some(_)) => {
            return Err(Error::bad_input(
                "CONTAINER",
                "through --service, name the session to promote",
            )
            .into());
        }
        (None, None) => "self".to_string(),
        (Some(crate::reference::ImageRef::Container(name)), _) => name.clone(),
        (Some(_), _) => {
            return Err(Error::bad_input(
                "CONTAINER",
                "through --service, name a session (a container name), not an image reference",
            )
            .into());
        }
    };
    let client = a.service.client().map_err(|e| match (&a.source, e) {
        (None, Error::BadInput { .. }) => Error::BadInput {
            input: "CONTAINER".into(),
            place: String::new(),
            reason: "name a container (or run this inside a session started by gridship serve, or pass --service URL)".into(),
            hint: None,
        },
        (_, e) => e,
    })?;
    let mut args = typed_promote_args();
    if let Some(name) = a.source.as_ref().map(|_| session.clone()) {
        // The session's name is the URL's, not an option.
        if let Some(i) = args.iter().position(|x| *x == name) {
            args.remove(i);
        }
    }
    // --out is where the results land here, not an option for the service.
    if let Some(i) = args
        .iter()
        .position(|x| x == "--out" || x.starts_with("--out="))
    {
        let n = if args[i].contains('=') { 1 } else { 2 };
        args.drain(i..(i + n).min(args.len()));
    }
    let work = a.job.work.work();
    if work.command.is_none() && client.in_session {
        let cwd = std::env::current_dir().context("the working directory")?;
        let ep = cwd.join("entrypoint.sh");
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&ep) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                if !global.quiet {
                    eprintln!("the job runs {} (no --run given)", ep.display());
                }
                if !args.iter().any(|x| x == "--") {
                    args.push("--".into());
                }
                args.push(ep.display().to_string());
            }
            _ => {}
        }
    }
    // --out is exact; by default the files go to ~/gridship/TAG.
    let (dest_field, dest_value) = match &a.out {
        Some(d) => (
            "dest",
            std::path::absolute(d).with_context(|| format!("--out {}", d.display()))?,
        ),
        None => ("dest_parent", home()?.join("gridship")),
    };
    let rt = runtime()?;
    rt.block_on(async {
        let op = client
            .post(&format!("sessions/{session}/promote"), &{
                let mut body = json!({ "args": args });
                body[dest_field] = json!(dest_value);
                body
            })
            .await?;
        let id = op["id"].as_str().unwrap_or_default().to_string();
        if !global.quiet && !global.json {
            match op["position"].as_u64() {
                Some(p) => eprintln!("{id}: queued, position {p} on the node"),
                None => eprintln!("{id}: {}", op["state"].as_str().unwrap_or("queued")),
            }
        }
        let quiet = global.quiet || global.json;
        let mut shown = op["state"].as_str().unwrap_or_default().to_string();
        client
            .follow(&id, |ev| {
                if ev["event"] == "state" {
                    let state = ev["state"].as_str().unwrap_or_default();
                    // The stream starts with what happened already.
                    if !quiet && state != shown && state != "queued" {
                        eprintln!("{id}: {state}");
                    }
                    shown = state.to_string();
                } else if let Ok(e) = serde_json::from_value::<crate::event::Event>(ev.clone()) {
                    crate::event::relay(&e);
                }
            })
            .await?;
        let op = client.get(&format!("operations/{id}")).await?;
        match op["state"].as_str() {
            Some("done") => {}
            Some(state) => {
                let why = op["error"].as_str().unwrap_or("no reason given");
                return Err(anyhow::Error::new(Error::Other(format!(
                    "operation {id} {state}: {why}"
                ))));
            }
            None => return Err(anyhow::anyhow!("operation {id}: no state in {op}")),
        }
        let tag = op["tag"].as_str().unwrap_or_default().to_string();
        let dest = match &a.out {
            Some(_) => dest_value.clone(),
            None => dest_value.join(&tag),
        };
        std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut got = Vec::new();
        for art in op["artifacts"].as_array().into_iter().flatten() {
            let path = art["path"].as_str().unwrap_or_default();
            // The files of the promotion; a local CVMFS tree stays on the node.
            if path.is_empty() || path.contains('/') {
                continue;
            }
            let sha = art["sha256"].as_str().unwrap_or_default();
            let target = dest.join(path);
            client.download(&id, path, sha, &target).await?;
            got.push(json!({"path": target, "size": art["size"], "sha256": sha}));
        }
        if global.json {
            print_json(&json!({"operation": op, "files": got}))?;
        } else if !global.quiet {
            println!(
                "promoted session {} as {tag} ({id})",
                op["session"].as_str().unwrap_or("")
            );
            for f in &got {
                println!(
                    "  {}  {}",
                    f["path"].as_str().unwrap_or_default(),
                    super::image::human_bytes(f["size"].as_u64().unwrap_or(0))
                );
            }
        }
        Ok(())
    })
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("HOME is not set: pass --out DIR"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SessionAction {
    List,
    Show,
    Stop,
    Start,
    Remove,
    Snapshot,
    New,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    pub action: SessionAction,
    /// The session (not for list; `self` inside a session).
    pub name: Option<String>,
    /// new: the approved image to start from.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// new: your OpenSSH public key file, for ~/.ssh/authorized_keys.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(Debug, Subcommand)]
pub enum OperationCommand {
    /// Your operations (admins: all), with states and queue positions.
    List(ServiceArgs),
    /// One operation.
    Show {
        id: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Cancel a queued or running operation.
    Cancel {
        id: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Follow an operation's stages until it ends.
    Wait {
        id: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

fn show(global: &GlobalOpts, v: &Value) -> anyhow::Result<()> {
    if global.json {
        print_json(v)
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

pub fn session(global: &GlobalOpts, a: &SessionArgs) -> anyhow::Result<()> {
    let client = a.service.client()?;
    let name = || -> anyhow::Result<&str> {
        a.name
            .as_deref()
            .ok_or_else(|| Error::bad_input("NAME", "name the session").into())
    };
    runtime()?.block_on(async {
        let v = match a.action {
            SessionAction::List => {
                let v = client.get("sessions").await?;
                if !global.json {
                    println!(
                        "{:<24} {:<10} {:>8} {:>10} {:<6} IMAGE",
                        "NAME", "STATE", "AGE", "WRITABLE", "GPUS"
                    );
                    for s in v.as_array().into_iter().flatten() {
                        println!(
                            "{:<24} {:<10} {:>8} {:>10} {:<6} {}",
                            s["name"].as_str().unwrap_or(""),
                            s["state"].as_str().unwrap_or(""),
                            format!("{}h", s["age_s"].as_i64().unwrap_or(0) / 3600),
                            s["size_rw"]
                                .as_u64()
                                .map(super::image::human_bytes)
                                .unwrap_or_else(|| "-".into()),
                            s["gpus"].as_str().unwrap_or(""),
                            s["image"].as_str().unwrap_or("")
                        );
                    }
                    return Ok(());
                }
                v
            }
            SessionAction::Show => client.get(&format!("sessions/{}", name()?)).await?,
            SessionAction::Remove => client.delete(&format!("sessions/{}", name()?)).await?,
            SessionAction::Stop | SessionAction::Start | SessionAction::Snapshot => {
                let action = format!("{:?}", a.action).to_lowercase();
                client
                    .post(&format!("sessions/{}/{action}", name()?), &json!({}))
                    .await?
            }
            SessionAction::New => {
                let image = a
                    .image
                    .as_deref()
                    .ok_or_else(|| Error::bad_input("--image", "new needs --image IMAGE"))?;
                let key = match &a.ssh_key {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .map_err(|e| Error::io_path(p, "reading the public key", e))?
                            .trim()
                            .to_string(),
                    ),
                    None => None,
                };
                client
                    .post(
                        "sessions",
                        &json!({"name": name()?, "image": image, "ssh_key": key}),
                    )
                    .await?
            }
        };
        show(global, &v)
    })
}

pub fn operation(global: &GlobalOpts, c: &OperationCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let v = match c {
            OperationCommand::List(s) => s.client()?.get("operations").await?,
            OperationCommand::Show { id, service } => {
                service.client()?.get(&format!("operations/{id}")).await?
            }
            OperationCommand::Cancel { id, service } => {
                service
                    .client()?
                    .post(&format!("operations/{id}/cancel"), &json!({}))
                    .await?
            }
            OperationCommand::Wait { id, service } => {
                let client = service.client()?;
                client
                    .follow(id, |ev| {
                        if let Ok(e) = serde_json::from_value::<crate::event::Event>(ev.clone()) {
                            crate::event::relay(&e);
                        }
                    })
                    .await?;
                let v = client.get(&format!("operations/{id}")).await?;
                if v["state"] != "done" {
                    show(global, &v)?;
                    return Err(anyhow::Error::new(Error::Other(format!(
                        "operation {id} {}: {}",
                        v["state"].as_str().unwrap_or("?"),
                        v["error"].as_str().unwrap_or("no reason given")
                    ))));
                }
                v
            }
        };
        show(global, &v)
    })
}
