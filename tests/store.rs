//! `gridship store ls | du | gc` on real stores: every byte accounted for
//! (against `du -sb`), gc removing only what no name needs and never a blob
//! of a running writer (two real processes), names removed by age and by
//! size, least recently used first; and `promote` keeping only what was
//! asked for (a real session through the real Docker Engine).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

/// `du -sb PATH`: the bytes `store du` must count.
fn du_sb(path: &Path) -> u64 {
    tool("du", &["-sb", path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn ls(g: &Gridship) -> Value {
    g.run(&["--json", "store", "ls"]).ok().json()
}

fn usage(g: &Gridship) -> Value {
    g.run(&["--json", "store", "du"]).ok().json()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The names `store ls` lists, sorted.
fn names(ls: &Value) -> Vec<String> {
    let mut v: Vec<String> = ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn image<'a>(ls: &'a Value, name: &str) -> &'a Value {
    ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {ls:#}"))
}

fn blob_path(g: &Gridship, digest: &str) -> PathBuf {
    g.store
        .path()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Make a name last used `days` ago: its manifest blob's mtime is what
/// `store ls` shows and `gc` orders names by.
fn last_used_days_ago(g: &Gridship, name: &str, days: u64) {
    let digest = image(&ls(g), name)["digest"].as_str().unwrap().to_string();
    let when = SystemTime::now() - Duration::from_secs(days * 86_400);
    std::fs::File::open(blob_path(g, &digest))
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// The files in blobs/sha256 with their sizes.
fn blob_files(g: &Gridship) -> BTreeMap<String, u64> {
    std::fs::read_dir(g.store.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// A blob nothing names, with content that hashes to its name.
fn plant_unreferenced_blob(g: &Gridship, bytes: usize) -> String {
    use sha2::Digest as _;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let hex = hex::encode(sha2::Sha256::digest(&data));
    std::fs::write(g.store.path().join("blobs/sha256").join(&hex), &data).unwrap();
    hex
}

fn sum_bytes(files: &Value) -> u64 {
    files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| n(&f["bytes"]))
        .sum()
}

#[test]
fn ls_du_and_gc_account_for_every_byte() {
    let g = Gridship::new();
    let f = fixtures();
    let debian = format!("oci:{}:1", f.join("debian-oci").display());
    let busybox = format!("oci:{}:1", f.join("busybox-oci").display());
    g.run(&["copy", &debian, "store:deb"]).ok();
    g.run(&["copy", "store:deb", "store:deb-again"]).ok();
    g.run(&["copy", &busybox, "store:bb"]).ok();
    // A CVMFS publish of an image from elsewhere keeps its blobs in the
    // store, unnamed, and a merge state no image in the store needs.
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("unique");
    let unique_layers = layers::write_unique_image(&layout, "1");
    g.cvmfs_publish(
        "u.example.org",
        &tmp.path().join("repo"),
        &[
            &format!("oci:{}:1", layout.display()),
            "--name",
            "u.example.org/unique:1",
        ],
    )
    .ok();
    // ... and one that an image in the store needs (bb's layers).
    g.cvmfs_publish(
        "u.example.org",
        &tmp.path().join("repo"),
        &[&busybox, "--name", "u.example.org/bb:1"],
    )
    .ok();
    // What a killed writer leaves: a temporary blob.
    std::fs::write(
        g.store.path().join("blobs/sha256/.tmp-blob-killed"),
        vec![7u8; 1000],
    )
    .unwrap();

    let list = ls(&g);
    assert_eq!(names(&list), ["bb", "deb", "deb-again"]);
    let deb = image(&list, "deb");
    assert!(n(&deb["bytes"]) > 100 << 20, "{deb:#}");
    assert_eq!(
        deb["shared_bytes"], deb["bytes"],
        "deb-again is the same image"
    );
    assert_eq!(n(&image(&list, "bb")["shared_bytes"]), 0);
    assert_eq!(deb["missing_blobs"], 0);
    assert!(
        deb["created"].as_str().unwrap().starts_with("20"),
        "{deb:#}"
    );
    let unreferenced: Vec<&str> = list["unreferenced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap())
        .collect();
    for l in &unique_layers {
        let want = format!("blobs/sha256/{}", l.trim_start_matches("sha256:"));
        assert!(
            unreferenced.contains(&want.as_str()),
            "{want} in {unreferenced:?}"
        );
    }

    // Every byte, by kind, adds up to what du counts.
    let u = usage(&g);
    let store_bytes = du_sb(g.store.path());
    assert_eq!(n(&u["total"]), store_bytes, "{u:#}");
    assert_eq!(
        n(&u["named"])
            + n(&u["unreferenced"])
            + n(&u["temp"])
            + n(&u["merge_cache"])
            + n(&u["other"]),
        store_bytes,
        "{u:#}"
    );
    assert_eq!(u["shared"], deb["bytes"], "{u:#}");
    assert_eq!(
        n(&u["named"]),
        n(&deb["bytes"]) + n(&image(&list, "bb")["bytes"]),
        "{u:#}"
    );
    assert_eq!(n(&u["unreferenced"]), sum_bytes(&list["unreferenced"]));
    assert_eq!(n(&u["temp"]), 1000);
    assert!(n(&u["merge_cache_unneeded"]) > 0, "{u:#}");
    assert!(
        n(&u["merge_cache_unneeded"]) < n(&u["merge_cache"]),
        "{u:#}"
    );

    // A dry run says what would go and changes nothing.
    let dry = g.run(&["--json", "store", "gc", "--dry-run"]).ok().json();
    let freed = n(&u["unreferenced"]) + n(&u["temp"]) + n(&u["merge_cache_unneeded"]);
    assert_eq!(n(&dry["bytes_freed"]), freed, "{dry:#}");
    assert_eq!(dry["names"], serde_json::json!([]));
    assert_eq!(du_sb(g.store.path()), store_bytes);

    let gc = g.run(&["--json", "store", "gc"]).ok().json();
    assert_eq!(n(&gc["bytes_freed"]), freed, "{gc:#}");
    assert_eq!(gc["blobs"], dry["blobs"]);
    let after = du_sb(g.store.path());
    assert_eq!(n(&gc["after"]["total"]), after, "{gc:#}");
    assert!(
        store_bytes - after >= freed,
        "{store_bytes} - {after} < {freed}"
    );
    let list = ls(&g);
    assert_eq!(list["unreferenced"], serde_json::json!([]));
    assert_eq!(list["temp"], serde_json::json!([]));
    assert_eq!(names(&list), ["bb", "deb", "deb-again"]);
    let u = usage(&g);
    assert_eq!(n(&u["merge_cache_unneeded"]), 0, "{u:#}");
    // What stays is whole: every blob is read and verified.
    let t = tempfile::tempdir().unwrap();
    g.run(&["unpack", "store:bb", t.path().join("bb").to_str().unwrap()])
        .ok();

    // Names by age: bb unused for 10 days goes, with the merge state only
    // it needed; deb, just read, stays.
    last_used_days_ago(&g, "bb", 10);
    g.run(&["inspect", "store:deb"]).ok();
    let bb_state = n(&u["merge_cache"]);
    let old = g
        .run(&["--json", "store", "gc", "--older-than", "5d"])
        .ok()
        .json();
    assert_eq!(old["names"][0]["name"], "bb", "{old:#}");
    assert_eq!(old["names"].as_array().unwrap().len(), 1, "{old:#}");
    assert_eq!(
        n(&old["bytes_freed"]),
        n(&image(&list, "bb")["bytes"]) + bb_state,
        "{old:#}"
    );
    assert_eq!(names(&ls(&g)), ["deb", "deb-again"]);

    // By size: the least recently used names go first, not the largest;
    // a name whose blobs another name holds frees nothing alone, so both
    // names of the debian image go before bb (used since).
    g.run(&["copy", &busybox, "store:bb"]).ok();
    last_used_days_ago(&g, "deb", 2);
    let total = n(&usage(&g)["total"]);
    let max = (total - 1).to_string();
    let sized = g
        .run(&["--json", "store", "gc", "--max-size", &max])
        .ok()
        .json();
    let gone: Vec<&str> = sized["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(gone, ["deb", "deb-again"], "{sized:#}");
    assert_eq!(n(&sized["bytes_freed"]), n(&deb["bytes"]), "{sized:#}");
    assert_eq!(names(&ls(&g)), ["bb"]);
    assert!(n(&sized["after"]["total"]) < total);

    // Bad values are named.
    let r = g.run(&["store", "gc", "--older-than", "30"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--older-than"), "{}", r.stderr);
    let r = g.run(&["store", "gc", "--max-size", "10Q"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--max-size"), "{}", r.stderr);
}

/// A `gridship copy` fed slowly through a FIFO is mid-write: some blobs
/// complete but not yet named, one being written. A gc then removes
/// nothing and says why; a gc that waits runs when the copy has ended and
/// removes only what no name needs.
#[test]
fn gc_never_removes_what_a_running_writer_holds() {
    let g = Gridship::new();
    std::fs::create_dir_all(g.store.path().join("blobs/sha256")).unwrap();
    let planted = plant_unreferenced_blob(&g, 5000);
    let archive = std::fs::read(fixtures().join("debian.oci-archive.tar")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("archive.fifo");
    tool("mkfifo", &[fifo.to_str().unwrap()]);
    let writer = g
        .cmd()
        .args([
            "copy",
            &format!("oci-archive:{}", fifo.display()),
            "store:slow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let cut = archive.len() * 7 / 10;
    feed.write_all(&archive[..cut]).unwrap();
    // Mid-blob: a temporary blob, next to complete ones nothing names yet.
    let started = Instant::now();
    while !blob_files(&g).keys().any(|f| f.starts_with(".tmp-blob-")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no blob being written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = blob_files(&g);
    let u = usage(&g);
    assert!(n(&u["temp"]) > 0, "{u:#}");
    assert!(
        n(&u["unreferenced"]) > 5000,
        "the copy's blobs, unnamed so far: {u:#}"
    );

    let refused = g.run(&["--json", "store", "gc"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("another gridship process is writing this store")
            && refused.stderr.contains("nothing was removed")
            && refused.stderr.contains("--wait"),
        "{}",
        refused.stderr
    );
    let now = blob_files(&g);
    for (f, _) in during.iter().filter(|(f, _)| !f.starts_with('.')) {
        assert!(now.contains_key(f), "{f} was removed while the copy ran");
    }

    let waiting = g
        .cmd()
        .args(["--json", "store", "gc", "--wait", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut waiting = waiting;
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "gc ran while the copy was writing"
    );
    feed.write_all(&archive[cut..]).unwrap();
    drop(feed);
    let copied = to_run(writer.wait_with_output().unwrap()).ok();
    assert!(copied.stdout.contains("store:slow"), "{}", copied.stdout);
    let gc = to_run(waiting.wait_with_output().unwrap()).ok().json();

    // It removed the planted blob, nothing of the copy's image.
    let removed: Vec<&str> = gc["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [format!("blobs/sha256/{planted}")], "{gc:#}");
    assert_eq!(n(&gc["bytes_freed"]), 5000, "{gc:#}");
    let list = ls(&g);
    let slow = image(&list, "slow");
    assert_eq!(slow["missing_blobs"], 0, "{slow:#}");
    assert_eq!(
        n(&slow["bytes"]),
        blob_files(&g).values().sum::<u64>(),
        "every blob left is the image's"
    );
    let t = tempfile::tempdir().unwrap();
    g.run(&["unpack", "store:slow", t.path().join("t").to_str().unwrap()])
        .ok();
}

/// `promote SESSION --site glasgow --to TO --out OUT --tag TAG`, reproducible.
fn promote(g: &Gridship, s: &Session, to: &str, out: &Path, tag: &str) -> Value {
    to_run(
        g.cmd()
            .env("SOURCE_DATE_EPOCH", "1767225600")
            .args([
                "--json", "promote", &s.name, "--site", "glasgow", "--to", to,
            ])
            .arg("--out")
            .arg(out)
            .args(["--tag", tag, "--run", "cd /work && python3 project/main.py"])
            .output()
            .unwrap(),
    )
    .ok()
    .json()
}

fn artifact_bytes(report: &Value, kind: &str) -> u64 {
    report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .map(|a| n(&a["bytes"]))
        .sum()
}

/// Relative path -> bytes of every file under `root`.
fn tree_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(root).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The CVMFS metadata (manifest.json per name) and the flat trees' names.
fn cvmfs_metadata(out: &Path) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let root = out.join("cvmfs");
    let metadata = tree_files(&root.join(".metadata"));
    let mut flats = Vec::new();
    for xx in std::fs::read_dir(root.join(".flat")).unwrap() {
        let xx = xx.unwrap().path();
        if xx.is_dir() {
            for d in std::fs::read_dir(&xx).unwrap() {
                flats.push(d.unwrap().file_name().into_string().unwrap());
            }
        }
    }
    flats.sort();
    (metadata, flats)
}

/// The snapshot stays, named; the flattened image only with `--to oci`:
/// with `--to sif` or `--to sif,cvmfs` no layer but the snapshot's is left,
/// and what promote added to the store and --out is the snapshot, the
/// artifacts and the merge states, nothing else. The CVMFS metadata is the
/// same as when the flattened image is kept.
#[test]
fn promote_keeps_only_what_was_asked_for() {
    let s = Session::start("gs-store");
    let session_bytes = s.size();
    let g = Gridship::new();
    let out = tempfile::tempdir().unwrap();
    let disk = || du_sb(g.store.path()) + du_sb(out.path());
    let before = disk();
    let r = promote(&g, &s, "sif", &out.path().join("1"), "t1");
    let added = disk() - before;
    let list = ls(&g);
    let snapshot = format!("container:{}", s.name);
    assert_eq!(names(&list), std::slice::from_ref(&snapshot), "{list:#}");
    let snapshot_bytes = n(&image(&list, &snapshot)["bytes"]);
    // The snapshot's layers are read from the engine's layer store, not
    // copied: the store holds its manifest, config and links.
    assert!(snapshot_bytes < 1 << 20, "{list:#}");
    let in_engine = n(&image(&list, &snapshot)["in_engine"]);
    assert!(
        in_engine as f64 > 0.9 * session_bytes as f64,
        "{in_engine} bytes in the engine for a {session_bytes}-byte session: {list:#}"
    );
    assert_eq!(n(&usage(&g)["in_engine"]), in_engine);
    // Left unnamed: the working image's small overlay layer, config and
    // manifest; no flattened layer.
    assert!(
        sum_bytes(&list["unreferenced"]) < 1 << 20,
        "{:#}",
        list["unreferenced"]
    );
    let u = usage(&g);
    assert_eq!(n(&u["temp"]), 0, "{u:#}");
    let sif = artifact_bytes(&r, "sif");
    let accounted = snapshot_bytes + sif + n(&u["merge_cache"]);
    eprintln!(
        "promote --to sif of a {session_bytes}-byte session added {added} bytes ({:.2}x): snapshot {snapshot_bytes}, SIF {sif}, merge states {}",
        added as f64 / session_bytes as f64,
        n(&u["merge_cache"])
    );
    assert!(
        added <= accounted + (1 << 20),
        "added {added} bytes, of which only {accounted} are the snapshot, the SIF and the merge states"
    );
    assert!(
        (added as f64) <= 1.2 * session_bytes as f64,
        "a first promote to sif added {added} bytes for a {session_bytes}-byte session"
    );

    // Again with a CVMFS tree: the snapshot is reused, nothing flattened
    // is kept, and a repeat promote adds its artifacts only (within 1.2x
    // of the session, the tree being unpacked).
    let before = disk();
    let r2 = promote(&g, &s, "sif,cvmfs", &out.path().join("2"), "t2");
    let added = disk() - before;
    let list = ls(&g);
    assert_eq!(names(&list), std::slice::from_ref(&snapshot), "{list:#}");
    assert!(
        sum_bytes(&list["unreferenced"]) < 1 << 20,
        "{:#}",
        list["unreferenced"]
    );
    assert!(
        (added as f64) <= 1.2 * session_bytes as f64,
        "a repeat promote to sif,cvmfs added {added} bytes for a {session_bytes}-byte session"
    );
    // ... and its CVMFS tree and metadata are those of a promote that keeps
    // the flattened image.
    let g2 = Gridship::new();
    let out2 = tempfile::tempdir().unwrap();
    promote(&g2, &s, "oci,cvmfs", out2.path(), "t2");
    let kept = cvmfs_metadata(out2.path());
    assert_eq!(cvmfs_metadata(&out.path().join("2")), kept);
    assert!(!kept.1.is_empty() && !kept.0.is_empty());
    let flat = r2["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "cvmfs")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert_eq!(kept.1, [flat]);
    assert!(
        names(&ls(&g2)).iter().any(|p| p.starts_with("promoted/")),
        "--to oci keeps the flattened image"
    );
    let gc2 = g2
        .run(&["--json", "store", "gc", "--older-than", "0s"])
        .ok()
        .json();
    assert_eq!(
        gc2["engine_snapshots"].as_array().unwrap().len(),
        1,
        "{gc2:#}"
    );

    // gc leaves the snapshot; --older-than 0s removes it too.
    let gc = g.run(&["--json", "store", "gc"]).ok().json();
    assert_eq!(gc["names"], serde_json::json!([]));
    let list = ls(&g);
    assert_eq!(names(&list), std::slice::from_ref(&snapshot));
    assert_eq!(list["unreferenced"], serde_json::json!([]));
    let gc = g
        .run(&["--json", "store", "gc", "--older-than", "0s"])
        .ok()
        .json();
    assert_eq!(gc["names"][0]["name"], snapshot.as_str());
    assert!(n(&gc["bytes_freed"]) >= snapshot_bytes, "{gc:#}");
    // The engine's commit went with the name (this store's only one).
    assert_eq!(
        gc["engine_snapshots"].as_array().unwrap().len(),
        1,
        "{gc:#}"
    );
    let u = usage(&g);
    assert_eq!(
        (n(&u["named"]), n(&u["merge_cache"]), n(&u["in_engine"])),
        (0, 0, 0),
        "{u:#}"
    );
}
