//! Shared by the jobdesc integration tests: ARC's own parser (through
//! python3-nordugrid-arc) and the local A-REX that `ci/arex` starts.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gridship::jobdesc::JobSpec;
use serde_json::{Value, json};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Variables from the environment, else from the file `ci/arex` writes.
fn ci_env() -> HashMap<String, String> {
    let mut m: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("GRIDSHIP_"))
        .collect();
    // The environment wins; the file fills in what it lacks (e.g. exports a newer
    // ci/arex added after the shell sourced the file).
    let state =
        std::env::var("GRIDSHIP_CI_STATE").unwrap_or_else(|_| "/var/lib/gridship-ci".into());
    if let Ok(text) = std::fs::read_to_string(Path::new(&state).join("arex.env")) {
        for line in text.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                m.entry(k.to_string())
                    .or_insert_with(|| v.trim_matches(['"', '\'']).to_string());
            }
        }
    }
    m
}

pub fn python() -> String {
    let py = ci_env()
        .get("GRIDSHIP_ARC_PYTHON")
        .cloned()
        .unwrap_or_else(|| "/usr/bin/python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import arc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "ARC's python bindings are missing: `{py} -c 'import arc'` fails. Install python3-nordugrid-arc (ci/arex does) \
         and point GRIDSHIP_ARC_PYTHON at the python that has them."
    );
    py
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ArcResult {
    pub ok: bool,
    pub error: String,
    pub jobs: Vec<Value>,
}

/// Parse texts with ARC's library; lang "" lets ARC guess.
pub fn arc_parse(items: &[(String, &str)]) -> Vec<ArcResult> {
    let py = python();
    let input: Vec<Value> = items
        .iter()
        .map(|(t, l)| json!({"text": t, "lang": l}))
        .collect();
    let mut child = Command::new(py)
        .arg(repo().join("tests/support/arc_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ARC parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ARC parser script failed");
    serde_json::from_slice(&out.stdout).expect("ARC parser output")
}

/// A JobSpec in the shape arc_parse.py reports ARC's job description.
pub fn key(j: &JobSpec) -> Value {
    json!({
        "executable": j.executable,
        "arguments": j.arguments,
        "stdin": j.stdin, "stdout": j.stdout, "stderr": j.stderr,
        "input_files": j.input_files.iter().map(|f| json!([f.name, f.source, f.executable])).collect::<Vec<_>>(),
        "output_files": j.output_files.iter().map(|f| json!([f.name, f.target])).collect::<Vec<_>>(),
        "environment": j.environment.iter().map(|e| json!([e.name, e.value])).collect::<Vec<_>>(),
        "walltime_s": j.walltime_s, "cputime_s": j.cputime_s,
        "memory_mb": j.memory_mb, "disk_mb": j.disk_mb,
        "count": j.count, "count_per_node": j.count_per_node, "exclusive": j.exclusive,
        "queue": j.queue,
        "runtime_environments": j.runtime_environments.iter().map(|r| json!([r.name, r.options])).collect::<Vec<_>>(),
        "job_name": j.job_name,
        "notify": j.notify.iter().map(|n| json!([n.email, n.states])).collect::<Vec<_>>(),
        "priority": j.priority, "rerun": j.rerun, "gmlog": j.gmlog,
    })
}

/// Field-by-field comparison with a readable failure.
pub fn assert_same(what: &str, ours: &Value, arcs: &Value) {
    let (Value::Object(a), Value::Object(b)) = (ours, arcs) else {
        panic!("{what}: not objects")
    };
    let mut diffs = Vec::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            diffs.push(format!(
                "  {k}: gridship {v} / ARC {}",
                b.get(k).unwrap_or(&Value::Null)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: fields differ:\n{}",
        diffs.join("\n")
    );
}

#[derive(Clone)]
pub struct Arex {
    pub url: String,
    pub ca_dir: String,
    pub user_cert: String,
    pub user_key: String,
    pub stranger_cert: String,
    pub stranger_key: String,
    pub proxy: String,
    pub client_conf: String,
    pub dir: String,
}

/// The local A-REX from `ci/arex`; fails (not skips) when it is not there.
pub fn arex() -> Arex {
    let m = ci_env();
    let get = |k: &str| {
        m.get(k).cloned().unwrap_or_else(|| {
            panic!("{k} is not set and no arex.env was found: run `ci/arex` (as root) and `source ${{GRIDSHIP_CI_STATE:-/var/lib/gridship-ci}}/arex.env`")
        })
    };
    let a = Arex {
        url: get("GRIDSHIP_AREX_URL"),
        ca_dir: get("GRIDSHIP_AREX_CA_DIR"),
        user_cert: get("GRIDSHIP_AREX_USER_CERT"),
        user_key: get("GRIDSHIP_AREX_USER_KEY"),
        stranger_cert: get("GRIDSHIP_AREX_STRANGER_CERT"),
        stranger_key: get("GRIDSHIP_AREX_STRANGER_KEY"),
        proxy: get("GRIDSHIP_AREX_PROXY"),
        client_conf: get("GRIDSHIP_AREX_CLIENT_CONF"),
        dir: get("GRIDSHIP_AREX_DIR"),
    };
    let pid = Path::new(&a.dir).join("run/arched-arex-ws.pid");
    let alive = std::fs::read_to_string(&pid)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    assert!(
        alive,
        "A-REX is not running ({} has no live PID): run `ci/arex`",
        pid.display()
    );
    a
}

/// The local CE's container side (`ci/arex`): ARC's ENV/SINGULARITY RTE (and
/// ENV/APPTAINER, the same file) running the real Apptainer as the pool account.
pub struct ContainerCe {
    /// Host directory the jobs' apptainer sees at /cvmfs.
    pub cvmfs: PathBuf,
    /// The uid (and gid) jobs run as.
    pub pool_uid: u32,
    /// A site-overlays directory holding the site `arex-local` (this CE).
    pub site_overlays: String,
}

/// The container RTEs of the local A-REX; fails (not skips) when ci/arex did not set them up.
pub fn container_ce(a: &Arex) -> ContainerCe {
    let m = ci_env();
    let get = |k: &str| {
        m.get(k).cloned().unwrap_or_else(|| {
            panic!("{k} is not set: the local A-REX was set up by an older ci/arex; run `ci/arex` (as root) from this checkout")
        })
    };
    let ce = ContainerCe {
        cvmfs: PathBuf::from(get("GRIDSHIP_AREX_CVMFS")),
        pool_uid: get("GRIDSHIP_AREX_POOL_UID")
            .parse()
            .expect("GRIDSHIP_AREX_POOL_UID is a number"),
        site_overlays: get("GRIDSHIP_AREX_SITE_OVERLAYS"),
    };
    for rte in get("GRIDSHIP_AREX_CONTAINER_RTES").split_whitespace() {
        let enabled = Path::new(&a.dir).join("control/rte/enabled").join(rte);
        assert!(
            enabled.exists(),
            "the CE has no enabled RTE {rte} ({} is missing): run `ci/arex`",
            enabled.display()
        );
    }
    assert!(
        ce.cvmfs.is_dir(),
        "{} (the CE's /cvmfs) is missing: run `ci/arex`",
        ce.cvmfs.display()
    );
    ce
}

/// The CE's `/cvmfs/REPO` as a worker node has it: the real CernVM-FS
/// client mount (cvmfs2 over FUSE) of ci/cvmfs's Stratum 0, which `ci/arex`
/// makes and exports as GRIDSHIP_AREX_CVMFS_REPO and _TALK. Tests publish
/// into REPO with `--backend cvmfs-server` (on this host, the Stratum 0's
/// own `/cvmfs/REPO`) and the CE's jobs read it through the client.
pub struct CvmfsClient {
    /// The repository (gridship.test).
    pub repo: String,
    /// The client's mount point on the host: the jobs' `/cvmfs/REPO`.
    pub mount: PathBuf,
    /// The client's talk socket (`cvmfs_talk -p`).
    pub talk: PathBuf,
}

/// The CE's CernVM-FS client, where `ci/arex` mounted one (checked to
/// answer as a client of its repository); `None` where the CE's /cvmfs is a
/// plain directory (no CernVM-FS tarball: ci/cvmfs says why in
/// GRIDSHIP_TEST_CVMFS).
pub fn cvmfs_client(ce: &ContainerCe) -> Option<CvmfsClient> {
    let m = ci_env();
    let repo = m.get("GRIDSHIP_AREX_CVMFS_REPO")?.clone();
    let talk = PathBuf::from(m.get("GRIDSHIP_AREX_CVMFS_TALK").unwrap_or_else(|| {
        panic!("GRIDSHIP_AREX_CVMFS_REPO is set but not GRIDSHIP_AREX_CVMFS_TALK: run `ci/arex`")
    }));
    let c = CvmfsClient {
        mount: ce.cvmfs.join(&repo),
        repo,
        talk,
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(c.mount.to_str().unwrap()));
    assert!(
        line.is_some_and(|l| l.starts_with("cvmfs2 ") && l.split(' ').nth(2) == Some("fuse")),
        "{} is not a CernVM-FS client mount (/proc/mounts: {line:?}): run `ci/arex`",
        c.mount.display()
    );
    assert_eq!(
        c.fqrn_of(&c.mount),
        c.repo,
        "the client at {} serves another repository: run `ci/arex`",
        c.mount.display()
    );
    Some(c)
}

impl CvmfsClient {
    /// The repository the client serves `path` (on the host) from: its
    /// `user.fqrn` attribute, which only a CernVM-FS client answers.
    pub fn fqrn_of(&self, path: &Path) -> String {
        let out = Command::new("getfattr")
            .args(["-n", "user.fqrn", "--only-values", "--absolute-names"])
            .arg(path)
            .output()
            .expect("run getfattr (Debian package attr)");
        assert!(
            out.status.success(),
            "getfattr -n user.fqrn {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The root catalog the Stratum 0 publishes (the C line of
    /// `.cvmfspublished`, over HTTP as the client reads it).
    fn published_root(&self) -> String {
        let url = format!("http://127.0.0.1/cvmfs/{}/.cvmfspublished", self.repo);
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "10", &url])
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(b"C"))
            .map(|h| String::from_utf8_lossy(h).trim().to_string())
            .unwrap_or_else(|| panic!("{url} has no C line"))
    }

    /// Make the client see what was just published (`cvmfs_talk remount
    /// sync`), waiting until it serves the published root catalog.
    pub fn sync(&self) {
        let want = self.published_root();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = Command::new("cvmfs_talk")
                .arg("-p")
                .arg(&self.talk)
                .args(["remount", "sync"])
                .output()
                .expect("run cvmfs_talk");
            let have = Command::new("getfattr")
                .args(["-n", "user.root_hash", "--only-values", "--absolute-names"])
                .arg(&self.mount)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if have == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the CernVM-FS client at {} serves root catalog {have:?}, not the published {want} \
                 (cvmfs_talk -p {} remount sync: {}{})",
                self.mount.display(),
                self.talk.display(),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// Where a job's `/cvmfs/REPO/...` path is on the host, asserting that
    /// the client serves it: the path resolves (a published image's public
    /// link included) to a directory inside the client's mount whose
    /// `user.fqrn` is the repository.
    pub fn assert_serves(&self, job_path: &str) -> PathBuf {
        let rel = job_path
            .strip_prefix(&format!("/cvmfs/{}/", self.repo))
            .unwrap_or_else(|| panic!("{job_path} is not under /cvmfs/{}/", self.repo));
        let host = self.mount.join(rel);
        let real = std::fs::canonicalize(&host).unwrap_or_else(|e| {
            panic!(
                "{job_path}: {} is not readable through the CernVM-FS client: {e}",
                host.display()
            )
        });
        assert!(
            real.starts_with(&self.mount) && real.is_dir(),
            "{job_path}: {} resolves to {}, not a directory in the client's mount",
            host.display(),
            real.display()
        );
        assert_eq!(
            self.fqrn_of(&real),
            self.repo,
            "{job_path}: {} is not served by the CernVM-FS client",
            real.display()
        );
        real
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the gridship binary from the repository root.
pub fn gridship(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridship"));
    c.args(args).current_dir(repo());
    for v in [
        "BEARER_TOKEN",
        "BEARER_TOKEN_FILE",
        "XDG_RUNTIME_DIR",
        "X509_USER_PROXY",
        "X509_USER_CERT",
        "X509_USER_KEY",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run gridship");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A REST client of the local A-REX with the test proxy, and a runtime to drive it.
pub fn rest(a: &Arex) -> (gridship::ce::arc::ArcRest, tokio::runtime::Runtime) {
    rest_at(a, &a.url)
}

/// The same, for another URL of the same CE (e.g. through a forwarder).
pub fn rest_at(a: &Arex, url: &str) -> (gridship::ce::arc::ArcRest, tokio::runtime::Runtime) {
    use gridship::ce::{AuthConfig, AuthMode, arc::ArcRest};
    let client = ArcRest::connect(
        url,
        &AuthConfig {
            ca_dir: Some(a.ca_dir.clone().into()),
            proxy: Some(a.proxy.clone().into()),
            mode: AuthMode::X509,
            timeout: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        },
    )
    .expect("connect to the local A-REX");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (client, rt)
}
