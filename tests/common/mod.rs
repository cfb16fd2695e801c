//! Test support: running the real binary, the services `ci/setup` starts,
//! tree snapshots compared file by file, and OCI layouts written by hand
//! (independently of gridship's own store code).
#![allow(dead_code)]

pub mod arc;
pub mod layers;
pub mod serve;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A variable `ci/setup` exports; missing means the services are not up.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the services ci/setup starts \
             (run ci/test, or `. /var/lib/gridship-ci/env` after ci/setup)"
        )
    })
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env("GRIDSHIP_TEST_FIXTURES"))
}

pub fn registry() -> String {
    env("GRIDSHIP_TEST_REGISTRY")
}

pub fn creds() -> String {
    format!(
        "{}:{}",
        env("GRIDSHIP_TEST_REGISTRY_USER"),
        env("GRIDSHIP_TEST_REGISTRY_PASSWORD")
    )
}

/// `--creds USER:PASS --tls-verify=false` for the plain-HTTP test registry.
pub fn creds_args() -> Vec<String> {
    vec!["--creds".into(), creds(), "--tls-verify=false".into()]
}

/// A unique name for registry repositories and files of one test run.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "gridship failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// The gridship binary with its own store.
pub struct Gridship {
    pub store: tempfile::TempDir,
}

impl Gridship {
    pub fn new() -> Gridship {
        Gridship {
            store: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gridship"));
        c.env("GRIDSHIP_STORE", self.store.path());
        c.env_remove("RUST_LOG");
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        let out = self.cmd().args(args).output().expect("gridship runs");
        to_run(out)
    }

    /// `gridship --json cvmfs SUB --repo REPO --root ROOT` on a `dir`
    /// repository; the caller adds the rest.
    pub fn cvmfs_cmd(&self, sub: &str, repo: &str, root: &Path) -> Command {
        let mut c = self.cmd();
        c.args(["--json", "cvmfs", sub, "--repo", repo, "--root"])
            .arg(root);
        c
    }

    /// `cvmfs SUB ... ARGS` on the `dir` repository `repo` at `root`.
    pub fn cvmfs_run(&self, sub: &str, repo: &str, root: &Path, args: &[&str]) -> Run {
        to_run(
            self.cvmfs_cmd(sub, repo, root)
                .args(args)
                .output()
                .expect("gridship runs"),
        )
    }

    /// `cvmfs publish ARGS` (images and options) into the `dir` repository
    /// `repo` at `root`, with the test registry's credentials.
    pub fn cvmfs_publish(&self, repo: &str, root: &Path, args: &[&str]) -> Run {
        to_run(
            self.cvmfs_cmd("publish", repo, root)
                .args(args)
                .args(creds_args())
                .output()
                .expect("gridship runs"),
        )
    }

    /// `cvmfs ls --json` of the `dir` repository `repo` at `root`.
    pub fn cvmfs_ls(&self, repo: &str, root: &Path) -> serde_json::Value {
        self.cvmfs_run("ls", repo, root, &[]).ok().json()
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run a peer tool; panic with its output when it fails.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); ci/setup installs it"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `umoci unpack` of `layout:tag`; returns the rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub target: String,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time of non-directories (directories' times depend on
    /// the order an extractor touched them).
    pub mtime: Option<i64>,
}

/// Everything about a tree that the comparison checks.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub entries: BTreeMap<String, Info>,
    /// Paths sharing an inode, each group sorted; groups sorted.
    pub hardlinks: Vec<Vec<String>>,
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut buf[..]) else {
        return out;
    };
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut val = vec![0u8; 65536];
        if let Ok(m) = rustix::fs::lgetxattr(path, name.as_str(), &mut val[..]) {
            out.insert(name, val[..m].to_vec());
        }
    }
    out
}

pub fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// One image's entry in `cvmfs publish --json`'s `published` list.
pub fn report_of<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["published"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {run}"))
}

/// What a directory entry is, as snapshots name it.
pub fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    }
}

