//! Install once, run anywhere: the binary copied into a temporary prefix,
//! HOME an empty directory, the working directory outside the repository,
//! no GRIDSHIP_* variable pointing at the checkout. Everything a user
//! types on the first day works there from the built-in defaults; a user's
//! site shadows the built-in one; config.yaml supplies defaults that
//! options override.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Run;

/// A user's world: the installed binary, an empty home, a scratch cwd.
struct Installed {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    home: PathBuf,
    cwd: PathBuf,
    /// Stands in for /etc/gridship (GRIDSHIP_SYSCONFDIR), empty unless a test fills it.
    etc: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("prefix");
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        let bin = prefix.join("bin/gridship");
        std::fs::copy(env!("CARGO_BIN_EXE_gridship"), &bin).unwrap();
        let home = tmp.path().join("home");
        let cwd = tmp.path().join("work");
        let etc = tmp.path().join("etc-gridship");
        for d in [&home, &cwd, &etc] {
            std::fs::create_dir_all(d).unwrap();
        }
        Installed {
            _tmp: tmp,
            bin,
            home,
            cwd,
            etc,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("GRIDSHIP_") || k.starts_with("XDG_") || k == "X509_USER_PROXY" {
                c.env_remove(&k);
            }
        }
        c.env("HOME", &self.home)
            .env("GRIDSHIP_SYSCONFDIR", &self.etc)
            .current_dir(&self.cwd);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        // The copy above had the binary open for writing; a child that
        // another test thread forked meanwhile holds that descriptor until
        // it execs, and exec of a file open for writing fails with ETXTBSY.
        // The window is short, so try again for a few seconds.
        let mut tries = 0;
        loop {
            match self.cmd().args(args).output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                r => return common::to_run(r.unwrap()),
            }
        }
    }

    fn user_config(&self) -> PathBuf {
        self.home.join(".config/gridship")
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped sites and their GPU queues, read from the repository.
fn shipped_queues() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for site in ["bonn", "glasgow", "manchester", "qmul"] {
        let text = std::fs::read_to_string(repo().join(format!("site-overlays/{site}/site.yaml")))
            .unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        for q in v["gpu_queues"].as_object().unwrap().keys() {
            out.push((site.to_string(), q.clone()));
        }
    }
    assert!(out.len() >= 4, "{out:?}");
    out
}

