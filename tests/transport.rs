//! Transports against real components: the Docker Engine, an htpasswd
//! registry over HTTP and over TLS, skopeo and umoci as independent readers.

mod common;

use std::path::Path;

use common::layers;
use common::*;

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// Manifest, config and layer digests of an image, from `inspect --json`.
fn digests(g: &Gridship, image: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--json", "inspect", image];
    args.extend_from_slice(extra);
    let v = g.run(&args).ok().json();
    let mut out = vec![
        v["manifest"]["digest"].as_str().unwrap().to_string(),
        v["config"]["rootfs"]["diff_ids"].to_string(),
    ];
    for l in v["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_string());
    }
    out
}

#[test]
fn registry_to_oci_to_registry_keeps_every_digest() {
    let g = Gridship::new();
    let reg = registry();
    let creds = creds();
    let auth = ["--creds", creds.as_str(), "--tls-verify=false"];
    let fixture = oci(&fixtures().join("debian-oci"), "1");
    let first = format!("docker://{reg}/{}:1", unique("roundtrip-a"));
    let second = format!("docker://{reg}/{}:1", unique("roundtrip-b"));
    let tmp = tempfile::tempdir().unwrap();
    let local = oci(&tmp.path().join("layout"), "copy");

    let mut args = vec!["copy", fixture.as_str(), first.as_str()];
    args.extend_from_slice(&auth);
    g.run(&args).ok();
    let mut args = vec!["copy", first.as_str(), local.as_str()];
    args.extend_from_slice(&auth);
    g.run(&args).ok();
    let mut args = vec!["copy", local.as_str(), second.as_str()];
    args.extend_from_slice(&auth);
    g.run(&args).ok();

    let want = digests(&g, &fixture, &[]);
    assert_eq!(digests(&g, &first, &auth), want);
    assert_eq!(digests(&g, &local, &[]), want);
    assert_eq!(digests(&g, &second, &auth), want);
    // skopeo, reading the registry itself, sees the same manifest bytes.
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--creds",
            &creds,
            "--tls-verify=false",
            &second,
        ],
    );
    let hex = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    };
    assert_eq!(format!("sha256:{hex}"), want[0]);
}

#[test]
fn wrong_credentials_say_authentication_failed() {
    let g = Gridship::new();
    let reg = registry();
    let tmp = tempfile::tempdir().unwrap();
    let src = format!("docker://{reg}/fixtures/busybox:1");
    let run = g.run(&[
        "copy",
        &src,
        &oci(&tmp.path().join("x"), "1"),
        "--creds",
        "gridship:not-the-password",
        "--tls-verify=false",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("authentication failed for {reg}")),
        "{}",
        run.stderr
    );
    // No credentials at all (and none in a docker config) is refused the same way.
    let empty = tempfile::tempdir().unwrap();
    let out = g
        .cmd()
        .env("DOCKER_CONFIG", empty.path())
        .args(["inspect", &src, "--tls-verify=false"])
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains(&format!("authentication failed for {reg}")),
        "{}",
        run.stderr
    );
}

