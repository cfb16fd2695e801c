//! Published trees for runtimes beyond Apptainer: the podman additional
//! image store and OCI runtime bundles, each run by the real podman and runc
//! against what chroot of the same tree prints; multi-arch images behind a
//! CVMFS variant symlink, with gc taking their trees and podman entries
//! together.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::layers;
use common::*;

const REPO: &str = "unpacked.test";

fn publish(g: &Gridship, root: &Path, args: &[&str]) -> Run {
    g.cvmfs_publish(REPO, root, args)
}

fn gc(g: &Gridship, root: &Path) -> serde_json::Value {
    g.cvmfs_run("gc", REPO, root, &["--grace-period", "0"])
        .ok()
        .json()
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn images_json(root: &Path) -> Vec<serde_json::Value> {
    let p = root.join("podmanStore/overlay-images/images.json");
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => Vec::new(),
    }
}

/// What the checks run: real work over the tree (the package database,
/// the interpreter) and who runs it.
const CMD: &str = "dpkg-query -W -f '${Package} ${Version}\\n'; python3 -c 'import sys; print(sys.version_info[:2])'; cat /etc/debian_version; id -u";

#[test]
fn podman_and_runc_run_the_published_debian_tree_as_chroot_does() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let reg = registry();
    let name = format!("{reg}/fixtures/debian:1");
    let json = publish(&g, &root, &[&format!("docker://{name}"), "--podman"])
        .ok()
        .json();
    let r = &json["published"][0];
    let flat = root.join(r["flat"].as_str().unwrap());
    let config = r["config_digest"].as_str().unwrap().to_string();
    let hex = config.trim_start_matches("sha256:");
    // The image ID is the registry's config digest, as a pull would give.
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("fixtures.json")).unwrap()).unwrap();
    assert_eq!(config, fixture["debian"]["image_id"].as_str().unwrap());
    assert_eq!(r["podman_image"], hex);

    let want = ok(
        Command::new("chroot")
            .arg(&flat)
            .args(["/bin/sh", "-c", CMD])
            .output()
            .unwrap(),
        "chroot",
    );
    assert!(
        want.contains("\npython3 ") && want.ends_with("\n0\n"),
        "{want}"
    );

    // podman: the image by its public name from the repository's store.
    let store = root.join("podmanStore");
    let inspect: serde_json::Value = serde_json::from_str(&ok(
        podman_with_store(tmp.path(), &store, &["image", "inspect", &name]),
        "podman image inspect",
    ))
    .unwrap();
    let i = &inspect[0];
    assert_eq!(i["Id"], hex);
    assert_eq!(
        i["Config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/gridship-entrypoint"])
    );
    assert_eq!(i["Config"]["WorkingDir"], "/work");
    assert!(
        i["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&"GRIDSHIP_FIXTURE=debian".into())
    );
    // The store holds the registry's config bytes under the config digest.
    let key = format!("={}", base64_std(format!("sha256:{hex}").as_bytes()));
    let stored = std::fs::read(store.join("overlay-images").join(hex).join(key)).unwrap();
    assert_eq!(sha256_bytes(&stored), hex);
    let got = ok(
        podman_with_store(
            tmp.path(),
            &store,
            &[
                "run",
                "--rm",
                "--pull=never",
                "--network=none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
                &name,
                "/bin/sh",
                "-c",
                CMD,
            ],
        ),
        "podman run",
    );
    assert_eq!(got, want, "podman run differs from chroot");
    // Nothing was pulled into podman's own store.
    let own = ok(
        podman_with_store(
            tmp.path(),
            &store,
            &["images", "--format", "{{.ID}} {{.ReadOnly}}"],
        ),
        "podman images",
    );
    assert_eq!(own.trim(), format!("{} true", &hex[..12]), "{own}");

    // runc: a bundle over the same tree.
    let bundle = tmp.path().join("bundle");
    g.run(&[
        "cvmfs",
        "bundle",
        &name,
        bundle.to_str().unwrap(),
        "--repo",
        REPO,
        "--root",
        root.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        CMD,
    ])
    .ok();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], flat.to_str().unwrap());
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["/usr/local/bin/gridship-entrypoint", "/bin/sh", "-c", CMD])
    );
    assert_eq!(spec["process"]["cwd"], "/work");
    assert_eq!(
        spec["process"]["user"],
        serde_json::json!({"uid": 0, "gid": 0})
    );
    let got = ok(
        Command::new("runc")
            .arg("--root")
            .arg(tmp.path().join("runc"))
            .args(["run", "-b"])
            .arg(&bundle)
            .arg(unique("gridship-bundle"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap(),
        "runc run",
    );
    assert_eq!(got, want, "runc run differs from chroot");
    // The tree is as it was published: runc wrote nothing into it.
    assert!(!flat.join("gridship").exists());
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn sha256_bytes(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// The host's architecture as the dir backend names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no test platform for {other}"),
    }
}

#[test]
fn multi_arch_index_behind_a_variant_link_and_gc_together() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    layers::write_multiarch(&layout, "1", &["amd64", "arm64"]);
    let src = format!("oci:{}:1", layout.display());
    let name = "reg.test/multi/img:1";
    let root = tmp.path().join("repo");
    let run = publish(&g, &root, &[&src, "--name", name, "--podman"]).ok();
    let json = run.json();
    let reports = json["published"].as_array().unwrap();
    let platforms: Vec<&str> = reports
        .iter()
        .map(|r| r["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    let mut flats = Vec::new();
    for (r, arch) in reports.iter().zip(["amd64", "arm64"]) {
        let entry = Path::new(".multiarch").join(arch).join(name);
        let flat = PathBuf::from(r["flat"].as_str().unwrap());
        assert_eq!(
            std::fs::read_link(root.join(&entry)).unwrap(),
            Path::new("../../../..").join(&flat)
        );
        // Each platform's own tree (the synthetic layer names its arch).
        assert_eq!(
            std::fs::read_to_string(root.join(&entry).join("arch")).unwrap(),
            arch
        );
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                root.join(".metadata/.multiarch")
                    .join(arch)
                    .join(name)
                    .join("manifest.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(m["config"]["digest"], r["config_digest"]);
        flats.push(flat);
    }
    assert_ne!(flats[0], flats[1]);
    for (alias, arch) in [("x86_64", "amd64"), ("aarch64", "arm64")] {
        assert_eq!(
            std::fs::read_link(root.join(".multiarch").join(alias)).unwrap(),
            Path::new(arch)
        );
    }
    // A plain directory has no variant symlinks: the host's architecture,
    // and the log says so.
    assert_eq!(
        std::fs::read_link(root.join(name)).unwrap(),
        Path::new("../../.multiarch").join(host_arch()).join(name)
    );
    assert!(run.stderr.contains("no variant symlinks"), "{}", run.stderr);
    let ls = g.cvmfs_ls(REPO, &root);
    assert_eq!(
        (ls[0]["complete"].as_bool(), ls[0]["committed"].as_bool()),
        (Some(true), Some(true)),
        "{ls}"
    );
    // Podman's store: both images, the name on the host's.
    let imgs = images_json(&root);
    assert_eq!(imgs.len(), 2);
    let named: Vec<&serde_json::Value> = imgs
        .iter()
        .filter(|i| i["names"].as_array().is_some_and(|n| !n.is_empty()))
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["names"], serde_json::json!([name]));

    // On a CVMFS publisher the public link is the variant symlink, the
    // literal text CVMFS expands per client.
    let mount = tmp.path().join("cvmfs");
    std::fs::create_dir_all(mount.join(REPO)).unwrap();
    let log = tmp.path().join("calls.log");
    let out = g
        .cmd()
        .env(
            "GRIDSHIP_CVMFS_SERVER",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/cvmfs_server"),
        )
        .env("STANDIN_LOG", &log)
        .env("STANDIN_MOUNT", &mount)
        .args(["cvmfs", "publish", &src, "--name", name, "--repo", REPO])
        .args(["--backend", "cvmfs-server", "--cvmfs-mount"])
        .arg(&mount)
        .output()
        .unwrap();
    to_run(out).ok();
    assert_eq!(
        std::fs::read_link(mount.join(REPO).join(name)).unwrap(),
        Path::new("../../.multiarch/$(CVMFS_ARCH:-amd64)").join(name)
    );
    for arch in ["amd64", "arm64"] {
        assert!(
            mount
                .join(REPO)
                .join(".multiarch")
                .join(arch)
                .join(name)
                .join("arch")
                .is_file()
        );
    }

    // gc keeps a published multi-arch image whole...
    let items = gc(&g, &root);
    assert_eq!(items.as_array().unwrap().len(), 0, "{items}");
    // ...and once the tag moves to a one-platform image, removes both
    // platforms' trees, entries and podman images together.
    let busybox = format!("oci:{}:1", fixtures().join("busybox-oci").display());
    publish(&g, &root, &[&busybox, "--name", name, "--podman"]).ok();
    let items = gc(&g, &root);
    let removed: Vec<PathBuf> = items
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "removed")
        .map(|i| PathBuf::from(i["path"].as_str().unwrap()))
        .collect();
    for f in &flats {
        assert!(removed.contains(f), "{f:?} not in {removed:?}");
        assert!(!root.join(f).exists());
    }
    for arch in ["amd64", "arm64"] {
        assert!(!root.join(".multiarch").join(arch).join(name).exists());
        assert!(
            !root
                .join(".metadata/.multiarch")
                .join(arch)
                .join(name)
                .exists()
        );
    }
    let imgs = images_json(&root);
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["names"], serde_json::json!([name]));
    for f in &flats {
        let id = f.file_name().unwrap();
        assert!(!root.join("podmanStore/overlay-images").join(id).exists());
    }
    // podman still reads the store gc rewrote: the one image left.
    let listed = ok(
        podman_with_store(
            tmp.path(),
            &root.join("podmanStore"),
            &["images", "--format", "{{.Repository}}:{{.Tag}}"],
        ),
        "podman images",
    );
    assert_eq!(listed.trim(), name);
}
