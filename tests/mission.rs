//! The mission, end to end, with real components only: a scientist's
//! session container (a user made with `adduser`, home 0700, a project,
//! sshd running, planted secrets; tests/support/make-session) is promoted
//! for the local CE's site (`arex-local`, written by ci/arex) with the
//! user's own command and outputs. The xRSL and the ADL promote writes (the
//! image on CVMFS) and a job description for the SIF promote made (uploaded
//! with the job) go to the real A-REX with `gridship submit`; its container
//! RTEs run them with the real Apptainer as the pool account (uid 2001, not
//! the session's 1000); `gridship status --wait` and `gridship get` bring the
//! results back. They equal, byte for byte, what the same command gives in
//! the session; the job ran under Apptainer, with no sshd in the image, and
//! no planted secret is in anything that came back. Where `ci/arex` mounted
//! the real CernVM-FS client of ci/cvmfs's Stratum 0 (the CE's
//! /cvmfs/gridship.test), promote publishes there with the cvmfs-server
//! backend and the CVMFS jobs read the image through the client.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::arc::{arex, container_ce, cvmfs_client, repo};
use common::{Gridship, env, unique};

/// The markers of every planted secret, plain and as PEM bodies carry them
/// in base64 (as tests/promote.rs).
const FORBIDDEN: &[&str] = &[
    "GRIDSHIP-PLANTED",
    "GRIDSHIPPLANTED",
    "R1JJRFNISVAtUExBTlRF",
];

/// The user's analysis: reads a data file and a 0600 calibration from the
/// project beside it, writes results/ (a directory with a subdirectory),
/// and reports on stdout where it ran (Apptainer's variable, uid, whether
/// sshd is in the image) and its environment.
const ANALYSIS: &str = r#"import argparse, json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
a = ap.parse_args()
with open(os.path.join(here, "calib.txt")) as f:
    scale = float(f.read())
with open(os.path.join(here, "data", "energies.txt")) as f:
    rows = [float(l) for l in f if l.strip()]
os.makedirs(os.path.join(a.out, "hist"), exist_ok=True)
summary = {"n": len(rows), "mean": round(scale * sum(rows) / len(rows), 6),
           "python": sys.version.split()[0]}
with open(os.path.join(a.out, "summary.json"), "w") as f:
    json.dump(summary, f, sort_keys=True)
    f.write("\n")
with open(os.path.join(a.out, "hist", "energy.txt"), "w") as f:
    for lo in range(0, 100, 10):
        f.write("%d-%d %d\n" % (lo, lo + 10, sum(1 for r in rows if lo <= r < lo + 10)))
print("analysis:", json.dumps(summary, sort_keys=True))
print("container=%s" % os.environ.get("APPTAINER_CONTAINER", "none"))
print("uid=%d" % os.getuid())
print("sshd=%s" % os.path.exists("/usr/sbin/sshd"))
print("environment:")
for k in sorted(os.environ):
    print("%s=%s" % (k, os.environ[k]))
"#;

fn docker() -> Command {
    Command::new(env("GRIDSHIP_DOCKER"))
}

/// The running session, removed on drop.
struct Session {
    name: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        common::remove_container(&self.name);
    }
}

/// A `dir` repository of the test under the CE's /cvmfs, removed on drop
/// (the real repository's images stay published).
struct Published(Option<PathBuf>);

