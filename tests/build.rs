//! Recipes built by the real Docker Engine, site overlays, pushes with auth,
//! the review gate, snapshots of running containers and the nightly.
//!
//! Builds run offline (`--network none`) from the Debian fixture in the
//! local registry; the shipped recipe's package list is narrowed to what
//! the fixture has (`APT_PACKAGES=python3`), so its real Dockerfile runs.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn docker(args: &[&str]) -> String {
    tool(&env("GRIDSHIP_DOCKER"), args)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "-c",
        "user.name=Recipe Author",
        "-c",
        "user.email=author@example.org",
        "-c",
        "commit.gpgsign=false",
        "-C",
    ];
    let d = dir.to_str().unwrap();
    all.push(d);
    all.extend_from_slice(args);
    tool("git", &all).trim().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A recipes repository (branch main) holding the shipped debian12-dev
/// recipe, committed. Returns (repo root, recipes dir, commit).
fn recipes_repo(tmp: &Path) -> (PathBuf, PathBuf, String) {
    let repo = tmp.join("recipes-repo");
    let recipes = repo.join("recipes");
    copy_dir(
        &project().join("recipes/debian12-dev"),
        &recipes.join("debian12-dev"),
    );
    tool("git", &["init", "-q", "-b", "main", repo.to_str().unwrap()]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "debian12-dev recipe"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    (repo, recipes, commit)
}

fn base_image() -> String {
    format!("{}/fixtures/debian:1", registry())
}

/// `gridship [--json] SUBCOMMAND...` with the options every offline build of
/// the test recipe takes.
fn offline(g: &Gridship, recipes: &Path, sub: &[&str]) -> Command {
    let mut c = g.cmd();
    c.args(sub)
        .args(["--recipes", recipes.to_str().unwrap()])
        .args([
            "--site-overlays",
            project().join("site-overlays").to_str().unwrap(),
        ])
        .args(["--network", "none", "--build-arg", "APT_PACKAGES=python3"])
        .args(["--creds", &creds()]);
    c
}

fn run(mut c: Command) -> Run {
    to_run(c.output().expect("gridship runs"))
}

fn config_of(g: &Gridship, image: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "inspect", image];
    args.extend_from_slice(extra);
    let v = g.run(&args).ok().json();
    v["config"].clone()
}

