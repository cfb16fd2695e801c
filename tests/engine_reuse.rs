//! `docker-daemon:` and `container:` reads reuse what the store has: a
//! second read exports nothing (the engine logs no `save` of the image), a
//! changed image and a container snapshot read only their new layer, and
//! what is read from the engine's layer store is byte for byte what
//! `docker save` gives. Against the real Docker Engine.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::*;

const STATIC_SUITE: &str = "name: static-only
checks:
  - {name: no-driver-libs, kind: static}
  - {name: glibc-version, kind: static}
  - {name: cuda-driver-compat, kind: static}
";

fn docker() -> String {
    env("GRIDSHIP_DOCKER")
}

/// `docker build -t TAG -` of a Dockerfile (no context); the image ID.
fn build(tag: &str, dockerfile: &str) -> String {
    let mut child = Command::new(docker())
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image_id(tag)
}

fn image_id(name: &str) -> String {
    tool(&docker(), &["image", "inspect", "-f", "{{.Id}}", name])
        .trim()
        .to_string()
}

/// Seconds since the epoch, as `docker events --since` reads them.
fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// How many times the engine exported image `id` (`docker save`) since `since`.
fn saves_of(id: &str, since: &str) -> usize {
    // Events are logged as the export starts; a moment later they are all in.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let until = now();
    tool(
        &docker(),
        &[
            "events",
            "--since",
            since,
            "--until",
            &until,
            "--filter",
            "type=image",
            "--filter",
            "event=save",
            "--format",
            "{{.Actor.ID}}",
        ],
    )
    .lines()
    .filter(|l| l.trim() == id)
    .count()
}

/// A unique image from the busybox fixture: a layer with data, one that
/// deletes a file and replaces a directory (a whiteout and an opaque
/// directory in the engine's layer), and a label that makes its ID ours.
fn test_image(prefix: &str) -> (String, String) {
    let tag = format!("{}:1", unique(prefix).to_lowercase());
    let dockerfile = format!(
        "FROM gridship-fixture/busybox:1
RUN mkdir -p /data/old && echo one > /data/old/a && echo keep > /data/b \
 && dd if=/dev/urandom of=/data/blob bs=1k count=256 2>/dev/null
RUN rm -rf /data/old /bin/ls && mkdir /data/old && echo two > /data/old/c
LABEL org.gridship.test={tag}
"
    );
    let id = build(&tag, &dockerfile);
    (tag, id)
}

/// What a `copy --json` run read from the engine, checked against the
/// expected way, layer count and layers reused.
fn engine_read(run: &Run, via: &str, layers: u64, reused: u64) -> serde_json::Value {
    let read = run.json()["engine_read"].clone();
    assert_eq!(
        (
            read["via"].as_str(),
            read["layers"].as_u64(),
            read["layers_reused"].as_u64()
        ),
        (Some(via), Some(layers), Some(reused)),
        "{read}"
    );
    read
}

/// A read of the test image that took it all from the store: the same
/// manifest, 0 bytes from the engine, and the engine exported nothing.
fn assert_nothing_exported(run: &Run, manifest: &str, id: &str, since: &str) {
    let read = engine_read(run, "store", 3, 3);
    assert_eq!(read["bytes_exported"], 0, "{read}");
    assert_eq!(run.json()["manifest_digest"], manifest);
    assert_eq!(saves_of(id, since), 0, "the engine exported {id} again");
}

/// Manifest and layer digests of an image, from `inspect --json`.
fn digests(g: &Gridship, image: &str) -> Vec<String> {
    let v = g.run(&["--json", "inspect", image]).ok().json();
    let mut out = vec![v["manifest"]["digest"].as_str().unwrap().to_string()];
    for l in v["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_string());
    }
    out
}

/// The checks and facts of a smoke report (without timings).
fn smoke_results(run: &Run) -> serde_json::Value {
    let v = run.json();
    let checks: Vec<serde_json::Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::json!([c["name"], c["status"], c["detail"]]))
        .collect();
    serde_json::json!({"checks": checks, "facts": v["facts"]})
}

