//! The JSON API under `/api/v1`, the same over HTTPS and a session's
//! socket. Every change and every refusal is one line of the audit log.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;

use super::identity::{Caller, Identity};
use super::listen::Peer;
use super::ops::{OpKind, OpState, Operation};
use super::service::Service;
use super::sessions::{self, Session};
use crate::error::Error;

/// Request bodies are small JSON documents.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A request that is not a stream or a download ends within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error as the API answers it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::BadInput { .. } | Error::UnsafeEntry { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

pub fn router(svc: Arc<Service>) -> axum::Router {
    let timed = axum::Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/sessions", get(list_sessions).post(new_session))
        .route(
            "/api/v1/sessions/{name}",
            get(show_session).delete(remove_session),
        )
        .route("/api/v1/sessions/{name}/{action}", post(session_action))
        .route("/api/v1/operations", get(list_operations))
        .route("/api/v1/operations/{id}", get(show_operation))
        .route("/api/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/api/v1/queue", get(queue))
        .layer(axum::middleware::from_fn(
            |req: axum::extract::Request, next: axum::middleware::Next| async move {
                match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
                    Ok(r) => r,
                    Err(_) => {
                        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "the request took too long")
                            .into_response()
                    }
                }
            },
        ));
    // Streams and downloads run as long as they send.
    let streams = axum::Router::new()
        .route("/api/v1/operations/{id}/events", get(operation_events))
        .route("/api/v1/operations/{id}/files/{*path}", get(download));
    timed
        .merge(streams)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(svc)
}

/// The caller of a request, or the refusal (recorded in the audit log).
fn authenticate(svc: &Service, peer: &Peer, headers: &HeaderMap, what: &str) -> ApiResult<Caller> {
    let refuse = |status: StatusCode, who: &str, why: String| {
        svc.audit
            .record(who, "-", what, &format!("refused: {why}"), None);
        ApiError::new(status, why)
    };
    match peer {
        Peer::Socket {
            container_id,
            owner,
            uid,
            pid,
        } => Ok(Caller::Session {
            owner: owner.clone(),
            container_id: container_id.clone(),
            uid: *uid,
            pid: *pid,
        }),
        Peer::Tls { chain, .. } => {
            let bearer = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let who = match (bearer, chain) {
                (Some(token), _) => {
                    let Some(v) = &svc.tokens else {
                        return Err(refuse(
                            StatusCode::UNAUTHORIZED,
                            "-",
                            "this service accepts no bearer tokens (serve.tokens is not set)"
                                .into(),
                        ));
                    };
                    let now = crate::clock::now().unwrap_or(0).max(0) as u64;
                    match v.verify(token, now) {
                        Ok(t) => Identity::Token {
                            issuer: t.issuer,
                            subject: t.subject,
                        },
                        Err(e) => return Err(refuse(StatusCode::UNAUTHORIZED, "-", e.to_string())),
                    }
                }
                (None, Some(Ok(v))) => Identity::X509 { dn: v.dn.clone() },
                (None, Some(Err(why))) => {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        "-",
                        format!("client certificate refused: {why}"),
                    ));
                }
                (None, None) => {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "-",
                        "no client certificate and no bearer token".into(),
                    ));
                }
            };
            let admin = svc.cfg.admins.contains(&who.key());
            Ok(Caller::Person { who, admin })
        }
    }
}

/// The request's caller, authenticated, for handler `what`.
macro_rules! caller {
    ($svc:expr, $peer:expr, $headers:expr, $method:expr, $what:expr) => {
        authenticate(&$svc, &$peer, &$headers, &format!("{} {}", $method, $what))?
    };
}

async fn whoami(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let c = caller!(svc, peer, headers, "GET", "/api/v1/whoami");
    Ok(Json(json!({
        "identity": c.owner_key(),
        "admin": c.is_admin(),
        "via": match c { Caller::Session { .. } => "session socket", Caller::Person { .. } => "https" },
    })))
}

