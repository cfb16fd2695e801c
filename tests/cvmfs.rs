//! `gridship cvmfs`: DUCC layout, trees equal to umoci's plus the Apptainer
//! layout (run by real Apptainer at /cvmfs/REPO), incremental publishes, gc, wishlists against the registry, crash
//! safety under SIGKILL, and the server backends against a recording
//! stand-in for `cvmfs_server` (no CVMFS server can be installed here).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::layers;
use common::*;

const REPO: &str = "unpacked.test";

fn publish(g: &Gridship, root: &Path, images: &[&str], extra: &[&str]) -> Run {
    let args: Vec<&str> = images.iter().chain(extra).copied().collect();
    g.cvmfs_publish(REPO, root, &args)
}

/// umoci's tree with DUCC's widening applied to what the report says
/// changed, compared with the flat tree minus exactly the layout additions.
fn assert_flat_is_umoci_plus_layout(
    flat: &Path,
    theirs: &Path,
    report: &serde_json::Value,
    what: &str,
) {
    let mut ours = snapshot(flat);
    let mut expect = snapshot(theirs);
    let mut added = BTreeSet::new();
    let mut widened = BTreeSet::new();
    for t in report["transforms"].as_array().unwrap() {
        for c in t["added"]
            .as_array()
            .unwrap()
            .iter()
            .chain(t["changed"].as_array().unwrap())
        {
            let p = c["path"].as_str().unwrap().to_string();
            if t["rule"] == "cvmfs-publishable" {
                widened.insert(p);
            } else {
                added.insert(p);
            }
        }
        for c in t["removed"].as_array().unwrap() {
            added.insert(c["path"].as_str().unwrap().to_string());
        }
    }
    for p in &added {
        ours.entries.remove(p);
        expect.entries.remove(p);
    }
    // Every widened path is widened as DUCC does, and only those change.
    for (p, e) in expect.entries.iter_mut() {
        let add = match e.kind {
            "dir" => 0o700,
            "file" => 0o600,
            _ => continue,
        };
        if e.mode & add != add {
            assert!(
                widened.contains(p),
                "{what}: {p} ({:o}) should be reported widened",
                e.mode
            );
            e.mode |= add;
        }
    }
    ours.entries.remove("/.cvmfscatalog");
    let d = diff(&ours, &expect);
    assert!(
        d.is_empty(),
        "{what}: flat tree differs from umoci beyond the layout:\n{}",
        d.join("\n")
    );
}

