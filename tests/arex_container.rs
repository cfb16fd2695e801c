//! Container jobs on the real A-REX that `ci/arex` starts: ARC's own
//! ENV/SINGULARITY RTE (queue gpu) and the same file as ENV/APPTAINER (queue
//! cpu) run the job's executable inside the image with the real Apptainer, as
//! the pool account (not root, not the first `adduser` uid), for both image
//! kinds: a CVMFS flat tree published by `gridship cvmfs publish` and a SIF
//! made by `gridship sif` that the client uploads into the session directory.
//! Where `ci/arex` mounted the real CernVM-FS client of ci/cvmfs's Stratum 0
//! at the CE's /cvmfs/gridship.test, the tree is published there with the
//! cvmfs-server backend and the job reads it through the client; otherwise
//! into a `dir` repository of the test under the CE's /cvmfs.
//! Job descriptions are gridship's own (`gridship jobdesc` for the CE's site
//! profile `arex-local`), sent with `gridship submit`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::arc::{Arex, ContainerCe, arex, container_ce, cvmfs_client, repo};
use common::{Gridship, env, fixtures, unique};

/// The Debian fixture (python3, openssh-server) as an OCI layout reference.
fn debian() -> (String, String) {
    let f: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("fixtures.json")).expect("fixtures.json (ci/fixtures)"),
    )
    .unwrap();
    let d = &f["debian"];
    (
        format!(
            "oci:{}:{}",
            d["oci_layout"].as_str().unwrap(),
            d["oci_tag"].as_str().unwrap()
        ),
        d["image"].as_str().unwrap().to_string(),
    )
}

/// `/etc/os-release` of the fixture image, read by the engine (not by gridship).
fn os_release_of(image: &str) -> String {
    let out = Command::new(env("GRIDSHIP_DOCKER"))
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "cat",
            image,
            "/etc/os-release",
        ])
        .output()
        .expect("run the engine's client");
    assert!(
        out.status.success(),
        "docker run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `dir` repository of the test under the CE's /cvmfs, removed when
/// dropped (the real repository's images stay published).
struct Published(Option<PathBuf>);

impl Drop for Published {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn auth(a: &Arex, jobs: &Path) -> Vec<String> {
    vec![
        "--ca-dir".into(),
        a.ca_dir.clone(),
        "--proxy".into(),
        a.proxy.clone(),
        "--jobs-file".into(),
        jobs.display().to_string(),
    ]
}

/// What the job printed: os-release, then uid and gid, then its environment.
struct Shown {
    os_release: String,
    uid: u32,
    gid: u32,
    env: BTreeMap<String, String>,
}

fn parse_shown(out: &str) -> Shown {
    let parts: Vec<&str> = out.split("@@\n").collect();
    assert_eq!(parts.len(), 3, "job stdout has three parts:\n{out}");
    let ids: Vec<u32> = parts[1]
        .lines()
        .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("id line {l:?}")))
        .collect();
    assert_eq!(ids.len(), 2, "uid and gid lines:\n{out}");
    let env = parts[2]
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Shown {
        os_release: parts[0].to_string(),
        uid: ids[0],
        gid: ids[1],
        env,
    }
}