async fn list_sessions(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<Session>>> {
    let c = caller!(svc, peer, headers, "GET", "/api/v1/sessions");
    Ok(Json(
        sessions::visible(&svc.docker, &svc.cfg.sockets, &svc.sizes, &c).await?,
    ))
}

async fn show_session(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Session>> {
    let c = caller!(svc, peer, headers, "GET", "/api/v1/sessions/NAME");
    Ok(Json(
        sessions::find(&svc.docker, &svc.cfg.sockets, &svc.sizes, &c, &name).await?,
    ))
}

/// A session the caller may act on; a refusal is audited.
async fn session_for(svc: &Service, c: &Caller, name: &str, action: &str) -> ApiResult<Session> {
    match sessions::find(&svc.docker, &svc.cfg.sockets, &svc.sizes, c, name).await {
        Ok(s) => Ok(s),
        Err(e) => {
            svc.audit
                .record(&c.describe(), name, action, &format!("refused: {e}"), None);
            Err(e.into())
        }
    }
}

async fn remove_session(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let c = caller!(svc, peer, headers, "DELETE", "/api/v1/sessions/NAME");
    let s = session_for(&svc, &c, &name, "remove").await?;
    direct_action(&svc, &c, &s, "remove").await
}

async fn direct_action(
    svc: &Arc<Service>,
    c: &Caller,
    s: &Session,
    action: &str,
) -> ApiResult<Json<serde_json::Value>> {
    let r = sessions::act(&svc.docker, s, action).await;
    let result = match &r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    svc.audit
        .record(&c.describe(), &s.name, action, &result, None);
    r?;
    if action == "remove" {
        svc.refresh_sockets().await;
        if let Some(dir) = &s.socket_dir {
            let _ = std::fs::remove_file(dir.join(sessions::SOCKET_NAME));
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(Json(
        json!({"session": s.name, "action": action, "result": "ok"}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// promote: the command-line options, as `gridship promote` takes them.
    #[serde(default)]
    args: Vec<String>,
    /// promote: the absolute directory the client puts the files in (the
    /// job description names the SIF there, for `gridship submit` to upload).
    #[serde(default)]
    dest: Option<String>,
    /// promote: or the directory under which the client makes TAG/.
    #[serde(default)]
    dest_parent: Option<String>,
}

async fn session_action(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    UrlPath((name, action)): UrlPath<(String, String)>,
    body: std::result::Result<Json<ActionBody>, JsonRejection>,
) -> ApiResult<Response> {
    let c = caller!(
        svc,
        peer,
        headers,
        "POST",
        format!("/api/v1/sessions/NAME/{action}")
    );
    let body = match body {
        Ok(Json(b)) => b,
        // stop and start need no body.
        Err(JsonRejection::MissingJsonContentType(_)) if action != "promote" => {
            ActionBody::default()
        }
        Err(rej) => return Err(refuse_body(&svc, &c, &name, &action, rej)),
    };
    if !["stop", "start", "snapshot", "promote"].contains(&action.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session action {action:?}: stop, start, snapshot or promote"),
        ));
    }
    let s = session_for(&svc, &c, &name, &action).await?;
    match action.as_str() {
        "stop" | "start" => Ok(direct_action(&svc, &c, &s, &action).await?.into_response()),
        "snapshot" => {
            let tag = crate::clock::compact_stamp(crate::clock::now().unwrap_or(0))
                .map_err(ApiError::from)?
                .to_lowercase();
            queue_op(&svc, &c, &s, OpKind::Snapshot, vec![], tag).await
        }
        _ => match check_promote(&svc, &body.args, &dest_of(&body), &s) {
            Ok((args, tag)) => queue_op(&svc, &c, &s, OpKind::Promote, args, tag).await,
            Err(e) => {
                svc.audit.record(
                    &c.describe(),
                    &s.name,
                    "promote",
                    &format!("refused: {}", e.message),
                    None,
                );
                Err(e)
            }
        },
    }
}

/// A body that is too large or not the JSON asked for: refused, audited.
fn refuse_body(
    svc: &Service,
    c: &Caller,
    session: &str,
    action: &str,
    rej: JsonRejection,
) -> ApiError {
    let why = match rej.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than {BODY_LIMIT} bytes")
        }
        _ => rej.body_text(),
    };
    svc.audit.record(
        &c.describe(),
        session,
        action,
        &format!("refused: {why}"),
        None,
    );
    ApiError::new(rej.status(), why)
}

/// Where the promoted files will be, for the job description.
enum Dest {
    /// The client's directory.
    Exact(String),
    /// The client's directory, TAG/ below it.
    Under(String),
    /// The node's outputs (the caller downloads nothing).
    Node,
}

fn dest_of(b: &ActionBody) -> Dest {
    match (&b.dest, &b.dest_parent) {
        (Some(d), _) => Dest::Exact(d.clone()),
        (None, Some(p)) => Dest::Under(p.clone()),
        (None, None) => Dest::Node,
    }
}

/// The options a promote request may carry: the CLI's own definitions.
#[derive(Debug, Parser)]
#[command(name = "gridship promote", no_binary_name = true)]
struct RemotePromote {
    #[command(flatten)]
    job: crate::cli::promote::PromoteJobArgs,
}

/// Validate promote options with the CLI's parser and validators and the
/// service's rules; the options to run with (the service's first, then
/// the user's), and the tag.
fn check_promote(
    svc: &Service,
    args: &[String],
    dest: &Dest,
    session: &Session,
) -> ApiResult<(Vec<String>, String)> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let parsed = RemotePromote::try_parse_from(args).map_err(|e| {
        let text = e.render().to_string();
        bad(format!(
            "{}{}",
            text.trim(),
            if e.kind() == clap::error::ErrorKind::UnknownArgument {
                "\n  (through the service, options that name host paths are not accepted)"
            } else {
                ""
            }
        ))
    })?;
    let job = parsed.job;
    let mut ours: Vec<String> = Vec::new();
    let site = job.site.clone().or_else(|| {
        crate::cli::defaults()
            .ok()
            .and_then(|d| d.site.as_ref().map(|s| s.value.clone()))
            .or_else(|| svc.cfg.sites.first().cloned())
    });
    let Some(site) = site else {
        return Err(bad(
            "--site: no site given, and the node has no default".into()
        ));
    };
    if !svc.cfg.sites.is_empty() && !svc.cfg.sites.contains(&site) {
        return Err(bad(format!(
            "--site {site}: not a site this node promotes for ({})",
            svc.cfg.sites.join(", ")
        )));
    }
    if job.site.is_none() {
        ours.extend(["--site".to_string(), site]);
    }
    for input in &job.work.inputs {
        if !crate::jobdesc::validate::is_remote_url(input) {
            return Err(bad(format!(
                "--input {input}: through the service, inputs are URLs the CE fetches (https://, root://, davs://), not files"
            )));
        }
    }
    if let Some(suite) = &job.suite
        && (suite.contains('/') || suite.ends_with(".yaml") || suite.ends_with(".yml"))
    {
        return Err(bad(format!(
            "--suite {suite}: through the service, a suite is named, not a file"
        )));
    }
    // The command is refused now, not after minutes of work.
    let work = job.work.work();
    if let Some(cmd) = &work.command {
        crate::jobdesc::work::executable_and_args(
            Some(cmd),
            &crate::jobdesc::work::ImageCommand::Unknown(String::new()),
        )
        .map_err(|e| bad(e.to_string()))?;
    }
    let tag = match &job.tag {
        Some(t) => {
            sessions::check_name("--tag", t).map_err(|e| bad(e.to_string()))?;
            if tag_taken(svc, session, t) {
                return Err(bad(format!(
                    "--tag {t}: session {} already has artifacts or a promotion with this tag; choose another",
                    session.name
                )));
            }
            t.clone()
        }
        None => {
            let stamp = crate::clock::compact_stamp(crate::clock::now().unwrap_or(0))
                .map_err(ApiError::from)?
                .to_lowercase();
            // Two promotions within a second get tags of their own.
            let t = (1..)
                .map(|n| {
                    if n == 1 {
                        stamp.clone()
                    } else {
                        format!("{stamp}-{n}")
                    }
                })
                .find(|t| !tag_taken(svc, session, t))
                .unwrap_or(stamp);
            ours.extend(["--tag".to_string(), t.clone()]);
            t
        }
    };
    // The job names the SIF where the client puts it (or, for a caller
    // that downloads nothing, where the node keeps it), never the staging copy.
    if job.sif_url.is_none() {
        let dir = match dest {
            Dest::Exact(d) => d.clone(),
            Dest::Under(p) => format!("{}/{tag}", p.trim_end_matches('/')),
            Dest::Node => {
                let probe = Operation {
                    owner: session.owner.clone(),
                    session: session.name.clone(),
                    tag: tag.clone(),
                    ..blank_op()
                };
                svc.cfg
                    .outputs
                    .join(Service::output_rel(&probe))
                    .display()
                    .to_string()
            }
        };
        let ok = dir.starts_with('/')
            && !dir.split('/').any(|p| p == "..")
            && !dir.chars().any(|c| c.is_control() || c == '"');
        if !ok {
            return Err(bad(format!("dest {dir:?}: not an absolute directory")));
        }
        let name =
            crate::pipeline::promote::artifact_name(job.name.as_deref().unwrap_or(&session.name));
        ours.extend([
            "--sif-url".to_string(),
            format!("file://{}/{name}.sif", dir.trim_end_matches('/')),
        ]);
    }
    ours.extend(args.iter().cloned());
    Ok((ours, tag))
}

/// Whether `session` has outputs, or a promotion that is not over or
/// succeeded, with `tag`.
fn tag_taken(svc: &Service, session: &Session, tag: &str) -> bool {
    let probe = Operation {
        owner: session.owner.clone(),
        session: session.name.clone(),
        tag: tag.to_string(),
        ..blank_op()
    };
    svc.cfg.outputs.join(Service::output_rel(&probe)).exists()
        || svc.ops.all().iter().any(|o| {
            o.kind == OpKind::Promote
                && o.container_id == session.id
                && o.tag == tag
                && !matches!(o.state, OpState::Failed | OpState::Cancelled)
        })
}

fn blank_op() -> Operation {
    Operation {
        id: String::new(),
        kind: OpKind::Promote,
        owner: String::new(),
        session: String::new(),
        container_id: String::new(),
        args: vec![],
        tag: String::new(),
        state: OpState::Queued,
        stage: None,
        error: None,
        created: 0,
        started: None,
        ended: None,
        pid: None,
        pid_start: None,
        artifacts: vec![],
        output_dir: None,
        position: None,
    }
}

async fn queue_op(
    svc: &Arc<Service>,
    c: &Caller,
    s: &Session,
    kind: OpKind,
    args: Vec<String>,
    tag: String,
) -> ApiResult<Response> {
    let op = Operation {
        id: super::ops::new_id(),
        kind,
        owner: s.owner.clone(),
        session: s.name.clone(),
        container_id: s.id.clone(),
        args,
        tag,
        created: crate::clock::now().unwrap_or(0),
        ..blank_op()
    };
    let op = match svc.ops.add(op, svc.cfg.limits.queued_per_user) {
        Ok(op) => op,
        Err(e) => {
            svc.audit.record(
                &c.describe(),
                &s.name,
                kind.name(),
                &format!("refused: {e}"),
                None,
            );
            let status = match e {
                Error::BadInput { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return Err(ApiError::new(status, e.to_string()));
        }
    };
    svc.audit
        .record(&c.describe(), &s.name, kind.name(), "queued", Some(&op.id));
    svc.kick();
    let op = svc.ops.get(&op.id).unwrap_or(op);
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSessionBody {
    name: String,
    image: String,
    #[serde(default)]
    ssh_key: Option<String>,
}

async fn new_session(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: std::result::Result<Json<NewSessionBody>, JsonRejection>,
) -> ApiResult<Response> {
    let c = caller!(svc, peer, headers, "POST", "/api/v1/sessions");
    let b = match body {
        Ok(Json(b)) => b,
        Err(rej) => return Err(refuse_body(&svc, &c, "-", "new-session", rej)),
    };
    let refuse = |why: String| {
        svc.audit.record(
            &c.describe(),
            &b.name,
            "new-session",
            &format!("refused: {why}"),
            None,
        );
        ApiError::new(StatusCode::BAD_REQUEST, why)
    };
    let Caller::Person { .. } = &c else {
        return Err(refuse("a session cannot start sessions".into()));
    };
    sessions::check_name("name", &b.name).map_err(|e| refuse(e.to_string()))?;
    if !sessions::image_allowed(&svc.docker, &svc.cfg.images, &c.owner_key(), &b.image).await {
        return Err(refuse(format!(
            "image {:?} is neither an approved image ({}) nor a snapshot of yours",
            b.image,
            svc.cfg.images.join(", ")
        )));
    }
    if sessions::list(&svc.docker, &svc.cfg.sockets, &svc.sizes)
        .await?
        .iter()
        .any(|x| x.name == b.name)
        || svc
            .ops
            .all()
            .iter()
            .any(|o| o.kind == OpKind::NewSession && o.session == b.name && !o.state.finished())
    {
        return Err(refuse(format!("a session named {} exists already", b.name)));
    }
    if let Some(k) = &b.ssh_key {
        sessions::check_ssh_key(k).map_err(|e| refuse(e.to_string()))?;
    }
    let mut args = vec![b.image.clone()];
    args.extend(b.ssh_key.clone());
    let s = Session {
        name: b.name.clone(),
        id: String::new(),
        image: b.image.clone(),
        state: "new".into(),
        created: 0,
        age_s: 0,
        size_rw: None,
        size_measured: None,
        gpus: String::new(),
        owner: c.owner_key(),
        socket_dir: None,
    };
    queue_op(&svc, &c, &s, OpKind::NewSession, args, "new".into()).await
}

/// Whether `c` may see operation `op`: its owner, an admin, or from the
/// operation's own session.
fn may_see_op(c: &Caller, op: &Operation) -> bool {
    match c {
        Caller::Session { container_id, .. } => &op.container_id == container_id,
        c => c.is_admin() || c.owner_key() == op.owner,
    }
}

fn op_for(svc: &Service, c: &Caller, id: &str) -> ApiResult<Operation> {
    svc.ops
        .get(id)
        .filter(|op| may_see_op(c, op))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("operation {id}: not found")))
}

async fn list_operations(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<Operation>>> {
    let c = caller!(svc, peer, headers, "GET", "/api/v1/operations");
    Ok(Json(
        svc.ops
            .all()
            .into_iter()
            .filter(|op| may_see_op(&c, op))
            .collect(),
    ))
}

async fn show_operation(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Operation>> {
    let c = caller!(svc, peer, headers, "GET", "/api/v1/operations/ID");
    Ok(Json(op_for(&svc, &c, &id)?))
}

async fn cancel_operation(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Operation>> {
    let c = caller!(svc, peer, headers, "POST", "/api/v1/operations/ID/cancel");
    let op = op_for(&svc, &c, &id)?;
    if op.state.finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("operation {id} has ended ({:?})", op.state).to_lowercase(),
        ));
    }
    let op = svc.cancel(&id)?.unwrap_or(op);
    svc.audit
        .record(&c.describe(), &op.session, "cancel", "ok", Some(&id));
    Ok(Json(op))
}

/// The node's queue: running and waiting operations, in order. Others'
/// identities are shown to admins only.
async fn queue(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let c = caller!(svc, peer, headers, "GET", "/api/v1/queue");
    let items: Vec<serde_json::Value> = svc
        .ops
        .all()
        .into_iter()
        .filter(|op| !op.state.finished())
        .map(|op| {
            if may_see_op(&c, &op) {
                json!({"id": op.id, "kind": op.kind, "session": op.session, "owner": op.owner,
                       "state": op.state, "stage": op.stage, "position": op.position})
            } else {
                json!({"kind": op.kind, "state": op.state, "position": op.position})
            }
        })
        .collect();
    Ok(Json(json!({
        "limits": {"node": svc.cfg.limits.node, "user": svc.cfg.limits.user},
        "operations": items,
    })))
}

/// Server-sent events of one operation: what happened so far, then live,
/// until it ends. Each event's id is its number.
async fn operation_events(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let c = caller!(svc, peer, headers, "GET", "/api/v1/operations/ID/events");
    op_for(&svc, &c, &id)?;
    // Subscribe before reading the log: nothing falls between the two.
    let rx = svc.ops.subscribe(&id);
    let past = std::fs::read_to_string(svc.ops.events_path(&id)).unwrap_or_default();
    let past: Vec<String> = past.lines().map(str::to_string).collect();
    let seq_of = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0)
    };
    let last = past.last().map(|l| seq_of(l)).unwrap_or(0);
    let ended = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .is_some_and(|v| {
                v["event"] == "state"
                    && matches!(v["state"].as_str(), Some("done" | "failed" | "cancelled"))
            })
    };
    let finished = svc.ops.get(&id).is_some_and(|o| o.state.finished());
    struct St {
        past: std::vec::IntoIter<String>,
        rx: tokio::sync::broadcast::Receiver<String>,
        last: u64,
        done: bool,
        finished: bool,
    }
    let st = St {
        past: past.into_iter(),
        rx,
        last,
        done: false,
        finished,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        let line = match st.past.next() {
            Some(l) => l,
            None if st.finished => return None,
            None => loop {
                match st.rx.recv().await {
                    Ok(l) if seq_of(&l) > st.last => break l,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            },
        };
        if ended(&line) {
            st.done = true;
        }
        let ev = Event::default().id(seq_of(&line).to_string()).data(line);
        Some((Ok::<_, std::convert::Infallible>(ev), st))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One of an operation's artifacts: only a file the operation listed, in
/// the owner's outputs, opened without following symlinks.
async fn download(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    method: Method,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> ApiResult<Response> {
    let c = caller!(
        svc,
        peer,
        headers,
        method,
        "/api/v1/operations/ID/files/PATH"
    );
    let op = op_for(&svc, &c, &id)?;
    let refuse = |why: String| {
        svc.audit.record(
            &c.describe(),
            &op.session,
            "download",
            &format!("refused: {why}"),
            Some(&id),
        );
        ApiError::new(StatusCode::NOT_FOUND, why)
    };
    let traversal = path
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..");
    let Some(artifact) = op
        .artifacts
        .iter()
        .find(|a| a.path == path)
        .filter(|_| !traversal)
    else {
        return Err(refuse(format!("{path:?} is not a file of operation {id}")));
    };
    let Some(rel) = &op.output_dir else {
        return Err(refuse(format!("operation {id} has no outputs")));
    };
    let base = svc.cfg.outputs.join(rel);
    let full = base.join(&artifact.path);
    // Every component below the outputs must be a real directory or file.
    let real = std::fs::canonicalize(&full).map_err(|e| refuse(format!("{path}: {e}")))?;
    let real_base = std::fs::canonicalize(&base).map_err(|e| refuse(format!("{rel}: {e}")))?;
    if !real.starts_with(&real_base) || real != full {
        return Err(refuse(format!("{path}: leaves the operation's outputs")));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&full)
        .map_err(|e| refuse(format!("{path}: {e}")))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let file = tokio::fs::File::from_std(file);
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    svc.audit.record(
        &c.describe(),
        &op.session,
        "download",
        &format!("ok: {path}"),
        Some(&id),
    );
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, size.to_string()),
            (
                axum::http::HeaderName::from_static("x-sha256"),
                artifact.sha256.clone(),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