#[test]
fn flat_trees_are_umoci_plus_the_layout() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let mut failures = Vec::new();
    for case in layers::cases() {
        let layout = tmp.path().join(format!("layout-{}", case.name));
        layers::write_image(&layout, "1", &case.layers);
        let n = case.layers.len();
        // The image without its top layer first, into a repository of its
        // own: the publish of the whole image then merges only the top
        // layer onto the cached state of the lower ones. A third publish
        // (fresh repository) starts from the state of all layers.
        if n > 1 {
            let lower = tmp.path().join(format!("layout-{}-lower", case.name));
            layers::write_image(&lower, "1", &case.layers[..n - 1]);
            publish(
                &g,
                &tmp.path().join(format!("repo-{}-lower", case.name)),
                &[&format!("oci:{}:1", lower.display())],
                &["--name", "lower.example.org/x:1"],
            )
            .ok();
        }
        let theirs = umoci_unpack(
            &layout,
            "1",
            &tmp.path().join(format!("bundle-{}", case.name)),
        );
        let name = format!("cases.example.org/{}:1", case.name);
        let passes = [
            (root.clone(), n - 1, "from the state of the lower layers"),
            (
                tmp.path().join(format!("repo-{}-again", case.name)),
                n,
                "from the state of all layers",
            ),
        ];
        for (repo, cached, how) in passes {
            let what = format!("{} ({how})", case.name);
            let run = publish(
                &g,
                &repo,
                &[&format!("oci:{}:1", layout.display())],
                &["--name", &name],
            );
            if run.code != 0 {
                failures.push(format!("{what}: {}", run.stderr));
                break;
            }
            let json = run.json();
            let r = report_of(&json, &name);
            if r["merge_cached_layers"] != cached {
                failures.push(format!(
                    "{what}: {} layers from the merge cache, expected {cached}",
                    r["merge_cached_layers"]
                ));
            }
            let flat = repo.join(r["flat"].as_str().unwrap());
            if let Err(e) = std::panic::catch_unwind(|| {
                assert_flat_is_umoci_plus_layout(&flat, &theirs, r, &what)
            }) {
                failures.push(e.downcast_ref::<String>().cloned().unwrap_or_default());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A damaged or foreign merge state is never trusted: the merge starts
/// over and the tree is still right.
#[test]
fn damaged_merge_states_are_ignored() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let case = &layers::cases()[0];
    let layout = tmp.path().join("layout");
    layers::write_image(&layout, "1", &case.layers);
    let image = format!("oci:{}:1", layout.display());
    let name = "cases.example.org/damaged:1";
    publish(&g, &tmp.path().join("repo-1"), &[&image], &["--name", name]).ok();
    let states = g.store.path().join("gridship-cache/merge");
    let states_now = || {
        let mut v: Vec<String> = std::fs::read_dir(&states)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let files = states_now();
    assert_eq!(
        files.len(),
        case.layers.len(),
        "one state per layer: {files:?}"
    );
    for (i, f) in files.iter().enumerate() {
        let p = states.join(f);
        let data = std::fs::read(&p).unwrap();
        // Truncated, not JSON, or valid JSON of another format.
        let damaged = match i % 3 {
            0 => data[..data.len() / 2].to_vec(),
            1 => b"not a state".to_vec(),
            _ => String::from_utf8(data)
                .unwrap()
                .replacen("\"format\":1", "\"format\":999", 1)
                .into_bytes(),
        };
        std::fs::write(&p, damaged).unwrap();
    }
    let repo = tmp.path().join("repo-2");
    let run = publish(&g, &repo, &[&image], &["--name", name]).ok();
    let json = run.json();
    let r = report_of(&json, name);
    assert_eq!(r["merge_cached_layers"], 0, "{json}");
    let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    assert_flat_is_umoci_plus_layout(
        &repo.join(r["flat"].as_str().unwrap()),
        &theirs,
        r,
        "damaged states",
    );
    // The damaged states were replaced: a third publish uses them all.
    assert_eq!(states_now(), files);
    let repo = tmp.path().join("repo-3");
    let run = publish(&g, &repo, &[&image], &["--name", name]).ok();
    let json = run.json();
    let r = report_of(&json, name);
    assert_eq!(r["merge_cached_layers"], case.layers.len(), "{json}");
    assert_flat_is_umoci_plus_layout(
        &repo.join(r["flat"].as_str().unwrap()),
        &theirs,
        r,
        "replaced states",
    );
}

#[test]
fn debian_from_the_registry_in_ducc_layout() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let reg = registry();
    let image = format!("docker://{reg}/fixtures/debian:1");
    let run = publish(&g, &root, &[&image], &["--layers"]).ok();
    let json = run.json();
    let name = format!("{reg}/fixtures/debian:1");
    let r = report_of(&json, &name);
    let flat_rel = PathBuf::from(r["flat"].as_str().unwrap());
    let config = r["config_digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert_eq!(flat_rel, Path::new(".flat").join(&config[..2]).join(config));
    // The public symlink is relative and points at the flat tree.
    let link = root.join(&name);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../..").join(&flat_rel)
    );
    assert_eq!(
        link.canonicalize().unwrap(),
        root.join(&flat_rel).canonicalize().unwrap()
    );
    // Nested catalogs where DUCC puts them.
    for p in [".flat/.cvmfscatalog", ".layers/.cvmfscatalog"] {
        assert!(root.join(p).is_file(), "{p}");
    }
    assert!(root.join(&flat_rel).join(".cvmfscatalog").is_file());
    // The manifest marker (DUCC's four fields) and every layer's tree.
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(".metadata").join(&name).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["config"]["digest"], r["config_digest"]);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 7);
    for l in layers {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let dir = root.join(".layers").join(&hex[..2]);
        assert!(dir.join(".cvmfscatalog").is_file(), "{}", dir.display());
        assert!(dir.join(hex).join("layerfs/.cvmfscatalog").is_file());
    }
    // A layer keeps its whiteouts as DUCC's layerfs does (the consumer
    // interprets them): layer 3 deletes /etc/motd.
    let l3 = layers[2]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert!(
        root.join(".layers")
            .join(&l3[..2])
            .join(l3)
            .join("layerfs/etc/.wh.motd")
            .is_file()
    );
    // The flat tree is umoci's plus the layout, and runs.
    let theirs = umoci_unpack(
        &fixtures().join("debian-oci"),
        "1",
        &tmp.path().join("bundle"),
    );
    assert_flat_is_umoci_plus_layout(&root.join(&flat_rel), &theirs, r, "debian");
    // Apptainer runs it as a site does: the repository at /cvmfs/REPO, the
    // image by its public name, as root and as a pool account.
    let inside = format!("/cvmfs/{REPO}/{name}");
    for app in [Apptainer::root(), Apptainer::user(65534)] {
        let app = app.mount(&root, &format!("/cvmfs/{REPO}"));
        let out = app.ok(&[
            "exec",
            "--cleanenv",
            &inside,
            "/bin/sh",
            "-c",
            "python3 --version; echo \"$(id -u) $GRIDSHIP_FIXTURE\"",
        ]);
        let uid = if app.is_root() { 0 } else { 65534 };
        assert!(
            out.starts_with("Python 3.") && out.ends_with(&format!("\n{uid} debian\n")),
            "{out}"
        );
    }
    // ls sees it complete and committed.
    let ls = g.cvmfs_ls(REPO, &root);
    assert_eq!(ls[0]["name"], name);
    assert_eq!(
        (ls[0]["complete"].as_bool(), ls[0]["committed"].as_bool()),
        (Some(true), Some(true))
    );
}

