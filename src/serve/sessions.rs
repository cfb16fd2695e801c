//! Sessions: the engine's containers that carry the `gridship.owner` label.
//! A session someone else owns is answered exactly as one that does not
//! exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;

use super::identity::Caller;
use crate::engine::engine_error;
use crate::error::{Error, Result};

/// The label naming a session's owner (an identity key).
pub const OWNER_LABEL: &str = "gridship.owner";
/// Where a session sees its socket directory.
pub const SOCKET_MOUNT: &str = "/run/gridship";
/// Where session snapshots go in the engine: `gridship-session/NAME:TAG`.
pub const SNAPSHOT_REPO: &str = "gridship-session";
/// The socket's name in that directory.
pub const SOCKET_NAME: &str = "gridship.sock";

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub name: String,
    pub id: String,
    pub image: String,
    /// running, exited, paused, created...
    pub state: String,
    pub created: i64,
    pub age_s: i64,
    /// Bytes in the writable layer (what a snapshot would add), as last
    /// measured, and when (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_rw: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_measured: Option<i64>,
    /// GPUs the engine gives it: "all", a count, device ids, or none.
    pub gpus: String,
    pub owner: String,
    /// The host directory of its socket, when it was started with one.
    #[serde(skip)]
    pub socket_dir: Option<PathBuf>,
}

pub fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: format!("session {name}"),
        detail: "no such session of yours".into(),
    }
}

fn gpus_of(hc: Option<&bollard::models::HostConfig>) -> String {
    let reqs = hc.and_then(|h| h.device_requests.as_ref());
    let gpu: Vec<String> = reqs
        .into_iter()
        .flatten()
        .filter(|r| {
            r.capabilities
                .iter()
                .flatten()
                .any(|c| c.iter().any(|c| c == "gpu"))
                || r.driver.as_deref() == Some("nvidia")
        })
        .map(|r| match (&r.device_ids, r.count) {
            (Some(ids), _) if !ids.is_empty() => ids.join(","),
            (_, Some(-1)) => "all".to_string(),
            (_, Some(n)) => n.to_string(),
            _ => "all".to_string(),
        })
        .collect();
    if gpu.is_empty() {
        "none".into()
    } else {
        gpu.join(",")
    }
}

/// The sessions' writable-layer sizes, measured in the background: the
/// engine walks every writable layer to size it (seconds with real
/// sessions), which a listing must not wait for.
#[derive(Default)]
pub struct Sizes {
    measured: std::sync::Mutex<HashMap<String, (i64, i64)>>,
    /// A listing found a session not measured yet.
    pub wanted: tokio::sync::Notify,
}

