//! `gridship sif` against the real readers: siftool, unsquashfs, the
//! kernel's squashfs (loop mount of the partition), and real Apptainer
//! (as root through the kernel's squashfs, and as an unprivileged user
//! through squashfuse).

mod common;

use std::path::{Path, PathBuf};

use common::layers;
use common::*;
use gridship::transform::apptainer;

struct Sif {
    path: PathBuf,
    json: serde_json::Value,
}

fn sif(g: &Gridship, image: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Sif {
    let mut cmd = g.cmd();
    cmd.args(["--json", "sif", image, out.to_str().unwrap()])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = to_run(cmd.output().unwrap()).ok();
    Sif {
        path: out.to_path_buf(),
        json: run.json(),
    }
}

fn info(g: &Gridship, sif: &Path) -> serde_json::Value {
    g.run(&["--json", "sif-info", sif.to_str().unwrap()])
        .ok()
        .json()
}

/// A read-only loop mount of the partition, as Apptainer's kernel mount does.
struct Mount(PathBuf);

impl Mount {
    fn new(g: &Gridship, sif: &Path, at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let off = partition_offset(g, sif);
        tool(
            "mount",
            &[
                "-t",
                "squashfs",
                "-o",
                &format!("loop,ro,nodev,offset={off}"),
                sif.to_str().unwrap(),
                at.to_str().unwrap(),
            ],
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Our tree minus exactly what the Apptainer transform adds or changes must
/// equal umoci's tree minus the same paths; and every added path is in ours.
fn assert_tree_is_umoci_plus_layout(
    ours: &Path,
    theirs: &Path,
    added: &std::collections::BTreeSet<String>,
    what: &str,
) {
    let mut a = snapshot(ours);
    let mut b = snapshot(theirs);
    for p in added {
        assert!(a.entries.contains_key(p), "{what}: {p} is in the SIF");
        a.entries.remove(p);
        b.entries.remove(p);
    }
    // Directories whose entries the layout added get the build time; their
    // type, mode and owner are still compared above for the rest.
    let d = diff(&a, &b);
    assert!(
        d.is_empty(),
        "{what}: SIF tree differs from umoci beyond the layout:\n{}",
        d.join("\n")
    );
}

/// The paths the transform adds to an image, from the library (the same
/// transform the SIF sink runs).
fn layout_paths(g: &Gridship, image: &str) -> std::collections::BTreeSet<String> {
    use gridship::transform::Transform;
    let ctx = gridship::transport::Context {
        store: g.store.path().to_path_buf(),
        ..Default::default()
    };
    let img = gridship::transport::open(&image.parse().unwrap(), &ctx).unwrap();
    let mut index = gridship::index::FsIndex::from_image(&img).unwrap();
    let mut config = img.config.clone();
    let t = apptainer::ApptainerMetadata::new(
        apptainer::ApptainerOptions::for_image(image, 1_700_000_000, &config).unwrap(),
    );
    let mut report = gridship::transform::RuleReport::new(t.name(), t.description());
    t.apply(gridship::transform::Edit(
        &mut index,
        &mut config,
        &mut report,
    ))
    .unwrap();
    apptainer::added_paths(&report)
}

#[test]
fn siftool_reads_what_apptainer_writes() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("oci:{}:1", fixtures().join("busybox-oci").display());
    let s = sif(&g, &image, &tmp.path().join("bb.sif"), &[], &[]);
    let p = s.path.to_str().unwrap();
    let header = tool("siftool", &["header", p]);
    for want in [
        "Launch Script:        #!/usr/bin/env run-singularity",
        "Version:              01",
        "Primary Architecture: amd64",
        "Descriptors Free:     44",
        "Descriptors Total:    48",
        "Descriptors Offset:   4096",
        "Data Offset:          32176",
    ] {
        assert!(
            header.contains(want),
            "siftool header lacks {want:?}:\n{header}"
        );
    }
    let list = tool("siftool", &["list", p]);
    let rows: Vec<Vec<String>> = list
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    let types: Vec<&str> = rows.iter().map(|r| r[4].as_str()).collect();
    assert_eq!(
        types,
        [
            "Def.FILE",
            "JSON.Generic",
            "JSON.Generic",
            "FS (Squashfs/*System/amd64)"
        ],
        "{list}"
    );
    assert!(
        rows.iter().all(|r| r[1] == "1" && r[2] == "NONE"),
        "one group, no links: {list}"
    );
    let part_start: u64 = rows[3][3].split('-').next().unwrap().parse().unwrap();
    assert_eq!(part_start % 4096, 0, "partition aligned to 4096");
    let field = |id: &str, key: &str| -> String {
        tool("siftool", &["info", id, p])
            .lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(field("2", "Name:"), "inspect-metadata.json");
    assert_eq!(field("3", "Name:"), "oci-config.json");
    assert_eq!(field("4", "Filesystem Type:"), "Squashfs");
    assert_eq!(field("4", "Partition Type:"), "*System");
    assert_eq!(field("4", "Architecture:"), "amd64");
    let def = tool("siftool", &["dump", "1", p]);
    assert_eq!(
        def,
        format!(
            "bootstrap: oci\nfrom: {}:1\n\n",
            fixtures().join("busybox-oci").display()
        )
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&tool("siftool", &["dump", "2", p])).unwrap();
    assert_eq!(inspect["type"], "container");
    assert_eq!(
        inspect["data"]["attributes"]["labels"]["org.label-schema.schema-version"],
        "1.0"
    );
    let config: serde_json::Value =
        serde_json::from_str(&tool("siftool", &["dump", "3", p])).unwrap();
    assert_eq!(config["Cmd"], serde_json::json!(["/bin/sh"]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // The --json summary.
    for k in ["input_bytes", "output_bytes", "seconds", "sha256"] {
        assert!(!s.json[k].is_null(), "summary has {k}: {}", s.json);
    }
    assert_eq!(s.json["sha256"], format!("sha256:{}", sha256_file(&s.path)));
    assert_eq!(
        s.json["output_bytes"],
        std::fs::metadata(&s.path).unwrap().len()
    );
}

#[test]
fn partition_is_umoci_plus_the_layout_for_every_case() {
    let g = Gridship::new();
    let mut failures = Vec::new();
    for case in layers::cases() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        layers::write_image(&layout, "1", &case.layers);
        let image = format!("oci:{}:1", layout.display());
        let out = tmp.path().join("x.sif");
        let mut cmd = g.cmd();
        cmd.args(["sif", &image, out.to_str().unwrap(), "--block-size", "4096"]);
        let run = to_run(cmd.output().unwrap());
        if run.code != 0 {
            failures.push(format!("{}: {}", case.name, run.stderr));
            continue;
        }
        let ours = tmp.path().join("ours");
        unsquash_sif(&g, &out, &ours);
        let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
        let added = layout_paths(&g, &image);
        let r = std::panic::catch_unwind(|| {
            assert_tree_is_umoci_plus_layout(&ours, &theirs, &added, case.name)
        });
        if let Err(e) = r {
            failures.push(e.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn debian_sif_mounts_and_runs_python() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures().join("debian-oci");
    let image = format!("oci:{}:1", layout.display());
    let s = sif(&g, &image, &tmp.path().join("debian.sif"), &[], &[]);
    let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    let added = layout_paths(&g, &image);
    {
        // The kernel's view of the partition, the way Apptainer mounts it.
        let m = Mount::new(&g, &s.path, &tmp.path().join("mnt"));
        assert_tree_is_umoci_plus_layout(&m.0, &theirs, &added, "debian via the kernel");
        let snap = snapshot(&m.0);
        assert!(
            snap.entries["/usr/local/bin/gridship-netraw"]
                .xattrs
                .contains_key("security.capability")
        );
    }
    // Apptainer runs it as a site does: as root (kernel squashfs) and as an
    // unprivileged user (squashfuse), the config's Env applied, then the
    // libs directory (a clean environment, as a job gets).
    let sif = s.path.to_str().unwrap();
    for app in [Apptainer::root(), Apptainer::user(65534)] {
        let out = app.ok(&["exec", sif, "python3", "--version"]);
        assert!(out.starts_with("Python 3."), "{out}");
        let out = app.ok(&[
            "exec",
            "--cleanenv",
            sif,
            "/bin/sh",
            "-c",
            "echo \"$(id -u):$GRIDSHIP_FIXTURE:$LANG:$LD_LIBRARY_PATH\"",
        ]);
        let uid = if app.is_root() { "0" } else { "65534" };
        assert_eq!(
            out.trim(),
            format!("{uid}:debian:C.UTF-8:/.singularity.d/libs")
        );
    }
    // unsquashfs reads the same tree.
    let ours = tmp.path().join("ours");
    unsquash_sif(&g, &s.path, &ours);
    assert_tree_is_umoci_plus_layout(&ours, &theirs, &added, "debian via unsquashfs");
}

#[test]
fn reproducible_builds_are_byte_identical() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("oci:{}:1", fixtures().join("debian-oci").display());
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let a = sif(&g, &image, &tmp.path().join("a.sif"), &[], &env);
    let b = sif(
        &g,
        &image,
        &tmp.path().join("b.sif"),
        &["--threads", "1"],
        &env,
    );
    assert_eq!(
        sha256_file(&a.path),
        sha256_file(&b.path),
        "same bytes, whatever the thread count"
    );
    let i = info(&g, &a.path);
    assert_eq!(i["uuid"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(
        i["created"], -62135596800i64,
        "Go's zero time, as Apptainer writes it"
    );
    // Every time inside is clamped to SOURCE_DATE_EPOCH.
    let dir = tmp.path().join("x");
    unsquash_sif(&g, &a.path, &dir);
    let newest = snapshot(&dir)
        .entries
        .values()
        .filter_map(|e| e.mtime)
        .max()
        .unwrap();
    assert!(newest <= 1_700_000_000, "{newest}");
    // --reproducible without SOURCE_DATE_EPOCH: the same bytes twice too.
    let c = sif(
        &g,
        &image,
        &tmp.path().join("c.sif"),
        &["--reproducible"],
        &[],
    );
    let d = sif(
        &g,
        &image,
        &tmp.path().join("d.sif"),
        &["--reproducible"],
        &[],
    );
    assert_eq!(sha256_file(&c.path), sha256_file(&d.path));
    // Without either, each build is its own (random UUID).
    let busybox = format!("oci:{}:1", fixtures().join("busybox-oci").display());
    let e = sif(&g, &busybox, &tmp.path().join("e.sif"), &[], &[]);
    let f = sif(&g, &busybox, &tmp.path().join("f.sif"), &[], &[]);
    assert_ne!(info(&g, &e.path)["uuid"], info(&g, &f.path)["uuid"]);
}

#[test]
fn every_compression_runs_in_apptainer() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("oci:{}:1", fixtures().join("busybox-oci").display());
    for (name, level, says) in [
        ("gzip", Some("6"), "Compression gzip"),
        ("zstd", Some("3"), "Compression zstd"),
        ("xz", None, "Compression xz"),
        ("lz4", None, "Compression lz4"),
    ] {
        let out = tmp.path().join(format!("{name}.sif"));
        let mut args = vec!["--compression", name, "--block-size", "65536"];
        if let Some(l) = level {
            args.extend(["--level", l]);
        }
        let s = sif(&g, &image, &out, &args, &[]);
        let off = partition_offset(&g, &s.path).to_string();
        let stat = tool("unsquashfs", &["-s", "-o", &off, s.path.to_str().unwrap()]);
        assert!(
            stat.contains(says) && stat.contains("Block size 65536"),
            "{name}: {stat}"
        );
        // The kernel (Apptainer as root) and squashfuse (unprivileged) read it.
        for app in [Apptainer::root(), Apptainer::user(65534)] {
            let out = app.ok(&["exec", s.path.to_str().unwrap(), "/bin/sh", "-c", "echo ok"]);
            assert_eq!(out.trim(), "ok", "{name}");
        }
    }
}

#[test]
fn bad_options_and_inputs_are_refused_cleanly() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = format!("oci:{}:1", fixtures().join("busybox-oci").display());
    let out = tmp.path().join("x.sif");
    for (args, needle) in [
        (vec!["--block-size", "1000"], "power of two"),
        (vec!["--level", "30"], "level out of range"),
        (
            vec!["--compression", "lz4", "--level", "3"],
            "lz4 has no levels",
        ),
        (vec!["--compression", "bzip2"], "invalid value 'bzip2'"),
    ] {
        let mut a = vec!["sif", image.as_str(), out.to_str().unwrap()];
        a.extend(args.iter());
        let run = g.run(&a);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    let run = g
        .cmd()
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .args(["sif", &image, out.to_str().unwrap()])
        .output()
        .unwrap();
    let run = to_run(run);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("SOURCE_DATE_EPOCH=yesterday"),
        "{}",
        run.stderr
    );
    // A corrupt layer: an error, and no SIF nor temporary file left.
    let layout = tmp.path().join("layout");
    let digests = layers::write_image(&layout, "1", &layers::cases()[0].layers);
    let blob = layout
        .join("blobs/sha256")
        .join(digests[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let run = g.run(&[
        "sif",
        &format!("oci:{}:1", layout.display()),
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("digest mismatch"), "{}", run.stderr);
    let left: Vec<String> = list(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("layout"))
        .collect();
    assert_eq!(left, [""], "nothing written: {left:?}");
    // Not a SIF.
    let run = g.run(&["sif-info", blob.to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not a SIF file"), "{}", run.stderr);
}

/// busybox with a home made the Debian way (adduser: 0700, uid 1000) and a
/// project in it, group-shared files, and setuid/setgid programs.
fn image_with_a_private_home(dir: &Path) -> String {
    use layers::{Comp, dir as d, file, symlink};
    let layout = dir.join("home-oci");
    let bob = |e: layers::Entry| e.owner(1000, 1000);
    layers::extend_image(
        &fixtures().join("busybox-oci"),
        "1",
        &layout,
        "1",
        &[(
            Comp::Gzip,
            vec![
                d("home", 0o755),
                bob(d("home/bob", 0o700)),
                bob(d("home/bob/project", 0o755)),
                bob(file(
                    "home/bob/project/run.sh",
                    0o755,
                    b"#!/bin/sh\necho \"$(id -u) reads $(cat /home/bob/project/params)\"\n",
                )),
                bob(file("home/bob/project/params", 0o600, b"42")),
                bob(file(
                    "home/bob/project/tool",
                    0o700,
                    b"#!/bin/sh\necho tool\n",
                )),
                bob(d("home/bob/shared", 0o770)),
                bob(file("home/bob/shared/notes", 0o660, b"n\n")),
                bob(symlink("home/bob/latest", "project")),
                // Credentials, as Debian leaves them: a password hash
                // (bob set one for ssh) and the TLS private key directory.
                file(
                    "etc/shadow",
                    0o640,
                    b"root:*:19700:0:99999:7:::\nbob:$y$j9T$c2FsdA$aGFzaA:19700:0:99999:7:::\n",
                ),
                file("etc/gshadow", 0o640, b"root:*::\nbob:!::\n"),
                d("etc/ssl", 0o755),
                d("etc/ssl/private", 0o700),
                file("etc/ssl/private/site.key", 0o600, b"not a key\n"),
                d("usr/local", 0o755),
                d("usr/local/bin", 0o755),
                file("usr/local/bin/suid", 0o4750, b"#!/bin/sh\necho suid\n"),
                file("usr/local/bin/sgid", 0o2710, b"#!/bin/sh\necho sgid\n"),
            ],
        )],
        |_| {},
    );
    format!("oci:{}:1", layout.display())
}

/// What the rule should do, written independently of gridship: the owner's
/// r and x for group and others; x withheld from setuid/setgid files.
fn pool_readable(mode: u32, dir: bool) -> u32 {
    let r = if mode & 0o400 != 0 { 0o044 } else { 0 };
    let x = if mode & 0o100 != 0 && (dir || mode & 0o6000 == 0) {
        0o011
    } else {
        0
    };
    mode | r | x
}

/// Every difference between the trees without and with the rule is a
/// reported mode change, exactly the widening above; nothing gains write,
/// setuid or setgid.
fn assert_only_reported_widening(
    without: &Snapshot,
    with: &Snapshot,
    report: &serde_json::Value,
    what: &str,
) {
    let reported: std::collections::BTreeMap<String, String> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        without.entries.keys().collect::<Vec<_>>(),
        with.entries.keys().collect::<Vec<_>>(),
        "{what}: same paths"
    );
    // Credentials the rule reported as held back keep their modes, and so
    // does everything below them.
    let held: Vec<String> = report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect();
    let is_held = |p: &str| {
        held.iter().any(|h| {
            p == h
                || p.strip_prefix(h.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    };
    for (p, a) in &without.entries {
        let b = &with.entries[p];
        let want = match a.kind {
            _ if is_held(p) => a.mode,
            "dir" => pool_readable(a.mode, true),
            "file" => pool_readable(a.mode, false),
            _ => a.mode,
        };
        assert_eq!(b.mode, want, "{what}: {p} {:04o}", a.mode);
        assert_eq!(b.mode & 0o7022, a.mode & 0o7022, "{what}: {p}");
        assert_eq!(
            Info {
                mode: 0,
                ..b.clone()
            },
            Info {
                mode: 0,
                ..a.clone()
            },
            "{what}: {p}: only the mode changes"
        );
        match reported.get(p) {
            Some(r) => assert!(
                r.starts_with(&format!("mode {:04o} -> {:04o}", a.mode, b.mode)),
                "{what}: {p}: {r}"
            ),
            None => assert_eq!(a.mode, b.mode, "{what}: {p} changed unreported"),
        }
    }
}

#[test]
fn world_readable_opens_a_private_home_to_pool_accounts() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = image_with_a_private_home(tmp.path());

    // The report, path by path, for what the test image adds.
    // One build time for both SIFs: the layout's files carry it.
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let with = sif(
        &g,
        &image,
        &tmp.path().join("with.sif"),
        &["--world-readable"],
        &epoch,
    );
    let rule = &with.json["rules"][0];
    assert_eq!(rule["rule"], "world-readable");
    let mine: Vec<(String, String)> = rule["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(p, _)| p.starts_with("/home") || p.starts_with("/usr/local"))
        .collect();
    let want = [
        ("/home/bob", "mode 0700 -> 0755"),
        ("/home/bob/project/params", "mode 0600 -> 0644"),
        ("/home/bob/project/tool", "mode 0700 -> 0755"),
        ("/home/bob/shared", "mode 0770 -> 0775"),
        ("/home/bob/shared/notes", "mode 0660 -> 0664"),
        (
            "/usr/local/bin/sgid",
            "mode 2710 -> 2754 (setuid/setgid: execute not extended)",
        ),
        (
            "/usr/local/bin/suid",
            "mode 4750 -> 4754 (setuid/setgid: execute not extended)",
        ),
    ]
    .map(|(p, r)| (p.to_string(), r.to_string()));
    assert_eq!(mine, want);
    let without = sif(&g, &image, &tmp.path().join("without.sif"), &[], &epoch);
    assert_eq!(without.json["rules"], serde_json::json!([]));
    // Without the rule: one warning that names the closed home and the option.
    let warnings = without.json["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.contains("/home/bob (0700)")
            && w.contains("pool account")
            && w.contains("--world-readable"),
        "{w}"
    );
    assert_eq!(with.json["warnings"], serde_json::json!([]));
    // The image's credentials stay closed with the rule, each reported.
    let kept: Vec<&str> = rule["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["/etc/gshadow", "/etc/shadow", "/etc/ssl/private"]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    unsquash_sif(&g, &without.path, &a);
    unsquash_sif(&g, &with.path, &b);
    assert_only_reported_widening(&snapshot(&a), &snapshot(&b), rule, "SIF");

    // Apptainer as root through the kernel's squashfs (as a setuid install
    // reads it): the home is closed without the rule, open with it.
    let run = ["/home/bob/project/run.sh"];
    let app = Apptainer::root();
    let denied = app.output(&[&["exec", without.path.to_str().unwrap()][..], &run].concat());
    assert!(
        !denied.status.success()
            && String::from_utf8_lossy(&denied.stderr)
                .to_lowercase()
                .contains("permission denied"),
        "{denied:?}"
    );
    let out = app.ok(&[&["exec", with.path.to_str().unwrap()][..], &run].concat());
    assert_eq!(out, "0 reads 42\n");

    // The CVMFS tree, bound at /cvmfs/REPO and run as a pool account.
    let name = "gridship.test/home:1";
    let mut trees = Vec::new();
    for (dir, extra) in [
        ("repo-without", None),
        ("repo-with", Some("--world-readable")),
    ] {
        let root = tmp.path().join(dir);
        let mut args = vec![
            "--json",
            "cvmfs",
            "publish",
            &image,
            "--name",
            name,
            "--repo",
            "unpacked.test",
            "--root",
            root.to_str().unwrap(),
        ];
        args.extend(extra);
        let j = g.run(&args).ok().json();
        let rules: Vec<&str> = j["published"][0]["transforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["rule"].as_str().unwrap())
            .collect();
        // The chain's one order, as promote and sif apply it: the rule,
        // then the format's layout, then the publisher's widening.
        let expect: &[&str] = match extra {
            Some(_) => &["world-readable", "apptainer-metadata", "cvmfs-publishable"],
            None => &["apptainer-metadata", "cvmfs-publishable"],
        };
        assert_eq!(rules, expect);
        trees.push((root, j));
    }
    let flat = |i: usize| {
        trees[i]
            .0
            .join(trees[i].1["published"][0]["flat"].as_str().unwrap())
    };
    // The catalog marker is written at publish time: not the image's.
    let published = |i: usize| {
        let mut s = snapshot(&flat(i));
        s.entries
            .remove("/.cvmfscatalog")
            .expect("a nested catalog");
        s
    };
    assert_only_reported_widening(
        &published(0),
        &published(1),
        trees[1].1["published"][0]["transforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["rule"] == "world-readable")
            .unwrap(),
        "CVMFS tree",
    );
    let inside = format!("/cvmfs/unpacked.test/{name}");
    let pool = |i: usize| Apptainer::user(65534).mount(&trees[i].0, "/cvmfs/unpacked.test");
    let denied = pool(0).output(&["exec", &inside, run[0]]);
    assert!(
        !denied.status.success()
            && String::from_utf8_lossy(&denied.stderr)
                .to_lowercase()
                .contains("permission denied"),
        "{denied:?}"
    );
    let out = pool(1).ok(&[
        "exec",
        &inside,
        "/bin/sh",
        "-c",
        "/home/bob/project/run.sh; /home/bob/project/tool; /usr/local/bin/suid || echo suid refused",
    ]);
    assert_eq!(out, "65534 reads 42\ntool\nsuid refused\n");
}