fn jobdesc(
    g: &Gridship,
    ce: &ContainerCe,
    queue: &str,
    image: &str,
    template: &str,
    format: &str,
    out: &Path,
) {
    let t = repo().join("tests/data/arex-container").join(template);
    g.run(&[
        "jobdesc",
        "--site-overlays",
        &ce.site_overlays,
        "--site",
        "arex-local",
        "--queue",
        queue,
        "--image",
        image,
        "--template",
        t.to_str().unwrap(),
        "--format",
        format,
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
}

fn submit(g: &Gridship, a: &Arex, jobs: &Path, desc: &Path) -> serde_json::Value {
    let mut args = vec![
        "--json".to_string(),
        "submit".into(),
        desc.display().to_string(),
        "--ce".into(),
        a.url.clone(),
    ];
    args.extend(auth(a, jobs));
    g.run(&args).ok().json()["jobs"][0].clone()
}

#[test]
fn container_jobs_run_in_the_image_as_the_pool_account() {
    let a = arex();
    let ce = container_ce(&a);
    let (oci, engine_image) = debian();
    let g = Gridship::new();
    let d = tempfile::tempdir().unwrap();
    let jobs = d.path().join("jobs.json");

    // Both images at once (each gridship with its own store): (a) a CVMFS flat
    // tree, in the repository the CE's CernVM-FS client mounts (cvmfs-server
    // backend) or else in a `dir` repository of this test under the CE's
    // /cvmfs, (b) a SIF beside the job description, uploaded as an input file.
    let worker_cvmfs = cvmfs_client(&ce);
    let (repo_name, published) = match &worker_cvmfs {
        Some(c) => (c.repo.clone(), Published(None)),
        None => {
            let r = format!("{}.test", unique("arex-container"));
            let dir = ce.cvmfs.join(&r);
            (r, Published(Some(dir)))
        }
    };
    let name = "gridship.test/debian:arex-container";
    let mut publish = vec![
        "--json", "cvmfs", "publish", &oci, "--name", name, "--repo", &repo_name,
    ];
    let root = published.0.as_ref().map(|p| p.display().to_string());
    match &root {
        Some(root) => publish.extend(["--root", root.as_str()]),
        None => publish.extend(["--backend", "cvmfs-server"]),
    }
    let sif_dir = d.path().join("sif");
    std::fs::create_dir(&sif_dir).unwrap();
    let sif = sif_dir.join("image.sif");
    std::thread::scope(|s| {
        s.spawn(|| {
            g.run(&publish).ok();
        });
        s.spawn(|| {
            Gridship::new()
                .run(&["sif", &oci, sif.to_str().unwrap()])
                .ok();
        });
    });
    let cvmfs_image = format!("/cvmfs/{repo_name}/{name}");
    if let Some(c) = &worker_cvmfs {
        // The worker node sees the new revision now, not after its TTL.
        c.sync();
        c.assert_serves(&cvmfs_image);
    }
    let cvmfs_adl = d.path().join("cvmfs.adl");
    jobdesc(
        &g,
        &ce,
        "gpu",
        &cvmfs_image,
        "show-cvmfs.xrsl",
        "adl",
        &cvmfs_adl,
    );
    let adl = std::fs::read_to_string(&cvmfs_adl).unwrap();
    assert!(
        adl.contains("<Name>ENV/SINGULARITY</Name>")
            && adl.contains(&format!("<Option>{cvmfs_image}</Option>")),
        "the ADL asks for the queue's container RTE with the image:\n{adl}"
    );

    let sif_xrsl = sif_dir.join("job.xrsl");
    jobdesc(
        &g,
        &ce,
        "cpu",
        "image.sif",
        "show-sif-upload.xrsl",
        "xrsl",
        &sif_xrsl,
    );
    let x = std::fs::read_to_string(&sif_xrsl).unwrap();
    assert!(
        x.contains(r#"(runtimeenvironment = "ENV/APPTAINER" "image.sif")"#),
        "the xRSL asks for ENV/APPTAINER with the staged SIF:\n{x}"
    );

    let job_a = submit(&g, &a, &jobs, &cvmfs_adl);
    let job_b = submit(&g, &a, &jobs, &sif_xrsl);
    assert_eq!(job_b["uploaded"], serde_json::json!(["image.sif"]));
    let ids = [
        job_a["id"].as_str().unwrap().to_string(),
        job_b["id"].as_str().unwrap().to_string(),
    ];

    let mut args = vec!["--json".to_string(), "status".into()];
    args.extend(ids.iter().cloned());
    args.extend(["--wait".into(), "--wait-timeout".into(), "300".into()]);
    args.extend(auth(&a, &jobs));
    let st = g.run(&args).ok().json();

    let client = gridship::ce::arc::ArcRest::connect(
        &a.url,
        &gridship::ce::AuthConfig {
            ca_dir: Some(a.ca_dir.clone().into()),
            proxy: Some(a.proxy.clone().into()),
            mode: gridship::ce::AuthMode::X509,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetch = |id: &str, f: &str| rt.block_on(client.fetch_file(id, f)).unwrap_or_default();

    let expected_os = os_release_of(&engine_image);
    assert!(expected_os.contains("bookworm"), "{expected_os}");
    let sessions = Path::new(&a.dir).join("session");
    for (id, image) in ids.iter().zip([
        cvmfs_image.clone(),
        sessions
            .join(&ids[1])
            .join("image.sif")
            .display()
            .to_string(),
    ]) {
        let state = st["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id.as_str())
            .unwrap_or_else(|| panic!("status has no job {id}: {st:#}"))["state"]
            .as_str()
            .unwrap_or("?");
        let (out, err) = (fetch(id, "stdout.txt"), fetch(id, "stderr.txt"));
        assert_eq!(
            state, "FINISHED",
            "job {id} ({image}): {state}\nstdout:\n{out}\nstderr:\n{err}\nCE log: {}/control/job.{id}.errors",
            a.dir
        );
        let shown = parse_shown(&out);
        // Inside the image: the fixture's os-release (bookworm; apptainer's own
        // root is Debian sid), and Apptainer says which image it runs.
        assert_eq!(shown.os_release, expected_os, "job {id}: /etc/os-release");
        assert_eq!(
            shown.env.get("APPTAINER_CONTAINER").map(String::as_str),
            Some(image.as_str()),
            "job {id}: APPTAINER_CONTAINER\n{out}"
        );
        // As the pool account: neither root nor the first `adduser` uid.
        assert_eq!(
            (shown.uid, shown.gid),
            (ce.pool_uid, ce.pool_uid),
            "job {id}: uid and gid"
        );
        assert!(shown.uid != 0 && shown.uid != 1000);
        // The session directory is the job's home and working directory.
        let session = sessions.join(id).display().to_string();
        assert_eq!(shown.env.get("HOME"), Some(&session), "job {id}: HOME");
        assert_eq!(shown.env.get("PWD"), Some(&session), "job {id}: PWD");
        // The CVMFS image: what the worker node's CernVM-FS client serves.
        if let (Some(c), true) = (&worker_cvmfs, image == cvmfs_image) {
            c.assert_serves(&image);
        }
    }

    let mut args = vec!["clean".to_string()];
    args.extend(ids.iter().cloned());
    args.extend(auth(&a, &jobs));
    g.run(&args).ok();
    drop(published);
}