#[test]
fn engine_image_is_exported_once_and_then_reused() {
    let (tag, id) = test_image("gridship-test/reuse");
    let src = format!("docker-daemon:{tag}");
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("static.yaml");
    std::fs::write(&suite, STATIC_SUITE).unwrap();
    let suite = suite.to_str().unwrap();
    let since = now();

    // First read into an empty store: the whole image, from the engine's
    // layer store (this test runs as root next to the engine).
    let g = Gridship::new();
    let first = g.run(&["--json", "copy", &src, "store:first"]).ok();
    let read = engine_read(&first, "layer-store", 3, 0);
    assert_eq!(read["image_id"], id.as_str(), "{read}");
    assert!(
        read["bytes_exported"].as_u64().unwrap() > 256 * 1024,
        "{read}"
    );
    let smoke_first = g.run(&["--json", "smoke", &src, "--suite", suite]);

    // What `docker save` gives, imported from its archive into another
    // store, is the same image, blob for blob.
    let archive = tmp.path().join("saved.tar");
    tool(&docker(), &["save", "-o", archive.to_str().unwrap(), &tag]);
    let saved = Gridship::new();
    let want = digests(
        &saved,
        &format!("docker-archive:{}:{tag}", archive.display()),
    );
    assert_eq!(digests(&g, "store:first"), want);
    assert_eq!(saves_of(&id, &since), 1, "only the test's own docker save");

    // Every later read takes it all from the store: nothing exported.
    let since = now();
    let smoke_second = g
        .cmd()
        .args(["-v", "--json", "smoke", &src, "--suite", suite])
        .output()
        .unwrap();
    let smoke_second = to_run(smoke_second);
    assert_eq!(
        smoke_second.code, smoke_first.code,
        "{}",
        smoke_second.stderr
    );
    assert_eq!(smoke_results(&smoke_second), smoke_results(&smoke_first));
    assert!(
        smoke_second
            .stderr
            .contains("3 of 3 layers reused from the store, 0 bytes read from the engine"),
        "{}",
        smoke_second.stderr
    );
    // ... and its tree from the store's merge cache: no layer merged again.
    assert!(
        smoke_second
            .stderr
            .contains("merge state of 3 of 3 layers reused from"),
        "{}",
        smoke_second.stderr
    );
    assert_eq!(digests(&g, &src), want);
    let second = g.run(&["--json", "copy", &src, "store:second"]).ok();
    assert_nothing_exported(&second, &want[0], &id, &since);

    // An image built on it reads only its new layer.
    let next = format!("{}:2", tag.trim_end_matches(":1"));
    build(&next, &format!("FROM {tag}\nRUN echo three > /data/new\n"));
    let third = g
        .run(&[
            "--json",
            "copy",
            &format!("docker-daemon:{next}"),
            "store:next",
        ])
        .ok();
    engine_read(&third, "layer-store", 4, 3);
    let layers = digests(&g, "store:next");
    assert_eq!(
        layers[1..4],
        want[1..4],
        "the base layers are the same blobs"
    );

    tool(&docker(), &["rmi", &tag, &next]);
}

/// A user in the docker group who cannot read the engine's storage gets
/// the same image through `docker save`, once; the next read reuses it.
#[test]
fn without_the_layer_store_the_image_is_saved_once() {
    let (tag, id) = test_image("gridship-test/saved");
    let src = format!("docker-daemon:{tag}");
    let want = {
        let g = Gridship::new();
        g.run(&["copy", &src, "store:x"]).ok();
        digests(&g, "store:x")
    };

    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let socket = host.strip_prefix("unix://").expect("a local engine socket");
    let docker_gid = std::fs::metadata(socket).unwrap().gid();
    let g = Gridship::new();
    std::os::unix::fs::chown(g.store.path(), Some(65534), Some(65534)).unwrap();
    let as_user = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(format!("--groups={docker_gid}"))
            .arg("--inh-caps=-all")
            .arg(env!("CARGO_BIN_EXE_gridship"))
            .args(args)
            .env("GRIDSHIP_STORE", g.store.path())
            .env("HOME", g.store.path())
            .env("DOCKER_HOST", &host)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        to_run(out).ok()
    };

    let since = now();
    let first = as_user(&["--json", "copy", &src, "store:first"]);
    let read = engine_read(&first, "docker-save", 3, 0);
    assert!(
        read["bytes_exported"].as_u64().unwrap() > 256 * 1024,
        "{read}"
    );
    assert_eq!(first.json()["manifest_digest"], want[0].as_str());
    assert_eq!(saves_of(&id, &since), 1);

    let since = now();
    let second = as_user(&["--json", "copy", &src, "store:second"]);
    assert_nothing_exported(&second, &want[0], &id, &since);

    tool(&docker(), &["rmi", &tag]);
}