#[test]
fn an_installed_binary_works_from_anywhere_with_its_built_in_defaults() {
    let u = Installed::new();
    assert!(!u.cwd.starts_with(repo()) && !repo().starts_with(&u.cwd));
    let fx = common::fixtures();
    let debian = format!("oci:{}:1", fx.join("debian-oci").display());

    // --version names the commit it was built from.
    let r = u.run(&["--version"]).ok();
    let head = String::from_utf8(
        Command::new("git")
            .args(["-C", repo().to_str().unwrap(), "rev-parse", "HEAD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        r.stdout.contains(&format!("(git {})", head.trim())),
        "{}",
        r.stdout
    );

    // sites: every shipped site, from the binary, with its queues.
    let r = u.run(&["--json", "sites"]).ok();
    let sites = r.json();
    let names: Vec<&str> = sites
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bonn", "common", "glasgow", "manchester", "qmul"]);
    for s in sites.as_array().unwrap() {
        assert_eq!(s["location"], "built-in", "{s}");
        if s["name"] != "common" {
            assert_eq!(s["extends"], serde_json::json!(["common"]), "{s}");
            assert!(!s["queues"].as_array().unwrap().is_empty(), "{s}");
        }
    }
    let r = u.run(&["sites"]).ok();
    assert!(
        r.stdout.contains("SITE") && r.stdout.contains("built-in"),
        "{}",
        r.stdout
    );

    // jobdesc for every shipped site and queue.
    for (site, queue) in shipped_queues() {
        let r = u
            .run(&[
                "jobdesc",
                "--site",
                &site,
                "--queue",
                &queue,
                "--run",
                "python3 train.py",
                "--image",
                "/cvmfs/unpacked.example.org/registry.example.org/ml/img:1",
            ])
            .ok();
        assert!(
            r.stdout.contains(&format!("(queue = \"{queue}\")")),
            "{site}/{queue}: {}",
            r.stdout
        );
    }
    let r = u.run(&["templates"]).ok();
    for t in ["gpu-cvmfs", "gpu-hpscan", "gpu-sif-staged"] {
        assert!(r.stdout.contains(t), "{}", r.stdout);
    }
    let r = u.run(&["templates", "show", "gpu-cvmfs"]).ok();
    assert_eq!(
        r.stdout,
        std::fs::read_to_string(repo().join("xrsl-templates/gpu-cvmfs.xrsl")).unwrap()
    );

    // sif, relative paths resolved against the user's cwd.
    let r = u.run(&["sif", &debian, "out.sif"]).ok();
    let _ = r;
    assert!(u.cwd.join("out.sif").metadata().unwrap().len() > 4096);

    // smoke with the built-in gpu-basic suite.
    let r = u.run(&["smoke", &debian, "--allow-no-gpu"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("gpu-basic"), "{}", r.stdout);
    let r = u.run(&["suites", "show", "gpu-basic"]).ok();
    assert!(r.stdout.contains("name: gpu-basic"), "{}", r.stdout);

    // promote --dry-run of an image for a built-in site: the overlay from
    // the binary, nothing written.
    let r = u
        .run(&[
            "--json",
            "promote",
            &debian,
            "--site",
            "glasgow",
            "--dry-run",
            "--out",
            "promoted",
        ])
        .ok();
    let j = r.json();
    assert_eq!(j["dry_run"], true, "{j:#}");
    assert!(!u.cwd.join("promoted").exists());

    // A name that is nowhere: every place searched is named.
    let r = u.run(&[
        "jobdesc",
        "--site",
        "atlantis",
        "--queue",
        "gpu",
        "--run",
        "python3 train.py",
        "--image",
        "/cvmfs/x/y",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for place in [
        u.user_config().join("sites").display().to_string(),
        u.etc.join("sites").display().to_string(),
        "built-in".into(),
    ] {
        assert!(r.stderr.contains(&place), "{place}: {}", r.stderr);
    }
    assert!(
        r.stderr.contains("no site profile 'atlantis'"),
        "{}",
        r.stderr
    );

    // completions and the manual page come from the same definition.
    let r = u.run(&["completions", "bash"]).ok();
    assert!(r.stdout.contains("gridship") && r.stdout.contains("promote"));
    let r = u.run(&["man"]).ok();
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH gridship"),
        "{}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    let mandir = u.cwd.join("man1");
    u.run(&["man", "--dir", "man1"]).ok();
    assert!(mandir.join("gridship-promote.1").is_file());
}

#[test]
fn a_users_site_shadows_the_built_in_one_and_config_supplies_defaults() {
    let u = Installed::new();
    let image = "/cvmfs/unpacked.example.org/registry.example.org/ml/img:1";
    // A user's glasgow: the shipped one with another CE endpoint and queue model.
    let mine = u.user_config().join("sites/glasgow");
    std::fs::create_dir_all(&mine).unwrap();
    let shipped = std::fs::read_to_string(repo().join("site-overlays/glasgow/site.yaml")).unwrap();
    std::fs::write(
        mine.join("site.yaml"),
        shipped.replace("ce01.gla.scotgrid.ac.uk:443", "ce-mine.gla.example.org:443"),
    )
    .unwrap();
    let r = u.run(&["--json", "sites"]).ok();
    let j = r.json();
    let g = j
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "glasgow")
        .unwrap();
    assert_eq!(g["origin"], "user", "{g}");
    assert_eq!(g["location"], mine.display().to_string(), "{g}");
    assert_eq!(g["shadows"], serde_json::json!(["built-in"]), "{g}");
    let r = u.run(&["sites"]).ok();
    assert!(
        r.stdout.lines().any(|l| l.starts_with("glasgow")
            && l.contains(&mine.display().to_string())
            && l.contains("shadows built-in")),
        "{}",
        r.stdout
    );
    let r = u.run(&["sites", "show", "glasgow"]).ok();
    assert!(r.stdout.contains("ce-mine.gla.example.org"), "{}", r.stdout);
    // The shared overlay still comes from the built-in common.
    assert!(
        r.stdout.contains("/etc/profile.d/gridship-site-threads.sh"),
        "{}",
        r.stdout
    );

    // config.yaml: site: makes --site optional; the option still wins.
    let cfg = u.user_config().join("config.yaml");
    std::fs::write(&cfg, "# my defaults\nsite: bonn\n").unwrap();
    let bonn_queue = shipped_queues()
        .into_iter()
        .find(|(s, _)| s == "bonn")
        .unwrap()
        .1;
    let r = u
        .run(&[
            "--json",
            "jobdesc",
            "--queue",
            &bonn_queue,
            "--run",
            "python3 train.py",
            "--image",
            image,
        ])
        .ok();
    assert_eq!(r.json()["site"], "bonn");
    let r = u
        .run(&[
            "--json",
            "jobdesc",
            "--site",
            "glasgow",
            "--queue",
            "gpu",
            "--run",
            "python3 train.py",
            "--image",
            image,
        ])
        .ok();
    assert_eq!(r.json()["site"], "glasgow");
    // A system file below the user's: the user's site wins, the system's queue fills in.
    std::fs::write(
        u.etc.join("config.yaml"),
        format!("site: qmul\nqueue: {bonn_queue}\n"),
    )
    .unwrap();
    let r = u.run(&["--json", "config"]).ok();
    let c = r.json();
    assert_eq!(c["values"]["site"]["value"], "bonn");
    assert_eq!(c["values"]["site"]["from"], cfg.display().to_string());
    assert_eq!(c["values"]["queue"]["value"], bonn_queue.as_str());
    assert_eq!(
        c["values"]["queue"]["from"],
        u.etc.join("config.yaml").display().to_string()
    );
    assert!(c["values"]["ce"].is_null());
    let r = u.run(&["config"]).ok();
    assert!(
        r.stdout.contains("site") && r.stdout.contains(&cfg.display().to_string()),
        "{}",
        r.stdout
    );
    let r = u
        .run(&[
            "--json",
            "jobdesc",
            "--run",
            "python3 train.py",
            "--image",
            image,
        ])
        .ok();
    assert_eq!(
        (r.json()["site"].as_str(), r.json()["queue"].as_str()),
        (Some("bonn"), Some(bonn_queue.as_str()))
    );

    // A typo in a key: refused with the file and the line, exit 2.
    std::fs::write(&cfg, "site: bonn\n\nqeue: gpu\n").unwrap();
    let r = u.run(&["jobdesc", "--run", "python3 train.py", "--image", image]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&cfg.display().to_string())
            && r.stderr.contains("qeue")
            && r.stderr.contains("line 3"),
        "{}",
        r.stderr
    );
    // No site anywhere: the error says where to give one.
    std::fs::remove_file(&cfg).unwrap();
    std::fs::remove_file(u.etc.join("config.yaml")).unwrap();
    let r = u.run(&[
        "jobdesc",
        "--queue",
        "gpu",
        "--run",
        "python3 train.py",
        "--image",
        image,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--site") && r.stderr.contains("config.yaml"),
        "{}",
        r.stderr
    );
}
