//! ARC REST 1.0 client: submit (ADL), status, kill, clean, outputs, with
//! X.509 (proxy or certificate as TLS client identity, [`tls`]) or bearer
//! token auth, delegation of the proxy when the CE must stage data
//! ([`super::delegation`]), and upload of local inputs. [`ArcRest`] is the
//! [`ComputeElement`] for ARC CEs.
//!
//! Exchanges as A-REX 6.17 implements them (`src/services/a-rex/rest/rest.cpp`):
//! `POST {base}/rest/1.0/jobs?action=new` answers 201 with one entry per job
//! (`status-code` 201 or an error), `POST .../jobs?action=status|kill|clean`
//! takes `{"job":[{"id":..}]}`, whole-request faults carry their message in
//! the HTTP reason phrase with an empty body, and one-element lists come
//! back as objects.

pub(crate) mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::auth::{AuthConfig, read};
use super::delegation::sign_proxy_request;
use super::{
    CeFuture, ComputeElement, Fetch, JobInfo, JobReply, OutputEntry, Phase, Refusal, SubmitReply,
    Submitted, ce_error,
};
use crate::error::{Error, Result};
use crate::jobdesc::validate::{is_remote_url, local_file_source};
use crate::jobdesc::{InputFile, JobSpec, retrievable_outputs};

/// A-REX's per-job control files that arcget's gmlog directory holds.
const GMLOG_FILES: &[&str] = &[
    "errors",
    "failed",
    "local",
    "diag",
    "status",
    "description",
    "input",
    "output",
    "statistics",
];

/// A-REX REST state → phase:
///
/// | REST state                                                   | phase    |
/// |--------------------------------------------------------------|----------|
/// | ACCEPTING ACCEPTED PREPARING PREPARED SUBMITTING QUEUING HELD | idle     |
/// | RUNNING EXITINGLRMS EXECUTED FINISHING KILLING               | running  |
/// | FINISHED                                                     | finished |
/// | FAILED KILLED WIPED                                          | failed   |
/// | OTHER, anything else                                         | unknown  |
pub fn phase(state: &str) -> Phase {
    match state {
        "ACCEPTING" | "ACCEPTED" | "PREPARING" | "PREPARED" | "SUBMITTING" | "QUEUING" | "HELD" => {
            Phase::Idle
        }
        "RUNNING" | "EXITINGLRMS" | "EXECUTED" | "FINISHING" | "KILLING" => Phase::Running,
        "FINISHED" => Phase::Finished,
        "FAILED" | "KILLED" | "WIPED" => Phase::Failed,
        _ => Phase::Unknown,
    }
}

/// A connection to one CE's REST interface.
pub struct ArcRest {
    /// `https://host:port/arex`
    pub base: String,
    http: reqwest::Client,
    /// Proxy PEM when X.509 is used: needed to sign delegations.
    proxy_pem: Option<(PathBuf, Vec<u8>)>,
    /// For messages: which credential is in use.
    pub auth_desc: String,
}

/// Normalise a CE given as host, https://host[:port], or .../arex.
pub fn ce_base(ce: &str) -> Result<String> {
    let ce = ce.trim().trim_end_matches('/');
    let ce = ce.strip_suffix("/rest/1.0").unwrap_or(ce);
    let with_scheme = if ce.contains("://") {
        ce.to_string()
    } else {
        format!("https://{ce}")
    };
    let Some(rest) = with_scheme.strip_prefix("https://") else {
        return Err(Error::BadInput {
            input: format!("--ce {ce}"),
            place: String::new(),
            reason: "ARC REST needs https".into(),
            hint: Some("give https://HOST[:PORT]/arex".into()),
        });
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(Error::bad_input(
            format!("--ce {ce}"),
            "no host in the CE URL",
        ));
    }
    Ok(if rest.contains('/') {
        with_scheme
    } else {
        format!("{with_scheme}/arex")
    })
}

/// A job URL `https://HOST/arex/rest/1.0/jobs/ID`: (its CE's base, ID).
pub fn split_job_url(s: &str) -> Result<Option<(String, String)>> {
    match s.split_once("/rest/1.0/jobs/") {
        Some((base, id)) => Ok(Some((ce_base(base)?, id.trim_end_matches('/').to_string()))),
        None => Ok(None),
    }
}