/// Push the busybox fixture under `repo` with the given tags; returns the
/// image references.
fn push_tags(g: &Gridship, repo: &str, tags: &[&str]) -> Vec<String> {
    let src = format!("oci:{}:1", fixtures().join("busybox-oci").display());
    tags.iter()
        .map(|t| {
            let dst = format!("docker://{}/{repo}:{t}", registry());
            let mut args = vec!["copy".to_string(), src.clone(), dst.clone()];
            args.extend(creds_args());
            g.run(&args).ok();
            dst
        })
        .collect()
}

#[test]
fn wishlist_wildcards_publish_matching_tags_only() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let repo = unique("wish").to_lowercase();
    push_tags(&g, &repo, &["1.0", "1.1", "1.10-rc", "2.0", "latest"]);
    let wishlist = tmp.path().join("wishlist.yaml");
    std::fs::write(
        &wishlist,
        format!(
            "version: 1\nuser: cvmfsunpacker\ncvmfs_repo: '{REPO}'\noutput_format: '$(scheme)://{reg}/thin/$(image)'\ninput:\n  - 'http://{reg}/{repo}:1.*'\n  - 'http://{reg}/{repo}:latest'\n",
            reg = registry()
        ),
    )
    .unwrap();
    let root = tmp.path().join("repo");
    let mut args = vec![
        "--json".to_string(),
        "cvmfs".into(),
        "publish".into(),
        "--wishlist".into(),
        wishlist.display().to_string(),
        "--root".into(),
        root.display().to_string(),
    ];
    args.extend(creds_args());
    let json = g.run(&args).ok().json();
    let mut names: Vec<String> = json["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let want: Vec<String> = ["1.0", "1.1", "1.10-rc", "latest"]
        .iter()
        .map(|t| format!("{}/{repo}:{t}", registry()))
        .collect();
    assert_eq!(names, want);
    // The public links are REG/REPO:TAG, one per matching tag, and nothing else.
    let mut links: Vec<String> = std::fs::read_dir(root.join(registry()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    let want_links: Vec<String> = ["1.0", "1.1", "1.10-rc", "latest"]
        .iter()
        .map(|t| format!("{repo}:{t}"))
        .collect();
    assert_eq!(links, want_links);
    // All tags are one image: one flat tree.
    let flats: Vec<_> = std::fs::read_dir(root.join(".flat"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .collect();
    assert_eq!(flats.len(), 1);
    // A wishlist naming another repository than --repo is refused.
    let run = g.run(&[
        "cvmfs",
        "publish",
        "--wishlist",
        wishlist.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--repo",
        "other.repo",
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains(REPO), "{}", run.stderr);
}

fn base_and_top(top: &str) -> Vec<(layers::Comp, Vec<layers::Entry>)> {
    use layers::{Comp, dir, file};
    let mut base = vec![dir("usr", 0o755), dir("usr/lib", 0o755), dir("etc", 0o755)];
    for i in 0..150 {
        base.push(file(
            &format!("usr/lib/lib{i}.so"),
            0o644,
            format!("library {i}").repeat(50).as_bytes(),
        ));
    }
    base.push(file("etc/locked", 0o000, b"unreadable by its owner"));
    base.push(dir("usr/sealed", 0o555));
    base.push(file("usr/sealed/f", 0o444, b"sealed"));
    vec![
        (Comp::Gzip, base),
        (
            Comp::Gzip,
            vec![
                dir("app", 0o755),
                file("app/version", 0o644, top.as_bytes()),
                file("app/big", 0o644, &vec![b'x'; 300_000]),
            ],
        ),
    ]
}

#[test]
fn incremental_publish_reuse_tag_moves_and_gc() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let la = tmp.path().join("a");
    let lb = tmp.path().join("b");
    layers::write_image(&la, "1", &base_and_top("v1"));
    layers::write_image(&lb, "1", &base_and_top("v2"));
    let a = format!("oci:{}:1", la.display());
    let b = format!("oci:{}:1", lb.display());
    let v1 = "apps.example.org/app:v1";
    let v2 = "apps.example.org/app:v2";

    let ra = publish(&g, &root, &[&a], &["--name", v1, "--layers"])
        .ok()
        .json();
    let ra = report_of(&ra, v1).clone();
    assert_eq!(ra["flat_status"], "built");
    let flat_a = root.join(ra["flat"].as_str().unwrap());
    // The unreadable file and the sealed directory are widened, and reported.
    let widened: Vec<&str> = ra["transforms"][1]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(
        widened.contains(&"/etc/locked") && widened.contains(&"/usr/sealed"),
        "{widened:?}"
    );
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let ino_a = ino(&flat_a);

    // The same image again: nothing to do.
    let again = publish(&g, &root, &[&a], &["--name", v1, "--layers"])
        .ok()
        .json();
    assert_eq!(report_of(&again, v1)["flat_status"], "present");
    assert_eq!(
        report_of(&again, v1)["layers_built"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(ino(&flat_a), ino_a, "the tree was not rewritten");

    // A new tag sharing the base layer: the base layer is there, its files reused.
    let rb = publish(&g, &root, &[&b], &["--name", v2, "--layers"])
        .ok()
        .json();
    let rb = report_of(&rb, v2).clone();
    assert_eq!(rb["flat_status"], "built");
    assert_eq!(rb["layers_present"].as_array().unwrap().len(), 1);
    assert_eq!(rb["layers_built"].as_array().unwrap().len(), 1);
    assert_eq!(
        rb["reused_files"], 152,
        "every base-layer file is hardlinked: {rb}"
    );
    let flat_b = root.join(rb["flat"].as_str().unwrap());
    let theirs = umoci_unpack(&lb, "1", &tmp.path().join("bundle-b"));
    assert_flat_is_umoci_plus_layout(&flat_b, &theirs, &rb, "reused tree");
    assert_eq!(std::fs::read(flat_b.join("app/version")).unwrap(), b"v2");

    // The v1 tag moves to image b: repointed, the old tree scheduled.
    let moved = publish(&g, &root, &[&b], &["--name", v1]).ok().json();
    let moved = report_of(&moved, v1);
    assert_eq!(moved["flat_status"], "present");
    assert_eq!(root.join(moved["replaced"].as_str().unwrap()), flat_a);
    assert_eq!(
        root.join(v1).canonicalize().unwrap(),
        flat_b.canonicalize().unwrap()
    );
    let schedule = std::fs::read_to_string(root.join(".metadata/remove-schedule.json")).unwrap();
    assert!(
        schedule.contains(ra["flat"].as_str().unwrap()),
        "{schedule}"
    );

    let gc = |extra: &[&str]| g.cvmfs_run("gc", REPO, &root, extra).ok().json();
    // Within the grace period nothing goes; a dry run changes nothing.
    let kept = gc(&[]);
    let items = kept.as_array().unwrap();
    assert!(
        items.iter().all(|i| i["action"] == "kept (grace period)"),
        "{kept}"
    );
    let dry = gc(&["--grace-period", "0", "--dry-run"]);
    let paths: BTreeSet<&str> = dry
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(ra["flat"].as_str().unwrap()), "{dry}");
    assert_eq!(paths.len(), 2, "a's flat tree and a's top layer: {dry}");
    assert!(
        dry.as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "would remove" && i["bytes"].as_u64().unwrap() > 0)
    );
    assert!(flat_a.exists(), "dry run removes nothing");
    // Grace period 0: gone; b's tree, which shares a's inodes, is intact.
    let done = gc(&["--grace-period", "0"]);
    assert!(
        done.as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "removed")
    );
    assert!(!flat_a.exists());
    assert_flat_is_umoci_plus_layout(&flat_b, &theirs, &rb, "after gc");
    assert!(
        gc(&["--grace-period", "0"]).as_array().unwrap().is_empty(),
        "nothing left to collect"
    );
}

#[test]
fn unsafe_layers_never_escape_the_root() {
    let g = Gridship::new();
    for case in layers::unsafe_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        layers::write_image(&layout, "1", &case.layers);
        let root = tmp.path().join("repo");
        let before = list(tmp.path());
        let run = publish(
            &g,
            &root,
            &[&format!("oci:{}:1", layout.display())],
            &["--name", "x.example.org/bad:1"],
        );
        assert_eq!(run.code, 1, "{}: {}", case.name, run.stderr);
        assert!(
            run.stderr.contains(case.reason),
            "{}: {}",
            case.name,
            run.stderr
        );
        let after: Vec<String> = list(tmp.path())
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert!(
            after
                .iter()
                .all(|p| p == "repo" || p == "repo/.flat" || p == "repo/.flat/.cvmfscatalog"),
            "{}: only the empty layout skeleton may appear: {after:?}",
            case.name
        );
    }
}

/// Dir backend: publishers of different images run at once; a second
/// publisher of the same image waits for the first, and with a short
/// timeout gives up with a message that says so, having changed nothing.
#[test]
fn publishers_lock_per_image() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let debian = format!("docker://{}/fixtures/debian:1", registry());
    let busybox = format!("docker://{}/fixtures/busybox:1", registry());
    let args = |image: &str, extra: &[&str]| {
        let mut a = vec![
            "cvmfs".to_string(),
            "publish".into(),
            image.to_string(),
            "--repo".into(),
            REPO.into(),
            "--root".into(),
            root.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(creds_args());
        a
    };
    // Warm the store so the first publisher spends its time writing.
    for image in [&debian, &busybox] {
        let mut copy = vec!["copy".to_string(), image.clone(), "store:warm".into()];
        copy.extend(creds_args());
        g.run(&copy).ok();
    }
    let first = g
        .cmd()
        .args(args(&debian, &[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it holds the image's lock (its temporary tree appears).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !root.exists() || !list(&root).iter().any(|p| p.contains(".gridship-tmp-")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first publisher never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = list(&root);
    let second = g.run(&args(&debian, &["--lock-timeout", "0"]));
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains("gave up after 0s waiting for image")
            && second.stderr.contains("nothing was changed"),
        "{}",
        second.stderr
    );
    // Another image goes in beside it.
    let other = g.run(&args(&busybox, &[]));
    other.ok();
    to_run(first.wait_with_output().unwrap()).ok();
    // Both are there, complete; the refused publisher left nothing.
    let ls = g.cvmfs_ls(REPO, &root);
    let ls = ls.as_array().unwrap();
    assert_eq!(ls.len(), 2, "{ls:?}");
    assert!(
        ls.iter()
            .all(|l| l["complete"] == true && l["committed"] == true)
    );
    assert!(!before.is_empty());
    assert!(!list(&root).iter().any(|p| p.contains(".gridship-tmp-")));
}

/// cvmfs-server backend: a transaction someone else holds open is waited
/// for (then the publish goes through); with a timeout the publisher gives
/// up before writing anything; two gridship publishers take turns, one
/// transaction at a time.
#[test]
fn server_publishers_wait_for_the_transaction() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("docker://{}/fixtures/busybox:1", registry());
    let mount = tmp.path().join("cvmfs");
    std::fs::create_dir_all(mount.join(REPO)).unwrap();
    let log = tmp.path().join("calls.log");
    let cmd = |image: &str, timeout: &str| {
        let mut c = g.cmd();
        c.env("GRIDSHIP_CVMFS_SERVER", standin())
            .env("STANDIN_LOG", &log)
            .env("STANDIN_MOUNT", &mount)
            .args(["--json", "cvmfs", "publish", image, "--repo", REPO])
            .args(["--backend", "cvmfs-server", "--lock-timeout", timeout])
            .args(["--cvmfs-mount", mount.to_str().unwrap()])
            .args(creds_args())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    // Someone else's transaction is open.
    let txn = mount.join(format!(".txn-{REPO}"));
    std::fs::write(&txn, "").unwrap();
    let r = to_run(cmd(&image, "1").output().unwrap());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "gave up after 1s waiting for the transaction on {REPO}"
        )) && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    let c = calls(&log);
    assert!(
        !c.is_empty() && c.iter().all(|l| *l == format!("transaction {REPO}")),
        "{c:?}"
    );
    // Nothing was written: the repository holds only its root.
    assert_eq!(list(&mount.join(REPO)), vec![String::new()]);
    // It closes while a publisher waits: the publish goes through.
    std::fs::remove_file(&log).unwrap();
    let waiting = cmd(&image, "60").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::remove_file(&txn).unwrap();
    to_run(waiting.wait_with_output().unwrap()).ok();
    let c = calls(&log);
    assert_eq!(
        c[c.len() - 2..],
        [format!("transaction {REPO}"), format!("publish {REPO}")]
    );
    // Two gridship publishers at once (of names not published yet: one
    // already there opens no transaction): one transaction at a time.
    std::fs::remove_file(&log).unwrap();
    let tags = push_tags(&g, &unique("turns").to_lowercase(), &["1", "2"]);
    let a = cmd(&tags[0], "60").spawn().unwrap();
    let b = cmd(&tags[1], "60").spawn().unwrap();
    to_run(a.wait_with_output().unwrap()).ok();
    to_run(b.wait_with_output().unwrap()).ok();
    assert_eq!(
        calls(&log),
        [
            format!("transaction {REPO}"),
            format!("publish {REPO}"),
            format!("transaction {REPO}"),
            format!("publish {REPO}"),
        ]
    );
}

/// Every image podmanStore/ lists has its big data and a layer whose diff
/// is a complete tree.
fn assert_podman_store_complete(root: &Path, what: &str) {
    let read = |p: &str| -> Vec<serde_json::Value> {
        std::fs::read(root.join("podmanStore").join(p))
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or_default()
    };
    let layers = read("overlay-layers/layers.json");
    for i in read("overlay-images/images.json") {
        let id = i["id"].as_str().unwrap();
        let layer = i["layer"].as_str().unwrap();
        assert!(
            layers.iter().any(|l| l["id"] == layer),
            "{what}: image {id}'s layer is not recorded"
        );
        assert!(
            root.join("podmanStore/overlay-images")
                .join(id)
                .join("manifest")
                .is_file(),
            "{what}: image {id} has no manifest"
        );
        let diff = root.join("podmanStore/overlay").join(layer).join("diff");
        assert!(
            diff.join(".cvmfscatalog").is_file(),
            "{what}: {} is not a complete tree",
            diff.display()
        );
    }
}

/// Kill publishes (with the podman store) at random moments; after each,
/// every public symlink and podman image leads to a complete tree; a final
/// run makes the repository equal to a clean publish.
#[test]
fn killed_publishes_leave_the_repository_consistent() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry();
    let images = [
        format!("docker://{reg}/fixtures/debian:1"),
        format!("docker://{reg}/fixtures/busybox:1"),
    ];
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let clean = tmp.path().join("clean");
    let started = std::time::Instant::now();
    publish(&g, &clean, &images, &["--layers", "--podman"]).ok();
    let full = started.elapsed();

    let root = tmp.path().join("killed");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("fault test seed {seed}, clean publish {full:?}");
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = full.mul_f64((seed % 1000) as f64 / 1000.0);
        let mut args = vec!["cvmfs".to_string(), "publish".into()];
        args.extend(images.iter().map(|s| s.to_string()));
        args.extend([
            "--repo".into(),
            REPO.into(),
            "--root".into(),
            root.display().to_string(),
            "--layers".into(),
            "--podman".into(),
        ]);
        args.extend(creds_args());
        let mut child = g
            .cmd()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status();
        let _ = child.wait();
        // Every public symlink leads to a complete tree.
        if root.exists() {
            let ls = g.cvmfs_ls(REPO, &root);
            for l in ls.as_array().unwrap() {
                assert_eq!(
                    l["complete"], true,
                    "round {round} (killed after {at:?}): {l}"
                );
            }
            assert_podman_store_complete(&root, &format!("round {round} (killed after {at:?})"));
        }
    }
    publish(&g, &root, &images, &["--layers", "--podman"]).ok();
    let d = diff(&cvmfs_repo_snapshot(&root), &cvmfs_repo_snapshot(&clean));
    assert!(
        d.is_empty(),
        "after kills and a final run the repository differs from a clean publish:\n{}",
        d.join("\n")
    );
}

fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/cvmfs_server")
}

fn server_publish(
    g: &Gridship,
    mount: &Path,
    log: &Path,
    backend: &str,
    image: &str,
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = g.cmd();
    cmd.env("GRIDSHIP_CVMFS_SERVER", standin())
        .env("STANDIN_LOG", log)
        .env("STANDIN_MOUNT", mount)
        .args([
            "--json",
            "cvmfs",
            "publish",
            image,
            "--repo",
            REPO,
            "--backend",
            backend,
            "--cvmfs-mount",
            mount.to_str().unwrap(),
        ])
        .args(creds_args());
    for (k, v) in env {
        cmd.env(k, v);
    }
    to_run(cmd.output().unwrap())
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.replace('\t', " "))
        .collect()
}

#[test]
fn cvmfs_server_backend_runs_one_transaction_per_image() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("docker://{}/fixtures/busybox:1", registry());
    let mount = tmp.path().join("cvmfs");
    std::fs::create_dir_all(mount.join(REPO)).unwrap();
    let log = tmp.path().join("calls.log");
    server_publish(&g, &mount, &log, "cvmfs-server", &image, &[]).ok();
    assert_eq!(
        calls(&log),
        [format!("transaction {REPO}"), format!("publish {REPO}")]
    );
    // What the transaction wrote equals the dir backend's tree.
    let dir = tmp.path().join("dir");
    publish(&g, &dir, &[&image], &[]).ok();
    let d = diff(
        &cvmfs_repo_snapshot(&mount.join(REPO)),
        &cvmfs_repo_snapshot(&dir),
    );
    assert!(d.is_empty(), "{}", d.join("\n"));

    // A failing publish is aborted, and its own error is what is reported.
    let tag2 = push_tags(&g, &unique("txn").to_lowercase(), &["1"]).remove(0);
    std::fs::remove_file(&log).unwrap();
    let run = server_publish(
        &g,
        &mount,
        &log,
        "cvmfs-server",
        &tag2,
        &[("STANDIN_FAIL_PUBLISH", "1")],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("publish failed: simulated failure"),
        "{}",
        run.stderr
    );
    assert_eq!(
        calls(&log),
        [
            format!("transaction {REPO}"),
            format!("publish {REPO}"),
            format!("abort -f {REPO}")
        ]
    );
    // The next run starts clean.
    std::fs::remove_file(&log).unwrap();
    server_publish(&g, &mount, &log, "cvmfs-server", &tag2, &[]).ok();
    assert_eq!(
        calls(&log),
        [format!("transaction {REPO}"), format!("publish {REPO}")]
    );
}

