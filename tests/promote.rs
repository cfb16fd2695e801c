//! `gridship promote` on a real session container (tests/support/make-session:
//! the Debian fixture with sshd started by its entrypoint, a user project, a
//! pip cache, planted secrets of every kind and a user's 0700 home), on the
//! real engine; outputs read back with unsquashfs, real Apptainer (as root
//! and as a pool account) and `docker run`, job descriptions with ARC's own
//! parser.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const CACHE_MB: u64 = 8;

/// Planted secrets: path, the kind promote must report.
const PLANTED: &[(&str, &str)] = &[
    ("/root/.ssh/id_ed25519", "private key"),
    ("/opt/analysis/calib.dat", "private key"),
    (
        "/tmp/x509up_u1000",
        "X.509 proxy (certificate and private key)",
    ),
    (
        "/var/lib/grid/session.pem",
        "X.509 proxy (certificate and private key)",
    ),
    ("/tmp/bt_u1000", "bearer token"),
    ("/root/.cache/session-state", "bearer token"),
    ("/root/.netrc", "netrc"),
    ("/root/.git-credentials", "git credentials"),
    ("/root/.docker/config.json", "registry credentials"),
    ("/root/.aws/credentials", "cloud credentials"),
    ("/root/.bash_history", "shell history"),
    ("/root/.python_history", "shell history"),
];
const PLANTED_ENV: &[&str] = &["GITHUB_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"];

/// Text no output may hold: the markers of every planted secret, plain and
/// as the base64 the PEM bodies carry.
const FORBIDDEN: &[&str] = &[
    "GRIDSHIP-PLANTED",
    "GRIDSHIPPLANTED",
    "R1JJRFNISVAtUExBTlRF",
];

/// A real PEM private-key block (binaries such as ssh or libgnutls quote the
/// marker, never followed by a base64 body). Written here independently of
/// promote's own scanner.
fn key_block() -> regex::bytes::Regex {
    regex::bytes::Regex::new(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{16,}")
        .unwrap()
}

fn docker(args: &[&str]) -> String {
    tool(&env("GRIDSHIP_DOCKER"), args)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// sha256 of every file below `dir` in the container, by relative path.
fn project_hashes_in(s: &Session, dir: &str) -> BTreeMap<String, String> {
    s.exec(&format!(
        "cd {dir} && find . -type f -exec sha256sum {{}} + | sort -k2"
    ))
    .lines()
    .map(|l| {
        let (h, p) = l.split_once("  ").unwrap();
        (p.trim_start_matches("./").to_string(), h.to_string())
    })
    .collect()
}

fn project_hashes_at(root: &Path) -> BTreeMap<String, String> {
    let base = root.join("work/project");
    walkdir::WalkDir::new(&base)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(&base).unwrap().display().to_string(),
                sha256_file(e.path()),
            )
        })
        .collect()
}

/// Every regular file below `root` holding forbidden text, and the bytes
/// of all regular files.
fn scan_tree(root: &Path) -> (Vec<String>, u64) {
    let mut hits = Vec::new();
    let mut bytes = 0;
    let key = key_block();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        bytes += data.len() as u64;
        for f in FORBIDDEN {
            if memmem(&data, f.as_bytes()) {
                hits.push(format!("{} holds {f:?}", e.path().display()));
            }
        }
        // ELF objects are left out: libgnutls carries its self-test keys (public
        // test vectors) as PEM text, and no one reads a key file out of a binary.
        if !data.starts_with(b"\x7fELF") && key.is_match(&data) {
            hits.push(format!("{} holds a private key", e.path().display()));
        }
    }
    (hits, bytes)
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn removed_paths(report: &serde_json::Value, rule: &str) -> BTreeMap<String, String> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in the report: {:#}", report["warnings"]))["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn artifact(report: &serde_json::Value, kind: &str) -> String {
    report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} artifact: {report:#}"))["path"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Credential files make-session leaves in the session (bob's password hash
/// among them).
const CREDENTIAL_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssl/private",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/security/opasswd",
    "/var/cache/debconf/passwords.dat",
];

/// `kept` of a rule's report: path → reason.
fn kept_paths(report: &serde_json::Value, rule: &str) -> BTreeMap<String, String> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rule"] == rule)
        .flat_map(|r| r["kept"].as_array().unwrap().iter())
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn changed_paths(report: &serde_json::Value, rule: &str) -> BTreeMap<String, String> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in the report"))["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Apptainer as a grid job runs it: the SIF as root through the kernel's
/// squashfs (permission checks apply, as with a setuid install), and the
/// CVMFS tree bound at /cvmfs/REPO as a pool account (uid 65534). Each with
/// the image path to give `apptainer exec`.
fn grid_runs(report: &serde_json::Value, out: &Path) -> Vec<(Apptainer, String)> {
    let link = artifact(report, "cvmfs-link");
    let repo = link.split('/').nth(2).unwrap().to_string();
    vec![
        (Apptainer::root(), artifact(report, "sif")),
        (
            Apptainer::user(65534).mount(&out.join("cvmfs"), &format!("/cvmfs/{repo}")),
            link,
        ),
    ]
}

/// A directory repository under `out`, named as worker nodes would mount
/// it: promote puts its /cvmfs path in the job only for a named repository.
fn cvmfs_repo_args(out: &Path) -> [String; 4] {
    [
        "--cvmfs-repo".into(),
        "promoted.gridship.test".into(),
        "--cvmfs-root".into(),
        out.join("cvmfs").display().to_string(),
    ]
}