/// A snapshot of a running container reads only the layer of its changes
/// (a new file, a deleted one, a replaced directory), and that layer is
/// the one an independent `docker commit` + `docker save` gives.
#[test]
fn container_snapshot_reads_only_its_new_layer() {
    let (tag, _) = test_image("gridship-test/session");
    let g = Gridship::new();
    g.run(&["copy", &format!("docker-daemon:{tag}"), "store:base"])
        .ok();
    let name = unique("gridship-test-session");
    tool(
        &docker(),
        &[
            "run",
            "-d",
            "--name",
            &name,
            &tag,
            "/bin/sh",
            "-c",
            "echo work > /data/result && rm /data/b && rm -rf /data/old \
             && mkdir /data/old && echo new > /data/old/d && sleep 600",
        ],
    );
    // The changes are made before the snapshot.
    for _ in 0..50 {
        let out = Command::new(docker())
            .args(["exec", &name, "test", "-f", "/data/old/d"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let snap = g
        .run(&["--json", "copy", &format!("container:{name}"), "store:snap"])
        .ok();
    let read = engine_read(&snap, "layer-store", 4, 3);
    // Its own layer is linked in the engine's layer store, not copied:
    // only its config was read.
    assert_eq!(read["layers_linked"].as_u64(), Some(1), "{read}");
    assert!(
        read["bytes_exported"].as_u64().unwrap() < 64 << 10,
        "{read}"
    );
    let ours = digests(&g, "store:snap");

    // The engine's own export of the same changes.
    let tmp = tempfile::tempdir().unwrap();
    let committed = format!("{}:commit", unique("gridship-test/commit").to_lowercase());
    tool(&docker(), &["commit", &name, &committed]);
    let archive = tmp.path().join("commit.tar");
    tool(
        &docker(),
        &["save", "-o", archive.to_str().unwrap(), &committed],
    );
    let theirs = digests(
        &Gridship::new(),
        &format!("docker-archive:{}:{committed}", archive.display()),
    );
    assert_eq!(ours[1..], theirs[1..], "the same layers, blob for blob");

    // Pushed, the linked layer is read from the engine's layer store (no
    // blob file in the store) and arrives as the same blob.
    let pushed = format!(
        "docker://{}/{}:1",
        common::registry(),
        unique("gridship-test/snap-push").to_lowercase()
    );
    let mut push: Vec<String> = vec!["copy".into(), "store:snap".into(), pushed.clone()];
    push.extend(common::creds_args());
    g.run(&push).ok();
    let mut inspect: Vec<String> = vec!["--json".into(), "inspect".into(), pushed];
    inspect.extend(common::creds_args());
    let remote = g.run(&inspect).ok().json();
    let remote: Vec<String> =
        std::iter::once(remote["manifest"]["digest"].as_str().unwrap().to_string())
            .chain(
                remote["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["digest"].as_str().unwrap().to_string()),
            )
            .collect();
    assert_eq!(remote, ours, "the registry has the snapshot, blob for blob");

    // And the merged tree has the changes.
    let dir = tmp.path().join("tree");
    g.run(&["unpack", "store:snap", dir.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("data/result")).unwrap(),
        "work\n"
    );
    assert_eq!(list(&dir.join("data/old")), vec!["", "d"]);
    assert!(!dir.join("data/b").exists());
    assert!(!dir.join("bin/ls").exists());

    // Once the engine no longer has the commit (a user's `docker rmi`),
    // the store says so, and which layer, rather than read something else.
    let id = tool(&docker(), &["inspect", "-f", "{{.Id}}", &name]);
    tool(&docker(), &["rm", "-f", &name]);
    common::remove_snapshots_of(&id.trim()[..12]);
    // (The test's own commit of the same changes shares the layer.)
    tool(&docker(), &["rmi", &committed, &tag]);
    let gone = g.run(&[
        "unpack",
        "store:snap",
        tmp.path().join("again").to_str().unwrap(),
    ]);
    assert_ne!(gone.code, 0);
    assert!(
        gone.stderr.contains("which the engine at")
            && gone.stderr.contains("take the snapshot again"),
        "{}",
        gone.stderr
    );
    assert!(!tmp.path().join("again").exists(), "nothing half-written");
}
