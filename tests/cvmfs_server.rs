//! The `cvmfs-server` and `ingest` backends against a real CernVM-FS 2.12
//! Stratum 0 (ci/cvmfs installs it, with cvmfs_ducc, and sets
//! GRIDSHIP_TEST_CVMFS=1). Each test makes a repository of its own
//! (`cvmfs_server mkfs -o root tN.stratum.test`) and removes it at the end;
//! after every scenario `cvmfs_server check` passes, no transaction is left
//! open, and the published tree is read through `/cvmfs/REPO` by real
//! Apptainer as an unprivileged user (uid 1000, user namespace), as grid
//! sites run it. The last test converts the Debian fixture with
//! `cvmfs_ducc convert-single-image` too and compares DUCC's repository with
//! gridship's, path by path.
//!
//! Without CernVM-FS (GRIDSHIP_TEST_CVMFS other than 1) each test says so in
//! one line on stderr and passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::layers::{self, Comp};
use common::*;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------
// The Stratum 0 and the test repositories
// ---------------------------------------------------------------------

/// Whether ci/cvmfs made a Stratum 0 here. When not, one line on stderr
/// says why (GRIDSHIP_TEST_CVMFS holds the reason) and the test returns.
fn cvmfs_ready(test: &str) -> bool {
    match std::env::var("GRIDSHIP_TEST_CVMFS") {
        Ok(v) if v.trim() == "1" => true,
        Ok(v) => {
            let v = v.replace('\n', " ");
            let hint = if v.contains("GRIDSHIP_CVMFS_TARBALL") {
                ""
            } else {
                " (ci/cvmfs installs CernVM-FS from GRIDSHIP_CVMFS_TARBALL)"
            };
            eprintln!("{test}: skipped, no CernVM-FS Stratum 0: GRIDSHIP_TEST_CVMFS={v}{hint}");
            false
        }
        Err(_) => {
            eprintln!(
                "{test}: skipped, no CernVM-FS Stratum 0: GRIDSHIP_TEST_CVMFS is not set \
                 (ci/cvmfs installs CernVM-FS from GRIDSHIP_CVMFS_TARBALL and writes it to \
                 /var/lib/gridship-ci/env)"
            );
            false
        }
    }
}

/// `mkfs` and `rmfs` change the server's list of repositories (and
/// /etc/fstab); `cvmfs_server list` fails while they run. They run one at
/// a time under this lock; publishes and checks of the tests' own
/// repositories go on meanwhile.
static SERVER: Mutex<()> = Mutex::new(());

fn server_lock() -> MutexGuard<'static, ()> {
    SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

fn cvmfs_server(args: &[&str]) -> Output {
    Command::new("cvmfs_server")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cvmfs_server runs (ci/cvmfs installs it)")
}