#[test]
fn session_promoted_without_sshd_or_secrets_runs_the_project() {
    let s = Session::start("gs-promote");
    assert!(
        !s.exec("pgrep -x sshd || true").trim().is_empty(),
        "sshd runs in the session"
    );
    let want_project = project_hashes_in(&s, "/work/project");
    let want_output = s.exec("cd /work && python3 project/main.py");
    assert!(want_output.starts_with("events=500"), "{want_output}");

    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let repo = cvmfs_repo_args(out.path());
    let r = g
        .run(&[
            "--json",
            "promote",
            &s.name,
            "--site",
            "glasgow",
            "--to",
            "sif,cvmfs,oci,dir,tar",
            "--out",
            out.path().to_str().unwrap(),
            // strip-sshd leaves only a shell: the job runs the project.
            "--run",
            "cd /work && python3 project/main.py",
            "--tag",
            "t1",
            &repo[0],
            &repo[1],
            &repo[2],
            &repo[3],
        ])
        .ok();
    let report = r.json();
    // The report names secrets, never their values.
    for f in FORBIDDEN {
        assert!(!r.stdout.contains(f), "the report holds {f:?}");
    }

    // The session's layers are read and merged once: the SIF, the OCI
    // image and the CVMFS tree are written from that one merged tree.
    let merged: BTreeMap<String, u64> = report["layers_merged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_u64().unwrap()))
        .collect();
    for stage in ["sif", "oci image", "cvmfs", "dir", "tar"] {
        assert_eq!(
            merged.get(stage),
            Some(&0),
            "{stage} merged layers: {merged:?}"
        );
    }

    // The directory and the tar are the promoted tree as the OCI image
    // holds it: the tar byte for byte its one layer, the directory that
    // layer unpacked.
    let promoted = format!("store:promoted/{}", report["name"].as_str().unwrap());
    let oci = g.run(&["--json", "inspect", &promoted]).ok().json();
    let layers = oci["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{oci:#}");
    let tar = artifact(&report, "tar");
    assert_eq!(
        layers[0]["digest"],
        format!("sha256:{}", common::sha256_file(Path::new(&tar))),
        "{oci:#}"
    );
    let unpacked = out.path().join("oci-unpacked");
    g.run(&["unpack", &promoted, unpacked.to_str().unwrap()])
        .ok();
    common::assert_same_tree(
        Path::new(&artifact(&report, "dir")),
        &unpacked,
        "promote --to dir",
    );
    assert_eq!(
        merged.values().sum::<u64>(),
        merged["merge"] + merged["site overlay"],
        "only the merge (and the overlay's own listing) read layers: {merged:?}"
    );

    // strip-sshd
    let sshd = removed_paths(&report, "strip-sshd");
    for p in [
        "/usr/sbin/sshd",
        "/etc/ssh/sshd_config",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_rsa_key",
        "/root/.ssh/authorized_keys",
        "/run/sshd",
        "/usr/lib/systemd/system/ssh.service",
    ] {
        assert!(
            sshd.contains_key(p),
            "strip-sshd did not remove {p}: {sshd:?}"
        );
    }
    let changed = report["rules"][0]["changed"].to_string();
    assert!(
        changed.contains("/usr/local/bin/start-session starts sshd (line 5)"),
        "{changed}"
    );

    // scrub-secrets: each planted secret with its kind, and the Env values.
    let secrets = removed_paths(&report, "scrub-secrets");
    for (p, kind) in PLANTED {
        assert_eq!(
            secrets.get(*p).map(String::as_str),
            Some(*kind),
            "{p}: {secrets:?}"
        );
    }
    for n in PLANTED_ENV {
        assert!(
            secrets.contains_key(&format!("config:Env {n}")),
            "{n}: {secrets:?}"
        );
    }

    // Slim: at least the pip cache went, and the size says so.
    let pip = removed_paths(&report, "slim:pip-cache");
    assert!(pip.contains_key("/root/.cache/pip"), "{pip:?}");
    let before = report["sizes"]["before"].as_u64().unwrap();
    let after = report["sizes"]["after"].as_u64().unwrap();
    assert!(before - after >= CACHE_MB << 20, "{before} -> {after}");

    // The SIF, read back with unsquashfs, and the CVMFS tree.
    let sif = PathBuf::from(artifact(&report, "sif"));
    let raw = std::fs::read(&sif).unwrap();
    for f in FORBIDDEN {
        assert!(!memmem(&raw, f.as_bytes()), "the SIF file holds {f:?}");
    }
    let sif_tree = tempfile::tempdir().unwrap();
    let sif_root = sif_tree.path().join("root");
    unsquash_sif(&g, &sif, &sif_root);
    let cvmfs_root = PathBuf::from(artifact(&report, "cvmfs"));
    for (what, root) in [("SIF", &sif_root), ("CVMFS tree", &cvmfs_root)] {
        let (hits, bytes) = scan_tree(root);
        assert!(hits.is_empty(), "{what}: secrets left: {hits:#?}");
        assert!(
            bytes + (CACHE_MB << 20) <= before,
            "{what}: {bytes} bytes, the session had {before}"
        );
        for p in [
            "usr/sbin/sshd",
            "etc/ssh/ssh_host_ed25519_key",
            "root/.ssh/authorized_keys",
        ] {
            assert!(!root.join(p).exists(), "{what}: {p} is still there");
        }
        for (p, _) in PLANTED {
            assert!(!root.join(&p[1..]).exists(), "{what}: {p} is still there");
        }
        assert!(
            root.join("usr/bin/ssh").exists(),
            "{what}: the ssh client must stay"
        );
        assert_eq!(
            project_hashes_at(root),
            want_project,
            "{what}: the project differs"
        );
        let runscript = std::fs::read_to_string(root.join(".singularity.d/runscript")).unwrap();
        assert!(
            !runscript.contains("sshd") && !runscript.contains("start-session"),
            "{what}: runscript {runscript}"
        );
        let env = std::fs::read_to_string(root.join(".singularity.d/env/10-docker2singularity.sh"))
            .unwrap();
        assert!(
            env.contains("ANALYSIS_MODE") && !env.contains("GITHUB_TOKEN"),
            "{what}: {env}"
        );
    }

    // Credentials keep the session's modes in both trees, and the report
    // names each one the world-readable rule held back.
    let cred_modes = s.exec(&format!("stat -c '%a %n' {}", CREDENTIAL_FILES.join(" ")));
    let kept = kept_paths(&report, "world-readable");
    for line in cred_modes.lines() {
        let (mode, path) = line.split_once(' ').unwrap();
        assert!(
            kept.get(path)
                .is_some_and(|r| r.starts_with("credential (")),
            "{path} not reported as held back: {kept:#?}"
        );
        for (what, root) in [("SIF", &sif_root), ("CVMFS tree", &cvmfs_root)] {
            use std::os::unix::fs::PermissionsExt;
            let got = std::fs::symlink_metadata(root.join(&path[1..]))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(format!("{got:o}"), mode, "{what}: {path}");
        }
    }
    assert!(cred_modes.contains("640 /etc/shadow"), "{cred_modes}");
    assert!(cred_modes.contains("700 /etc/ssl/private"), "{cred_modes}");

    // The projects run in Apptainer: /work's, and bob's from his 0700
    // home, readable by the pool account through the world-readable rule ...
    let widened = changed_paths(&report, "world-readable");
    for (p, mode) in [
        ("/home/bob", "mode 0700 -> 0755"),
        ("/home/bob/project/params", "mode 0600 -> 0644"),
    ] {
        assert_eq!(widened.get(p).map(String::as_str), Some(mode), "{p}");
    }
    for (app, image) in grid_runs(&report, out.path()) {
        let project = app.ok(&[
            "exec",
            "--pwd",
            "/work",
            &image,
            "python3",
            "project/main.py",
        ]);
        assert_eq!(project, want_output, "{image}");
        let uid = if app.is_root() { 0 } else { 65534 };
        let bob = app.ok(&["exec", &image, "python3", "/home/bob/project/run.py"]);
        assert_eq!(bob, format!("uid={uid} answer=42\n"), "{image}");
        if !app.is_root() {
            let o = app.output(&["exec", &image, "cat", "/etc/shadow"]);
            assert!(
                !o.status.success()
                    && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
                "{image}: a pool account reads /etc/shadow: {o:?}"
            );
        }
    }
    // ... and through the engine, with no entrypoint left to start sshd.
    let tag = format!("gridship-test/promoted:{}", s.name);
    g.run(&[
        "copy",
        &format!("store:{}", "promoted/".to_string() + &s.name + ":t1"),
        &format!("docker-daemon:{tag}"),
    ])
    .ok();
    let entry = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}|{{json .Config.Cmd}}",
        &tag,
    ]);
    assert_eq!(entry.trim(), "null|[\"/bin/bash\"]");
    let engine_out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "python3",
        "project/main.py",
    ]);
    let _ = Command::new(env("GRIDSHIP_DOCKER"))
        .args(["rmi", "-f", &tag])
        .output();
    assert_eq!(engine_out, want_output);

    // Job descriptions: ARC's parser reads both, for the site's GPU queue,
    // with the CVMFS path of the tree.
    let link = artifact(&report, "cvmfs-link");
    assert!(link.starts_with("/cvmfs/"), "{link}");
    let xrsl = std::fs::read_to_string(artifact(&report, "xrsl")).unwrap();
    let adl = std::fs::read_to_string(artifact(&report, "adl")).unwrap();
    let parsed = common::arc::arc_parse(&[(xrsl, "nordugrid:xrsl"), (adl, "emies:adl")]);
    for p in &parsed {
        assert!(p.ok, "ARC could not parse: {}", p.error);
        let job = &p.jobs[0];
        assert_eq!(job["queue"], "gpu", "{job:#}");
        assert_eq!(
            job["arguments"],
            serde_json::json!(["-c", "cd /work && python3 project/main.py"]),
            "{job:#}"
        );
        assert!(job.to_string().contains(&link), "{job:#}");
    }

    // The smoke tests ran: static checks passed, GPU checks honest.
    let smoke = &report["smoke"];
    for c in smoke["checks"].as_array().unwrap() {
        assert_ne!(c["status"], "fail", "{c:#}");
        if c["kind"] == "run" && !Path::new("/dev/nvidia0").exists() {
            assert_eq!(c["status"], "skip", "{c:#}");
        }
    }

    // --keep-base: the base image's layers and one change layer; merged, the
    // same tree as the flattened image.
    let r2 = g
        .run(&[
            "--json",
            "promote",
            &s.name,
            "--site",
            "glasgow",
            "--to",
            "oci",
            "--keep-base",
            "--out",
            out.path().to_str().unwrap(),
            // strip-sshd leaves only a shell: the job runs the project.
            "--run",
            "cd /work && python3 project/main.py",
            "--tag",
            "t2",
        ])
        .ok()
        .json();
    let base_layers = r2["base_layers"].as_u64().unwrap();
    let flat_name = format!("store:promoted/{}:t1", s.name);
    let kept_name = format!("store:promoted/{}:t2", s.name);
    let kept = g.run(&["--json", "inspect", &kept_name]).ok().json();
    assert_eq!(
        kept["layers"].as_array().unwrap().len() as u64,
        base_layers + 1,
        "{kept:#}"
    );
    let warnings = r2["warnings"].to_string();
    assert!(
        warnings.contains("/etc/ssh/ssh_host_ed25519_key"),
        "host keys of the base: {warnings}"
    );
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    g.run(&["unpack", &flat_name, a.path().join("t").to_str().unwrap()])
        .ok();
    g.run(&["unpack", &kept_name, b.path().join("t").to_str().unwrap()])
        .ok();
    assert_same_tree(
        &b.path().join("t"),
        &a.path().join("t"),
        "keep-base vs flattened",
    );

    // The snapshot stays named (a later promote reuses its layers; `store
    // gc` removes it); the working image's name is gone.
    let refs = std::fs::read_to_string(g.store.path().join("index.json")).unwrap();
    assert!(
        refs.contains(&format!("\"container:{}\"", s.name))
            && !refs.contains("gridship-promote/work"),
        "{refs}"
    );
}