/// `{"job": {...}}` or `{"job": [...]}` or an empty body.
fn job_entries(body: &str) -> std::result::Result<Vec<serde_json::Value>, String> {
    if body.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        format!(
            "answer is not JSON ({e}): {}",
            body.chars().take(200).collect::<String>()
        )
    })?;
    match v.get("job") {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => Ok(a.clone()),
        Some(o) => Ok(vec![o.clone()]),
    }
}

fn str_field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn replies(body: &str) -> std::result::Result<Vec<JobReply>, String> {
    Ok(job_entries(body)?
        .iter()
        .map(|j| {
            let status_code = str_field(j, "status-code");
            let state = Some(str_field(j, "state")).filter(|s| !s.is_empty());
            let phase = match &state {
                Some(s) if status_code.starts_with('2') => phase(s),
                _ => Phase::Unknown,
            };
            JobReply {
                id: str_field(j, "id"),
                status_code,
                reason: str_field(j, "reason"),
                state,
                phase,
            }
        })
        .collect())
}

impl ArcRest {
    pub fn connect(ce: &str, cfg: &AuthConfig) -> Result<ArcRest> {
        let base = ce_base(ce)?;
        let c = tls::client(&base, cfg)?;
        Ok(ArcRest {
            base,
            http: c.http,
            proxy_pem: c.proxy_pem,
            auth_desc: c.auth_desc,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/rest/1.0/{path}", self.base)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(reqwest::StatusCode, String, reqwest::header::HeaderMap)> {
        let resp = self.send_connected(req, what).await?;
        let status = resp.status();
        if let Err(e) = resp.error_for_status_ref() {
            let msg = e.without_url().to_string();
            let body = resp.text().await.unwrap_or_default();
            let hint = match status.as_u16() {
                401 | 403 => format!(
                    " (authentication with {} was refused: is your identity mapped on the CE?)",
                    self.auth_desc
                ),
                _ => String::new(),
            };
            let body = if body.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", body.chars().take(300).collect::<String>())
            };
            return Err(ce_error(&self.base, format!("{what}: {msg}{body}{hint}")));
        }
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| ce_error(&self.base, format!("{what}: reading answer: {e}")))?;
        Ok((status, body, headers))
    }

    /// Send a request; a connection that fails before the request is sent
    /// (a TLS handshake the CE breaks off, as A-REX now and then does under
    /// load) is made again after 0.2, 0.4 and 0.8 s: nothing reached the
    /// CE, so even a POST is safe to repeat. The fourth failure is the
    /// error, and says so.
    async fn send_connected(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response> {
        const TRIES: u32 = 4;
        let mut tries = 1;
        loop {
            let Some(this) = req.try_clone() else {
                // A streamed body cannot be sent twice.
                return req
                    .send()
                    .await
                    .map_err(|e| ce_error(&self.base, format!("{what}: {}", chain(&e))));
            };
            match this.send().await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() && tries < TRIES => {
                    tracing::info!(
                        "{what}: connecting to {} failed ({}); trying again",
                        self.base,
                        chain(&e)
                    );
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                    tries += 1;
                }
                Err(e) => {
                    let after = if e.is_connect() {
                        format!(" (connecting failed {tries} times)")
                    } else {
                        String::new()
                    };
                    return Err(ce_error(
                        &self.base,
                        format!("{what}: {}{after}", chain(&e)),
                    ));
                }
            }
        }
    }

    /// Delegate the proxy to the CE: it makes a key and a CSR, we sign it
    /// as an RFC 3820 proxy of our proxy and send back the chain.
    pub async fn delegate(&self) -> Result<String> {
        let Some((path, pem)) = &self.proxy_pem else {
            return Err(Error::BadInput {
                input: self.auth_desc.clone(),
                place: String::new(),
                reason: "the job stages data from or to URLs, which needs a delegated X.509 proxy".into(),
                hint: Some("use an X.509 proxy (X509_USER_PROXY, --proxy) for jobs with remote inputs or outputs".into()),
            });
        };
        let (status, csr, headers) = self
            .send(
                self.http
                    .post(self.url("delegations"))
                    .query(&[("action", "new")]),
                "starting delegation",
            )
            .await?;
        if status.as_u16() != 201 {
            return Err(ce_error(
                &self.base,
                format!("starting delegation: expected 201, got {status}"),
            ));
        }
        let loc = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let id = loc
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if id.is_empty() {
            return Err(ce_error(
                &self.base,
                "starting delegation: no delegation id in the Location header",
            ));
        }
        let signed = sign_proxy_request(&path.display().to_string(), pem, csr.as_bytes())?;
        let (status, _, _) = self
            .send(
                self.http
                    .put(self.url(&format!("delegations/{id}")))
                    .header(reqwest::header::CONTENT_TYPE, "application/x-pem-file")
                    .body(signed),
                "storing delegation",
            )
            .await?;
        if !status.is_success() {
            return Err(ce_error(
                &self.base,
                format!("storing delegation {id}: {status}"),
            ));
        }
        Ok(id)
    }

