//! The nightly at scale, as a CI matrix runs it: 20 tiny recipes × the 4
//! shipped sites on the busybox fixture, each pair one `nightly --recipe R
//! --site S` process with an empty store of its own (a fresh runner), 8 at
//! a time; the local registry is the only shared state. Then the publish
//! job: a wishlist from the registry, 8 parallel publishers into one `dir`
//! repository, every image's tree checked, and gc's retention with a clock
//! set by GRIDSHIP_NOW.
//!
//! The no-op night must take under 5% of the first night's wall time.
//! Timings are printed (`cargo test --release --test nightly_scale --
//! --nocapture`) and recorded in bench/RESULTS.md.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const RECIPES: usize = 20;
const SITES: [&str; 4] = ["bonn", "glasgow", "manchester", "qmul"];
const PARALLEL: usize = 8;
const REPO: &str = "unpacked.test";
/// 2026-11-01T02:00:00Z: the first night; night N runs N-1 days later.
const NIGHT1: i64 = 1_793_498_400;
const DAY: i64 = 86_400;

fn git(dir: &Path, args: &[&str]) {
    let mut all = vec![
        "-c",
        "user.name=Recipe Author",
        "-c",
        "user.email=author@example.org",
        "-c",
        "commit.gpgsign=false",
        "-C",
        dir.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    tool("git", &all);
}

fn recipe_name(i: usize) -> String {
    format!("r{i:02}")
}

/// A reviewed recipes repository: RECIPES recipes of one COPY on busybox.
fn recipes_repo(tmp: &Path) -> (PathBuf, PathBuf) {
    let repo = tmp.join("recipes-repo");
    let recipes = repo.join("recipes");
    let base = format!("{}/fixtures/busybox:1", registry());
    for i in 0..RECIPES {
        let dir = recipes.join(recipe_name(i));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            "ARG BASE\nFROM ${BASE}\nCOPY note.txt /etc/scale/note.txt\n",
        )
        .unwrap();
        std::fs::write(dir.join("note.txt"), format!("recipe {i} v1\n")).unwrap();
        std::fs::write(
            dir.join("recipe.yaml"),
            format!(
                "description: scale test recipe {i}\nbase:\n  arg: BASE\n  image: {base}\nsites: [{}]\n",
                SITES.join(", ")
            ),
        )
        .unwrap();
    }
    tool("git", &["init", "-q", "-b", "main", repo.to_str().unwrap()]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "scale recipes"]);
    (repo, recipes)
}

struct Ctx {
    recipes: PathBuf,
    prefix: String,
    stores: PathBuf,
}

impl Ctx {
    fn nightly(&self, store: &Path, now: i64) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gridship"));
        c.env("GRIDSHIP_STORE", store)
            .env("GRIDSHIP_NOW", now.to_string())
            .env_remove("RUST_LOG")
            .args(["--json", "nightly"])
            .args(["--recipes", self.recipes.to_str().unwrap()])
            .args([
                "--site-overlays",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("site-overlays")
                    .to_str()
                    .unwrap(),
            ])
            .args(["--network", "none", "--pull", "missing"])
            .args(["--push-prefix", &self.prefix])
            .args(["--creds", &creds(), "--tls-verify=false"]);
        c
    }
}

type Outcomes = BTreeMap<(String, String), String>;