#[test]
fn credentials_come_from_the_docker_config() {
    let g = Gridship::new();
    let reg = registry();
    let cfg = tempfile::tempdir().unwrap();
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(creds());
    std::fs::write(
        cfg.path().join("config.json"),
        serde_json::to_vec(&serde_json::json!({"auths": {reg.clone(): {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    let out = g
        .cmd()
        .env("DOCKER_CONFIG", cfg.path())
        .args([
            "--json",
            "inspect",
            &format!("docker://{reg}/fixtures/busybox:1"),
            "--tls-verify=false",
        ])
        .output()
        .unwrap();
    let run = to_run(out).ok();
    assert_eq!(run.json()["platform"], "linux/amd64");
}

#[test]
fn corrupted_registry_blob_is_refused_and_not_stored() {
    let g = Gridship::new();
    let reg = registry();
    let creds = creds();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("unique");
    let layer = layers::write_unique_image(&layout, "1")[0].clone();
    let repo = unique("corrupt");
    let dest = format!("docker://{reg}/{repo}:1");
    g.run(&[
        "copy",
        &oci(&layout, "1"),
        &dest,
        "--creds",
        &creds,
        "--tls-verify=false",
    ])
    .ok();

    // Flip a byte of the layer where the registry keeps it.
    let hex = layer.trim_start_matches("sha256:");
    let data = Path::new(&env("GRIDSHIP_TEST_REGISTRY_DATA"))
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x55;
    std::fs::write(&data, bytes).unwrap();

    let fresh = Gridship::new();
    let run = fresh.run(&[
        "copy",
        &dest,
        &oci(&tmp.path().join("pulled"), "1"),
        "--creds",
        &creds,
        "--tls-verify=false",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    for needle in [
        reg.as_str(),
        repo.as_str(),
        layer.as_str(),
        "digest mismatch",
    ] {
        assert!(
            run.stderr.contains(needle),
            "error names {needle}: {}",
            run.stderr
        );
    }
    let stored = fresh.store.path().join("blobs/sha256").join(hex);
    assert!(!stored.exists(), "the corrupt blob is not in the store");
    let index = std::fs::read_to_string(fresh.store.path().join("index.json")).unwrap_or_default();
    assert!(!index.contains(&repo), "no image recorded: {index}");
    assert!(
        !tmp.path().join("pulled").exists(),
        "nothing at the destination"
    );
}

#[test]
fn tls_registry_needs_its_ca() {
    let g = Gridship::new();
    let creds = creds();
    let cert_dir = env("GRIDSHIP_TEST_REGISTRY_CERT_DIR");
    let port = env("GRIDSHIP_TEST_REGISTRY_TLS");
    let port = port.rsplit(':').next().unwrap();
    // "localhost" has no certs.d entry, so only --cert-dir makes it trusted.
    let src = format!("docker://localhost:{port}/fixtures/busybox:1");
    let run = g.run(&["inspect", &src, "--creds", &creds]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    g.run(&["inspect", &src, "--creds", &creds, "--cert-dir", &cert_dir])
        .ok();
    // The CA installed for the Docker Engine (/etc/docker/certs.d) is used too.
    g.run(&[
        "inspect",
        &format!("docker://127.0.0.1:{port}/fixtures/busybox:1"),
        "--creds",
        &creds,
    ])
    .ok();
}

#[test]
fn multi_arch_index_picks_the_platform() {
    let g = Gridship::new();
    let reg = registry();
    let creds = creds();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    let manifests = layers::write_multiarch(&layout, "1", &["amd64", "arm64", "ppc64le"]);
    // From a layout directly.
    let v = g
        .run(&["--json", "inspect", &oci(&layout, "1"), "--arch", "arm64"])
        .ok()
        .json();
    assert_eq!(v["manifest"]["digest"], manifests[1].as_str());
    assert_eq!(v["platform"], "linux/arm64");
    // Through a registry (pushed by skopeo, which pushes whole indexes).
    let dest = format!("docker://{reg}/{}:1", unique("multi"));
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-creds",
            &creds,
            "--dest-tls-verify=false",
            &oci(&layout, "1"),
            &dest,
        ],
    );
    let auth = ["--creds", creds.as_str(), "--tls-verify=false"];
    for (arch, want) in [
        ("ppc64le", &manifests[2]),
        ("linux/arm64/v8", &manifests[1]),
    ] {
        let out = tmp.path().join(format!("out-{}", arch.replace('/', "-")));
        let o = oci(&out, "1");
        let mut args = vec!["--json", "copy", dest.as_str(), o.as_str()];
        args.extend_from_slice(&["--arch", arch]);
        args.extend_from_slice(&auth);
        let r = g.run(&args).ok().json();
        assert_eq!(r["manifest_digest"], want.as_str(), "{arch}");
        let blob = out
            .join("blobs/sha256")
            .join(want.trim_start_matches("sha256:"));
        assert!(
            blob.is_file(),
            "{arch}: the chosen manifest is in the layout"
        );
    }
    // The host's platform by default (these tests run on amd64).
    let v = g
        .run(&[
            "--json",
            "inspect",
            &dest,
            "--creds",
            &creds,
            "--tls-verify=false",
        ])
        .ok()
        .json();
    assert_eq!(v["manifest"]["digest"], manifests[0].as_str());
    // A platform the index lacks: a clear error listing what it has.
    let run = g.run(&[
        "inspect",
        &dest,
        "--arch",
        "s390x",
        "--creds",
        &creds,
        "--tls-verify=false",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("linux/s390x") && run.stderr.contains("linux/ppc64le"),
        "{}",
        run.stderr
    );
}

#[test]
fn docker_archive_and_engine_round_trip() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let docker = env("GRIDSHIP_DOCKER");
    // docker save output → OCI layout → same tree as umoci's unpack of skopeo's conversion.
    let saved = fixtures().join("debian.docker-archive.tar");
    let layout = tmp.path().join("from-save");
    g.run(&[
        "copy",
        &format!("docker-archive:{}", saved.display()),
        &oci(&layout, "1"),
    ])
    .ok();
    let ours = tmp.path().join("ours");
    g.run(&["unpack", &oci(&layout, "1"), ours.to_str().unwrap()])
        .ok();
    let theirs = umoci_unpack(
        &fixtures().join("debian-oci"),
        "1",
        &tmp.path().join("bundle"),
    );
    assert_same_tree(&ours, &theirs, "docker-archive import");

    // Engine → store → engine under a new name; the image ID (config digest) is kept.
    let name = unique("gridship-test/roundtrip").to_lowercase();
    let src_id = tool(
        &docker,
        &[
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            "gridship-fixture/busybox:1",
        ],
    );
    let archive = tmp.path().join("out.tar");
    g.run(&[
        "copy",
        "docker-daemon:gridship-fixture/busybox:1",
        &format!("docker-archive:{}:{name}:1", archive.display()),
    ])
    .ok();
    tool(&docker, &["load", "-i", archive.to_str().unwrap()]);
    let out = tool(
        &docker,
        &[
            "run",
            "--rm",
            &format!("{name}:1"),
            "/bin/sh",
            "-c",
            "echo from-archive",
        ],
    );
    assert_eq!(out.trim(), "from-archive");
    g.run(&[
        "copy",
        "docker-daemon:gridship-fixture/busybox:1",
        &format!("docker-daemon:{name}:2"),
    ])
    .ok();
    let new_id = tool(
        &docker,
        &["image", "inspect", "-f", "{{.Id}}", &format!("{name}:2")],
    );
    assert_eq!(new_id.trim(), src_id.trim());
    let out = tool(
        &docker,
        &[
            "run",
            "--rm",
            &format!("{name}:2"),
            "/bin/sh",
            "-c",
            "echo from-engine",
        ],
    );
    assert_eq!(out.trim(), "from-engine");
    tool(
        &docker,
        &["rmi", &format!("{name}:1"), &format!("{name}:2")],
    );
}

#[test]
fn oci_archive_round_trip_is_readable_by_skopeo() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let fixture = oci(&fixtures().join("busybox-oci"), "1");
    let archive = tmp.path().join("image.tar");
    g.run(&[
        "copy",
        &fixture,
        &format!("oci-archive:{}:v1", archive.display()),
    ])
    .ok();
    let back = oci(&tmp.path().join("back"), "1");
    g.run(&[
        "copy",
        &format!("oci-archive:{}:v1", archive.display()),
        &back,
    ])
    .ok();
    assert_eq!(digests(&g, &back, &[]), digests(&g, &fixture, &[]));
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:v1", archive.display()),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        v["layers"][0]["digest"].as_str().unwrap(),
        digests(&g, &fixture, &[])[2]
    );
    // A missing tag names what the archive holds.
    let run = g.run(&[
        "inspect",
        &format!("oci-archive:{}:nope", archive.display()),
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("v1"), "{}", run.stderr);
}

#[test]
fn concurrent_writers_share_one_store() {
    let g = Gridship::new();
    let reg = registry();
    let creds = creds();
    let src = format!("docker://{reg}/fixtures/debian:1");
    let children: Vec<_> = (0..4)
        .map(|i| {
            g.cmd()
                .args([
                    "copy",
                    &src,
                    &format!("store:same-{}", i % 2),
                    "--creds",
                    &creds,
                    "--tls-verify=false",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        to_run(c.wait_with_output().unwrap()).ok();
    }
    // Every blob hashes to its name; no temporary file is left.
    let blobs = g.store.path().join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.starts_with('.'), "leftover temporary file {name}");
        assert_eq!(sha256_file(&e.path()), name);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(g.store.path().join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    for n in ["store:same-0", "store:same-1"] {
        assert!(
            names.iter().any(|x| *x == n.trim_start_matches("store:")),
            "{names:?}"
        );
        g.run(&["inspect", n]).ok();
    }
    assert_eq!(
        names.iter().filter(|n| n.starts_with("docker://")).count(),
        1,
        "{names:?}"
    );
}

#[test]
fn bad_references_explain_themselves() {
    let g = Gridship::new();
    for (args, needle) in [
        (vec!["inspect", "debian:12"], "unknown transport"),
        (
            vec!["inspect", "docker://Reg.Example.org/UPPER:1"],
            "invalid repository component",
        ),
        (
            vec!["copy", "oci:/x:1", "docker://r.example.org/x:bad!tag"],
            "invalid tag",
        ),
        (vec!["inspect", "docker-daemon:busybox"], "no tag given"),
    ] {
        let run = g.run(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("write it like"),
            "{args:?} shows an example: {}",
            run.stderr
        );
    }
    let run = g.run(&["inspect", "oci:/nonexistent/layout:1"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/nonexistent/layout")
            && run.stderr.contains("not an OCI image layout")
    );
    let run = g.run(&["copy", "oci:/x:1", "oci:/y:1", "--creds", "nocolon"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("USER:PASSWORD"), "{}", run.stderr);
}

#[test]
fn no_engine_says_how_to_start_one() {
    let g = Gridship::new();
    let out = g
        .cmd()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["inspect", "docker-daemon:gridship-fixture/busybox:1"])
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no Docker Engine answers at unix:///nonexistent/docker.sock"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: start one"), "{}", run.stderr);
}

/// A proxy in front of the real registry that answers 500 to the first
/// `failures` requests matching `method` and a path containing `path_has`,
/// and passes everything else through, one request per connection.
struct FlakyRegistry {
    addr: String,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FlakyRegistry {
    fn start(method: &'static str, path_has: &'static str, failures: usize) -> FlakyRegistry {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = failed.clone();
        let upstream = registry();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let counter = counter.clone();
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    // The request head, and whatever of the body came with it.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let Ok(n) = client.read(&mut chunk) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // A TLS hello (gridship asks whether TLS is spoken):
                        // answer as Go's plain-HTTP server does.
                        if buf[0] == 0x16 {
                            let _ = client.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
                            return;
                        }
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let mut words = head.split_whitespace();
                    let (m, p) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    if m == method
                        && p.contains(path_has)
                        && counter
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                (n < failures).then_some(n + 1)
                            })
                            .is_ok()
                    {
                        let body = r#"{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":"invalid checksum digest format"}]}"#;
                        let _ = write!(
                            client,
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                            if m == "HEAD" { 0 } else { body.len() },
                            if m == "HEAD" { "" } else { body }
                        );
                        return;
                    }
                    // One request per connection: the registry closes after it.
                    let head: String = head
                        .split("\r\n")
                        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                        .collect::<Vec<_>>()
                        .join("\r\n");
                    let head = head.trim_end().to_string() + "\r\nConnection: close\r\n\r\n";
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = up.write_all(head.as_bytes());
                    let _ = up.write_all(&buf[head_end..]);
                    let (mut c_in, mut up_out) =
                        (client.try_clone().unwrap(), up.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_in, &mut up_out);
                    });
                    let _ = std::io::copy(&mut up, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        FlakyRegistry { addr, failed }
    }

    fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn passing_registry_failures_are_tried_again_and_lasting_ones_named() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("unique");
    layers::write_unique_image(&layout, "1");
    let repo = unique("flaky");
    let copy = |g: &Gridship, from: &str, to: &str| {
        g.run(&["copy", from, to, "--creds", &creds(), "--tls-verify=false"])
    };

    // Blob checks answered 500 twice (as distribution does while another
    // upload of the blob writes its link), then the manifest once: the
    // push goes through, and the image is whole in the registry.
    let heads = FlakyRegistry::start("HEAD", "/blobs/sha256:", 2);
    let pushed = format!("docker://{}/{repo}:1", heads.addr);
    copy(&g, &oci(&layout, "1"), &pushed).ok();
    assert_eq!(heads.failed(), 2);
    let manifests = FlakyRegistry::start("GET", "/manifests/1", 1);
    let fresh = Gridship::new();
    let pulled = tmp.path().join("pulled");
    copy(
        &fresh,
        &format!("docker://{}/{repo}:1", manifests.addr),
        &oci(&pulled, "1"),
    )
    .ok();
    assert_eq!(manifests.failed(), 1);
    assert_eq!(
        tool("skopeo", &["inspect", "--raw", &oci(&pulled, "1")]),
        tool("skopeo", &["inspect", "--raw", &oci(&layout, "1")]),
    );

    // A registry that keeps failing: the error names it, the request and
    // how often it was tried; nothing is recorded.
    let broken = FlakyRegistry::start("GET", "/manifests/1", usize::MAX);
    let lasting = Gridship::new();
    let run = copy(
        &lasting,
        &format!("docker://{}/{repo}:1", broken.addr),
        &oci(&tmp.path().join("never"), "1"),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    for needle in [
        broken.addr.as_str(),
        repo.as_str(),
        "manifest 1",
        "500",
        "4 times in a row",
    ] {
        assert!(
            run.stderr.contains(needle),
            "names {needle}: {}",
            run.stderr
        );
    }
    assert_eq!(broken.failed(), 4);
    assert!(!tmp.path().join("never").exists());
}