    /// [`ComputeElement::submit`]: delegation where the jobs stage data,
    /// the ADL in one request, then each accepted job's uploads.
    async fn new_jobs(&self, jobs: &[JobSpec], base_dir: &Path) -> Result<Vec<SubmitReply>> {
        // Everything local must exist before the CE holds a job waiting for it.
        for j in jobs {
            for (f, p) in uploads(j, base_dir) {
                if !p.is_file() {
                    return Err(Error::BadInput {
                        input: p.display().to_string(),
                        place: String::new(),
                        reason: format!(
                            "input file '{}' is to be uploaded but does not exist",
                            f.name
                        ),
                        hint: Some(
                            "put it next to the job description or give a URL as its source".into(),
                        ),
                    });
                }
            }
        }
        let needs_delegation = jobs.iter().any(|j| {
            j.input_files
                .iter()
                .any(|f| f.source.as_deref().is_some_and(is_remote_url))
                || j.output_files
                    .iter()
                    .any(|f| f.target.as_deref().is_some_and(is_remote_url))
        });
        let delegation = if needs_delegation && self.proxy_pem.is_some() {
            Some(self.delegate().await?)
        } else if needs_delegation {
            // A token is passed on by A-REX itself where the site supports it.
            tracing::info!("staging with {}: no X.509 delegation", self.auth_desc);
            None
        } else {
            None
        };
        // The CE waits for uploads where an input has no source.
        let sent: Vec<JobSpec> = jobs
            .iter()
            .map(|j| {
                let mut j = j.clone();
                for f in &mut j.input_files {
                    if f.source
                        .as_deref()
                        .is_some_and(|s| local_file_source(s).is_some())
                    {
                        f.source = None;
                    }
                }
                j
            })
            .collect();
        let body = crate::jobdesc::adl::write_with_delegation(&sent, delegation.as_deref());
        let (status, answer, _) = self
            .send(
                self.http
                    .post(self.url("jobs"))
                    .query(&[("action", "new")])
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/xml")
                    .body(body),
                "submitting",
            )
            .await?;
        if status.as_u16() != 201 {
            return Err(ce_error(
                &self.base,
                format!("submitting: expected 201 Created, got {status}"),
            ));
        }
        let reps =
            replies(&answer).map_err(|e| ce_error(&self.base, format!("submitting: {e}")))?;
        if reps.len() != jobs.len() {
            return Err(ce_error(
                &self.base,
                format!(
                    "submitting: sent {} job(s), the CE answered for {}",
                    jobs.len(),
                    reps.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for (j, r) in jobs.iter().zip(reps) {
            if !r.ok() {
                out.push(Err(Refusal {
                    code: r.status_code,
                    reason: r.reason,
                }));
                continue;
            }
            let mut uploaded = Vec::new();
            for (f, p) in uploads(j, base_dir) {
                let data = read(&p, "reading input file")?;
                let url = self.url(&format!("jobs/{}/session/{}", r.id, encode_path(&f.name)));
                self.send(
                    self.http
                        .put(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .body(data),
                    &format!("uploading {} to job {}", f.name, r.id),
                )
                .await?;
                uploaded.push(f.name.clone());
            }
            out.push(Ok(Submitted {
                url: self.url(&format!("jobs/{}", r.id)),
                id: r.id,
                state: r.state,
                name: j.job_name.clone(),
                uploaded,
                delegation: delegation.clone(),
                outputs: retrievable_outputs(j),
            }));
        }
        Ok(out)
    }

    /// The IDs of every job the CE holds for this identity (`GET jobs`).
    async fn get_jobs(&self) -> Result<Vec<String>> {
        let (_, answer, _) = self
            .send(
                self.http
                    .get(self.url("jobs"))
                    .header(reqwest::header::ACCEPT, "application/json"),
                "listing jobs",
            )
            .await?;
        let entries =
            job_entries(&answer).map_err(|e| ce_error(&self.base, format!("listing jobs: {e}")))?;
        Ok(entries
            .iter()
            .map(|j| str_field(j, "id"))
            .filter(|i| !i.is_empty())
            .collect())
    }

    /// Name and state of jobs (GLUE2 `ComputingActivity`: `Name` is ADL's
    /// `ActivityIdentification/Name`, xRSL's jobname), by one `action=info`.
    async fn info(&self, ids: &[String]) -> Result<Vec<JobInfo>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::json!({"job": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>()});
        let (_, answer, _) = self
            .send(
                self.http
                    .post(self.url("jobs"))
                    .query(&[("action", "info")])
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
                "info",
            )
            .await?;
        let entries =
            job_entries(&answer).map_err(|e| ce_error(&self.base, format!("info: {e}")))?;
        Ok(entries
            .iter()
            .map(|j| {
                let act = j.pointer("/info_document/ComputingActivity");
                let name = act
                    .and_then(|a| a.get("Name"))
                    .and_then(|n| n.as_str())
                    .map(str::to_string);
                // State is a list of "model:STATE"; a lone one is a string.
                let states: Vec<&str> = match act.and_then(|a| a.get("State")) {
                    Some(serde_json::Value::Array(a)) => {
                        a.iter().filter_map(|v| v.as_str()).collect()
                    }
                    Some(serde_json::Value::String(s)) => vec![s.as_str()],
                    _ => Vec::new(),
                };
                let state = states
                    .iter()
                    .find_map(|s| s.strip_prefix("arcrest:"))
                    .map(str::to_string);
                JobInfo {
                    id: str_field(j, "id"),
                    name,
                    state,
                }
            })
            .collect())
    }

    /// `action` = status | kill | clean | info, for several jobs at once.
    pub async fn action(&self, action: &str, ids: &[String]) -> Result<Vec<JobReply>> {
        let body = serde_json::json!({"job": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>()});
        let (_, answer, _) = self
            .send(
                self.http
                    .post(self.url("jobs"))
                    .query(&[("action", action)])
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
                action,
            )
            .await?;
        let reps = replies(&answer).map_err(|e| ce_error(&self.base, format!("{action}: {e}")))?;
        Ok(reps)
    }

    /// The entries of a directory in a job's session directory (`""`: its
    /// top): (name, is a directory). A-REX answers `{"file":..,"dir":..}`,
    /// each a string or a list.
    pub async fn list_session(&self, id: &str, dir: &str) -> Result<Vec<(String, bool)>> {
        let path = if dir.is_empty() {
            format!("jobs/{id}/session")
        } else {
            format!("jobs/{id}/session/{}", encode_path(dir))
        };
        let what = format!(
            "listing {} of job {id}",
            if dir.is_empty() { "the session" } else { dir }
        );
        let (_, body, _) = self
            .send(
                self.http
                    .get(self.url(&path))
                    .header(reqwest::header::ACCEPT, "application/json"),
                &what,
            )
            .await?;
        if body.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| ce_error(&self.base, format!("{what}: answer is not JSON ({e})")))?;
        let mut out = Vec::new();
        for (key, is_dir) in [("file", false), ("dir", true)] {
            let names = match v.get(key) {
                Some(serde_json::Value::String(n)) => vec![n.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            for n in names {
                // A name is one path component; anything else would let the
                // CE write outside the download directory.
                if n.is_empty() || n == "." || n == ".." || n.contains('/') {
                    return Err(ce_error(
                        &self.base,
                        format!("{what}: the CE lists an unusable name {n:?}"),
                    ));
                }
                out.push((n, is_dir));
            }
        }
        Ok(out)
    }

    /// Download `name` of a job's session directory into `part`, continuing
    /// from what `part` already holds (HTTP Range); returns the bytes in
    /// `part` afterwards and whether an earlier part was continued.
    pub async fn download(&self, id: &str, name: &str, part: &Path) -> Result<(u64, bool)> {
        use std::io::Write as _;
        let what = format!("downloading {name} of job {id}");
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self
            .http
            .get(self.url(&format!("jobs/{id}/session/{}", encode_path(name))));
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        // Outputs can be large: no limit on the whole transfer.
        req = req.timeout(Duration::from_secs(30 * 24 * 3600));
        let mut resp = self.send_connected(req, &what).await?;
        let status = resp.status().as_u16();
        if status == 416 {
            // Nothing after `have`: the part is complete if the CE's size
            // (Content-Range: bytes */SIZE) says so, else start over.
            let total = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|n| n.trim().parse::<u64>().ok());
            if total == Some(have) {
                return Ok((have, true));
            }
            std::fs::remove_file(part).map_err(|e| Error::io_path(part, "removing", e))?;
            return Box::pin(self.download(id, name, part)).await;
        }
        if !(status == 200 || status == 206) {
            let msg = resp
                .error_for_status_ref()
                .err()
                .map(|e| e.without_url().to_string())
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ce_error(&self.base, format!("{what}: {msg}")));
        }
        let resumed = status == 206;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .map_err(|e| Error::io_path(part, "opening", e))?;
        let mut len = if resumed { have } else { 0 };
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ce_error(&self.base, format!("{what}: {}", chain(&e))))?
        {
            file.write_all(&chunk)
                .map_err(|e| Error::io_path(part, "writing", e))?;
            len += chunk.len() as u64;
        }
        file.sync_all()
            .map_err(|e| Error::io_path(part, "syncing", e))?;
        Ok((len, resumed && have > 0))
    }

    /// One of A-REX's per-job control files (`errors`, `diag`, ...) through
    /// `GET jobs/ID/diagnose/NAME`; `None` when the CE has none.
    pub async fn diagnose(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let resp = self
            .send_connected(
                self.http
                    .get(self.url(&format!("jobs/{id}/diagnose/{name}"))),
                &format!("reading {name} of job {id}"),
            )
            .await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        if let Err(e) = resp.error_for_status_ref() {
            return Err(ce_error(
                &self.base,
                format!("reading {name} of job {id}: {}", e.without_url()),
            ));
        }
        let b = resp
            .bytes()
            .await
            .map_err(|e| ce_error(&self.base, format!("reading {name} of job {id}: {e}")))?;
        Ok(Some(b.to_vec()))
    }

    /// Read one file from a job's session directory.
    pub async fn fetch_file(&self, id: &str, name: &str) -> Result<String> {
        let (_, body, _) = self
            .send(
                self.http
                    .get(self.url(&format!("jobs/{id}/session/{}", encode_path(name)))),
                &format!("reading {name} of job {id}"),
            )
            .await?;
        Ok(body)
    }

    /// Every file and directory under `dir` of a job's session
    /// (recursively), as paths relative to its top.
    async fn walk(&self, id: &str, dir: &str, out: &mut Vec<OutputEntry>) -> Result<()> {
        for (name, is_dir) in self.list_session(id, dir).await? {
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            out.push(OutputEntry {
                path: path.clone(),
                is_dir,
            });
            if is_dir {
                Box::pin(self.walk(id, &path, out)).await?;
            }
        }
        Ok(())
    }
}

impl ComputeElement for ArcRest {
    fn endpoint(&self) -> &str {
        &self.base
    }

    fn credential(&self) -> &str {
        &self.auth_desc
    }

    fn submit<'a>(
        &'a self,
        jobs: &'a [JobSpec],
        base_dir: &'a Path,
    ) -> CeFuture<'a, Vec<SubmitReply>> {
        Box::pin(self.new_jobs(jobs, base_dir))
    }

