//! The layer merge, checked against umoci: every adversarial case and the
//! Debian fixture unpack to the same tree, file by file; unsafe layers are
//! refused without writing anything.

mod common;

use common::layers::{self, Comp};
use common::*;

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_merge_case_unpacks_like_umoci() {
    let g = Gridship::new();
    let mut failures = Vec::new();
    for case in layers::cases() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        layers::write_image(&layout, "1", &case.layers);
        let ours = tmp.path().join("ours");
        let run = g.run(&[
            "unpack",
            &format!("oci:{}:1", layout.display()),
            ours.to_str().unwrap(),
        ]);
        if run.code != 0 {
            failures.push(format!("{}: gridship failed: {}", case.name, run.stderr));
            continue;
        }
        let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
        let d = diff(&snapshot(&ours), &snapshot(&theirs));
        if !d.is_empty() {
            failures.push(format!("{}:\n{}", case.name, d.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The outcomes themselves, so that gridship and umoci cannot agree on a
/// wrong answer unnoticed.
#[test]
fn merge_outcomes_are_the_spec_ones() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let unpack = |name: &str| {
        let case = layers::cases()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        let layout = tmp.path().join(format!("{name}-layout"));
        layers::write_image(&layout, "1", &case.layers);
        let out = tmp.path().join(name);
        g.run(&[
            "unpack",
            &format!("oci:{}:1", layout.display()),
            out.to_str().unwrap(),
        ])
        .ok();
        out
    };

    let r = unpack("whiteouts");
    assert!(!r.join("a/file1").exists() && r.join("a/file2").exists());
    assert!(!r.join("b").exists() && r.join("keep").exists());
    assert!(
        list(&r).iter().all(|p| !p.contains(".wh.")),
        "no whiteout files remain"
    );

    let r = unpack("opaque-dirs");
    let mut d: Vec<String> = std::fs::read_dir(r.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    d.sort();
    assert_eq!(
        d,
        ["new1", "new2"],
        "opaque dir keeps only this layer's entries"
    );
    let e: Vec<_> = std::fs::read_dir(r.join("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(e, ["fresh"]);

    let r = unpack("file-dir-file");
    assert_eq!(read(&r.join("p")), b"file again");
    assert!(r.join("q").is_dir() && !r.join("q/inner").exists() && r.join("q/again").exists());

    let r = unpack("hardlinks");
    assert!(!r.join("h/target").exists());
    assert_eq!(
        read(&r.join("h/link")),
        b"content A",
        "a link outlives its whited-out target"
    );
    assert_eq!(
        read(&r.join("h/link-over")),
        b"old content",
        "a link keeps the old inode"
    );
    assert_eq!(read(&r.join("h/over")), b"new content");
    let s = snapshot(&r);
    assert!(
        s.hardlinks
            .contains(&vec!["/h/g1".into(), "/h/g2".into(), "/h/g3".into()])
    );

    let r = unpack("symlinks");
    assert_eq!(
        read(&r.join("usr/lib/through-link")),
        b"via lib",
        "written through the lib symlink"
    );
    assert_eq!(
        std::fs::read_link(r.join("lib")).unwrap(),
        std::path::Path::new("usr/lib")
    );
    assert_eq!(
        std::fs::read_link(r.join("usr/share")).unwrap(),
        std::path::Path::new("/opt")
    );
    assert!(r.join("abs").is_dir() && r.join("abs/f").is_file());

    let r = unpack("escaping-symlinks-stay-inside");
    assert_eq!(read(&r.join("tmp/pwned")), b"inside");
    assert_eq!(read(&r.join("etc/pwned")), b"inside");

    let r = unpack("xattrs");
    let s = snapshot(&r);
    assert_eq!(
        s.entries["/bin/ping"].xattrs.get("security.capability"),
        Some(&layers::cap_net_raw())
    );

    let r = unpack("devices-and-bits");
    let s = snapshot(&r);
    assert_eq!(s.entries["/dev/null"].rdev, (1, 3));
    assert_eq!(s.entries["/dev/loop0"].kind, "block");
    assert_eq!(s.entries["/setuid"].mode, 0o4755);
    assert_eq!(s.entries["/sticky"].mode, 0o1777);
    assert_eq!(
        (s.entries["/owned"].uid, s.entries["/owned"].gid),
        (1234, 5678)
    );
}

/// zstd layers merge to the same tree as the gzip ones (umoci 0.4.7 has no
/// zstd, so it unpacks the gzip twin).
#[test]
fn zstd_layers_unpack_like_their_gzip_twins() {
    let g = Gridship::new();
    let mut failures = Vec::new();
    for case in layers::cases() {
        let tmp = tempfile::tempdir().unwrap();
        let zstd_layers: Vec<_> = case
            .layers
            .iter()
            .map(|(_, e)| (Comp::Zstd, e.clone()))
            .collect();
        let zl = tmp.path().join("zstd");
        layers::write_image(&zl, "1", &zstd_layers);
        let gl = tmp.path().join("gzip");
        layers::write_image(&gl, "1", &case.layers);
        let ours = tmp.path().join("ours");
        let run = g.run(&[
            "unpack",
            &format!("oci:{}:1", zl.display()),
            ours.to_str().unwrap(),
        ]);
        if run.code != 0 {
            failures.push(format!("{}: {}", case.name, run.stderr));
            continue;
        }
        let theirs = umoci_unpack(&gl, "1", &tmp.path().join("bundle"));
        let d = diff(&snapshot(&ours), &snapshot(&theirs));
        if !d.is_empty() {
            failures.push(format!("{}:\n{}", case.name, d.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unsafe_layers_are_refused_and_nothing_is_written() {
    let g = Gridship::new();
    for case in layers::unsafe_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let digests = layers::write_image(&layout, "1", &case.layers);
        let before = list(tmp.path());
        let out = tmp.path().join("out");
        let run = g.run(&[
            "unpack",
            &format!("oci:{}:1", layout.display()),
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            run.code, 2,
            "{}: exit code; stderr: {}",
            case.name, run.stderr
        );
        let layer = digests.last().unwrap();
        assert!(
            run.stderr.contains(&format!("layer {layer}")),
            "{}: the error names the layer {layer}: {}",
            case.name,
            run.stderr
        );
        assert!(
            run.stderr.contains(case.entry),
            "{}: names the entry: {}",
            case.name,
            run.stderr
        );
        assert!(
            run.stderr.contains(case.reason),
            "{}: says why: {}",
            case.name,
            run.stderr
        );
        assert!(!out.exists(), "{}: nothing at DIR", case.name);
        assert_eq!(
            list(tmp.path()),
            before,
            "{}: nothing written beside DIR",
            case.name
        );
    }
}

#[test]
fn corrupted_layer_in_a_layout_is_refused() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let case = layers::cases()
        .into_iter()
        .find(|c| c.name == "whiteouts")
        .unwrap();
    let digests = layers::write_image(&layout, "1", &case.layers);
    let blob = layout
        .join("blobs/sha256")
        .join(digests[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = tmp.path().join("out");
    let run = g.run(&[
        "unpack",
        &format!("oci:{}:1", layout.display()),
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("digest mismatch") && run.stderr.contains(&digests[0]),
        "{}",
        run.stderr
    );
    assert!(!out.exists());
}

#[test]
fn unpack_refuses_a_non_empty_directory() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(&layout, "1", &layers::cases()[0].layers);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious"), b"keep me").unwrap();
    let run = g.run(&[
        "unpack",
        &format!("oci:{}:1", layout.display()),
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("exists and is not empty"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(out.join("precious")).unwrap(), b"keep me");
}

#[test]
fn debian_fixture_unpacks_like_umoci() {
    let g = Gridship::new();
    let layout = fixtures().join("debian-oci");
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let run = g
        .run(&[
            "--json",
            "unpack",
            &format!("oci:{}:1", layout.display()),
            ours.to_str().unwrap(),
        ])
        .ok();
    let report = run.json();
    assert!(
        report["files"].as_u64().unwrap() > 5000,
        "a real Debian tree: {report}"
    );
    let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    assert_same_tree(&ours, &theirs, "debian fixture");
    assert!(ours.join("usr/sbin/sshd").is_file() && ours.join("usr/bin/python3").exists());
}