impl Sizes {
    /// Measure every session now (container id → bytes, time).
    pub async fn measure(&self, docker: &Docker) -> Result<()> {
        let filters = HashMap::from([("label".to_string(), vec![OWNER_LABEL.to_string()])]);
        let summaries = docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                size: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| engine_error("measuring sessions", e))?;
        let now = crate::clock::now().unwrap_or(0);
        let measured: HashMap<String, (i64, i64)> = summaries
            .into_iter()
            .filter_map(|s| Some((s.id?, (s.size_rw?, now))))
            .collect();
        if let Ok(mut m) = self.measured.lock() {
            *m = measured;
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Option<(i64, i64)> {
        let got = self.measured.lock().ok().and_then(|m| m.get(id).copied());
        if got.is_none() {
            self.wanted.notify_one();
        }
        got
    }
}

/// Every labelled session, sizes from `sizes` (as last measured).
/// `sockets`: the service's socket root, to find each session's socket
/// directory among its mounts.
pub async fn list(docker: &Docker, sockets: &Path, sizes: &Sizes) -> Result<Vec<Session>> {
    let filters = HashMap::from([("label".to_string(), vec![OWNER_LABEL.to_string()])]);
    let summaries = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            size: false,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| engine_error("listing sessions", e))?;
    let now = crate::clock::now().unwrap_or(0);
    // GPUs are in each container's host config, which the list leaves out.
    let inspects = futures_util::future::join_all(summaries.iter().map(|s| {
        let id = s.id.clone().unwrap_or_default();
        async move { docker.inspect_container(&id, None).await.ok() }
    }))
    .await;
    let mut out = Vec::new();
    for (s, inspect) in summaries.into_iter().zip(inspects) {
        let labels = s.labels.unwrap_or_default();
        let Some(owner) = labels.get(OWNER_LABEL).cloned() else {
            continue;
        };
        let name = s
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let socket_dir = s
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.destination.as_deref() == Some(SOCKET_MOUNT))
            .filter_map(|m| m.source.map(PathBuf::from))
            .find(|src| src.parent() == Some(sockets));
        let created = s.created.unwrap_or(0);
        let id = s.id.unwrap_or_default();
        let size = sizes.get(&id);
        out.push(Session {
            name,
            id,
            image: s.image.unwrap_or_default(),
            state: s
                .state
                .map(|st| st.to_string())
                .unwrap_or_else(|| "unknown".into()),
            created,
            age_s: (now - created).max(0),
            size_rw: size.map(|(b, _)| b),
            size_measured: size.map(|(_, t)| t),
            gpus: gpus_of(inspect.as_ref().and_then(|i| i.host_config.as_ref())),
            owner,
            socket_dir,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The sessions `caller` may see.
pub async fn visible(
    docker: &Docker,
    sockets: &Path,
    sizes: &Sizes,
    caller: &Caller,
) -> Result<Vec<Session>> {
    Ok(list(docker, sockets, sizes)
        .await?
        .into_iter()
        .filter(|s| caller.may_see(Some(&s.owner), &s.id))
        .collect())
}

/// One session by name (or, on a session's socket, `self`); a foreign one
/// is not found.
pub async fn find(
    docker: &Docker,
    sockets: &Path,
    sizes: &Sizes,
    caller: &Caller,
    name: &str,
) -> Result<Session> {
    let all = visible(docker, sockets, sizes, caller).await?;
    let found = match caller {
        Caller::Session { container_id, .. } if name == "self" => {
            all.into_iter().find(|s| &s.id == container_id)
        }
        _ => all.into_iter().find(|s| s.name == name || s.id == name),
    };
    found.ok_or_else(|| not_found(name))
}

/// Stop, start or remove one session.
pub async fn act(docker: &Docker, s: &Session, action: &str) -> Result<()> {
    let what = format!("session {}", s.name);
    match action {
        "stop" => docker
            .stop_container(&s.id, None)
            .await
            .map_err(|e| engine_error(&what, e)),
        "start" => docker
            .start_container(&s.id, None)
            .await
            .map_err(|e| engine_error(&what, e)),
        "remove" => docker
            .remove_container(
                &s.id,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| engine_error(&what, e)),
        other => Err(Error::bad_input(
            "action",
            format!("unknown action {other}"),
        )),
    }
}

/// `docker commit` without pausing (the session keeps running), labelled
/// with its owner so only they may start from it.
pub async fn commit(docker: &Docker, id: &str, image: &str, owner: &str) -> Result<()> {
    let (repo, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    docker
        .commit_container(
            bollard::query_parameters::CommitContainerOptions {
                container: Some(id.to_string()),
                repo: Some(repo.to_string()),
                tag: Some(tag.to_string()),
                pause: false,
                comment: Some("gridship serve: session snapshot".into()),
                ..Default::default()
            },
            bollard::models::ContainerConfig {
                labels: Some(HashMap::from([(
                    OWNER_LABEL.to_string(),
                    owner.to_string(),
                )])),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| engine_error(&format!("snapshot of session {id}"), e))?;
    Ok(())
}

/// Whether `owner` may start a session from `image`: an approved prefix,
/// or a snapshot of their own.
pub async fn image_allowed(docker: &Docker, approved: &[String], owner: &str, image: &str) -> bool {
    if image.contains("..") || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if approved.iter().any(|p| image.starts_with(p.as_str())) {
        return true;
    }
    if !image.starts_with(&format!("{SNAPSHOT_REPO}/")) {
        return false;
    }
    docker
        .inspect_image(image)
        .await
        .ok()
        .and_then(|i| i.config)
        .and_then(|c| c.labels)
        .is_some_and(|l| l.get(OWNER_LABEL).map(String::as_str) == Some(owner))
}

/// What a new session is made from.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub name: String,
    pub image: String,
    pub owner: String,
    pub ssh_key: Option<String>,
    pub gpus: bool,
    pub socket_dir: PathBuf,
    pub uid: u32,
}

/// Whether `s` is a session or image name the engine accepts, without
/// anything a path or an option could be made of.
pub fn check_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::BadInput {
            input: what.into(),
            place: String::new(),
            reason: format!(
                "{s:?} is not a name: letters, digits, '.', '_' and '-', starting with a letter or digit"
            ),
            hint: None,
        })
    }
}

/// Create and start a session: the owner label, the socket directory at
/// /run/gridship, GPUs when asked, and the user's public key in
/// ~/.ssh/authorized_keys of the session's uid.
pub async fn create(docker: &Docker, n: &NewSession) -> Result<String> {
    use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
    let what = format!("new session {}", n.name);
    let body = ContainerCreateBody {
        image: Some(n.image.clone()),
        labels: Some(HashMap::from([(OWNER_LABEL.to_string(), n.owner.clone())])),
        host_config: Some(HostConfig {
            binds: Some(vec![format!(
                "{}:{SOCKET_MOUNT}:ro",
                n.socket_dir.display()
            )]),
            device_requests: n.gpus.then(|| {
                vec![DeviceRequest {
                    driver: Some("nvidia".into()),
                    count: Some(-1),
                    capabilities: Some(vec![vec!["gpu".into()]]),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(bollard::query_parameters::CreateContainerOptions {
                name: Some(n.name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| engine_error(&what, e))?;
    let started = async {
        if let Some(key) = &n.ssh_key {
            let home = home_of(docker, &created.id, n.uid).await?;
            let tar = authorized_keys_tar(&home, key, n.uid)?;
            docker
                .upload_to_container(
                    &created.id,
                    Some(bollard::query_parameters::UploadToContainerOptions {
                        path: "/".into(),
                        ..Default::default()
                    }),
                    bollard::body_full(tar.into()),
                )
                .await
                .map_err(|e| engine_error(&format!("{what}: its ~/.ssh"), e))?;
        }
        docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| engine_error(&what, e))
    }
    .await;
    if let Err(e) = started {
        // A half-made session would block its name: it goes.
        let _ = docker
            .remove_container(
                &created.id,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        return Err(e);
    }
    Ok(created.id)
}

/// The home directory of `uid` in a container's /etc/passwd.
pub async fn home_of(docker: &Docker, id: &str, uid: u32) -> Result<String> {
    let passwd = read_file(docker, id, "/etc/passwd").await?;
    let text = String::from_utf8_lossy(&passwd);
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid) {
            return Ok(f[5].to_string());
        }
    }
    Err(Error::Other(format!(
        "the session's /etc/passwd has no user with uid {uid}"
    )))
}

/// One regular file of a container, through the engine's archive endpoint.
async fn read_file(docker: &Docker, id: &str, path: &str) -> Result<Vec<u8>> {
    let mut stream = docker.download_from_container(
        id,
        Some(bollard::query_parameters::DownloadFromContainerOptions { path: path.into() }),
    );
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        tar_bytes.extend_from_slice(&chunk.map_err(|e| engine_error(path, e))?);
        if tar_bytes.len() > 16 << 20 {
            return Err(Error::Other(format!("{path} in the session is too large")));
        }
    }
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let entries = ar
        .entries()
        .map_err(|e| Error::Other(format!("{path}: {e}")))?;
    for e in entries {
        let mut e = e.map_err(|e| Error::Other(format!("{path}: {e}")))?;
        if e.header().entry_type().is_file() {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v)
                .map_err(|e| Error::Other(format!("{path}: {e}")))?;
            return Ok(v);
        }
    }
    Err(Error::Other(format!("{path} is not a file in the session")))
}

/// A tar that puts `key` in HOME/.ssh/authorized_keys, owned by `uid`,
/// 0700/0600 as sshd requires.
fn authorized_keys_tar(home: &str, key: &str, uid: u32) -> Result<Vec<u8>> {
    let home = home.trim_start_matches('/');
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: String, mode: u32, data: Option<&[u8]>| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(uid as u64);
        h.set_gid(uid as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())
            }
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, d)
            }
        }
    };
    let line = format!("{}\n", key.trim());
    add(format!("{home}/.ssh"), 0o700, None)
        .and_then(|_| {
            add(
                format!("{home}/.ssh/authorized_keys"),
                0o600,
                Some(line.as_bytes()),
            )
        })
        .map_err(|e| Error::Other(format!("authorized_keys: {e}")))?;
    b.into_inner()
        .map_err(|e| Error::Other(format!("authorized_keys: {e}")))
}

/// Check an OpenSSH public key line: type, base64 body, optional comment;
/// no options (a `command=` would run anything at login).
pub fn check_ssh_key(key: &str) -> Result<()> {
    let parts: Vec<&str> = key.split_whitespace().collect();
    let types = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    use base64::Engine;
    let ok = key.lines().count() == 1
        && parts.len() >= 2
        && types.contains(&parts[0])
        && base64::engine::general_purpose::STANDARD
            .decode(parts[1])
            .is_ok();
    if ok {
        Ok(())
    } else {
        Err(Error::bad_input(
            "ssh_key",
            "not one OpenSSH public key line (TYPE BASE64 [COMMENT]; options are not accepted)",
        ))
    }
}