/// Without the rule a pool account cannot read a home made by adduser
/// (0700): neither from the SIF through the kernel's squashfs nor from the
/// CVMFS tree. (squashfuse, which checks no permissions, would hide it.)
#[test]
fn without_world_readable_a_pool_account_cannot_read_the_home() {
    let s = Session::start("gs-private");
    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let repo = cvmfs_repo_args(out.path());
    let report = g
        .run(&[
            "--json",
            "promote",
            &s.name,
            "--site",
            "glasgow",
            "--run",
            "python3 /work/project/main.py",
            "--to",
            "sif,cvmfs",
            "--no-world-readable",
            "--out",
            out.path().to_str().unwrap(),
            "--tag",
            "t1",
            &repo[0],
            &repo[1],
            &repo[2],
            &repo[3],
        ])
        .ok()
        .json();
    assert!(
        report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["rule"] != "world-readable"),
        "{:#}",
        report["rules"]
    );
    for (app, image) in grid_runs(&report, out.path()) {
        let o = app.output(&["exec", &image, "python3", "/home/bob/project/run.py"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && stderr.contains(
                    "python3: can't open file '/home/bob/project/run.py': [Errno 13] Permission denied"
                ),
            "{image}: {o:?}"
        );
    }
}

#[test]
fn fail_on_secrets_and_dry_run_write_nothing() {
    let s = Session::start_from("gs-refuse", "slimtest");
    // A protected project directory in a home, holding a cache-looking tree.
    s.exec("mkdir -p /root/results/.cache/pip && echo keep > /root/results/.cache/pip/notes.txt");
    // One the recipe protects (protected_paths: /opt/analysis).
    s.exec("mkdir -p /opt/analysis/.cache/pip && echo keep > /opt/analysis/.cache/pip/notes.txt");
    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("out");

    let r = g.run(&[
        "promote",
        &s.name,
        "--site",
        "glasgow",
        "--run",
        "python3 /work/project/main.py",
        "--fail-on-secrets",
        "--out",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("refusing to publish (--fail-on-secrets)"),
        "{}",
        r.stderr
    );
    for (p, kind) in PLANTED {
        assert!(
            r.stderr.contains(&format!("{p} ({kind})")),
            "{p} missing: {}",
            r.stderr
        );
    }
    for f in FORBIDDEN {
        assert!(!r.stderr.contains(f), "the error shows a secret: {f:?}");
    }
    assert!(!dest.exists(), "nothing may be written");

    // Overrides: a site that keeps locales, and --keep.
    let overlays = tempfile::tempdir().unwrap();
    let site = overlays.path().join("glasgow");
    std::fs::create_dir_all(&site).unwrap();
    let mut yaml =
        std::fs::read_to_string(repo_root().join("site-overlays/glasgow/site.yaml")).unwrap();
    yaml.push_str("slim:\n  disable: [locales]\n");
    std::fs::write(site.join("site.yaml"), yaml).unwrap();
    // The session's recipe: protected paths and slim overrides in recipe.yaml.
    let recipes = tempfile::tempdir().unwrap();
    let rdir = recipes.path().join("slimtest");
    std::fs::create_dir_all(&rdir).unwrap();
    std::fs::write(
        rdir.join("Dockerfile"),
        "ARG BASE=debian:bookworm\nFROM ${BASE}\n",
    )
    .unwrap();
    std::fs::write(
        rdir.join("recipe.yaml"),
        "base: {image: debian:bookworm}\nprotected_paths: ['/opt/analysis']\nslim: {remove: ['/usr/share/zoneinfo']}\n",
    )
    .unwrap();
    let r = g
        .run(&[
            "--json",
            "promote",
            &s.name,
            "--site",
            "glasgow",
            "--dry-run",
            "--site-overlays",
            overlays.path().to_str().unwrap(),
            "--recipes",
            recipes.path().to_str().unwrap(),
            "--keep",
            "/usr/share/doc/**",
            // strip-sshd leaves only a shell: the job runs the project.
            "--run",
            "cd /work && python3 project/main.py",
            "--out",
            dest.to_str().unwrap(),
        ])
        .ok();
    let report = r.json();
    assert_eq!(report["dry_run"], true);
    assert!(!dest.exists(), "a dry run writes nothing");
    let rules: BTreeMap<String, &serde_json::Value> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_string(), r))
        .collect();
    assert!(
        rules["slim:locales"]["warnings"]
            .to_string()
            .contains("disabled by"),
        "{:#}",
        rules["slim:locales"]
    );
    let docs = removed_paths(&report, "slim:docs");
    assert!(!docs.is_empty(), "docs outside the kept pattern still go");
    assert!(
        docs.keys().all(|p| !p.starts_with("/usr/share/doc/")),
        "{docs:?}"
    );
    let zoneinfo = removed_paths(&report, "slim:recipe-remove");
    assert!(zoneinfo.contains_key("/usr/share/zoneinfo"), "{zoneinfo:?}");
    // Protected paths are never slimmed (and the report says what they
    // kept), but secrets in them are scrubbed.
    let pip = rules["slim:pip-cache"];
    assert!(
        !pip["removed"].to_string().contains("/root/results"),
        "{pip:#}"
    );
    let kept: BTreeMap<&str, &str> = pip["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kept.get("/root/results/.cache/pip").copied(),
        Some("**/.cache/pip; kept: protected home entry (/root/[!.]*)"),
        "{pip:#}"
    );
    assert_eq!(
        kept.get("/opt/analysis/.cache/pip")
            .map(|r| r.contains("kept: protected path (/opt/analysis)")),
        Some(true),
        "{pip:#}"
    );
    assert!(removed_paths(&report, "scrub-secrets").contains_key("/opt/analysis/calib.dat"));
    // A dry run leaves no promoted image either.
    let refs = std::fs::read_to_string(g.store.path().join("index.json")).unwrap_or_default();
    assert!(!refs.contains("promoted/"), "{refs}");
}

