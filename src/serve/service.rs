//! The running service: its engine connection, operations, audit log and
//! trust; the scheduler that starts queued operations; the runner that
//! does each in a child `gridship --events` process; and the keeper of the
//! sessions' sockets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::audit::AuditLog;
use super::config::ServeConfig;
use super::ops::{Artifact, OpKind, OpState, Operation, Ops};
use super::x509::CaDirectory;
use crate::error::{Error, Result};

/// How often the sessions' writable layers are sized.
pub const SIZES_EVERY: Duration = Duration::from_secs(60);

/// The environment variable that asks a child to die with its service
/// (a killed service must not leave promotions running unseen).
pub const DIE_WITH_PARENT: &str = "GRIDSHIP_DIE_WITH_PARENT";

pub struct Service {
    pub cfg: ServeConfig,
    pub docker: bollard::Docker,
    pub ops: Ops,
    pub audit: Arc<AuditLog>,
    pub ca: Option<Arc<CaDirectory>>,
    pub tokens: Option<super::token::TokenVerifier>,
    /// The gridship binary the children run.
    pub exe: PathBuf,
    /// Writable-layer sizes, measured apart from listings.
    pub sizes: super::sessions::Sizes,
    kick: tokio::sync::Notify,
    /// Sessions whose socket is served: container id → the serving task.
    sockets: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// Staging directories of running operations: beside the outputs, on the
/// same filesystem, so a finished one is renamed into place.
fn staging_root(cfg: &ServeConfig) -> PathBuf {
    cfg.outputs.join(".staging")
}

impl Service {
    /// Open the state, fail what a dead service was running and remove what
    /// it left half-made.
    pub async fn open(cfg: ServeConfig) -> Result<Arc<Service>> {
        let audit = Arc::new(AuditLog::open(&cfg.audit)?);
        let (ops, interrupted) = Ops::open(&cfg.state)?;
        for op in &interrupted {
            audit.record(
                &op.owner,
                &op.session,
                op.kind.name(),
                &format!("failed: {}", super::ops::RESTARTED),
                Some(&op.id),
            );
        }
        // Everything in staging belongs to an operation that is not running now.
        let staging = staging_root(&cfg);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                Error::io_path(&staging, "removing interrupted operations' files", e)
            })?;
        }
        for dir in [&cfg.outputs, &staging, &cfg.sockets] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io_path(dir, "creating the service's directory", e))?;
        }
        let ca = match &cfg.client_ca {
            Some(dir) => {
                Some(Arc::new(CaDirectory::load(dir).map_err(|e| {
                    Error::bad_input("serve.client_ca", e.to_string())
                })?))
            }
            None => None,
        };
        let tokens = if cfg.tokens.issuers.is_empty() {
            None
        } else {
            Some(
                super::token::TokenVerifier::new(&cfg.tokens.issuers, &cfg.tokens.audiences)
                    .map_err(|e| Error::bad_input("serve.tokens", e.to_string()))?,
            )
        };
        let docker = crate::engine::connect().await?;
        let exe = std::env::current_exe()
            .map_err(|e| Error::Other(format!("finding the gridship binary: {e}")))?;
        Ok(Arc::new(Service {
            cfg,
            docker,
            ops,
            audit,
            ca,
            tokens,
            exe,
            sizes: Default::default(),
            kick: tokio::sync::Notify::new(),
            sockets: Mutex::new(HashMap::new()),
        }))
    }

    /// Wake the scheduler (an operation was added or ended).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Start queued operations as limits allow, for ever.
    pub async fn schedule(self: Arc<Self>) {
        loop {
            match self
                .ops
                .start_next(self.cfg.limits.node, self.cfg.limits.user)
            {
                Ok(started) => {
                    for op in started {
                        tokio::spawn(self.clone().run(op));
                    }
                }
                Err(e) => tracing::error!("starting operations: {e}"),
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.kick.notified()).await;
        }
    }

    /// Where an operation's artifacts go, relative to serve.outputs.
    pub fn output_rel(op: &Operation) -> String {
        format!(
            "{}/{}/{}",
            super::identity::owner_dir(&op.owner),
            op.session,
            op.tag
        )
    }

    /// Do one operation in a child process and record how it ended.
    async fn run(self: Arc<Self>, op: Operation) {
        let result = self.run_child(&op).await;
        let cancelled = self
            .ops
            .get(&op.id)
            .is_some_and(|o| o.state == OpState::Cancelled);
        let staging = staging_root(&self.cfg).join(&op.id);
        let outcome = match (cancelled, result) {
            (true, _) => None,
            (false, Ok(())) if op.kind != OpKind::Promote => Some(Ok((String::new(), Vec::new()))),
            (false, Ok(())) => match self.keep_outputs(&op, &staging) {
                Ok((rel, artifacts)) => Some(Ok((rel, artifacts))),
                Err(e) => Some(Err(e.to_string())),
            },
            (false, Err(e)) => Some(Err(e)),
        };
        let _ = std::fs::remove_dir_all(&staging);
        let now = crate::clock::now().unwrap_or(0);
        let (state, error) = match &outcome {
            None => (OpState::Cancelled, None),
            Some(Ok(_)) => (OpState::Done, None),
            Some(Err(e)) => (OpState::Failed, Some(e.clone())),
        };
        let _ = self.ops.update(&op.id, |o| {
            o.state = state;
            o.error = error.clone();
            o.ended = Some(now);
            o.pid = None;
            o.pid_start = None;
            o.stage = None;
            if let Some(Ok((rel, artifacts))) = &outcome
                && !rel.is_empty()
            {
                o.output_dir = Some(rel.clone());
                o.artifacts = artifacts.clone();
            }
        });
        let result = match (&state, &error) {
            (OpState::Failed, Some(e)) => format!("failed: {e}"),
            (s, _) => format!("{s:?}").to_lowercase(),
        };
        self.ops.event(
            &op.id,
            serde_json::json!({"event": "state", "state": format!("{state:?}").to_lowercase(), "error": error}),
        );
        self.audit.record(
            &op.owner,
            &op.session,
            op.kind.name(),
            &result,
            Some(&op.id),
        );
        self.kick();
    }

    /// The child's command line.
    fn child_args(&self, op: &Operation, staging: &Path) -> Vec<String> {
        let mut args: Vec<String> = vec!["--events".into(), "--json".into()];
        match op.kind {
            OpKind::Promote => {
                args.extend([
                    "promote".into(),
                    format!("container:{}", op.container_id),
                    "--out".into(),
                    staging.display().to_string(),
                ]);
                args.extend(op.args.iter().cloned());
            }
            OpKind::Snapshot | OpKind::NewSession => {}
        }
        args
    }

    async fn run_child(self: &Arc<Self>, op: &Operation) -> std::result::Result<(), String> {
        match op.kind {
            OpKind::NewSession => return self.new_session(op).await,
            OpKind::Snapshot => return self.snapshot(op).await,
            OpKind::Promote => {}
        }
        let staging = staging_root(&self.cfg).join(&op.id);
        std::fs::create_dir_all(&staging)
            .map_err(|e| format!("creating {}: {e}", staging.display()))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(self.child_args(op, &staging))
            .env(DIE_WITH_PARENT, std::process::id().to_string())
            .current_dir(&staging)
            .stdin(std::process::Stdio::null())
            // The report is NAME.promote.json among the artifacts.
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        let pid = child.id();
        let pid_start = pid.and_then(super::ops::process_start);
        let _ = self.ops.update(&op.id, |o| {
            o.pid = pid;
            o.pid_start = pid_start;
        });
        let mut last_error: Option<String> = None;
        if let Some(stderr) = child.stderr.take() {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    last_error = Some(line.clone());
                    continue;
                };
                match value["event"].as_str() {
                    Some("start") => {
                        let stage = value["stage"].as_str().map(str::to_string);
                        let _ = self.ops.update(&op.id, |o| o.stage = stage);
                    }
                    Some("log") => {
                        if let Some(m) = value["message"].as_str()
                            && value["level"].as_str() == Some("ERROR")
                        {
                            last_error = Some(m.to_string());
                        }
                    }
                    _ => {}
                }
                self.ops.event(&op.id, value);
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for the child: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(last_error.unwrap_or_else(|| format!("gridship exited with {status}")))
        }
    }

    /// Move a finished operation's files into the owner's outputs and list
    /// them with their digests.
    fn keep_outputs(&self, op: &Operation, staging: &Path) -> Result<(String, Vec<Artifact>)> {
        let rel = Self::output_rel(op);
        let dest = self.cfg.outputs.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io_path(parent, "creating the outputs directory", e))?;
        }
        if dest.exists() {
            return Err(Error::Other(format!(
                "the outputs {rel} already exist: choose another --tag"
            )));
        }
        std::fs::rename(staging, &dest)
            .map_err(|e| Error::io_path(&dest, "moving the artifacts into place", e))?;
        let mut artifacts = Vec::new();
        list_files(&dest, &dest, &mut artifacts)?;
        artifacts.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((rel, artifacts))
    }

    async fn new_session(self: &Arc<Self>, op: &Operation) -> std::result::Result<(), String> {
        // args: IMAGE [SSH KEY]
        let image = op.args.first().cloned().unwrap_or_default();
        let dir = self.cfg.sockets.join(&op.session);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let n = super::sessions::NewSession {
            name: op.session.clone(),
            image,
            owner: op.owner.clone(),
            ssh_key: op.args.get(1).cloned(),
            gpus: self.cfg.gpus,
            socket_dir: dir,
            uid: self.cfg.session_uid,
        };
        self.ops.event(
            &op.id,
            serde_json::json!({"event": "start", "stage": "create", "total": null}),
        );
        let id = super::sessions::create(&self.docker, &n)
            .await
            .map_err(|e| e.to_string())?;
        let _ = self.ops.update(&op.id, |o| o.container_id = id.clone());
        self.ops.event(
            &op.id,
            serde_json::json!({"event": "end", "stage": "create", "ok": true, "seconds": 0.0, "bytes": 0, "paths": 0}),
        );
        self.refresh_sockets().await;
        Ok(())
    }

    /// Commit the session (running on) into an engine image of the owner's,
    /// `gridship-session/NAME:TAG`, which a new session may start from.
    async fn snapshot(self: &Arc<Self>, op: &Operation) -> std::result::Result<(), String> {
        self.ops.event(
            &op.id,
            serde_json::json!({"event": "start", "stage": "commit", "total": null}),
        );
        let t0 = std::time::Instant::now();
        let image = snapshot_image(&op.session, &op.tag);
        super::sessions::commit(&self.docker, &op.container_id, &image, &op.owner)
            .await
            .map_err(|e| e.to_string())?;
        self.ops.event(
            &op.id,
            serde_json::json!({"event": "end", "stage": "commit", "ok": true, "seconds": t0.elapsed().as_secs_f64(), "bytes": 0, "paths": 0, "result": {"image": image}}),
        );
        Ok(())
    }

    /// Cancel an operation: a queued one at once, a running one by killing
    /// its child (the runner removes its staging files).
    pub fn cancel(&self, id: &str) -> Result<Option<Operation>> {
        if self
            .ops
            .get(id)
            .is_some_and(|o| o.state == OpState::Running && o.kind != OpKind::Promote)
        {
            return Err(Error::BadInput {
                input: format!("operation {id}"),
                place: String::new(),
                reason: "a new session or a snapshot that has started cannot be cancelled (it takes seconds)".into(),
                hint: None,
            });
        }
        let op = self.ops.update(id, |o| {
            if !o.state.finished() {
                if o.state == OpState::Queued {
                    o.ended = Some(crate::clock::now().unwrap_or(0));
                }
                o.state = OpState::Cancelled;
            }
        })?;
        if let Some(op) = &op
            && let (Some(pid), Some(start)) = (op.pid, op.pid_start)
            && super::ops::process_start(pid) == Some(start)
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let Some(op) = &op
            && op.pid.is_none()
        {
            self.ops.event(
                id,
                serde_json::json!({"event": "state", "state": "cancelled"}),
            );
        }
        self.kick();
        Ok(op)
    }

    /// Serve a socket for every session started with a socket directory,
    /// and stop serving those that are gone. Called at start, after a new
    /// session and every few seconds.
    pub async fn refresh_sockets(self: &Arc<Self>) {
        let sessions =
            match super::sessions::list(&self.docker, &self.cfg.sockets, &self.sizes).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("listing sessions: {e}");
                    return;
                }
            };
        let Ok(mut served) = self.sockets.lock() else {
            return;
        };
        served.retain(|id, task| {
            let alive = sessions.iter().any(|s| &s.id == id) && !task.is_finished();
            if !alive {
                task.abort();
            }
            alive
        });
        for s in sessions {
            let Some(dir) = &s.socket_dir else { continue };
            if served.contains_key(&s.id) {
                continue;
            }
            let listener = match super::listen::SessionListener::bind(
                dir,
                &s.id,
                &s.owner,
                self.audit.clone(),
            ) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("session {}: its socket in {}: {e}", s.name, dir.display());
                    continue;
                }
            };
            tracing::info!("serving session {} on {}", s.name, listener.path.display());
            let app = super::api::router(self.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<super::listen::Peer>(),
                )
                .await;
            });
            served.insert(s.id.clone(), task);
        }
    }

    /// Measure the sessions' sizes every [`SIZES_EVERY`], for ever.
    pub async fn measure_sizes(self: Arc<Self>) {
        loop {
            if let Err(e) = self.sizes.measure(&self.docker).await {
                tracing::warn!("{e}");
            }
            let _ = tokio::time::timeout(SIZES_EVERY, self.sizes.wanted.notified()).await;
        }
    }

    /// Keep the sockets current and drop outputs past retention, for ever.
    pub async fn housekeeping(self: Arc<Self>) {
        loop {
            self.refresh_sockets().await;
            let before =
                crate::clock::now().unwrap_or(0) - (self.cfg.retention_days as i64) * 86400;
            let expired = self.ops.expired(before);
            if !expired.is_empty() {
                for op in &expired {
                    if let Some(rel) = &op.output_dir {
                        let _ = std::fs::remove_dir_all(self.cfg.outputs.join(rel));
                    }
                    self.audit.record(
                        "gridship serve",
                        &op.session,
                        "expire",
                        "removed",
                        Some(&op.id),
                    );
                }
                let ids: Vec<String> = expired.into_iter().map(|o| o.id).collect();
                if let Err(e) = self.ops.forget(&ids) {
                    tracing::warn!("retention: {e}");
                }
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

/// The engine image a snapshot of session `name` becomes.
pub fn snapshot_image(name: &str, tag: &str) -> String {
    format!("{}/{name}:{tag}", super::sessions::SNAPSHOT_REPO)
}

/// The regular files in `dir`, with sizes and digests; symlinks and
/// directories are not listed (a download never follows them).
fn list_files(root: &Path, dir: &Path, out: &mut Vec<Artifact>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io_path(dir, "listing artifacts", e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io_path(dir, "listing artifacts", e))?;
        let ft = entry
            .file_type()
            .map_err(|e| Error::io_path(&entry.path(), "listing artifacts", e))?;
        let path = entry.path();
        // A local CVMFS tree (tens of thousands of files) stays on the node,
        // named in the report; the record lists the promotion's own files.
        if ft.is_file() {
            let mut f = std::fs::File::open(&path)
                .map_err(|e| Error::io_path(&path, "hashing an artifact", e))?;
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)
                    .map_err(|e| Error::io_path(&path, "hashing an artifact", e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            out.push(Artifact {
                path: path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
                size,
                sha256: hex::encode(h.finalize()),
            });
        }
    }
    Ok(())
}