impl Drop for Published {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn exec_as(s: &Session, user: &str, script: &str, stdin: &[u8]) -> Vec<u8> {
    let mut c = docker()
        .args(["exec", "-i", "-u", user, &s.name, "/bin/sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker exec");
    use std::io::Write;
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "in the session as {user}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Relative path -> bytes of every regular file below `root` (and the
/// directories, as empty entries).
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let t = e.file_type();
            assert!(t.is_file() || t.is_dir(), "{rel}: not a file or directory");
            (rel, t.is_file().then(|| std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

fn scan(root: &Path) -> Vec<String> {
    let key =
        regex::bytes::Regex::new(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{16,}")
            .unwrap();
    let mut hits = Vec::new();
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        for f in FORBIDDEN {
            if data.windows(f.len()).any(|w| w == f.as_bytes()) {
                hits.push(format!("{} holds {f:?}", e.path().display()));
            }
        }
        if key.is_match(&data) {
            hits.push(format!("{} holds a private key", e.path().display()));
        }
    }
    hits
}

fn line_value<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(key))
}

#[test]
fn session_to_grid_job_and_back() {
    let a = arex();
    let ce = container_ce(&a);

    // The session, as a scientist left it (sshd running, secrets planted).
    let s = Session {
        name: unique("gs-mission"),
    };
    let out = Command::new(repo().join("tests/support/make-session"))
        .args([&s.name, "1"])
        .output()
        .expect("make-session runs");
    assert!(
        out.status.success(),
        "make-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pw = String::from_utf8(exec_as(&s, "root", "getent passwd 1000 || true", b"")).unwrap();
    let f: Vec<&str> = pw.trim().split(':').collect();
    assert!(
        f.len() == 7,
        "make-session must make a user with adduser (uid 1000): {pw:?}"
    );
    let (user, home) = (f[0].to_string(), f[5].to_string());
    let mode = String::from_utf8(exec_as(&s, "root", &format!("stat -c %a {home}"), b"")).unwrap();
    assert_eq!(mode.trim(), "700", "adduser's home is 0700");
    assert!(
        !exec_as(&s, "root", "pgrep -x sshd || true", b"").is_empty(),
        "sshd runs in the session"
    );

    // The user's project, written as the user (home 0700, calibration 0600).
    exec_as(
        &s,
        &user,
        "set -e; mkdir -p ~/project/data; cat >~/project/analysis.py; \
         (umask 077; echo 1.25 >~/project/calib.txt); \
         i=0; while [ $i -lt 200 ]; do echo $(( (i * 37) % 100 )).5; i=$((i + 1)); done >~/project/data/energies.txt",
        ANALYSIS.as_bytes(),
    );
    let run = format!("python3 {home}/project/analysis.py --out results");

    // What the command gives in the session, as the user, in a fresh directory.
    let want_tar = exec_as(
        &s,
        &user,
        &format!("set -e; d=$(mktemp -d); cd $d; {run} >stdout.txt; tar -c results"),
        b"",
    );
    let d = tempfile::tempdir().unwrap();
    let want = d.path().join("want");
    std::fs::create_dir(&want).unwrap();
    let mut t = Command::new("tar")
        .args(["-x", "-C", want.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        t.stdin.take().unwrap().write_all(&want_tar).unwrap();
    }
    assert!(t.wait().unwrap().success());
    let want_tree = tree(&want.join("results"));
    assert!(
        want_tree.contains_key("summary.json") && want_tree.contains_key("hist/energy.txt"),
        "{:?}",
        want_tree.keys()
    );

    // promote for the CE's site, with the user's command and outputs; the
    // CVMFS tree goes into the repository the CE's CernVM-FS client mounts
    // (cvmfs-server backend), or else into a `dir` repository of this test
    // under the CE's /cvmfs.
    let g = Gridship::new();
    let promoted = d.path().join("promoted");
    let client = cvmfs_client(&ce);
    let (repo_name, published) = match &client {
        Some(c) => (c.repo.clone(), Published(None)),
        None => {
            let r = format!("{}.test", unique("mission"));
            let dir = ce.cvmfs.join(&r);
            (r, Published(Some(dir)))
        }
    };
    let cvmfs_where: Vec<&str> = match &published.0 {
        Some(dir) => vec!["--cvmfs-root", dir.to_str().unwrap()],
        None => vec!["--cvmfs-backend", "cvmfs-server"],
    };
    let r = g
        .cmd()
        .env("GRIDSHIP_SITE_OVERLAYS", &ce.site_overlays)
        .args([
            "--json",
            "promote",
            &s.name,
            "--site",
            "arex-local",
            "--queue",
            "gpu",
            "--to",
            "sif,cvmfs",
            "--out",
            promoted.to_str().unwrap(),
            "--name",
            "mission",
            "--tag",
            "t1",
            "--cvmfs-repo",
            &repo_name,
            "--run",
            &run,
            "--output",
            "results/",
        ])
        .args(cvmfs_where)
        .output()
        .unwrap();
    let r = common::to_run(r).ok();
    let report = r.json();
    let artifact = |kind: &str| -> String {
        report["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} artifact: {report:#}"))["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (xrsl, adl, sif, cvmfs_image) = (
        artifact("xrsl"),
        artifact("adl"),
        artifact("sif"),
        artifact("cvmfs-link"),
    );
    let cvmfs_tree = PathBuf::from(artifact("cvmfs"));
    assert!(
        !cvmfs_tree.join("usr/sbin/sshd").exists(),
        "sshd is in the promoted tree"
    );
    assert!(
        std::fs::read_to_string(&xrsl)
            .unwrap()
            .contains(&cvmfs_image),
        "the xRSL runs the CVMFS image"
    );
    if let Some(c) = &client {
        // The worker node sees the new revision now, not after its TTL.
        c.sync();
        let served = c.assert_serves(&cvmfs_image);
        assert!(
            !served.join("usr/sbin/sshd").exists(),
            "sshd is in the tree the client serves"
        );
    }

    // The SIF promote made, uploaded with the job (queue cpu: ENV/APPTAINER).
    let sif_adl = promoted.join("mission-sif.adl");
    let r = g
        .cmd()
        .env("GRIDSHIP_SITE_OVERLAYS", &ce.site_overlays)
        .args([
            "jobdesc",
            "--site",
            "arex-local",
            "--queue",
            "cpu",
            "--image",
            &sif,
            "--run",
            &run,
            "--output",
            "results/",
            "--format",
            "adl",
            "--out",
            sif_adl.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    common::to_run(r).ok();

    // Submit all three, wait, get.
    let jobs = d.path().join("jobs.json");
    let auth = [
        "--ca-dir".to_string(),
        a.ca_dir.clone(),
        "--proxy".into(),
        a.proxy.clone(),
        "--jobs-file".into(),
        jobs.display().to_string(),
    ];
    let mut ids = Vec::new();
    for desc in [xrsl.clone(), adl.clone(), sif_adl.display().to_string()] {
        let mut args = vec![
            "--json".to_string(),
            "submit".into(),
            desc.clone(),
            "--ce".into(),
            a.url.clone(),
        ];
        args.extend(auth.iter().cloned());
        let sub = g.run(&args).ok().json();
        ids.push((desc, sub["jobs"][0]["id"].as_str().unwrap().to_string()));
    }
    let mut args = vec!["status".to_string()];
    args.extend(ids.iter().map(|(_, id)| id.clone()));
    args.extend(["--wait".into(), "--timeout".into(), "300".into()]);
    args.extend(auth.iter().cloned());
    let st = g.run(&args);
    let dl = d.path().join("got");
    let mut args = vec!["get".to_string()];
    args.extend(ids.iter().map(|(_, id)| id.clone()));
    args.extend(["--dir".into(), dl.display().to_string()]);
    args.extend(auth.iter().cloned());
    let got = g.run(&args);
    let errs: String = ids
        .iter()
        .map(|(desc, id)| {
            let e = std::fs::read_to_string(dl.join(id).join("stderr.txt")).unwrap_or_default();
            format!("{desc} (job {id}) stderr:\n{e}\n")
        })
        .collect();
    assert_eq!(
        st.code, 0,
        "not every job FINISHED:\n{}\n{}\nget: {}\n{}\n{errs}CE logs: {}/control/job.ID.errors",
        st.stdout, st.stderr, got.stdout, got.stderr, a.dir
    );
    assert_eq!(got.code, 0, "get: {}\n{}", got.stdout, got.stderr);

    let sessions = Path::new(&a.dir).join("session");
    for (desc, id) in &ids {
        let job = dl.join(id);
        let stdout = std::fs::read_to_string(job.join("stdout.txt"))
            .unwrap_or_else(|e| panic!("{desc}: job {id}: stdout.txt: {e}"));
        // The results are what the session gives, byte for byte.
        assert_eq!(
            tree(&job.join("results")),
            want_tree,
            "{desc}: job {id}: results differ from the session's"
        );
        // Under Apptainer, in the promoted image, as the pool account.
        let image = if desc.ends_with("mission-sif.adl") {
            sessions.join(id).join("image.sif").display().to_string()
        } else {
            cvmfs_image.clone()
        };
        assert_eq!(
            line_value(&stdout, "container="),
            Some(image.as_str()),
            "{desc}: job {id}: APPTAINER_CONTAINER\n{stdout}"
        );
        // The CVMFS image: what the worker node's CernVM-FS client serves.
        if let (Some(c), true) = (&client, image == cvmfs_image) {
            c.assert_serves(&image);
        }
        let uid = ce.pool_uid.to_string();
        assert_eq!(
            line_value(&stdout, "uid="),
            Some(uid.as_str()),
            "{desc}: {stdout}"
        );
        assert_ne!(uid, "1000");
        assert_eq!(
            line_value(&stdout, "sshd="),
            Some("False"),
            "{desc}: sshd in the image"
        );
        assert!(
            stdout.starts_with("analysis: {"),
            "{desc}: job {id}: stdout\n{stdout}"
        );
    }
    // No planted secret in anything that came back, nor in the job descriptions.
    let hits = scan(&dl);
    assert!(hits.is_empty(), "secrets came back: {hits:#?}");
    for desc in [&xrsl, &adl] {
        let text = std::fs::read_to_string(desc).unwrap();
        assert!(
            FORBIDDEN.iter().all(|f| !text.contains(f)),
            "{desc} holds a planted secret"
        );
    }

    let mut args = vec!["clean".to_string()];
    args.extend(ids.iter().map(|(_, id)| id.clone()));
    args.extend(auth.iter().cloned());
    g.run(&args).ok();
    drop(published);
}