    fn status<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>> {
        Box::pin(self.action("status", ids))
    }

    fn kill<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>> {
        Box::pin(self.action("kill", ids))
    }

    fn clean<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>> {
        Box::pin(self.action("clean", ids))
    }

    fn list_jobs(&self) -> CeFuture<'_, Vec<String>> {
        Box::pin(self.get_jobs())
    }

    fn job_infos<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobInfo>> {
        Box::pin(self.info(ids))
    }

    fn list_outputs<'a>(&'a self, id: &'a str) -> CeFuture<'a, Vec<OutputEntry>> {
        Box::pin(async move {
            let mut out = Vec::new();
            self.walk(id, "", &mut out).await?;
            Ok(out)
        })
    }

    fn fetch<'a>(&'a self, id: &'a str, name: &'a str, part: &'a Path) -> CeFuture<'a, Fetch> {
        Box::pin(async move {
            let (bytes, resumed) = self.download(id, name, part).await?;
            Ok(Fetch { bytes, resumed })
        })
    }

    fn diagnostic_names(&self) -> &'static [&'static str] {
        GMLOG_FILES
    }

    fn diagnostic<'a>(&'a self, id: &'a str, name: &'a str) -> CeFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.diagnose(id, name))
    }
}

/// Input files the client uploads, with the local file each comes from:
/// no source (beside the description) or a `file://` source.
fn uploads<'j>(j: &'j JobSpec, base_dir: &Path) -> Vec<(&'j InputFile, PathBuf)> {
    j.input_files
        .iter()
        .filter_map(|f| match f.source.as_deref() {
            None => Some((f, base_dir.join(&f.name))),
            Some(s) => local_file_source(s).map(|p| (f, PathBuf::from(p))),
        })
        .collect()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

/// Percent-encode a relative path for a URL, keeping `/`.
fn encode_path(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ce_urls() {
        assert_eq!(
            ce_base("ce.example.org").unwrap(),
            "https://ce.example.org/arex"
        );
        assert_eq!(
            ce_base("https://h:8443/arex/").unwrap(),
            "https://h:8443/arex"
        );
        assert_eq!(ce_base("https://h:8443").unwrap(), "https://h:8443/arex");
        assert_eq!(
            ce_base("https://h/arex/rest/1.0").unwrap(),
            "https://h/arex"
        );
        assert!(ce_base("http://h/arex").is_err());
    }

    #[test]
    fn replies_one_or_many() {
        let one =
            r#"{"job":{"status-code":"201","reason":"Created","id":"abc","state":"ACCEPTING"}}"#;
        let r = replies(one).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].ok());
        assert_eq!(r[0].state.as_deref(), Some("ACCEPTING"));
        let many = r#"{"job":[{"status-code":"201","reason":"Created","id":"a"},{"status-code":"500","reason":"Requested queue x does not match","id":""}]}"#;
        let r = replies(many).unwrap();
        assert!(r[0].ok() && !r[1].ok());
        // A refused job's state says nothing about it.
        assert_eq!((r[0].phase, r[1].phase), (Phase::Unknown, Phase::Unknown));
        let done = r#"{"job":[{"status-code":"200","reason":"OK","id":"a","state":"FINISHED"},{"status-code":"404","reason":"No such job","id":"b","state":"FINISHED"}]}"#;
        let r = replies(done).unwrap();
        assert_eq!((r[0].phase, r[1].phase), (Phase::Finished, Phase::Unknown));
        assert!(r[1].unknown_job());
        assert!(replies("").unwrap().is_empty());
        assert!(replies("<html>").is_err());
    }

    #[test]
    fn job_urls() {
        assert_eq!(
            split_job_url("https://h:8443/arex/rest/1.0/jobs/abc/").unwrap(),
            Some(("https://h:8443/arex".into(), "abc".into()))
        );
        assert_eq!(split_job_url("abc").unwrap(), None);
        assert!(split_job_url("http://h/arex/rest/1.0/jobs/abc").is_err());
    }

    #[test]
    fn states_map_explicitly() {
        for s in [
            "ACCEPTING",
            "ACCEPTED",
            "PREPARING",
            "PREPARED",
            "SUBMITTING",
            "QUEUING",
            "HELD",
        ] {
            assert_eq!(phase(s), Phase::Idle, "{s}");
        }
        for s in ["RUNNING", "EXITINGLRMS", "EXECUTED", "FINISHING", "KILLING"] {
            assert_eq!(phase(s), Phase::Running, "{s}");
        }
        assert_eq!(phase("FINISHED"), Phase::Finished);
        for s in ["FAILED", "KILLED", "WIPED"] {
            assert_eq!(phase(s), Phase::Failed, "{s}");
            assert!(phase(s).is_final());
        }
        assert_eq!(phase("OTHER"), Phase::Unknown);
        assert_eq!(phase(""), Phase::Unknown);
        assert!(phase("FINISHED").is_final() && !phase("KILLING").is_final());
    }
}