fn server_ok(args: &[&str]) -> String {
    let out = cvmfs_server(args);
    assert!(
        out.status.success(),
        "cvmfs_server {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cvmfs_server list`: the repository names. It fails now and then while
/// another repository is made or removed, so it is retried.
fn listed() -> BTreeSet<String> {
    let mut last = String::new();
    for _ in 0..20 {
        let out = cvmfs_server(&["list"]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("cvmfs_server list kept failing: {last}");
}

/// A repository of one test: made by `mkfs -o root`, removed by `rmfs -f`
/// when dropped (also when the test failed).
struct StratumRepo {
    name: String,
}

impl StratumRepo {
    fn make(n: u32) -> StratumRepo {
        let name = format!("t{n}.stratum.test");
        let _x = server_lock();
        if Path::new("/etc/cvmfs/repositories.d").join(&name).exists() {
            eprintln!("{name}: removing what an earlier, killed run left");
            let _ = cvmfs_server(&["rmfs", "-f", &name]);
        }
        server_ok(&["mkfs", "-o", "root", &name]);
        assert!(listed().contains(&name), "mkfs {name}: not listed");
        StratumRepo { name }
    }

    /// The repository's read-write mount on the publisher.
    fn mount(&self) -> PathBuf {
        Path::new("/cvmfs").join(&self.name)
    }

    /// The revision of the published manifest (`S` line of .cvmfspublished,
    /// whose signature follows a `--` line).
    fn revision(&self) -> u64 {
        let p = Path::new("/srv/cvmfs")
            .join(&self.name)
            .join(".cvmfspublished");
        let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for line in b.split(|&c| c == b'\n') {
            if line == b"--" {
                break;
            }
            if let Some(rest) = line.strip_prefix(b"S") {
                return String::from_utf8_lossy(rest).trim().parse().unwrap();
            }
        }
        panic!("{}: no S line", p.display());
    }

    fn in_transaction(&self) -> bool {
        Path::new("/var/spool/cvmfs")
            .join(&self.name)
            .join("in_transaction.lock")
            .exists()
    }

    /// `cvmfs_server check` passes and no transaction is open.
    fn assert_clean(&self, what: &str) {
        assert!(
            !self.in_transaction(),
            "{what}: a transaction is left open on {}",
            self.name
        );
        let out = cvmfs_server(&["check", &self.name]);
        assert!(
            out.status.success(),
            "{what}: cvmfs_server check {} failed ({}):\n{}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The nested catalogs, as `cvmfs_server list-catalogs` names them.
    fn catalogs(&self) -> BTreeSet<String> {
        server_ok(&["list-catalogs", "-x", &self.name])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| l.starts_with('/'))
            .collect()
    }

    /// Apptainer as uid 1000 (a user namespace, as most sites run it) with
    /// the repository at /cvmfs/REPO.
    fn apptainer(&self) -> Apptainer {
        Apptainer::user(1000).mount(&self.mount(), &format!("/cvmfs/{}", self.name))
    }

    /// `apptainer exec /cvmfs/REPO/NAME /bin/busybox sh -c SCRIPT` as uid 1000.
    fn exec(&self, name: &str, script: &str) -> String {
        apptainer_read(
            &self.apptainer(),
            &[
                "exec",
                "--cleanenv",
                &format!("/cvmfs/{}/{name}", self.name),
                "/bin/busybox",
                "sh",
                "-c",
                script,
            ],
        )
    }
}

impl Drop for StratumRepo {
    fn drop(&mut self) {
        let _x = server_lock();
        let out = cvmfs_server(&["rmfs", "-f", &self.name]);
        if !out.status.success() {
            eprintln!(
                "cvmfs_server rmfs -f {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A CernVM-FS client mount of a test repository (what a worker node
/// sees: variant symlinks expanded), unmounted when dropped.
struct ClientMount {
    dir: tempfile::TempDir,
    repo: String,
}

impl ClientMount {
    fn new(repo: &StratumRepo) -> ClientMount {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let conf = d.join("client.conf");
        std::fs::create_dir(d.join("cache")).unwrap();
        std::fs::create_dir(d.join("mnt")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "CVMFS_SERVER_URL=http://127.0.0.1/cvmfs/@fqrn@\n\
                 CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/{name}.pub\n\
                 CVMFS_HTTP_PROXY=DIRECT\n\
                 CVMFS_CACHE_BASE={cache}\n\
                 CVMFS_SHARED_CACHE=no\n\
                 CVMFS_QUOTA_LIMIT=1000\n\
                 CVMFS_RELOAD_SOCKETS={cache}\n\
                 CVMFS_TALK_SOCKET={cache}/cvmfs_io.{name}\n\
                 CVMFS_TALK_OWNER=root\n\
                 CVMFS_CONFIG_REPOSITORY=\n\
                 CVMFS_USE_GEOAPI=no\n",
                name = repo.name,
                cache = d.join("cache").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("mount.log")).unwrap();
        let status = Command::new("cvmfs2")
            .arg("-o")
            .arg(format!(
                "config=/etc/cvmfs/default.conf:{},fsname=cvmfs2,allow_other",
                conf.display()
            ))
            .arg(&repo.name)
            .arg(d.join("mnt"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("cvmfs2 runs (ci/cvmfs installs it)");
        assert!(
            status.success(),
            "cvmfs2 could not mount {}: {}",
            repo.name,
            std::fs::read_to_string(d.join("mount.log")).unwrap_or_default()
        );
        ClientMount {
            dir,
            repo: repo.name.clone(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Apptainer as uid 1000 with this mount at /cvmfs/REPO.
    fn apptainer(&self) -> Apptainer {
        Apptainer::user(1000).mount(&self.path(), &format!("/cvmfs/{}", self.repo))
    }
}

impl Drop for ClientMount {
    fn drop(&mut self) {
        let mnt = self.path();
        let ok = Command::new("umount")
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success())
            || Command::new("umount")
                .arg("-l")
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount {}", mnt.display());
        }
    }
}

// ---------------------------------------------------------------------
// gridship as users run it
// ---------------------------------------------------------------------

/// `gridship -v --json ARGS` (the log at info level: which transactions
/// it opened and why).
fn gs(g: &Gridship, args: &[&str]) -> Run {
    to_run(gs_cmd(g, args).output().expect("gridship runs"))
}

fn gs_cmd(g: &Gridship, args: &[&str]) -> Command {
    let mut c = g.cmd();
    c.args(["-v", "--json"]).args(args);
    c
}

/// `cvmfs publish ARGS --repo REPO --backend BACKEND` with the test
/// registry's credentials.
fn publish_cmd(g: &Gridship, repo: &StratumRepo, backend: &str, args: &[&str]) -> Command {
    let mut c = gs_cmd(g, &["cvmfs", "publish"]);
    c.args(args)
        .args(["--repo", &repo.name, "--backend", backend])
        .args(creds_args());
    c
}

fn publish(g: &Gridship, repo: &StratumRepo, backend: &str, args: &[&str]) -> Run {
    to_run(
        publish_cmd(g, repo, backend, args)
            .output()
            .expect("gridship runs"),
    )
}

fn opened(run: &Run, repo: &StratumRepo) -> usize {
    run.stderr
        .matches(&format!("opened a transaction on {}", repo.name))
        .count()
}

// ---------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------

/// The busybox fixture in the registry, and its public name.
fn busybox() -> (String, String) {
    let name = format!("{}/fixtures/busybox:1", registry());
    (format!("docker://{name}"), name)
}

fn busybox_layout() -> String {
    format!("oci:{}:1", fixtures().join("busybox-oci").display())
}

/// A file of the busybox fixture's rootfs tar.
fn busybox_file(path: &str) -> Vec<u8> {
    static FILES: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let f = std::fs::File::open(fixtures().join("busybox.rootfs.tar")).unwrap();
        let mut a = tar::Archive::new(f);
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if e.header().entry_type().is_file() && (p.starts_with("etc/") || p == "bin/busybox") {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                out.insert(p, data);
            }
        }
        out
    });
    files
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the busybox fixture"))
        .clone()
}

/// What [`READS`] prints in a busybox tree as uid 1000. (Not
/// /etc/passwd: Apptainer adds the user's entry to it.)
fn busybox_reads() -> String {
    format!(
        "1000\n{}  /bin/busybox\n",
        sha256_hex(&busybox_file("bin/busybox"))
    )
}

/// Who runs, and the digest of the busybox binary as read through /cvmfs.
const READS: &str = "id -u; sha256sum /bin/busybox";

/// The busybox fixture plus one layer holding /etc/version = `version`
/// (tag 1 of a new layout at `dir`).
fn busybox_plus(dir: &Path, version: &str) -> String {
    layers::extend_image(
        &fixtures().join("busybox-oci"),
        "1",
        dir,
        "1",
        &[(
            Comp::Gzip,
            vec![layers::file("etc/version", 0o644, version.as_bytes())],
        )],
        |_| {},
    );
    format!("oci:{}:1", dir.display())
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn write_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let hex = sha256_hex(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

/// A two-platform index (tag 1): amd64 is busybox plus /arch, arm64 a
/// one-file image (/arch) — so the host's platform runs under runc and
/// Apptainer.
fn multiarch_busybox(dir: &Path) -> String {
    layers::extend_image(
        &fixtures().join("busybox-oci"),
        "1",
        dir,
        "amd64",
        &[(Comp::Gzip, vec![layers::file("arch", 0o644, b"amd64")])],
        |_| {},
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let amd = index["manifests"][0].clone();
    let (md, ms, _) = layers::write_manifest(
        dir,
        "arm64",
        &[(Comp::Gzip, vec![layers::file("arch", 0o644, b"arm64")])],
    );
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": amd["digest"], "size": amd["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": md, "size": ms,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    });
    let (id, is) = write_blob(dir, &serde_json::to_vec(&idx).unwrap());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": id, "size": is,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    format!("oci:{}:1", dir.display())
}

fn out_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run Apptainer (through ci/apptainer's engine wrapper) with no
/// repository being made or removed meanwhile; one failure is retried
/// once, and said on stderr (a directory image on /cvmfs was once seen
/// empty by Apptainer under the full suite's load, not reproduced alone).
fn apptainer_read(app: &Apptainer, args: &[&str]) -> String {
    let _x = server_lock();
    let out = app.output(args);
    if out.status.success() {
        return String::from_utf8(out.stdout).expect("UTF-8 output");
    }
    eprintln!(
        "apptainer {args:?} failed ({}), trying once more: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).replace('\n', " | ")
    );
    std::thread::sleep(Duration::from_secs(2));
    app.ok(args)
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `YYYYMMDDTHHMMSSZ` of Unix seconds (a nightly's dated tag).
fn stamp(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// ---------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------

/// One image, one transaction: `--layers --podman` into a fresh
/// repository, the check passes, Apptainer reads it as uid 1000; the same
/// publish again opens no transaction and makes no revision; podman runs
/// the image from the repository's podmanStore.
#[test]
fn publish_check_read_then_republish_changes_nothing() {
    if !cvmfs_ready("publish_check_read_then_republish_changes_nothing") {
        return;
    }
    let repo = StratumRepo::make(1);
    let g = Gridship::new();
    let (image, name) = busybox();
    let r0 = repo.revision();
    let run = publish(&g, &repo, "cvmfs-server", &[&image, "--layers", "--podman"]).ok();
    assert_eq!(opened(&run, &repo), 1, "{}", run.stderr);
    assert_eq!(repo.revision(), r0 + 1, "one image, one revision");
    repo.assert_clean("first publish");
    let json = run.json();
    let r = report_of(&json, &name);
    assert_eq!(r["flat_status"], "built");
    let flat = PathBuf::from(r["flat"].as_str().unwrap());
    let mount = repo.mount();
    assert_eq!(
        std::fs::read_link(mount.join(&name)).unwrap(),
        Path::new("../..").join(&flat)
    );
    // Nested catalogs where DUCC has them: .flat, each tree, .layers,
    // .layers/xx and each layerfs.
    let layer = r["layers_built"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let catalogs = repo.catalogs();
    for c in [
        "/.flat".to_string(),
        format!("/{}", flat.display()),
        "/.layers".into(),
        format!("/.layers/{}", &layer[..2]),
        format!("/.layers/{}/{layer}/layerfs", &layer[..2]),
    ] {
        assert!(catalogs.contains(&c), "no nested catalog {c}: {catalogs:?}");
    }
    assert_eq!(repo.exec(&name, READS), busybox_reads());

    // Again: nothing to change, no transaction, no revision.
    let again = publish(&g, &repo, "cvmfs-server", &[&image, "--layers", "--podman"]).ok();
    assert_eq!(opened(&again, &repo), 0, "{}", again.stderr);
    assert_eq!(repo.revision(), r0 + 1, "a publish with nothing to change");
    assert_eq!(report_of(&again.json(), &name)["flat_status"], "present");
    repo.assert_clean("republish");

    // podman runs it from the repository's store, nothing pulled.
    let tmp = tempfile::tempdir().unwrap();
    let store = mount.join("podmanStore");
    let config = r["config_digest"].as_str().unwrap();
    let got = {
        out_ok(
            podman_with_store(
                tmp.path(),
                &store,
                &[
                    "run",
                    "--rm",
                    "--pull=never",
                    "--network=none",
                    "--ulimit",
                    "nofile=1024:1024",
                    "--ulimit",
                    "nproc=4096:4096",
                    &name,
                    "/bin/busybox",
                    "cat",
                    "/etc/passwd",
                ],
            ),
            "podman run",
        )
    };
    assert_eq!(got.as_bytes(), busybox_file("etc/passwd"));
    let ids = out_ok(
        podman_with_store(
            tmp.path(),
            &store,
            &["images", "--format", "{{.ID}} {{.ReadOnly}}"],
        ),
        "podman images",
    );
    assert_eq!(
        ids.trim(),
        format!("{} true", &config.trim_start_matches("sha256:")[..12])
    );
}

/// A two-platform index: both trees, DUCC's aliases, the public name a
/// CVMFS variant symlink that the client expands to the host's platform;
/// an OCI runtime bundle over the tree in /cvmfs runs under runc.
#[test]
fn multi_arch_index_and_runtime_bundle() {
    if !cvmfs_ready("multi_arch_index_and_runtime_bundle") {
        return;
    }
    let repo = StratumRepo::make(2);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let src = multiarch_busybox(&tmp.path().join("multi"));
    let name = "reg.test/multi/busybox:1";
    let r0 = repo.revision();
    let run = publish(
        &g,
        &repo,
        "cvmfs-server",
        &[&src, "--name", name, "--podman"],
    )
    .ok();
    let json = run.json();
    let reports = json["published"].as_array().unwrap();
    let platforms: Vec<&str> = reports
        .iter()
        .map(|r| r["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    assert!(repo.revision() > r0);
    repo.assert_clean("multi-arch publish");
    let mount = repo.mount();
    let mut flats = BTreeMap::new();
    for (r, arch) in reports.iter().zip(["amd64", "arm64"]) {
        let entry = Path::new(".multiarch").join(arch).join(name);
        let flat = PathBuf::from(r["flat"].as_str().unwrap());
        assert_eq!(
            std::fs::read_link(mount.join(&entry)).unwrap(),
            Path::new("../../../..").join(&flat)
        );
        assert_eq!(
            std::fs::read_to_string(mount.join(&entry).join("arch")).unwrap(),
            arch
        );
        flats.insert(arch, flat);
    }
    for (alias, arch) in [("x86_64", "amd64"), ("aarch64", "arm64")] {
        assert_eq!(
            std::fs::read_link(mount.join(".multiarch").join(alias)).unwrap(),
            Path::new(arch)
        );
    }
    // On the publisher the public name is the variant symlink as written;
    // a client expands $(CVMFS_ARCH:-amd64).
    assert_eq!(
        std::fs::read_link(mount.join(name)).unwrap(),
        Path::new("../../.multiarch/$(CVMFS_ARCH:-amd64)").join(name)
    );
    // The client sets CVMFS_ARCH from uname (x86_64 here), which DUCC's
    // alias .multiarch/x86_64 -> amd64 leads to the amd64 tree.
    let client = ClientMount::new(&repo);
    assert_eq!(
        std::fs::read_link(client.path().join(name)).unwrap(),
        Path::new("../../.multiarch")
            .join(std::env::consts::ARCH)
            .join(name),
        "the client expands the variant symlink"
    );
    assert_eq!(
        std::fs::read_to_string(client.path().join(name).join("arch")).unwrap(),
        "amd64"
    );
    // Apptainer on a worker node runs the host's platform by the public name.
    let got = apptainer_read(
        &client.apptainer(),
        &[
            "exec",
            "--cleanenv",
            &format!("/cvmfs/{}/{name}", repo.name),
            "/bin/busybox",
            "sh",
            "-c",
            "cat /arch; echo; id -u; sha256sum /bin/busybox",
        ],
    );
    assert_eq!(got, format!("amd64\n{}", busybox_reads()));
    drop(client);

    // An OCI runtime bundle whose root is the tree in /cvmfs, run by runc.
    let bundle = tmp.path().join("bundle");
    let b = gs(
        &g,
        &[
            "cvmfs",
            "bundle",
            name,
            bundle.to_str().unwrap(),
            "--repo",
            &repo.name,
            "--backend",
            "cvmfs-server",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "cat /arch; echo; id -u; cat /etc/passwd",
        ],
    )
    .ok();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        Path::new(spec["root"]["path"].as_str().unwrap()),
        mount.join(&flats["amd64"]),
        "{}",
        b.stdout
    );
    assert_eq!(spec["root"]["readonly"], true);
    let got = {
        out_ok(
            Command::new("runc")
                .arg("--root")
                .arg(tmp.path().join("runc"))
                .args(["run", "-b"])
                .arg(&bundle)
                .arg(unique("gridship-cvmfs-bundle"))
                .stdin(Stdio::null())
                .output()
                .unwrap(),
            "runc run",
        )
    };
    assert_eq!(
        got,
        format!(
            "amd64\n0\n{}",
            String::from_utf8(busybox_file("etc/passwd")).unwrap()
        )
    );
    repo.assert_clean("after the bundle ran");
}

/// gc with retention on a real repository: a moved tag's old tree and an
/// expired dated name's tree stay through the grace period, then go; the
/// newest dated name and the moving tag's tree stay.
#[test]
fn gc_removes_old_trees_after_the_grace_period() {
    if !cvmfs_ready("gc_removes_old_trees_after_the_grace_period") {
        return;
    }
    let repo = StratumRepo::make(3);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let a = busybox_layout();
    let b = busybox_plus(&tmp.path().join("b"), "b\n");
    let now = unix_now();
    let day = 86_400;
    let old = format!("reg.test/gc/app:site-nightly-{}", stamp(now - 60 * day));
    let newer = format!("reg.test/gc/app:site-nightly-{}", stamp(now - 40 * day));
    let latest = "reg.test/gc/app:latest-site";
    let mut flat = BTreeMap::new();
    for (src, name) in [(&a, old.as_str()), (&a, latest), (&b, newer.as_str())] {
        let run = publish(
            &g,
            &repo,
            "cvmfs-server",
            &[src, "--name", name, "--podman"],
        )
        .ok();
        let f = report_of(&run.json(), name)["flat"]
            .as_str()
            .unwrap()
            .to_string();
        flat.insert(src.clone(), PathBuf::from(f));
    }
    // The moving tag goes to b: a's tree is scheduled for removal.
    let moved = publish(
        &g,
        &repo,
        "cvmfs-server",
        &[&b, "--name", latest, "--podman"],
    )
    .ok();
    assert_eq!(
        report_of(&moved.json(), latest)["replaced"].as_str(),
        flat[&a].to_str()
    );
    repo.assert_clean("publishes");
    let mount = repo.mount();
    let (flat_a, flat_b) = (mount.join(&flat[&a]), mount.join(&flat[&b]));
    let gc = |days_later: i64| {
        let mut c = gs_cmd(
            &g,
            &[
                "cvmfs",
                "gc",
                "--repo",
                &repo.name,
                "--backend",
                "cvmfs-server",
                "--retention-days",
                "30",
                "--grace-period",
                "30",
            ],
        );
        c.env("GRIDSHIP_NOW", (now + days_later * day).to_string());
        let run = to_run(c.output().unwrap()).ok();
        run.json()
    };
    let actions = |items: &serde_json::Value| -> BTreeMap<String, String> {
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["path"].as_str().unwrap().to_string(),
                    i["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // A day later: the old dated name is unpublished (the newer one is
    // the newest of its group and stays), a's tree is kept: its grace
    // period runs.
    let r = repo.revision();
    let first = actions(&gc(1));
    assert_eq!(
        first,
        BTreeMap::from([
            (old.clone(), "unpublished (dated, past retention)".into()),
            (flat[&a].display().to_string(), "kept (grace period)".into()),
        ]),
    );
    assert_eq!(repo.revision(), r + 1);
    repo.assert_clean("gc within the grace period");
    assert!(std::fs::symlink_metadata(mount.join(&old)).is_err());
    assert!(flat_a.join("bin/busybox").is_file());
    // 31 days later: a's tree goes, b's stays and runs.
    let second = actions(&gc(31));
    assert_eq!(
        second,
        BTreeMap::from([(flat[&a].display().to_string(), "removed".into())]),
    );
    assert_eq!(repo.revision(), r + 2);
    repo.assert_clean("gc after the grace period");
    assert!(!flat_a.exists());
    assert!(flat_b.join("bin/busybox").is_file());
    let images: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(mount.join("podmanStore/overlay-images/images.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = images.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [flat[&b].file_name().unwrap().to_str().unwrap()],
        "a's podman image went with its tree"
    );
    for n in [latest, newer.as_str()] {
        assert_eq!(repo.exec(n, "cat /etc/version"), "b\n");
    }
    // Nothing left to collect.
    let r = repo.revision();
    assert!(gc(62).as_array().unwrap().is_empty());
    assert_eq!(
        repo.revision(),
        r,
        "a gc with nothing to do publishes nothing"
    );
}

/// A blob that turns out damaged while the transaction is open: the
/// publish fails naming it, the transaction is aborted (the log says so),
/// nothing is published, and the next publish (blob repaired) goes in.
#[test]
fn a_failed_publish_aborts_its_transaction() {
    if !cvmfs_ready("a_failed_publish_aborts_its_transaction") {
        return;
    }
    let repo = StratumRepo::make(4);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    // Something published already, so the failure is a later revision's.
    let (image, name) = busybox();
    publish(&g, &repo, "cvmfs-server", &[&image]).ok();
    let r1 = repo.revision();
    let before = list(&repo.mount());
    // An image with a layer of its own, in the store with its merge state
    // (a publish into a plain directory): the cvmfs publish merges it
    // from that state, opens its transaction and writes, and reads the
    // damaged layer only when it streams the tree's content.
    let layout = tmp.path().join("damaged");
    let src = busybox_plus(&layout, &format!("{}\n", unique("damaged")));
    let bad = "reg.test/abort/busybox:1";
    g.run(&["copy", &src, "store:abort"]).ok();
    g.run(&[
        "cvmfs",
        "publish",
        "store:abort",
        "--name",
        bad,
        "--repo",
        "warm.example.org",
        "--root",
        tmp.path().join("warm").to_str().unwrap(),
    ])
    .ok();
    let manifest: serde_json::Value = {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let hex = idx["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let top = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = g
        .store
        .path()
        .join("blobs/sha256")
        .join(top.trim_start_matches("sha256:"));
    let good = std::fs::read(&blob).unwrap();
    let mut damaged = good.clone();
    let n = damaged.len();
    damaged[n / 2] ^= 0xff;
    damaged[n - 10] ^= 0xff;
    std::fs::write(&blob, &damaged).unwrap();

    let run = publish(
        &g,
        &repo,
        "cvmfs-server",
        &["store:abort", "--name", bad, "--layers"],
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(&top),
        "the error names the blob: {}",
        run.stderr
    );
    assert_eq!(opened(&run, &repo), 1, "it failed mid-way: {}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "aborted the transaction on {}: nothing was published",
            repo.name
        )),
        "{}",
        run.stderr
    );
    assert!(!repo.in_transaction());
    assert_eq!(repo.revision(), r1, "nothing was published");
    assert_eq!(list(&repo.mount()), before, "the tree is as it was");
    repo.assert_clean("after the abort");
    assert_eq!(repo.exec(&name, READS), busybox_reads());

    // Repaired, the same publish goes in.
    std::fs::write(&blob, &good).unwrap();
    publish(
        &g,
        &repo,
        "cvmfs-server",
        &["store:abort", "--name", bad, "--layers"],
    )
    .ok();
    assert_eq!(repo.revision(), r1 + 1);
    repo.assert_clean("after the repaired publish");
    assert!(repo.exec(bad, "cat /etc/version").starts_with("damaged-"));
}

/// Two publishers of different images into one repository at once: one
/// holds the repository (CVMFS has one transaction at a time), the other
/// says it waits, then goes in; both trees are there and readable.
#[test]
fn two_publishers_take_turns() {
    if !cvmfs_ready("two_publishers_take_turns") {
        return;
    }
    let repo = StratumRepo::make(5);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (image, name) = busybox();
    let other = busybox_plus(&tmp.path().join("other"), "other\n");
    let other_name = "reg.test/turns/busybox:2";
    // Both images in the store: the publishers reach the repository
    // within milliseconds of each other.
    g.run(&[
        "copy",
        &image,
        "store:warm",
        "--creds",
        &creds(),
        "--tls-verify=false",
    ])
    .ok();
    g.run(&["copy", &other, "store:warm2"]).ok();
    let r0 = repo.revision();
    let (a, b) = {
        let spawn = |args: &[&str]| {
            publish_cmd(&g, &repo, "cvmfs-server", args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let a = spawn(&[&image, "--layers"]);
        let b = spawn(&[&other, "--name", other_name, "--layers"]);
        (
            to_run(a.wait_with_output().unwrap()),
            to_run(b.wait_with_output().unwrap()),
        )
    };
    let (a, b) = (a.ok(), b.ok());
    let waited: Vec<&Run> = [&a, &b]
        .into_iter()
        .filter(|r| {
            r.stderr.contains(&format!(
                "repository {}: another publisher holds it; waiting",
                repo.name
            ))
        })
        .collect();
    assert_eq!(
        waited.len(),
        1,
        "one publisher waits for the other:\n{}\n---\n{}",
        a.stderr,
        b.stderr
    );
    assert_eq!((opened(&a, &repo), opened(&b, &repo)), (1, 1));
    assert_eq!(repo.revision(), r0 + 2, "one transaction each");
    repo.assert_clean("two publishers");
    assert_eq!(repo.exec(&name, READS), busybox_reads());
    assert_eq!(repo.exec(other_name, "cat /etc/version"), "other\n");
}

/// The ingest backend (`cvmfs_server ingest` of tar streams, no
/// transaction of gridship's own): the check passes and Apptainer reads
/// it; a layer's whiteout marker stays in its layerfs (as DUCC's do) while
/// the flat tree has the file deleted.
#[test]
fn ingest_backend_publishes_a_readable_tree() {
    if !cvmfs_ready("ingest_backend_publishes_a_readable_tree") {
        return;
    }
    let repo = StratumRepo::make(6);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (image, name) = busybox();
    let r0 = repo.revision();
    let run = publish(&g, &repo, "ingest", &[&image, "--layers"]).ok();
    assert_eq!(opened(&run, &repo), 0, "{}", run.stderr);
    let r1 = repo.revision();
    assert!(r1 > r0, "ingest published");
    repo.assert_clean("ingest publish");
    let json = run.json();
    let flat = PathBuf::from(report_of(&json, &name)["flat"].as_str().unwrap());
    let mount = repo.mount();
    assert_eq!(
        std::fs::read_link(mount.join(&name)).unwrap(),
        Path::new("../..").join(&flat)
    );
    assert!(repo.catalogs().contains(&format!("/{}", flat.display())));
    assert_eq!(repo.exec(&name, READS), busybox_reads());
    // Again: nothing to ingest.
    publish(&g, &repo, "ingest", &[&image, "--layers"]).ok();
    assert_eq!(repo.revision(), r1, "nothing changed, nothing ingested");
    repo.assert_clean("ingest republish");

    // A layer that deletes /etc/group.
    let layout = tmp.path().join("whiteout");
    layers::extend_image(
        &fixtures().join("busybox-oci"),
        "1",
        &layout,
        "1",
        &[(Comp::Gzip, vec![layers::whiteout("etc/.wh.group")])],
        |_| {},
    );
    let deleted = "reg.test/ingest/deleted:1";
    let run = publish(
        &g,
        &repo,
        "ingest",
        &[
            &format!("oci:{}:1", layout.display()),
            "--name",
            deleted,
            "--layers",
        ],
    )
    .ok();
    repo.assert_clean("ingest of a whiteout layer");
    let json = run.json();
    let r = report_of(&json, deleted);
    // Its own top layer (the base's digest differs from the registry's).
    let top = r["layers_built"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let layerfs = mount
        .join(".layers")
        .join(&top[..2])
        .join(&top)
        .join("layerfs");
    assert!(
        layerfs.join("etc/.wh.group").is_file(),
        "the whiteout marker stays in the layer's tree: {:?}",
        list(&layerfs)
    );
    let flat = mount.join(r["flat"].as_str().unwrap());
    assert!(flat.join("etc/passwd").is_file() && !flat.join("etc/group").exists());
}

// ---------------------------------------------------------------------
// DUCC parity
// ---------------------------------------------------------------------

/// One entry of a tree read through a CVMFS mount. The content of files
/// under 4 MiB is CVMFS's own content hash (`user.hash`: the same bytes
/// give the same hash in two repositories of one server), read from the
/// catalog without fetching the data; bigger files are read and hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: String,
    target: String,
    nlink: u64,
    /// Not for directories (their times depend on the writer's order).
    mtime: Option<i64>,
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let mut buf = vec![0u8; 1 << 16];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn cvmfs_snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let e = e.unwrap();
        let rel = format!("/{}", e.path().strip_prefix(root).unwrap().display());
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let kind = file_kind(ft);
        // Files over CVMFS's minimum chunk size are chunked when published
        // through the overlay but not by `cvmfs_server ingest`: their bytes
        // are hashed here.
        let content = if ft.is_file() {
            xattr(e.path(), "user.hash")
                .filter(|h| !h.is_empty() && m.len() < 4 << 20)
                .unwrap_or_else(|| sha256_file(e.path()))
        } else {
            String::new()
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.len() } else { 0 },
                content,
                target: if ft.is_symlink() {
                    String::from_utf8_lossy(
                        std::fs::read_link(e.path()).unwrap().as_os_str().as_bytes(),
                    )
                    .into_owned()
                } else {
                    String::new()
                },
                nlink: if ft.is_file() { m.nlink() } else { 0 },
                mtime: (!ft.is_dir()).then(|| m.mtime()),
            },
        );
    }
    out
}

/// What a layer's tar header says of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TarMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

/// The headers of gzip layers, `/path` -> the last header naming it (the
/// paths of a merged tree take their metadata from the top layer that has
/// them).
fn tar_meta(blobs: &[PathBuf]) -> BTreeMap<String, TarMeta> {
    let mut out = BTreeMap::new();
    for b in blobs {
        let f = std::fs::File::open(b).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let p = format!("/{}", p.trim_start_matches("./").trim_end_matches('/'));
            out.insert(
                p,
                TarMeta {
                    mode: h.mode().unwrap() & 0o7777,
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    mtime: h.mtime().unwrap() as i64,
                },
            );
        }
    }
    out
}

/// The hex digests of a DUCC-layout manifest's layers (either key case).
fn manifest_layers(m: &serde_json::Value) -> Vec<String> {
    let layers = m.get("layers").or_else(|| m.get("Layers")).unwrap();
    layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.get("digest")
                .or_else(|| l.get("Digest"))
                .unwrap()
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect()
}

/// A JSON document with every object key's first letter lower-cased
/// (DUCC's Go encoder writes struct field names: `Config`, `Digest`).
fn lower_keys(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let mut c = k.chars();
                    let k = c
                        .next()
                        .map(|f| f.to_lowercase().chain(c).collect())
                        .unwrap_or_default();
                    (k, lower_keys(v))
                })
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(lower_keys).collect()),
        other => other.clone(),
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// DUCC's chain IDs (not OCI ChainIDs): sha256 of "sha256:<layer 1>", then
/// of "sha256:<previous chain> sha256:<layer i>".
fn ducc_chain_ids(layers: &[String]) -> Vec<String> {
    let mut prev: Option<String> = None;
    layers
        .iter()
        .map(|l| {
            let s = match &prev {
                None => format!("sha256:{l}"),
                Some(p) => format!("sha256:{p} sha256:{l}"),
            };
            let h = sha256_hex(s.as_bytes());
            prev = Some(h.clone());
            h
        })
        .collect()
}

/// The files Apptainer's layout puts at the top of a flat tree, besides
/// /.singularity.d.
const ACTION_LINKS: [&str; 6] = [
    "/.exec",
    "/.run",
    "/.shell",
    "/.test",
    "/environment",
    "/singularity",
];

/// The Debian fixture's paths whose setuid, setgid or sticky bit DUCC's
/// flat tree loses (its overlay writer chmods with Go's permission bits
/// only): gridship keeps the image's mode.
const DUCC_LOSES_SPECIAL_BITS: [&str; 17] = [
    "/tmp",
    "/usr/bin/chage",
    "/usr/bin/chfn",
    "/usr/bin/chsh",
    "/usr/bin/expiry",
    "/usr/bin/gpasswd",
    "/usr/bin/mount",
    "/usr/bin/newgrp",
    "/usr/bin/passwd",
    "/usr/bin/ssh-agent",
    "/usr/bin/su",
    "/usr/bin/umount",
    "/usr/lib/openssh/ssh-keysign",
    "/usr/sbin/unix_chkpwd",
    "/var/local",
    "/var/mail",
    "/var/tmp",
];

/// Files of gridship's Apptainer layout that DUCC's has not.
const GRIDSHIP_ONLY_LAYOUT: [&str; 3] = [
    "/.singularity.d/Singularity",
    "/.singularity.d/env/94-appsbase.sh",
    "/.singularity.d/labels.json",
];

/// Compare DUCC's flat tree with gridship's. Everything must be equal
/// except, listed and each checked: the Apptainer layout (each tool its
/// own scripts), the empty files both write at publish time (times),
/// symlink times (DUCC's are its run's; gridship's the image's), and the
/// special mode bits DUCC loses. Returns the unexpected differences.
fn flat_differences(
    ducc: &BTreeMap<String, Node>,
    ours: &BTreeMap<String, Node>,
    image: &BTreeMap<String, TarMeta>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut lost_bits = BTreeSet::new();
    let mut symlink_times = 0;
    let paths: BTreeSet<&String> = ducc.keys().chain(ours.keys()).collect();
    for p in paths {
        let layout = p.starts_with("/.singularity.d") || ACTION_LINKS.contains(&p.as_str());
        match (ducc.get(p), ours.get(p)) {
            (Some(d), Some(o)) if d == o => {}
            (None, Some(_)) if GRIDSHIP_ONLY_LAYOUT.contains(&p.as_str()) => {}
            (Some(d), Some(o)) if layout => {
                // Each tool writes its own scripts: same kind, mode, owner.
                if (d.kind, d.mode, d.uid, d.gid, &d.target)
                    != (o.kind, o.mode, o.uid, o.gid, &o.target)
                {
                    bad.push(format!(
                        "{p} (Apptainer layout): ducc {d:?}, gridship {o:?}"
                    ));
                }
            }
            (Some(d), Some(o)) => {
                let times_only = Node {
                    mtime: o.mtime,
                    ..d.clone()
                } == *o;
                if times_only
                    && ["/.cvmfscatalog", "/etc/hosts", "/etc/resolv.conf"].contains(&p.as_str())
                {
                    // Written empty by both at publish time.
                } else if times_only && d.kind == "symlink" {
                    symlink_times += 1;
                    if o.mtime != image.get(p).map(|m| m.mtime) {
                        bad.push(format!(
                            "{p}: gridship's symlink time {:?} is not the image's {:?}",
                            o.mtime,
                            image.get(p)
                        ));
                    }
                } else if (Node {
                    mode: o.mode,
                    ..d.clone()
                } == *o)
                    && d.mode == o.mode & 0o777
                    && Some(o.mode) == image.get(p).map(|m| m.mode)
                {
                    lost_bits.insert(p.clone());
                } else {
                    bad.push(format!(
                        "{p}: ducc {d:?}, gridship {o:?}, image {:?}",
                        image.get(p)
                    ));
                }
            }
            (d, o) => bad.push(format!(
                "{p}: only in {}: {:?}",
                if d.is_some() { "DUCC's" } else { "gridship's" },
                d.or(o)
            )),
        }
    }
    let want: BTreeSet<String> = DUCC_LOSES_SPECIAL_BITS
        .iter()
        .map(|s| s.to_string())
        .collect();
    if lost_bits != want {
        bad.push(format!(
            "the paths whose special bits DUCC loses: {lost_bits:?}, expected {want:?}"
        ));
    }
    if symlink_times == 0 {
        bad.push("no symlink whose time differs: DUCC keeps them now? update the list".into());
    }
    bad
}

/// The owners the tar gives that DUCC's layer trees lose
/// (`cvmfs_server ingest` without -k makes every entry CVMFS_USER's, root
/// here) in the Debian fixture's base layer.
const DUCC_LAYER_OWNERS_LOST: [&str; 13] = [
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/shadow",
    "/etc/shadow-",
    "/usr/bin/chage",
    "/usr/bin/expiry",
    "/usr/bin/ssh-agent",
    "/usr/sbin/unix_chkpwd",
    "/var/local",
    "/var/log/btmp",
    "/var/log/lastlog",
    "/var/log/wtmp",
    "/var/mail",
];

/// Compare one layer's `layerfs` trees: equal except the nested catalog
/// marker (ingest makes it 0664, gridship 0644), the owners DUCC drops and
/// the whiteout markers (`.wh.*`, `.wh..wh..opq`): DUCC's ingest keeps
/// them as ordinary empty files, a cvmfs_server transaction drops them
/// (README; gridship warns per layer), counted in `markers_dropped`.
fn layer_differences(
    layer: &str,
    ducc: &BTreeMap<String, Node>,
    ours: &BTreeMap<String, Node>,
    tar: &BTreeMap<String, TarMeta>,
    owners_lost: &mut BTreeSet<String>,
    markers_dropped: &mut BTreeMap<String, usize>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let paths: BTreeSet<&String> = ducc.keys().chain(ours.keys()).collect();
    for p in paths {
        if p == "/.cvmfscatalog" {
            if !(ducc.contains_key(p) && ours.contains_key(p)) {
                bad.push(format!(
                    "layer {layer}: no nested catalog marker in one of them"
                ));
            }
            continue;
        }
        match (ducc.get(p), ours.get(p)) {
            (Some(d), Some(o)) if d == o => {}
            (Some(d), Some(o))
                if (Node {
                    uid: o.uid,
                    gid: o.gid,
                    ..d.clone()
                } == *o)
                    && (d.uid, d.gid) == (0, 0)
                    && tar.get(p).map(|t| (t.uid, t.gid)) == Some((o.uid as u64, o.gid as u64)) =>
            {
                owners_lost.insert(p.clone());
            }
            (Some(d), None)
                if p.rsplit('/').next().unwrap().starts_with(".wh.")
                    && d.kind == "file"
                    && d.size == 0 =>
            {
                *markers_dropped.entry(layer.to_string()).or_default() += 1;
            }
            (d, o) => bad.push(format!(
                "layer {layer}: {p}: ducc {d:?}, gridship {o:?}, tar {:?}",
                tar.get(p)
            )),
        }
    }
    bad
}

/// The same Debian image (from the anonymous mirror) converted by
/// `cvmfs_ducc convert-single-image` into one repository and published by
/// `gridship cvmfs publish --layers --podman` into another; both pass the
/// check; the trees and what DUCC writes for tools (layer records, chains,
/// podman store, manifests) are compared, every difference listed.
#[test]
fn ducc_and_gridship_publish_the_same_debian_tree() {
    if !cvmfs_ready("ducc_and_gridship_publish_the_same_debian_tree") {
        return;
    }
    let ducc_bin = env("GRIDSHIP_TEST_DUCC");
    let anon = env("GRIDSHIP_TEST_REGISTRY_ANON");
    let name = format!("{anon}/fixtures/debian:1");
    let theirs = StratumRepo::make(7);
    let ours = StratumRepo::make(8);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (t0, o0) = (theirs.revision(), ours.revision());
    // Both at once (two repositories): DUCC takes a minute and a half.
    let ducc_tmp = tmp.path().join("ducc");
    std::fs::create_dir(&ducc_tmp).unwrap();
    // DUCC checks the repository with `cvmfs_server list` first, which fails
    // while another test makes or removes one: hold them off until then.
    let held = server_lock();
    let mut ducc = Command::new(&ducc_bin)
        .args(["convert-single-image", "--skip-thin-image", "-t"])
        .arg(&ducc_tmp)
        .arg(format!("http://{name}"))
        .arg(&theirs.name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cvmfs_ducc runs");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = ducc.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut listed_by_ducc = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if listed_by_ducc {
            break;
        }
        listed_by_ducc = line.contains("[cvmfs_server list]");
    }
    drop(held);
    let run = to_run(
        gs_cmd(
            &g,
            &[
                "cvmfs",
                "publish",
                &format!("docker://{name}"),
                "--tls-verify=false",
                "--layers",
                "--podman",
                "--repo",
                &ours.name,
                "--backend",
                "cvmfs-server",
            ],
        )
        .output()
        .unwrap(),
    )
    .ok();
    let status = ducc.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(
        status.success(),
        "cvmfs_ducc failed ({status}):\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let json = run.json();
    let r = report_of(&json, &name);
    let config = r["config_digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let flat = PathBuf::from(r["flat"].as_str().unwrap());
    theirs.assert_clean("DUCC's conversion");
    ours.assert_clean("gridship's publish");
    let (dm, om) = (theirs.mount(), ours.mount());
    assert_eq!(ours.revision(), o0 + 1, "gridship: one revision");
    let ducc_revisions = theirs.revision() - t0;
    assert!(
        ducc_revisions > 7,
        "DUCC publishes per step ({ducc_revisions})"
    );
    eprintln!("revisions for one image: DUCC {ducc_revisions}, gridship 1");
    let mut bad: Vec<String> = Vec::new();

    // The public name and the manifest marker. DUCC's manifest.json is
    // Go's encoding of its struct (keys `SchemaVersion`, `Config`,
    // `Digest`, ...), gridship's the OCI spelling (`schemaVersion`,
    // `config`, `digest`); the same fields and values.
    for m in [&dm, &om] {
        assert_eq!(
            std::fs::read_link(m.join(&name)).unwrap(),
            Path::new("../..").join(&flat)
        );
    }
    let mpath = Path::new(".metadata").join(&name).join("manifest.json");
    let (dman, oman) = (read_json(&dm.join(&mpath)), read_json(&om.join(&mpath)));
    if lower_keys(&dman) != lower_keys(&oman) {
        bad.push(format!("manifest.json: DUCC {dman}, gridship {oman}"));
    }
    let layers = manifest_layers(&oman);
    assert_eq!(layers.len(), 7);

    // The flat trees.
    let blobs: Vec<PathBuf> = layers
        .iter()
        .map(|l| g.store.path().join("blobs/sha256").join(l))
        .collect();
    let image = tar_meta(&blobs);
    bad.extend(flat_differences(
        &cvmfs_snapshot(&dm.join(&flat)),
        &cvmfs_snapshot(&om.join(&flat)),
        &image,
    ));

    // Each layer: the tree and DUCC's records beside it. layers.json is
    // byte for byte DUCC's but for `created` (DUCC: the time of its run;
    // gridship: the image's build time); origin.json is the same bytes.
    let config_json = read_json(&blobs[0].with_file_name(&config));
    let diff_ids: Vec<String> = config_json["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    let built = config_json["created"].as_str().unwrap()[..19].to_string();
    let mut owners_lost = BTreeSet::new();
    let mut markers_dropped = BTreeMap::new();
    for (i, (l, blob)) in layers.iter().zip(&blobs).enumerate() {
        let dir = Path::new(".layers").join(&l[..2]).join(l);
        bad.extend(layer_differences(
            l,
            &cvmfs_snapshot(&dm.join(&dir).join("layerfs")),
            &cvmfs_snapshot(&om.join(&dir).join("layerfs")),
            &tar_meta(std::slice::from_ref(blob)),
            &mut owners_lost,
            &mut markers_dropped,
        ));
        let meta = dir.join(".metadata");
        let dl = std::fs::read(dm.join(meta.join("layers.json"))).unwrap();
        let Ok(ol) = std::fs::read(om.join(meta.join("layers.json"))) else {
            bad.push(format!(
                "layer {l}: gridship wrote no .metadata/layers.json"
            ));
            continue;
        };
        let (dj, oj): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&dl).unwrap(),
            serde_json::from_slice(&ol).unwrap(),
        );
        let (dc, oc) = (
            dj[0]["created"].as_str().unwrap(),
            oj[0]["created"].as_str().unwrap(),
        );
        if !oc.starts_with(&built) || !oc.ends_with('Z') {
            bad.push(format!(
                "layer {l}: gridship's created {oc}, the image was built {built}"
            ));
        }
        if String::from_utf8_lossy(&dl).replace(dc, oc).as_bytes() != ol.as_slice() {
            bad.push(format!(
                "layer {l}: layers.json differs beyond `created`:\n  DUCC: {}\n  gridship: {}",
                String::from_utf8_lossy(&dl),
                String::from_utf8_lossy(&ol)
            ));
        }
        if oj[0]["id"] != diff_ids[i].as_str()
            || oj[0]["compressed-diff-digest"] != format!("sha256:{l}")
        {
            bad.push(format!("layer {i} ({l}): layers.json names {oj}"));
        }
        match (
            std::fs::read(dm.join(meta.join("origin.json"))),
            std::fs::read(om.join(meta.join("origin.json"))),
        ) {
            (Ok(a), Ok(b)) if a == b => {}
            (a, b) => bad.push(format!(
                "layer {l}: origin.json: DUCC {:?}, gridship {:?}",
                a.map(|x| String::from_utf8_lossy(&x).into_owned()),
                b.map(|x| String::from_utf8_lossy(&x).into_owned())
            )),
        }
    }
    // The whiteout markers of layers 3 (/etc/motd, /etc/update-motd.d) and
    // 4 (/etc/skel and /opt/x made opaque) are in DUCC's layer trees only;
    // gridship's publish warned about exactly those layers and counts.
    let warned: BTreeMap<String, usize> = r["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| {
            let w = w.as_str()?;
            let (layer, rest) = w.strip_prefix("layer sha256:")?.split_once(": its ")?;
            let n = rest.split_once(" whiteout marker(s)")?.0.parse().ok()?;
            Some((layer.to_string(), n))
        })
        .collect();
    if markers_dropped.values().sum::<usize>() != 4 || warned != markers_dropped {
        bad.push(format!(
            "whiteout markers not in gridship's layer trees: {markers_dropped:?}; its warnings: {warned:?} ({})",
            r["warnings"]
        ));
    }
    let want: BTreeSet<String> = DUCC_LAYER_OWNERS_LOST
        .iter()
        .map(|s| s.to_string())
        .collect();
    if owners_lost != want {
        bad.push(format!(
            "owners DUCC's layer trees lose: {owners_lost:?}, expected {want:?}"
        ));
    }

    // DUCC's partial root filesystems: one per layer chain, named by its
    // chain IDs, and an empty .dirty-chains; gridship builds the flat tree
    // from its merge of the layers and writes neither.
    let chains: BTreeSet<String> = std::fs::read_dir(dm.join(".chains"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .flat_map(|xx| {
            std::fs::read_dir(dm.join(".chains").join(&xx))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| !n.starts_with('.'))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        chains,
        ducc_chain_ids(&layers).into_iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(
        std::fs::read_dir(dm.join(".dirty-chains")).unwrap().count(),
        0
    );
    assert!(!om.join(".chains").exists() && !om.join(".dirty-chains").exists());

    // podmanStore: the same image (ID, name, config bytes); DUCC enters
    // each layer (ID its diffID, diff -> .layers/xx/D/layerfs, parents and
    // `lower` links), gridship one synthetic layer whose diff is the flat
    // tree. DUCC's `manifest` is a symlink to its re-encoded manifest.json,
    // gridship's the registry's bytes.
    let images = |m: &Path| read_json(&m.join("podmanStore/overlay-images/images.json"));
    let (di, oi) = (images(&dm), images(&om));
    for (who, i) in [("DUCC", &di), ("gridship", &oi)] {
        assert_eq!(i.as_array().unwrap().len(), 1, "{who}: {i}");
        assert_eq!(i[0]["id"], config.as_str(), "{who}");
        assert_eq!(i[0]["names"], serde_json::json!([name]), "{who}");
    }
    let key = format!("={}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("sha256:{config}"))
    });
    let idir = Path::new("podmanStore/overlay-images").join(&config);
    assert_eq!(
        std::fs::read(dm.join(&idir).join(&key)).unwrap(),
        std::fs::read(om.join(&idir).join(&key)).unwrap(),
        "the config bytes"
    );
    assert_eq!(
        std::fs::read_link(dm.join(&idir).join("manifest")).unwrap(),
        Path::new("../../..").join(&mpath)
    );
    assert!(
        std::fs::symlink_metadata(om.join(&idir).join("manifest"))
            .unwrap()
            .is_file()
    );
    let dlayers = read_json(&dm.join("podmanStore/overlay-layers/layers.json"));
    let ids: Vec<&str> = dlayers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        diff_ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "DUCC: one podman layer per image layer"
    );
    assert_eq!(di[0]["layer"], diff_ids[6].as_str());
    for (l, id) in layers.iter().zip(&diff_ids) {
        assert_eq!(
            std::fs::read_link(dm.join("podmanStore/overlay").join(id).join("diff")).unwrap(),
            Path::new("../../../.layers")
                .join(&l[..2])
                .join(l)
                .join("layerfs")
        );
    }
    let olayers = read_json(&om.join("podmanStore/overlay-layers/layers.json"));
    assert_eq!(
        olayers.as_array().unwrap().len(),
        1,
        "gridship: one layer: {olayers}"
    );
    let olayer = olayers[0]["id"].as_str().unwrap();
    assert_eq!(oi[0]["layer"], olayer);
    assert_eq!(
        std::fs::read_link(om.join("podmanStore/overlay").join(olayer).join("diff")).unwrap(),
        Path::new("../../..").join(&flat)
    );

    // What that means for podman: DUCC's layer trees hold the whiteouts as
    // ordinary files, so through its store the image still has the files
    // a later layer deleted (/etc/motd, layer 3) and the contents of a
    // directory a layer made opaque (/etc/skel); through gridship's, the
    // image is the image.
    let script = "ls -a /etc/skel | tr '\\n' ' '; echo; ls /etc/motd 2>&1 | head -1";
    let mut podman_sees = Vec::new();
    for m in [&dm, &om] {
        let out = podman_with_store(
            &tmp.path().join(m.file_name().unwrap()),
            &m.join("podmanStore"),
            &[
                "run",
                "--rm",
                "--pull=never",
                "--network=none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
                "--entrypoint",
                "/bin/sh",
                &name,
                "-c",
                script,
            ],
        );
        podman_sees.push(out_ok(out, "podman run"));
    }
    assert_eq!(
        podman_sees,
        [
            ". .. .bash_logout .bashrc .profile .wh..wh..opq \n/etc/motd\n".to_string(),
            ". .. .profile \nls: cannot access '/etc/motd': No such file or directory\n"
                .to_string(),
        ],
        "podman through DUCC's store, then gridship's"
    );

    // Apptainer runs both flat trees alike, as uid 1000, but for the
    // setuid bit DUCC lost.
    let read = "id -u; cat /etc/debian_version; ls -l /usr/bin/passwd | cut -c1-10";
    let mut seen = Vec::new();
    for repo in [&theirs, &ours] {
        seen.push(apptainer_read(
            &repo.apptainer(),
            &[
                "exec",
                "--cleanenv",
                &format!("/cvmfs/{}/{name}", repo.name),
                "/bin/sh",
                "-c",
                read,
            ],
        ));
    }
    let version = std::fs::read_to_string(om.join(&flat).join("etc/debian_version")).unwrap();
    assert_eq!(
        seen,
        [
            format!("1000\n{version}-rwxr-xr-x\n"),
            format!("1000\n{version}-rwsr-xr-x\n")
        ],
        "DUCC's passwd lost its setuid bit"
    );
    assert!(
        bad.is_empty(),
        "{} unexpected differences between DUCC's and gridship's repositories:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