/// podman with a private main store under `tmp` (so anything pulled would
/// show) and `store` (a repository's podmanStore) added read-only, as
/// README's additional image store.
pub fn podman_with_store(tmp: &Path, store: &Path, args: &[&str]) -> Output {
    Command::new("podman")
        .arg("--root")
        .arg(tmp.join("podman-root"))
        .arg("--runroot")
        .arg(tmp.join("podman-run"))
        .args([
            "--storage-driver",
            "overlay",
            "--storage-opt",
            &format!("additionalimagestore={}", store.display()),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .args(args)
        .output()
        .expect("podman runs (ci/setup installs it)")
}

pub fn snapshot(root: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap();
        let key = format!("/{}", rel.display());
        let m = std::fs::symlink_metadata(entry.path()).unwrap();
        let ft = m.file_type();
        let kind = file_kind(ft);
        let info = Info {
            kind,
            mode: if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            },
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_file() { m.len() } else { 0 },
            sha256: if ft.is_file() {
                sha256_file(entry.path())
            } else {
                String::new()
            },
            target: if ft.is_symlink() {
                String::from_utf8_lossy(
                    std::fs::read_link(entry.path())
                        .unwrap()
                        .as_os_str()
                        .as_bytes(),
                )
                .into_owned()
            } else {
                String::new()
            },
            rdev: if ft.is_char_device() || ft.is_block_device() {
                let d = m.rdev();
                (rustix::fs::major(d), rustix::fs::minor(d))
            } else {
                (0, 0)
            },
            xattrs: xattrs(entry.path()),
            mtime: (!ft.is_dir()).then(|| m.mtime()),
        };
        if !ft.is_dir() && m.nlink() > 1 {
            inodes
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(key.clone());
        }
        snap.entries.insert(key, info);
    }
    snap.hardlinks = inodes.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut snap.hardlinks {
        g.sort();
    }
    snap.hardlinks.sort();
    snap
}

/// Differences between two snapshots, one line each (empty when equal).
pub fn diff(ours: &Snapshot, theirs: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (k, a) in &ours.entries {
        match theirs.entries.get(k) {
            None => out.push(format!("only in ours: {k} ({})", a.kind)),
            Some(b) if a != b => {
                out.push(format!("differs: {k}\n   ours:   {a:?}\n   theirs: {b:?}"))
            }
            _ => {}
        }
    }
    for (k, b) in &theirs.entries {
        if !ours.entries.contains_key(k) {
            out.push(format!("only in theirs: {k} ({})", b.kind));
        }
    }
    if ours.hardlinks != theirs.hardlinks {
        out.push(format!(
            "hardlink groups differ:\n   ours:   {:?}\n   theirs: {:?}",
            ours.hardlinks, theirs.hardlinks
        ));
    }
    out
}