#[test]
fn one_recipe_two_sites_pushed_with_auth() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (_, recipes, commit) = recipes_repo(tmp.path());
    let tls = env("GRIDSHIP_TEST_REGISTRY_TLS");
    let repo = unique("gridship-test/debian12-dev");
    let mut c = offline(&g, &recipes, &["--json", "build", "debian12-dev"]);
    c.args(["--site", "glasgow", "--site", "bonn"])
        .args(["--base", &base_image()])
        .args(["--push", &format!("docker://{tls}/{repo}:nightly")])
        .args(["--cert-dir", &env("GRIDSHIP_TEST_REGISTRY_CERT_DIR")]);
    let report = run(c).ok().json();
    assert_eq!(report["reviewed"], true, "{report}");
    assert_eq!(report["commit"], commit.as_str());
    let sites = report["sites"].as_array().unwrap();
    assert_eq!(
        sites
            .iter()
            .map(|s| s["site"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["glasgow", "bonn"]
    );
    // The base digest is the registry's manifest digest of the fixture.
    let base = g
        .run(&[
            "--json",
            "inspect",
            &format!("docker://{}", base_image()),
            "--creds",
            &creds(),
            "--tls-verify=false",
        ])
        .ok()
        .json();
    assert_eq!(
        report["base"]["digest"], base["manifest"]["digest"],
        "{report}"
    );
    let base_layers = base["layers"].as_array().unwrap().len();

    for s in sites {
        let site = s["site"].as_str().unwrap();
        let pushed = format!("docker://{tls}/{repo}:nightly-{site}");
        assert_eq!(s["pushed"], serde_json::json!([pushed]));
        // Read back from the registry (auth, TLS with the test CA).
        let access = [
            "--creds",
            &creds(),
            "--cert-dir",
            &env("GRIDSHIP_TEST_REGISTRY_CERT_DIR"),
        ];
        let inspected = g
            .run(&[
                "--json", "inspect", &pushed, access[0], access[1], access[2], access[3],
            ])
            .ok()
            .json();
        assert_eq!(inspected["manifest"]["digest"], s["manifest_digest"]);
        // Base layers kept, the recipe's RUN layers, then exactly one overlay layer.
        let layers = inspected["layers"].as_array().unwrap();
        assert!(layers.len() > base_layers + 1, "{inspected}");
        for (ours, theirs) in layers.iter().zip(base["layers"].as_array().unwrap()) {
            assert_eq!(ours["diff_id"], theirs["diff_id"]);
        }
        let config = config_of(&g, &pushed, &access);
        let history = config["history"].as_array().unwrap();
        assert_eq!(
            history.last().unwrap()["created_by"]
                .as_str()
                .unwrap()
                .split(" (")
                .next(),
            Some(format!("gridship site overlay {site}").as_str())
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["gridship.reviewed"], "true", "{labels}");
        assert_eq!(labels["gridship.recipe.commit"], commit.as_str());
        assert_eq!(labels["org.opencontainers.image.revision"], commit.as_str());
        assert_eq!(labels["gridship.recipe"], "debian12-dev");
        assert_eq!(labels["gridship.recipe.path"], "recipes/debian12-dev");
        assert_eq!(labels["gridship.site"], site);
        assert_eq!(labels["gridship.site.overlay"], s["overlay_digest"]);
        assert_eq!(
            labels["org.opencontainers.image.base.name"],
            base_image().as_str()
        );
        assert_eq!(
            labels["org.opencontainers.image.base.digest"],
            base["manifest"]["digest"]
        );
        assert!(labels["org.opencontainers.image.created"].is_string());
        // The overlay's env is in the config, with the site's values.
        let env: Vec<String> = config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        // The site extends common: both profiles' env is in the image.
        for part in ["common", site] {
            let site_yaml: serde_json::Value = site_overlay_env(part);
            for (k, v) in site_yaml.as_object().unwrap() {
                let want = format!("{k}={}", v.as_str().unwrap());
                assert!(env.contains(&want), "{site}: {want} not in {env:?}");
            }
        }
        // The overlay's files are in the image, byte for byte, root-owned.
        let root = tmp.path().join(format!("unpacked-{site}"));
        g.run(&[
            "unpack",
            &pushed,
            root.to_str().unwrap(),
            access[0],
            access[1],
            access[2],
            access[3],
        ])
        .ok();
        let mut compared = 0;
        let trees = ["common", site].map(|p| project().join("site-overlays").join(p).join("files"));
        for (files, (key, want)) in trees
            .iter()
            .flat_map(|t| snapshot(t).entries.into_iter().map(move |e| (t, e)))
        {
            let rel = key.trim_start_matches('/');
            if rel.is_empty() {
                continue;
            }
            let got = std::fs::symlink_metadata(root.join(rel))
                .unwrap_or_else(|e| panic!("{site}: /{rel} missing from the image: {e}"));
            if want.kind == "file" {
                assert_eq!(
                    std::fs::read(root.join(rel)).unwrap(),
                    std::fs::read(files.join(rel)).unwrap(),
                    "{site}: /{rel}"
                );
                let exec = std::fs::metadata(files.join(rel)).unwrap().mode() & 0o111 != 0;
                assert_eq!(
                    got.mode() & 0o7777,
                    if exec { 0o755 } else { 0o644 },
                    "{site}: /{rel}"
                );
                assert_eq!((got.uid(), got.gid()), (0, 0), "{site}: /{rel}");
                compared += 1;
            }
        }
        assert!(compared > 0, "{site}: the overlay has no files");
        // The recipe's own work is there too: the entrypoint of the Dockerfile ran.
        assert!(root.join("usr/bin/python3").exists());
    }
}

/// `overlay.env` of a shipped site.yaml, as JSON.
fn site_overlay_env(site: &str) -> serde_json::Value {
    let out = tool(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys, json, yaml; d = yaml.safe_load(open(sys.argv[1])); print(json.dumps({k: str(v) for k, v in (d.get('overlay') or {}).get('env', {}).items()}))",
            project()
                .join("site-overlays")
                .join(site)
                .join("site.yaml")
                .to_str()
                .unwrap(),
        ],
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn unreviewed_recipes_are_refused_before_any_build() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, recipes, _) = recipes_repo(tmp.path());
    let dockerfile = recipes.join("debian12-dev/Dockerfile");
    let mut text = std::fs::read_to_string(&dockerfile).unwrap();
    text.push_str("\n# a local experiment\n");
    std::fs::write(&dockerfile, &text).unwrap();
    let mut c = offline(&g, &recipes, &["build", "debian12-dev"]);
    c.args(["--site", "glasgow", "--base", &base_image()]);
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("recipes/debian12-dev/Dockerfile"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("main"), "{}", r.stderr);
    assert!(r.stderr.contains("--allow-unreviewed"), "{}", r.stderr);
    // Nothing was built into the store.
    let names = std::fs::read_to_string(g.store.path().join("index.json")).unwrap_or_default();
    assert!(!names.contains("recipe/"), "{names}");

    // An untracked file in the recipe would enter the build context unreviewed.
    git(&repo, &["checkout", "-q", "--", "."]);
    std::fs::write(recipes.join("debian12-dev/extra.sh"), "echo hi\n").unwrap();
    let mut c = offline(&g, &recipes, &["build", "debian12-dev"]);
    c.args(["--site", "glasgow", "--base", &base_image()]);
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("recipes/debian12-dev/extra.sh"),
        "{}",
        r.stderr
    );

    // --allow-unreviewed builds it, labelled as such.
    let mut c = offline(&g, &recipes, &["--json", "build", "debian12-dev"]);
    c.args(["--site", "glasgow", "--base", &base_image()])
        .arg("--allow-unreviewed");
    let report = run(c).ok().json();
    assert_eq!(report["reviewed"], false);
    let config = config_of(&g, "store:recipe/debian12-dev:glasgow", &[]);
    assert_eq!(config["config"]["Labels"]["gridship.reviewed"], "false");
}