/// The job description names a CVMFS path only in a repository worker
/// nodes mount: without one, the tree stays local and the job runs the SIF,
/// and a warning says which; a site's own `cvmfs.repo` is such a repository.
#[test]
fn the_job_never_points_at_a_local_cvmfs_tree() {
    let src = format!(
        "docker-archive:{}",
        fixtures().join("debian.docker-archive.tar").display()
    );
    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let promote = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "promote",
            &src,
            "--to",
            "sif,cvmfs",
            "--run",
            "echo hi",
            "--tag",
            "t1",
            "--name",
            "job",
        ];
        args.extend_from_slice(extra);
        g.run(&args).ok().json()
    };
    let o = out.path().join("local");
    let report = promote(&["--site", "glasgow", "--out", o.to_str().unwrap()]);
    let kinds: Vec<&str> = report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["sif", "cvmfs", "xrsl", "adl"], "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "the CVMFS tree under {} is local: no repository was named",
            o.join("cvmfs").display()
        )) && warnings.contains("the job uses the SIF, staged: it uploads"),
        "{warnings}"
    );
    let sif = artifact(&report, "sif");
    let xrsl = std::fs::read_to_string(artifact(&report, "xrsl")).unwrap();
    let adl = std::fs::read_to_string(artifact(&report, "adl")).unwrap();
    for p in common::arc::arc_parse(&[(xrsl, "nordugrid:xrsl"), (adl, "emies:adl")]) {
        assert!(p.ok, "ARC could not parse: {}", p.error);
        let job = p.jobs[0].to_string();
        // ARC writes file:///PATH as file:/PATH.
        assert!(job.contains(&format!("file:{sif}")), "{job}");
        assert!(!job.contains("/cvmfs/"), "{job}");
    }

    // A site whose worker nodes mount its own repository, published here
    // into a directory tree (--cvmfs-root): the job runs the tree.
    let sites = out.path().join("sites");
    std::fs::create_dir_all(sites.join("mysite")).unwrap();
    std::fs::write(
        sites.join("mysite/site.yaml"),
        "extends: glasgow\ncvmfs:\n  repo: unpacked.mysite.test\n",
    )
    .unwrap();
    let o = out.path().join("site");
    let root = out.path().join("repo");
    let report = promote(&[
        "--site",
        "mysite",
        "--site-overlays",
        sites.to_str().unwrap(),
        "--out",
        o.to_str().unwrap(),
        "--cvmfs-root",
        root.to_str().unwrap(),
    ]);
    let link = artifact(&report, "cvmfs-link");
    assert!(link.starts_with("/cvmfs/unpacked.mysite.test/"), "{link}");
    assert!(
        !report["warnings"].to_string().contains("is local"),
        "{:#}",
        report["warnings"]
    );
    let xrsl = std::fs::read_to_string(artifact(&report, "xrsl")).unwrap();
    let parsed = common::arc::arc_parse(&[(xrsl, "nordugrid:xrsl")]);
    assert!(parsed[0].ok, "{}", parsed[0].error);
    let job = parsed[0].jobs[0].to_string();
    assert!(job.contains(&link) && !job.contains("image.sif"), "{job}");

    // --to cvmfs alone with no repository: no job description, and why.
    let o = out.path().join("none");
    let report = g
        .run(&[
            "--json",
            "promote",
            &src,
            "--to",
            "cvmfs",
            "--run",
            "echo hi",
            "--tag",
            "t1",
            "--name",
            "job",
            "--site",
            "glasgow",
            "--out",
            o.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert!(
        report["warnings"]
            .to_string()
            .contains("no job description: the CVMFS tree is local and no SIF was made"),
        "{:#}",
        report["warnings"]
    );
    assert!(!o.join("job.xrsl").exists());
}

/// Without a terminal (a batch job, CI), each stage prints one line when it
/// ends, with its time, and the merge with the bytes it read.
#[test]
fn stages_print_one_line_each_without_a_terminal() {
    let src = format!(
        "docker-archive:{}",
        fixtures().join("debian.docker-archive.tar").display()
    );
    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let r = g
        .run(&[
            "promote",
            &src,
            "--site",
            "glasgow",
            "--run",
            "echo hi",
            "--dry-run",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .ok();
    let stages: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(name, _)| name))
        .collect();
    assert_eq!(
        stages,
        ["snapshot", "site overlay", "merge", "scan", "rules"],
        "{}",
        r.stderr
    );
    let time = regex::Regex::new(r"^[a-z ]+: [0-9]+\.[0-9]s").unwrap();
    for l in r.stderr.lines() {
        assert!(time.is_match(l), "{l}");
    }
    let merge = r.stderr.lines().find(|l| l.starts_with("merge: ")).unwrap();
    let read =
        regex::Regex::new(r"^merge: [0-9.]+s, [0-9.]+ [KMG]iB read \([0-9.]+ [KMG]?i?B/s\)$")
            .unwrap();
    assert!(read.is_match(merge), "{merge}");
    // --quiet and --json print none.
    for flag in ["--quiet", "--json"] {
        let r = g
            .run(&[
                flag,
                "promote",
                &src,
                "--site",
                "glasgow",
                "--run",
                "echo hi",
                "--dry-run",
                "--out",
                out.path().to_str().unwrap(),
            ])
            .ok();
        assert!(!r.stderr.contains("merge: "), "{flag}: {}", r.stderr);
    }
}

/// The opt-in package rules on real wheels (the pip-cuda fixture: a venv of
/// PyPI's CUDA 13 runtime wheels): off, `headers` removes nothing and
/// reports the wheel's headers with their bytes; on, it removes them and
/// the runtime's libraries stay.
#[test]
fn header_rule_is_opt_in_on_a_real_cuda_venv() {
    let src = env("GRIDSHIP_TEST_PIP_CUDA_IMAGE");
    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let promote = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "promote",
            &src,
            "--site",
            "glasgow",
            "--run",
            "echo hi",
            "--dry-run",
            "--out",
            out.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        g.run(&args).ok().json()
    };
    let include = "/opt/venv/lib/python3.11/site-packages/nvidia/cu13/include/";
    let rule = |report: &serde_json::Value, list: &str| -> BTreeMap<String, (u64, String)> {
        report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["rule"] == "slim:headers")
            .flat_map(|r| r[list].as_array().unwrap().iter())
            .filter(|c| c["path"].as_str().unwrap().starts_with(include))
            .map(|c| {
                (
                    c["path"].as_str().unwrap().to_string(),
                    (
                        c["bytes"].as_u64().unwrap(),
                        c["reason"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    };
    let off = promote(&[]);
    let kept = rule(&off, "kept");
    assert!(
        kept.contains_key(&format!("{include}cuda_runtime_api.h")),
        "{kept:#?}"
    );
    assert!(
        kept.values()
            .all(|(b, why)| *b > 0 && why.contains("opt-in rule, off"))
    );
    assert!(rule(&off, "removed").is_empty());
    let on = promote(&["--enable-slim", "headers"]);
    let removed = rule(&on, "removed");
    assert_eq!(
        removed.keys().collect::<Vec<_>>(),
        kept.keys().collect::<Vec<_>>(),
        "what was reported is what goes"
    );
    let freed: u64 = removed.values().map(|(b, _)| b).sum();
    let reported: u64 = kept.values().map(|(b, _)| b).sum();
    assert_eq!(freed, reported);
    assert_eq!(
        on["sizes"]["removed"].as_u64().unwrap() - off["sizes"]["removed"].as_u64().unwrap(),
        on["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["rule"] == "slim:headers")
            .flat_map(|r| r["removed"].as_array().unwrap().iter())
            .map(|c| c["bytes"].as_u64().unwrap())
            .sum::<u64>()
    );
}

#[test]
fn bad_input_is_named() {
    let g = Gridship::new();
    let r = g.run(&["promote", "x", "--site", "glasgow", "--to", "sif,tarball"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("tarball") && r.stderr.contains("not an artifact kind"),
        "{}",
        r.stderr
    );
    let r = g.run(&["promote", "x", "--site", "nowhere"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no site profile 'nowhere'"),
        "{}",
        r.stderr
    );
    let r = g.run(&["promote", "x", "--site", "glasgow", "--keep", "usr/share"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--keep usr/share") && r.stderr.contains("not an absolute path"),
        "{}",
        r.stderr
    );
}

/// What the job runs to prove the installs still work: each line's output.
const HOME_CHECKS: &str = r#"set -e
c=/home/bob/miniconda3/envs
$c/hard/bin/python -c 'import gshello_hard; print(gshello_hard.WHO)'
$c/soft/bin/python -c 'import gshello_soft; print(gshello_soft.WHO)'
/usr/bin/python3 -c 'import ctypes; print("spack", ctypes.CDLL(open("/home/bob/.gshello-prefix").read().strip() + "/lib/libgshello.so").gshello_answer())'
HOME=/home/bob /usr/bin/python3 -c 'import gridship_hello; print(gridship_hello.WHO)'
"#;
const HOME_CHECKS_OUT: &str = "conda hardlink env\nconda softlink env\nspack 42\npip --user\n";

/// Caches the package-manager rules remove, each with its rule.
const HOME_CACHES: &[(&str, &str)] = &[
    ("/root/.cache/pip", "slim:pip-cache"),
    ("/home/bob/.cache/pip", "slim:pip-cache"),
    ("/home/bob/.cache/uv", "slim:uv-cache"),
    ("/home/bob/.cache/pypoetry/cache", "slim:poetry-cache"),
    ("/home/bob/.cache/pypoetry/artifacts", "slim:poetry-cache"),
    ("/home/bob/.cache/pipenv", "slim:pipenv-cache"),
    ("/home/bob/miniconda3/pkgs/cache", "slim:conda-cache"),
    (
        "/home/bob/miniconda3/pkgs/gshello_hard-1.0-py_0.conda",
        "slim:conda-cache",
    ),
    (
        "/home/bob/miniconda3/pkgs/gshello_soft-2.0-py_0.tar.bz2",
        "slim:conda-cache",
    ),
    (
        "/home/bob/miniconda3/pkgs/gshello_hard-1.0-py_0",
        "slim:conda-pkgs",
    ),
    ("/home/bob/spack/var/spack/cache", "slim:spack-cache"),
    ("/home/bob/spack/var/spack/stage", "slim:spack-cache"),
    ("/home/bob/.spack/cache", "slim:spack-cache"),
    ("/tmp/bob/spack-stage", "slim:spack-cache"),
    ("/home/bob/.julia/logs", "slim:julia-logs"),
    ("/home/bob/.cache/R/pkgcache", "slim:r-cache"),
];

/// Paths that stay: what the installs need, and the opt-in caches.
const HOME_KEPT: &[&str] = &[
    "/home/bob/miniconda3/pkgs/gshello_soft-2.0-py_0/share/gshello_soft/data.bin",
    "/home/bob/miniconda3/pkgs/urls.txt",
    "/home/bob/miniconda3/envs/hard/share/gshello_hard/data.bin",
    "/home/bob/spack/var/spack/repos/builtin/packages/gshello/package.py",
    "/home/bob/.cache/pypoetry/virtualenvs/analysis-Xy12-py3.11/pyvenv.cfg",
    "/home/bob/.julia/packages/Gshello/AbCd1/src/Gshello.jl",
    "/home/bob/.julia/compiled/v1.10/Gshello/xYz12_abc.ji",
    "/home/bob/.cache/huggingface/hub/models--gridship--tiny/refs/main",
    "/home/bob/.cache/torch/hub/checkpoints/tiny-0123.pth",
];

fn rule<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name}"))
}

/// The size report's definition, computed independently on an unpacked
/// tree: per directory the bytes of the regular files below it, each inode
/// once; a directory with a subdirectory holding half or more is not listed.
fn largest_dirs_of(root: &Path, n: usize) -> Vec<(String, u64)> {
    use std::collections::{HashMap, HashSet};
    use std::os::unix::fs::MetadataExt;
    let mut inodes: HashMap<u64, (u64, HashSet<PathBuf>)> = HashMap::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        if e.file_type().is_dir() {
            dirs.push(rel);
        } else if e.file_type().is_file() {
            let m = e.metadata().unwrap();
            let entry = inodes.entry(m.ino()).or_insert((m.len(), HashSet::new()));
            entry
                .1
                .extend(rel.ancestors().skip(1).map(Path::to_path_buf));
        }
    }
    let mut size: HashMap<PathBuf, u64> = HashMap::new();
    for (bytes, ancestors) in inodes.into_values() {
        for a in ancestors {
            *size.entry(a).or_default() += bytes;
        }
    }
    let mut biggest_child: HashMap<PathBuf, u64> = HashMap::new();
    for d in &dirs {
        if let Some(p) = d.parent() {
            let b = size.get(d).copied().unwrap_or(0);
            let e = biggest_child.entry(p.to_path_buf()).or_default();
            *e = (*e).max(b);
        }
    }
    let mut listed: Vec<(String, u64)> = dirs
        .iter()
        .filter_map(|d| {
            let b = size.get(d).copied().unwrap_or(0);
            (b > 0 && biggest_child.get(d).copied().unwrap_or(0) * 2 < b)
                .then(|| (format!("/{}", d.display()).replace("//", "/"), b))
        })
        .collect();
    listed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    listed.truncate(n);
    listed
}

/// What scientists install in their home (tests/support/add-home-installs:
/// conda with a hardlinked and a softlinked env, a spack root, pip --user,
/// caches of uv, poetry, pipenv, Julia, R, models): promote removes the
/// caches, keeps what the installs use, and the installs work from the
/// tree under chroot (as root and as a pool account) and in real Apptainer
/// (the SIF as root, the CVMFS tree as a pool account).
#[test]
fn home_installs_are_slimmed_and_still_work() {
    let s = Session::start("gs-home");
    let out = Command::new(repo_root().join("tests/support/add-home-installs"))
        .arg(&s.name)
        .output()
        .expect("add-home-installs runs");
    assert!(
        out.status.success(),
        "add-home-installs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The installs work in the session, as bob.
    let ran = docker(&["exec", "-u", "bob", &s.name, "/bin/sh", "-c", HOME_CHECKS]);
    assert_eq!(ran, HOME_CHECKS_OUT);
    // The caches' bytes, measured in the session: regular files with one
    // link (the hardlinked env's files stay with the env).
    let paths: Vec<&str> = HOME_CACHES.iter().map(|(p, _)| *p).collect();
    let cache_bytes: u64 = s
        .exec(&format!(
            "find {} -type f -links 1 -printf '%s\\n'",
            paths.join(" ")
        ))
        .lines()
        .map(|l| l.parse::<u64>().unwrap())
        .sum();
    assert!(cache_bytes > 20 << 20, "{cache_bytes}");

    let g = Gridship::new();
    let dir = tempfile::tempdir().unwrap();
    let repo = cvmfs_repo_args(dir.path());
    let report = g
        .run(&[
            "--json",
            "promote",
            &s.name,
            "--site",
            "glasgow",
            "--to",
            "sif,cvmfs",
            "--out",
            dir.path().to_str().unwrap(),
            "--run",
            "/home/bob/miniconda3/envs/soft/bin/python -c 'import gshello_soft'",
            "--tag",
            "t1",
            &repo[0],
            &repo[1],
            &repo[2],
            &repo[3],
        ])
        .ok()
        .json();

    // Every cache removed by its rule; the bytes removed cover them.
    for (p, name) in HOME_CACHES {
        let removed = removed_paths(&report, name);
        assert!(
            removed.contains_key(*p),
            "{name} did not remove {p}: {removed:#?}"
        );
    }
    let removed = report["sizes"]["removed"].as_u64().unwrap();
    assert!(
        removed >= cache_bytes,
        "removed {removed} < caches {cache_bytes}"
    );
    // Inside the protected ~/miniconda3 and ~/spack, each path says why.
    let conda = removed_paths(&report, "slim:conda-cache");
    let why = &conda["/home/bob/miniconda3/pkgs/cache"];
    assert!(
        why.contains("inside the protected home entry /home/bob/miniconda3"),
        "{why}"
    );
    let spack = removed_paths(&report, "slim:spack-cache");
    assert!(
        spack["/home/bob/spack/var/spack/cache"]
            .contains("inside the protected home entry /home/bob/spack"),
        "{spack:?}"
    );
    // The hardlinked env's package went without its files; the softlinked
    // env's package stays, with the reason.
    let hard = &removed_paths(&report, "slim:conda-pkgs")["/home/bob/miniconda3/pkgs/gshello_hard-1.0-py_0"];
    assert!(hard.contains("2 files stay"), "{hard}");
    let kept = &rule(&report, "slim:conda-pkgs")["kept"];
    assert_eq!(kept.as_array().unwrap().len(), 1, "{kept:#}");
    assert_eq!(
        kept[0]["path"],
        "/home/bob/miniconda3/pkgs/gshello_soft-2.0-py_0"
    );
    let reason = kept[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("in use through 2 symlinks (softlinked environment)")
            && reason.contains("/home/bob/miniconda3/envs/soft/"),
        "{reason}"
    );
    // Models and Julia's compiled code: reported with their sizes, kept.
    for (name, path, bytes) in [
        (
            "slim:huggingface-cache",
            "/home/bob/.cache/huggingface",
            8 << 20,
        ),
        ("slim:torch-hub", "/home/bob/.cache/torch/hub", 1 << 20),
        (
            "slim:julia-compiled",
            "/home/bob/.julia/compiled",
            512 << 10,
        ),
    ] {
        let r = rule(&report, name);
        assert!(r["removed"].as_array().unwrap().is_empty(), "{r:#}");
        let k = &r["kept"][0];
        assert_eq!(
            (
                k["path"].as_str().unwrap(),
                k["bytes"].as_u64().unwrap() >= bytes
            ),
            (path, true),
            "{r:#}"
        );
        assert!(
            k["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("--enable-slim {}", &name[5..])),
            "{k:#}"
        );
    }

    // The trees: caches gone, installs there.
    let sif_dir = tempfile::tempdir().unwrap();
    let sif_root = sif_dir.path().join("root");
    unsquash_sif(&g, Path::new(&artifact(&report, "sif")), &sif_root);
    let cvmfs_root = PathBuf::from(artifact(&report, "cvmfs"));
    for (what, root) in [("SIF", &sif_root), ("CVMFS tree", &cvmfs_root)] {
        for (p, _) in HOME_CACHES {
            assert!(!root.join(&p[1..]).exists(), "{what}: {p} is still there");
        }
        for p in HOME_KEPT {
            assert!(root.join(&p[1..]).exists(), "{what}: {p} is gone");
        }
    }

    // The installs work from the tree under chroot, as root and as a pool
    // account, and in Apptainer.
    for user in [None, Some("65534:65534")] {
        let mut c = Command::new("/usr/sbin/chroot");
        c.env_clear().env("PATH", "/usr/bin:/bin");
        if let Some(u) = user {
            c.arg(format!("--userspec={u}"));
        }
        let o = c
            .arg(&cvmfs_root)
            .args(["/bin/sh", "-c", HOME_CHECKS])
            .output()
            .unwrap();
        assert!(o.status.success(), "chroot {user:?}: {o:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            HOME_CHECKS_OUT,
            "chroot {user:?}"
        );
    }
    for (app, image) in grid_runs(&report, dir.path()) {
        let ran = app.ok(&["exec", &image, "/bin/sh", "-c", HOME_CHECKS]);
        assert_eq!(ran, HOME_CHECKS_OUT, "{image}");
    }

    // The size report: the largest directory left first, its bytes as du
    // counts the files of the unpacked tree; the list as computed here.
    let listed: Vec<(String, u64)> = report["largest_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 10, "{listed:?}");
    let (top, top_bytes) = &listed[0];
    let du = Command::new("/bin/sh")
        .args([
            "-c",
            "find \"$1\" -type f -print0 | du --files0-from=- -c --apparent-size -B1 | tail -n1",
            "sh",
        ])
        .arg(sif_root.join(&top[1..]))
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(du, *top_bytes, "du of {top}");
    assert_eq!(listed, largest_dirs_of(&sif_root, 10), "the size report");
    let models = report["largest_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["path"]
                .as_str()
                .unwrap()
                .starts_with("/home/bob/.cache/huggingface/")
        })
        .unwrap_or_else(|| panic!("the model is not listed: {listed:?}"));
    assert_eq!(models["rule"], "slim:huggingface-cache", "{models:#}");

    // The human report of a dry run with the models removed on request.
    let r = g
        .run(&[
            "promote",
            &s.name,
            "--site",
            "glasgow",
            "--dry-run",
            "--enable-slim",
            "huggingface-cache",
            "--run",
            "true",
            "--out",
            dir.path().join("dry").to_str().unwrap(),
        ])
        .ok();
    for want in [
        "- /home/bob/miniconda3/pkgs/gshello_hard-1.0-py_0.conda (2.0 MiB): conda package tarball; inside the protected home entry /home/bob/miniconda3",
        "= /home/bob/miniconda3/pkgs/gshello_soft-2.0-py_0 (",
        "- /home/bob/.cache/huggingface (8.0 MiB)",
        "largest directories left",
    ] {
        assert!(r.stdout.contains(want), "{want:?} not in:\n{}", r.stdout);
    }
    let e = g.run(&[
        "promote",
        &s.name,
        "--site",
        "glasgow",
        "--enable-slim",
        "docs",
        "--dry-run",
    ]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(
        e.stderr.contains("--enable-slim docs") && e.stderr.contains("runs by default"),
        "{}",
        e.stderr
    );
}