#[test]
fn ingest_backend_streams_trees_and_small_files() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("docker://{}/fixtures/busybox:1", registry());
    let mount = tmp.path().join("cvmfs");
    std::fs::create_dir_all(mount.join(REPO)).unwrap();
    let log = tmp.path().join("calls.log");
    let json = server_publish(&g, &mount, &log, "ingest", &image, &[])
        .ok()
        .json();
    let name = format!("{}/fixtures/busybox:1", registry());
    let flat = report_of(&json, &name)["flat"]
        .as_str()
        .unwrap()
        .to_string();
    let got = calls(&log);
    assert_eq!(
        got,
        [
            format!("ingest --catalog -t - -b .flat {REPO}"),
            format!("ingest --catalog -t - -b {flat} {REPO}"),
            format!("ingest -t - -b {}/fixtures {REPO}", registry()),
            format!("ingest -t - -b .metadata/{name} {REPO}"),
        ]
    );
    // What the ingests leave equals the dir backend's tree.
    let dir = tmp.path().join("dir");
    publish(&g, &dir, &[&image], &[]).ok();
    let d = diff(
        &cvmfs_repo_snapshot(&mount.join(REPO)),
        &cvmfs_repo_snapshot(&dir),
    );
    assert!(d.is_empty(), "{}", d.join("\n"));
    // gc deletes through ingest --delete.
    std::fs::remove_file(mount.join(REPO).join(&name)).unwrap();
    std::fs::remove_file(&log).unwrap();
    let mut cmd = g.cmd();
    cmd.env("GRIDSHIP_CVMFS_SERVER", standin())
        .env("STANDIN_LOG", &log)
        .env("STANDIN_MOUNT", &mount)
        .args([
            "cvmfs",
            "gc",
            "--grace-period",
            "0",
            "--repo",
            REPO,
            "--backend",
            "ingest",
            "--cvmfs-mount",
            mount.to_str().unwrap(),
        ]);
    to_run(cmd.output().unwrap()).ok();
    assert!(
        calls(&log).contains(&format!("ingest --delete {flat} {REPO}")),
        "{:?}",
        calls(&log)
    );
    assert!(!mount.join(REPO).join(&flat).exists());
}