#[test]
fn snapshot_of_a_running_session_keeps_it_running() {
    let g = Gridship::new();
    let name = unique("gridship-session");
    let image = "gridship-fixture/debian:bookworm";
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--entrypoint",
        "sleep",
        image,
        "infinity",
    ]);
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            common::remove_container(&self.0);
        }
    }
    let _cleanup = Remove(name.clone());
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]);
    // The user's work, and a package installed after start (built on the
    // spot with dpkg-deb: no network).
    docker(&[
        "exec",
        &name,
        "sh",
        "-euc",
        r#"mkdir -p /home/user/project
printf 'print("hello from the project")\n' > /home/user/project/main.py
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/local/bin
printf 'Package: gridship-session-tool\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n' > /tmp/pkg/DEBIAN/control
printf '#!/bin/sh\necho session tool\n' > /tmp/pkg/usr/local/bin/session-tool
chmod 0755 /tmp/pkg/usr/local/bin/session-tool
dpkg-deb --build /tmp/pkg /tmp/tool.deb >/dev/null
dpkg -i /tmp/tool.deb >/dev/null
rm -rf /tmp/pkg /tmp/tool.deb"#,
    ]);
    let v = g
        .run(&["--json", "snapshot", &name, "--tag", "sessions/test:1"])
        .ok()
        .json();
    assert_eq!(v["running"], true, "{v}");
    assert_eq!(v["store_name"], "sessions/test:1");
    // The container was neither stopped nor restarted.
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "true"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]),
        started
    );
    // The image's layers are kept as they were; one layer holds the changes.
    let base = g
        .run(&["--json", "inspect", &format!("docker-daemon:{image}")])
        .ok()
        .json();
    let snap = g
        .run(&["--json", "inspect", "store:sessions/test:1"])
        .ok()
        .json();
    let base_diff: Vec<_> = base["config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .clone();
    let snap_diff: Vec<_> = snap["config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(snap_diff.len(), base_diff.len() + 1);
    assert_eq!(snap_diff[..base_diff.len()], base_diff[..]);
    assert_eq!(v["base_layers"], base_diff.len());
    // Both the user's files and the package are in the snapshot.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    g.run(&["unpack", "store:sessions/test:1", root.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(root.join("home/user/project/main.py")).unwrap(),
        "print(\"hello from the project\")\n"
    );
    assert!(root.join("usr/local/bin/session-tool").exists());
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert!(
        status.contains("Package: gridship-session-tool\nStatus: install ok installed"),
        "dpkg status lacks the package"
    );
    assert!(!root.join("tmp/tool.deb").exists());

    // --pause freezes it for the capture and lets it run on after.
    let v = g
        .run(&[
            "--json",
            "snapshot",
            &name,
            "--pause",
            "--tag",
            "sessions/test:2",
        ])
        .ok()
        .json();
    assert_eq!(v["paused_for_capture"], true);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &name]).trim(),
        "running"
    );

    // The store copied no layer of the snapshots: it reads them from the
    // engine, which keeps the two commits while the store names them ...
    let id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let kept = || {
        let out = docker(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &format!("gridship-snapshot/{}", &id.trim()[..12]),
        ]);
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(kept().len(), 2, "{:?}", kept());
    let ls = g.run(&["--json", "store", "ls"]).ok().json();
    let snap = ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "sessions/test:2")
        .unwrap()
        .clone();
    assert!(
        snap["in_engine"].as_u64().unwrap() > snap["bytes"].as_u64().unwrap(),
        "{snap:#}"
    );
    // ... and gc, once no name needs them, removes them from the engine.
    let gc = g
        .run(&["--json", "store", "gc", "--older-than", "0s"])
        .ok()
        .json();
    assert_eq!(
        gc["engine_snapshots"].as_array().unwrap().len(),
        2,
        "{gc:#}"
    );
    assert_eq!(kept(), Vec::<String>::new());

    // A container that does not exist: a clear error, exit 2.
    let r = g.run(&["snapshot", "gridship-no-such-container"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("gridship-no-such-container"),
        "{}",
        r.stderr
    );
}