fn outcomes(report: &serde_json::Value) -> Outcomes {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                (
                    i["recipe"].as_str().unwrap().to_string(),
                    i["site"].as_str().unwrap().to_string(),
                ),
                i["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Run `jobs` at most PARALLEL at a time (as a CI matrix with PARALLEL
/// runners: a runner takes the next job as soon as its last one ends);
/// their outputs in order.
fn run_parallel(jobs: Vec<Command>) -> Vec<Run> {
    let n = jobs.len();
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate());
    let results = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<Run>>>());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                loop {
                    let Some((i, mut c)) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let out = c
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .output()
                        .expect("gridship runs");
                    results.lock().unwrap()[i] = Some(to_run(out));
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

/// One night of the matrix: every pair in its own process with an empty
/// store. Returns the outcomes and the night's wall time.
fn matrix_night(ctx: &Ctx, night: usize, now: i64) -> (Outcomes, f64) {
    let mut jobs = Vec::new();
    for i in 0..RECIPES {
        for s in SITES {
            let store = ctx.stores.join(format!("n{night}-{}-{s}", recipe_name(i)));
            let mut c = ctx.nightly(&store, now);
            c.args(["--recipe", &recipe_name(i), "--site", s]);
            jobs.push(c);
        }
    }
    let started = Instant::now();
    let runs = run_parallel(jobs);
    let wall = started.elapsed().as_secs_f64();
    let mut all = Outcomes::new();
    for r in runs {
        let r = r.ok();
        all.extend(outcomes(&r.json()));
    }
    (all, wall)
}

fn count(o: &Outcomes, what: &str) -> usize {
    o.values().filter(|v| *v == what).count()
}

/// `cvmfs SUB` on the test's `dir` repository with the clock at `now`.
fn cvmfs(g: &Gridship, sub: &str, root: &Path, args: &[&str], now: i64) -> Run {
    let mut c = g.cvmfs_cmd(sub, REPO, root);
    c.env("GRIDSHIP_NOW", now.to_string()).args(args);
    to_run(c.output().unwrap())
}

#[test]
fn matrix_nights_on_fresh_runners_then_parallel_publishers_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, recipes) = recipes_repo(tmp.path());
    let space = unique("scale").to_lowercase();
    let ctx = Ctx {
        recipes: recipes.clone(),
        prefix: format!("docker://{}/{space}", registry()),
        stores: tmp.path().join("stores"),
    };
    // One warm runner with a store it keeps, on a registry space of its
    // own, for two recipes: its decisions must be the fresh runners'.
    let warm_store = tmp.path().join("warm-store");
    let warm = Ctx {
        prefix: format!("docker://{}/{space}-warm", registry()),
        ..Ctx {
            recipes: recipes.clone(),
            prefix: String::new(),
            stores: PathBuf::new(),
        }
    };
    let warm_night = |now: i64| -> Outcomes {
        let mut c = warm.nightly(&warm_store, now);
        c.args(["--recipe", "r00,r07"]);
        outcomes(&to_run(c.output().unwrap()).ok().json())
    };
    let subset = |o: &Outcomes| -> Outcomes {
        o.iter()
            .filter(|((r, _), _)| r == "r00" || r == "r07")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };

    // Night 1: everything is built and pushed.
    let (n1, t1) = matrix_night(&ctx, 1, NIGHT1);
    assert_eq!(n1.len(), RECIPES * SITES.len());
    assert_eq!(count(&n1, "built"), RECIPES * SITES.len(), "{n1:?}");
    assert_eq!(warm_night(NIGHT1), subset(&n1));

    // Night 2, fresh runners again: nothing changed, nothing is built,
    // in under 5% of night 1's time. A no-op night changes nothing, so on
    // a noisy machine it is timed up to three times and the best counts.
    let (n2, mut t2) = matrix_night(&ctx, 2, NIGHT1 + DAY);
    assert_eq!(count(&n2, "unchanged"), RECIPES * SITES.len(), "{n2:?}");
    assert_eq!(warm_night(NIGHT1 + DAY), subset(&n2));
    let mut tries = vec![t2];
    while t2 / t1 >= 0.05 && tries.len() < 3 {
        let (again, t) = matrix_night(&ctx, 20 + tries.len(), NIGHT1 + DAY);
        assert_eq!(again, n2);
        tries.push(t);
        t2 = t2.min(t);
    }
    assert!(
        t2 / t1 < 0.05,
        "a no-op night took {:.1}% of night 1 ({t2:.2}s of {t1:.2}s; tries {tries:?})",
        100.0 * t2 / t1
    );

    // Night 3: one recipe changed: exactly its four builds run.
    std::fs::write(recipes.join("r07/note.txt"), "recipe 7 v2\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "r07: v2"]);
    let (n3, t3) = matrix_night(&ctx, 3, NIGHT1 + 2 * DAY);
    let built: Vec<&(String, String)> = n3
        .iter()
        .filter(|(_, v)| *v == "built")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        built,
        SITES
            .iter()
            .map(|s| ("r07".to_string(), s.to_string()))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(count(&n3, "unchanged"), (RECIPES - 1) * SITES.len());
    assert_eq!(warm_night(NIGHT1 + 2 * DAY), subset(&n3));

    let pairs = (RECIPES * SITES.len()) as f64;
    println!(
        "nightly scale: {RECIPES} recipes x {} sites, {PARALLEL} processes at a time, fresh stores",
        SITES.len()
    );
    println!("  night 1 (all built):      {t1:7.2}s");
    println!(
        "  night 2 (all unchanged):  {t2:7.2}s  = {:.1}% of night 1; {:.3}s per pair decision (timed {} time(s): {tries:.2?})",
        100.0 * t2 / t1,
        t2 * PARALLEL as f64 / pairs,
        tries.len()
    );
    println!("  night 3 (4 built):        {t3:7.2}s");

    // A registry that cannot be reached is an error, never "unchanged".
    let mut c = Ctx {
        prefix: "docker://127.0.0.1:9/nowhere".into(),
        recipes: recipes.clone(),
        stores: PathBuf::new(),
    }
    .nightly(&tmp.path().join("lost-store"), NIGHT1 + 3 * DAY);
    c.args(["--recipe", "r00", "--site", "bonn"]);
    let lost = to_run(c.output().unwrap());
    assert_eq!(lost.code, 1, "{}", lost.stderr);
    let lost = lost.json();
    assert_eq!(lost["unchanged"], 0, "{lost}");
    assert_eq!(lost["failed"], 1, "{lost}");
    let err = lost["items"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("cannot tell whether") && err.contains("127.0.0.1:9"),
        "{err}"
    );

    // The publish job: the wishlist says what the registry has now.
    let g = Gridship::new();
    let wish = {
        let mut c = g.cmd();
        c.args(["nightly", "--wishlist-for", REPO])
            .args(["--recipes", recipes.to_str().unwrap()])
            .args(["--push-prefix", &ctx.prefix, "--creds", &creds()])
            .arg("--tls-verify=false");
        let r = to_run(c.output().unwrap()).ok();
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    assert_eq!(wish["cvmfs_repo"], REPO);
    let inputs: Vec<String> = wish["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(inputs.len(), RECIPES * SITES.len() * 2, "{inputs:?}");
    let reg = registry();
    let stamp = compact;
    for i in 0..RECIPES {
        for s in SITES {
            let built = if i == 7 { NIGHT1 + 2 * DAY } else { NIGHT1 };
            let r = recipe_name(i);
            for want in [
                format!("{reg}/{space}/{r}:{s}-nightly-{}", stamp(built)),
                format!("{reg}/{space}/{r}:latest-{s}"),
            ] {
                assert!(inputs.contains(&want), "{want} not in {inputs:?}");
            }
        }
    }
    // r07's first-night images were published then too (an older dated
    // name for retention to act on).
    let mut all_inputs = inputs.clone();
    for s in SITES {
        all_inputs.push(format!("{reg}/{space}/r07:{s}-nightly-{}", stamp(NIGHT1)));
    }

    // 8 publishers at once into one dir repository, each a share of the
    // names: different images in parallel, shared trees taking turns.
    let root = tmp.path().join("cvmfs");
    let wishlists: Vec<PathBuf> = (0..PARALLEL)
        .map(|k| {
            let mine: Vec<&String> = all_inputs.iter().skip(k).step_by(PARALLEL).collect();
            let p = tmp.path().join(format!("wishlist-{k}.yaml"));
            std::fs::write(
                &p,
                serde_json::json!({"version": 1, "cvmfs_repo": REPO, "input": mine}).to_string(),
            )
            .unwrap();
            p
        })
        .collect();
    let started = Instant::now();
    let runs = run_parallel(
        wishlists
            .iter()
            .map(|w| {
                let mut c = g.cmd();
                c.env("GRIDSHIP_NOW", (NIGHT1 + 2 * DAY).to_string())
                    .args(["--json", "cvmfs", "publish", "--wishlist"])
                    .arg(w)
                    .args(["--root", root.to_str().unwrap(), "--creds", &creds()])
                    .arg("--tls-verify=false");
                c
            })
            .collect(),
    );
    let tp = started.elapsed().as_secs_f64();
    for r in runs {
        r.ok();
    }
    println!(
        "  publish: {} names by {PARALLEL} parallel dir publishers: {tp:.2}s",
        all_inputs.len()
    );

    // Every name is complete and committed, and every image's tree holds
    // its recipe's file and its site's overlay.
    let ls = |now: i64| -> BTreeMap<String, serde_json::Value> {
        cvmfs(&g, "ls", &root, &[], now)
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["name"].as_str().unwrap().to_string(), l.clone()))
            .collect()
    };
    let listed = ls(NIGHT1 + 2 * DAY);
    assert_eq!(listed.len(), all_inputs.len());
    for name in &all_inputs {
        let l = &listed[name];
        assert!(l["complete"] == true && l["committed"] == true, "{l}");
        let tree = root.join(name);
        let (r, rest) = name.rsplit_once(':').unwrap();
        let r = r.rsplit('/').next().unwrap();
        let i: usize = r[1..].parse().unwrap();
        let site = SITES.iter().find(|s| rest.contains(*s)).unwrap();
        let v = if i == 7 && !rest.contains(&compact(NIGHT1)) {
            2
        } else {
            1
        };
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/scale/note.txt")).unwrap(),
            format!("recipe {i} v{v}\n"),
            "{name}"
        );
        let site_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tree.join("etc/gridship/site.json")).unwrap())
                .unwrap();
        assert!(site_json.to_string().contains(site), "{name}: {site_json}");
        assert!(tree.join("bin/busybox").is_file(), "{name}");
        assert!(tree.join(".singularity.d").is_dir(), "{name}");
    }
    // No temporary names were left by the parallel writers.
    assert!(
        !list(&root).iter().any(|p| p.contains(".gridship-tmp-")),
        "temporary entries left"
    );
    // The same names published by one publisher give the same repository.
    let serial = tmp.path().join("serial");
    let all = tmp.path().join("wishlist-all.yaml");
    std::fs::write(
        &all,
        serde_json::json!({"version": 1, "cvmfs_repo": REPO, "input": all_inputs}).to_string(),
    )
    .unwrap();
    let mut c = g.cmd();
    c.env("GRIDSHIP_NOW", (NIGHT1 + 2 * DAY).to_string())
        .args(["cvmfs", "publish", "--wishlist"])
        .arg(&all)
        .args(["--root", serial.to_str().unwrap(), "--creds", &creds()])
        .arg("--tls-verify=false");
    to_run(c.output().unwrap()).ok();
    // Which earlier tree a file is hardlinked from depends on the order
    // the publishers ran in; the trees' contents do not.
    // The Apptainer metadata names the image whichever of its names
    // (dated or moving) was published first: that order differs too.
    let comparable = |root: &Path| {
        let mut s = cvmfs_repo_snapshot(root);
        s.hardlinks.clear();
        for (p, e) in s.entries.iter_mut() {
            if p.ends_with("/.singularity.d/Singularity")
                || p.ends_with("/.singularity.d/labels.json")
            {
                e.sha256.clear();
                e.size = 0;
            }
        }
        s
    };
    let (a, b) = (comparable(&root), comparable(&serial));
    let d = diff(&a, &b);
    assert!(
        d.is_empty(),
        "parallel vs serial publish:\n{}",
        d.join("\n")
    );

    // gc with the retention policy. 29 days after the first night every
    // dated name is younger than 30 days: nothing goes.
    let gc = |now: i64| -> serde_json::Value {
        cvmfs(
            &g,
            "gc",
            &root,
            &["--retention-days", "30", "--grace-period", "0"],
            now,
        )
        .ok()
        .json()
    };
    assert_eq!(gc(NIGHT1 + 29 * DAY), serde_json::json!([]));
    assert_eq!(ls(NIGHT1 + 29 * DAY).len(), all_inputs.len());
    // 31 days on: r07's first builds are past 30 days and not the newest
    // of their site: unpublished, their trees removed. Every other
    // recipe's first build is as old, but the newest: it stays.
    let old_r07: Vec<String> = SITES
        .iter()
        .map(|s| format!("{reg}/{space}/r07:{s}-nightly-{}", compact(NIGHT1)))
        .collect();
    let old_flats: Vec<String> = old_r07
        .iter()
        .map(|n| listed[n]["target"].as_str().unwrap().to_string())
        .collect();
    let removed = gc(NIGHT1 + 31 * DAY);
    let removed: Vec<String> = removed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect();
    for n in &old_r07 {
        assert!(removed.contains(n), "{n} not unpublished: {removed:?}");
    }
    assert_eq!(
        removed.len(),
        2 * SITES.len(),
        "4 names + 4 trees: {removed:?}"
    );
    let after = ls(NIGHT1 + 31 * DAY);
    assert_eq!(after.len(), all_inputs.len() - SITES.len());
    for (name, l) in &after {
        assert!(!old_r07.contains(name));
        assert!(l["complete"] == true && l["committed"] == true, "{l}");
    }
    for (n, target) in old_r07.iter().zip(&old_flats) {
        let flat = root.join(n).parent().unwrap().join(target);
        assert!(!flat.exists(), "{} kept", flat.display());
        assert!(!root.join(".metadata").join(n).exists());
    }
}

fn compact(t: i64) -> String {
    // 2026-11-01T02:00:00Z -> 20261101T020000Z, computed independently of
    // gridship's clock code.
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y%m%dT%H%M%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