/// Assert two trees are equal, listing every difference.
pub fn assert_same_tree(ours: &Path, theirs: &Path, what: &str) {
    let d = diff(&snapshot(ours), &snapshot(theirs));
    assert!(
        d.is_empty(),
        "{what}: gridship's tree differs from the reference ({} differences):\n{}",
        d.len(),
        d.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Paths under `dir` (relative), for checking nothing appeared outside.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

/// The SIF's one squashfs partition (PrimSys): its offset, from sif-info.
pub fn partition_offset(g: &Gridship, sif: &Path) -> u64 {
    let i = g
        .run(&["--json", "sif-info", sif.to_str().unwrap()])
        .ok()
        .json();
    let parts: Vec<&serde_json::Value> = i["descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["data_type"] == 0x4004)
        .collect();
    assert_eq!(parts.len(), 1, "exactly one partition");
    assert_eq!(parts[0]["partition"]["part_type"], 2, "PrimSys");
    parts[0]["offset"].as_u64().unwrap()
}

/// The partition extracted by unsquashfs (reading at the SIF offset).
pub fn unsquash_sif(g: &Gridship, sif: &Path, dir: &Path) {
    let off = partition_offset(g, sif).to_string();
    tool(
        "unsquashfs",
        &[
            "-no-progress",
            "-o",
            &off,
            "-d",
            dir.to_str().unwrap(),
            sif.to_str().unwrap(),
        ],
    );
}

/// Real Apptainer 1.4 through ci/apptainer's wrapper (GRIDSHIP_TEST_APPTAINER):
/// as root by default (a SIF through the kernel's squashfs, permission checks
/// apply), or as an unprivileged uid (user namespace, squashfuse for SIFs).
#[derive(Debug, Clone, Default)]
pub struct Apptainer {
    user: Option<u32>,
    /// (host directory, path inside), mounted read-only.
    mounts: Vec<(PathBuf, String)>,
}

/// The wrapper, checked once to answer: a missing or broken one fails the
/// test with what to do (CI always has it).
pub fn apptainer_program() -> PathBuf {
    static CHECKED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let p = PathBuf::from(env("GRIDSHIP_TEST_APPTAINER"));
            let out = Command::new(&p)
                .arg("--version")
                .output()
                .map_err(|e| format!("GRIDSHIP_TEST_APPTAINER={} cannot run ({e})", p.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !text.starts_with("apptainer version") {
                return Err(format!(
                    "GRIDSHIP_TEST_APPTAINER={} is broken: `--version` gave {}: {text}{}",
                    p.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(p)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}\n  (ci/apptainer writes the wrapper; ci/setup runs it)"))
}

impl Apptainer {
    pub fn root() -> Apptainer {
        Apptainer::default()
    }
    /// As `uid` (gid the same), the way most grid sites run jobs.
    pub fn user(uid: u32) -> Apptainer {
        Apptainer {
            user: Some(uid),
            ..Default::default()
        }
    }
    pub fn is_root(&self) -> bool {
        self.user.is_none()
    }
    /// Mount `host` read-only at `inside` (e.g. a CVMFS repository's tree at /cvmfs/REPO).
    pub fn mount(mut self, host: &Path, inside: &str) -> Apptainer {
        self.mounts.push((host.to_path_buf(), inside.to_string()));
        self
    }
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(apptainer_program());
        c.args(args).current_dir("/tmp");
        c.env_remove("GRIDSHIP_APPTAINER_USER")
            .env_remove("GRIDSHIP_APPTAINER_TIME");
        if let Some(u) = self.user {
            c.env("GRIDSHIP_APPTAINER_USER", u.to_string());
        }
        let mounts: Vec<String> = self
            .mounts
            .iter()
            .map(|(h, i)| format!("{}:{i}", h.display()))
            .collect();
        c.env("GRIDSHIP_APPTAINER_MOUNTS", mounts.join(" "));
        c
    }
    /// Run; the outcome whatever it is.
    pub fn output<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd(args).output().expect("the apptainer wrapper runs")
    }
    /// Run; stdout, or a panic with everything apptainer said.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "apptainer {:?} (user {:?}) failed ({}):\nstdout: {}\nstderr: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            self.user,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }
}

/// A snapshot with what legitimately differs between two publishes of the
/// same images removed: times of files written at publish time (catalog
/// markers, manifests, the public links themselves).
pub fn cvmfs_repo_snapshot(root: &Path) -> Snapshot {
    let mut s = snapshot(root);
    for (p, e) in s.entries.iter_mut() {
        let publish_time = p.ends_with("/.cvmfscatalog")
            || p.starts_with("/.metadata")
            || p.starts_with("/podmanStore")
            || (p.starts_with("/.layers") && p.contains("/.metadata/"))
            || (e.kind == "symlink" && !p.starts_with("/.flat") && !p.starts_with("/.layers"));
        if publish_time {
            e.mtime = None;
        }
    }
    s
}

/// A running development-session container (tests/support/make-session: the
/// Debian fixture, sshd started by its entrypoint, a user project, planted
/// secrets, an 8 MiB pip cache), removed on drop.
pub struct Session {
    pub name: String,
}

impl Session {
    pub fn start(prefix: &str) -> Session {
        Session::start_from(prefix, "")
    }

    /// A session whose image says it came from `recipe` (label gridship.recipe).
    pub fn start_from(prefix: &str, recipe: &str) -> Session {
        let name = unique(prefix);
        let out =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make-session"))
                .arg(&name)
                .env("GRIDSHIP_SESSION_RECIPE", recipe)
                .output()
                .expect("make-session runs");
        assert!(
            out.status.success(),
            "make-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Session { name }
    }

    pub fn exec(&self, script: &str) -> String {
        tool(
            &env("GRIDSHIP_DOCKER"),
            &["exec", &self.name, "/bin/sh", "-c", script],
        )
    }

    /// `docker container inspect --size`'s SizeRootFs: the bytes of the
    /// session's image and of its own changes.
    pub fn size(&self) -> u64 {
        tool(
            &env("GRIDSHIP_DOCKER"),
            &[
                "container",
                "inspect",
                "--size",
                "--format",
                "{{.SizeRootFs}}",
                &self.name,
            ],
        )
        .trim()
        .parse()
        .expect("SizeRootFs is a number")
    }
}

impl Drop for Session {
    /// The container goes, and the snapshots gridship kept of it in the
    /// engine (a test's store is gone with the test).
    fn drop(&mut self) {
        let docker = env("GRIDSHIP_DOCKER");
        let id = Command::new(&docker)
            .args(["inspect", "-f", "{{.Id}}", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let _ = Command::new(&docker)
            .args(["rm", "-f", &self.name])
            .output();
        if let Some(id12) = id.get(..12) {
            remove_snapshots_of(id12);
        }
    }
}

/// Remove a container and the engine images of gridship's snapshots of it.
pub fn remove_container(name: &str) {
    let docker = env("GRIDSHIP_DOCKER");
    let id = Command::new(&docker)
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = Command::new(&docker).args(["rm", "-f", name]).output();
    if let Some(id12) = id.get(..12) {
        remove_snapshots_of(id12);
    }
}

/// Remove the engine images of gridship's snapshots of a container.
pub fn remove_snapshots_of(id12: &str) {
    let docker = env("GRIDSHIP_DOCKER");
    let Ok(out) = Command::new(&docker)
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &format!("gridship-snapshot/{id12}"),
        ])
        .output()
    else {
        return;
    };
    let tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    if !tags.is_empty() {
        let _ = Command::new(&docker).arg("rmi").args(&tags).output();
    }
}