#[test]
fn nightly_twice_rebuilds_nothing_the_second_time() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, recipes, _) = recipes_repo(tmp.path());
    // The recipe as a site's nightly has it: its base from the (local)
    // registry, the package list the offline fixture has.
    let yaml = recipes.join("debian12-dev/recipe.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let mut out = String::new();
    let mut in_base = false;
    for line in text.lines() {
        if line.starts_with("base:") {
            in_base = true;
        } else if in_base && line.trim_start().starts_with("image:") {
            out.push_str(&format!("  image: {}\n", base_image()));
            continue;
        } else if !line.starts_with(' ') {
            in_base = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(&yaml, out).unwrap();
    // A second recipe that fails: the nightly goes on with the others.
    let broken = recipes.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nRUN echo this recipe is broken && false\n",
    )
    .unwrap();
    std::fs::write(
        broken.join("recipe.yaml"),
        format!(
            "description: always fails\nbase:\n  arg: BASE\n  image: {}\nsites: [glasgow]\n",
            base_image()
        ),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "nightly inputs"]);

    let nightly = |extra: &[&str]| {
        let mut c = offline(&g, &recipes, &["--json", "nightly"]);
        c.args(["--site", "glasgow,bonn", "--no-cache"]).args(extra);
        let t = std::time::Instant::now();
        let r = run(c);
        (r, t.elapsed().as_secs_f64())
    };
    let outcome = |r: &serde_json::Value| -> BTreeMap<String, String> {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    format!(
                        "{}/{}",
                        i["recipe"].as_str().unwrap(),
                        i["site"].as_str().unwrap()
                    ),
                    i["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let only = ["--recipe", "debian12-dev"];
    let (first, t1) = nightly(&only);
    let first = first.ok().json();
    assert_eq!(
        outcome(&first),
        BTreeMap::from([
            ("debian12-dev/bonn".to_string(), "built".to_string()),
            ("debian12-dev/glasgow".to_string(), "built".to_string()),
        ])
    );
    let (second, t2) = nightly(&only);
    let second = second.ok().json();
    assert_eq!(second["built"], 0, "{second}");
    assert_eq!(second["unchanged"], 2, "{second}");
    // The same images as the first run.
    for (a, b) in first["items"]
        .as_array()
        .unwrap()
        .iter()
        .zip(second["items"].as_array().unwrap())
    {
        assert_eq!(a["manifest_digest"], b["manifest_digest"]);
    }
    assert!(
        t2 < 0.05 * t1,
        "second nightly took {t2:.2}s, the first {t1:.2}s: more than 5%"
    );

    // Every recipe: the broken one fails (exit 1), the others go on.
    let (all, _) = nightly(&[]);
    assert_eq!(
        all.code, 1,
        "the broken recipe fails the run: {}",
        all.stderr
    );
    let all = all.json();
    assert_eq!(
        outcome(&all),
        BTreeMap::from([
            ("broken/glasgow".to_string(), "failed".to_string()),
            ("debian12-dev/bonn".to_string(), "unchanged".to_string()),
            ("debian12-dev/glasgow".to_string(), "unchanged".to_string()),
        ])
    );
    let err = all["items"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("this recipe is broken") || err.contains("non-zero code"),
        "{err}"
    );

    // Another build argument changes both sites' keys: both are built anew.
    let (third, _) = nightly(&["--keep", "1", "--build-arg", "GRIDSHIP_NIGHTLY_TEST=2"]);
    let third = third.json();
    assert_eq!(outcome(&third)["debian12-dev/glasgow"], "built", "{third}");
    assert_eq!(outcome(&third)["debian12-dev/bonn"], "built", "{third}");
    // --keep 1: the older dated builds were dropped from the store.
    let pruned: Vec<&str> = third["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pruned.len(), 2, "{third}");
    assert!(pruned.iter().all(|p| p.contains("-nightly-")));
    let index = std::fs::read_to_string(g.store.path().join("index.json")).unwrap();
    for p in &pruned {
        assert!(!index.contains(p), "{p} still named");
    }
}

/// The nightly pipeline definitions users copy are valid YAML and use only
/// options `gridship nightly` has.
#[test]
fn nightly_ci_definitions_use_real_options() {
    let help = Gridship::new().run(&["nightly", "--help"]).ok().stdout;
    for file in ["ci/nightly/gitlab-ci.yml", "ci/nightly/github-actions.yml"] {
        let path = project().join(file);
        tool(
            "/usr/bin/python3",
            &[
                "-c",
                "import sys, yaml; yaml.safe_load(open(sys.argv[1]))",
                path.to_str().unwrap(),
            ],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text
            .find("gridship --json nightly")
            .unwrap_or_else(|| panic!("{file}"));
        let cmd: String = text[start..].lines().take(5).collect::<Vec<_>>().join(" ");
        let flags: Vec<&str> = cmd
            .split_whitespace()
            .filter(|w| w.starts_with("--") && *w != "--json")
            .collect();
        assert!(flags.len() >= 3, "{file}: {cmd}");
        for f in flags {
            assert!(
                help.contains(f),
                "{file}: {f} is not an option of gridship nightly"
            );
        }
    }
}

/// A CI definition as JSON (python3's YAML reader, independent of ours).
fn yaml_as_json(path: &Path) -> serde_json::Value {
    let out = tool(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys, yaml, json; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            path.to_str().unwrap(),
        ],
    );
    serde_json::from_str(&out).unwrap()
}

/// Every `--flag` of a gridship command line is an option of that command.
fn assert_real_flags(cmd: &str, what: &str) {
    let start = cmd
        .find("gridship")
        .unwrap_or_else(|| panic!("{what}: {cmd}"));
    let words: Vec<&str> = cmd[start..].split_whitespace().collect();
    // The subcommand path: the words before the first option or argument.
    let sub: Vec<&str> = words[1..]
        .iter()
        .filter(|w| **w != "--json")
        .take_while(|w| !w.starts_with('-') && !w.starts_with('"'))
        .take(2)
        .copied()
        .collect();
    let sub: Vec<&str> = match sub.first() {
        Some(&"cvmfs") => sub,
        _ => sub[..1].to_vec(),
    };
    let mut help_args = sub.clone();
    help_args.push("--help");
    let help = Gridship::new().run(&help_args).ok().stdout;
    for f in words
        .iter()
        .filter(|w| w.starts_with("--") && **w != "--json")
    {
        let f = f.split('=').next().unwrap();
        assert!(
            help.contains(f),
            "{what}: {f} is not an option of gridship {}",
            sub.join(" ")
        );
    }
}

/// The shipped CI definitions run one build job per recipe × site from
/// `nightly --list-matrix`, then one publish job: the GitLab plan job's
/// script is run as it is (with the real binary) and the child pipeline it
/// writes is read back; the GitHub matrix comes from the plan step's output.
#[test]
fn nightly_ci_definitions_wire_the_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, recipes, _) = recipes_repo(tmp.path());
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gridship"), bin.join("gridship")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let want: Vec<(String, String)> = ["glasgow", "manchester", "qmul", "bonn"]
        .iter()
        .map(|s| ("debian12-dev".to_string(), s.to_string()))
        .collect();
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    let bash = |script: &str, extra: &[(&str, &str)]| {
        let mut c = Command::new("bash");
        c.args(["-euo", "pipefail", "-c", script])
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("GRIDSHIP_RECIPES", &recipes)
            .env("GRIDSHIP_STORE", tmp.path().join("store"));
        for (k, v) in extra {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // GitLab: plan writes a child pipeline; build triggers it; publish last.
    let gl = yaml_as_json(&project().join("ci/nightly/gitlab-ci.yml"));
    let plan = &gl["gridship-plan"];
    for line in plan["script"].as_array().unwrap() {
        bash(line.as_str().unwrap(), &[]);
    }
    assert_eq!(plan["artifacts"]["paths"][0], "nightly-child.yml");
    assert_eq!(
        gl["gridship-build"]["trigger"]["include"][0]["artifact"],
        "nightly-child.yml"
    );
    let child = yaml_as_json(&tmp.path().join("nightly-child.yml"));
    let template = &child[".gridship-build"];
    let mut pairs = Vec::new();
    for (job, def) in child.as_object().unwrap() {
        if job.starts_with('.') {
            continue;
        }
        assert_eq!(def["extends"], ".gridship-build", "{job}");
        for entry in def["parallel"]["matrix"].as_array().unwrap() {
            pairs.push((
                entry["RECIPE"].as_str().unwrap().to_string(),
                entry["SITE"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(sorted(pairs), sorted(want.clone()));
    let build_cmd = template["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .find(|l| l.contains("gridship --json nightly"))
        .unwrap();
    assert!(
        build_cmd.contains("--recipe \"$RECIPE\"") && build_cmd.contains("--site \"$SITE\""),
        "{build_cmd}"
    );
    assert_real_flags(build_cmd, "gitlab build job");
    assert!(
        template["variables"]["GRIDSHIP_STORE"]
            .as_str()
            .unwrap()
            .starts_with("$CI_PROJECT_DIR")
    );
    let publish = &gl["gridship-publish"];
    assert_eq!(publish["needs"], serde_json::json!(["gridship-build"]));
    assert!(publish["resource_group"].is_string());
    let steps: Vec<&str> = publish["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    check_publish_steps(&steps, "gitlab publish job");

    // GitHub: plan's output feeds strategy.matrix through fromJSON.
    let gh = yaml_as_json(&project().join("ci/nightly/github-actions.yml"));
    let jobs = &gh["jobs"];
    let step = jobs["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "matrix")
        .unwrap();
    let out = tmp.path().join("github-output");
    bash(
        step["run"].as_str().unwrap(),
        &[("GITHUB_OUTPUT", out.to_str().unwrap())],
    );
    let line = std::fs::read_to_string(&out).unwrap();
    let matrix: serde_json::Value =
        serde_json::from_str(line.trim().strip_prefix("matrix=").unwrap()).unwrap();
    let pairs: Vec<(String, String)> = matrix["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["RECIPE"].as_str().unwrap().to_string(),
                e["SITE"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(sorted(pairs), sorted(want));
    assert_eq!(
        jobs["plan"]["outputs"]["matrix"],
        "${{ steps.matrix.outputs.matrix }}"
    );
    let build = &jobs["build"];
    assert_eq!(build["needs"], "plan");
    assert_eq!(
        build["strategy"]["matrix"],
        "${{ fromJSON(needs.plan.outputs.matrix) }}"
    );
    let run_cmd = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .find(|r| r.contains("gridship --json nightly"))
        .unwrap();
    assert!(
        run_cmd.contains("--recipe \"${{ matrix.RECIPE }}\"")
            && run_cmd.contains("--site \"${{ matrix.SITE }}\""),
        "{run_cmd}"
    );
    assert_real_flags(run_cmd, "github build job");
    assert_eq!(jobs["publish"]["needs"], "build");
    let steps: Vec<&str> = jobs["publish"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    check_publish_steps(&steps, "github publish job");
}

/// Wishlist from the registry, publish with the cvmfs-server backend, gc
/// with 30 days of retention, in that order, with real options only.
fn check_publish_steps(steps: &[&str], what: &str) {
    let at = |needle: &str| {
        steps
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("{what}: no step runs {needle}: {steps:?}"))
    };
    let (wish, publish, gc) = (
        at("nightly --wishlist-for"),
        at("cvmfs publish --wishlist wishlist.yaml"),
        at("cvmfs gc"),
    );
    assert!(wish < publish && publish < gc, "{what}: {steps:?}");
    assert!(steps[wish].contains("> wishlist.yaml"), "{what}");
    assert!(steps[publish].contains("--backend cvmfs-server"), "{what}");
    assert!(steps[gc].contains("--retention-days 30"), "{what}");
    for s in [wish, publish, gc] {
        assert_real_flags(steps[s], what);
    }
}

/// With no engine at DOCKER_HOST, the error says so and how to start one.
#[test]
fn no_engine_is_a_clear_error() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("no-engine.sock");
    let out = g
        .cmd()
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .args(["snapshot", "some-session"])
        .output()
        .unwrap();
    let r = to_run(out);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no Docker Engine answers at")
            && r.stderr.contains(sock.to_str().unwrap())
            && r.stderr.contains("dockerd"),
        "{}",
        r.stderr
    );
}
