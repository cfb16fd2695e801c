//! Layer tar formats beyond what umoci can judge, and the outcomes of the
//! format cases themselves.
//!
//! umoci 0.4.7 refuses old GNU sparse files and PAX global headers (Go's
//! archive/tar hands it entry types it does not handle), so for those
//! cases ([`layers::gnu_tar_cases`]) GNU tar's extraction of the layer is
//! the reference, through every way out of gridship: unpack, export and
//! squashfs. The cases umoci does read (PAX sparse, binary PAX values,
//! base-256 ids) are in [`layers::cases`] and go through every umoci
//! comparison; here their outcomes are checked against the bytes written,
//! so gridship and umoci cannot agree on a wrong answer.

mod common;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::layers::{self, Case};
use common::*;
use gridship::encode::squashfs::{Compression, SquashfsOptions, write_squashfs};
use gridship::image::{Image, PlatformWanted};
use gridship::index::FsIndex;
use gridship::store::Layout;

fn open_image(layout: &Path) -> Image {
    let l = Layout::open(layout).unwrap();
    let desc = l.resolve(Some("1")).unwrap();
    let name = format!("oci:{}:1", layout.display());
    Image::load(l, desc, &name, &PlatformWanted::host()).unwrap()
}

/// GNU tar as root, restoring owners, modes, times and every xattr.
fn gnu_extract(tar: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    tool(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--delay-directory-restore",
            "-xpf",
            tar.to_str().unwrap(),
            "-C",
            dest.to_str().unwrap(),
        ],
    );
}

/// GNU tar's extraction of a one-layer case (no whiteouts to apply).
fn reference(case: &Case, dir: &Path) -> std::path::PathBuf {
    assert_eq!(case.layers.len(), 1, "{}: one layer", case.name);
    let tar = dir.join("layer.tar");
    std::fs::write(&tar, layers::tar_bytes(&case.layers[0].1)).unwrap();
    let root = dir.join("gnu-reference");
    gnu_extract(&tar, &root);
    root
}

fn unpack(g: &Gridship, layout: &Path, out: &Path) {
    g.run(&[
        "unpack",
        &format!("oci:{}:1", layout.display()),
        out.to_str().unwrap(),
    ])
    .ok();
}

#[test]
fn gnu_tar_cases_unpack_export_and_squash_like_gnu_tar() {
    let g = Gridship::new();
    let mut failures = Vec::new();
    for case in layers::gnu_tar_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        layers::write_image(&layout, "1", &case.layers);
        let theirs = snapshot(&reference(&case, tmp.path()));

        let ours = tmp.path().join("unpacked");
        unpack(&g, &layout, &ours);
        for d in diff(&snapshot(&ours), &theirs) {
            failures.push(format!("{} (unpack): {d}", case.name));
        }

        let tar = tmp.path().join("export.tar");
        g.run(&[
            "export",
            &format!("oci:{}:1", layout.display()),
            tar.to_str().unwrap(),
        ])
        .ok();
        let extracted = tmp.path().join("exported");
        gnu_extract(&tar, &extracted);
        for d in diff(&snapshot(&extracted), &theirs) {
            failures.push(format!("{} (export): {d}", case.name));
        }

        let image = open_image(&layout);
        let index = FsIndex::from_image(&image).unwrap();
        let sqfs = tmp.path().join("fs.sqfs");
        let mut opts = SquashfsOptions::new(Compression::Zstd { level: 3 });
        opts.block_size = 4096;
        write_squashfs(&index, &image, &mut File::create(&sqfs).unwrap(), &opts).unwrap();
        let unsquashed = tmp.path().join("unsquashed");
        tool(
            "unsquashfs",
            &[
                "-no-progress",
                "-d",
                unsquashed.to_str().unwrap(),
                sqfs.to_str().unwrap(),
            ],
        );
        for d in diff(&snapshot(&unsquashed), &theirs) {
            failures.push(format!("{} (squashfs): {d}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Why GNU tar is the reference for these: umoci refuses them. Should a
/// later umoci read them, move the case to `layers::cases()`.
#[test]
fn umoci_refuses_the_gnu_tar_cases() {
    for case in layers::gnu_tar_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        layers::write_image(&layout, "1", &case.layers);
        let out = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:1", layout.display()))
            .arg(tmp.path().join("bundle"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("unknown typeflag"),
            "{}: umoci now reads it: {stderr}",
            case.name
        );
    }
}

fn case(name: &str) -> Case {
    layers::cases()
        .into_iter()
        .chain(layers::gnu_tar_cases())
        .find(|c| c.name == name)
        .unwrap()
}

/// Unpack a named case; returns the tree and its snapshot.
fn unpacked(g: &Gridship, tmp: &Path, name: &str) -> (std::path::PathBuf, Snapshot) {
    let layout = tmp.join(format!("{name}-layout"));
    layers::write_image(&layout, "1", &case(name).layers);
    let out = tmp.join(name);
    unpack(g, &layout, &out);
    let snap = snapshot(&out);
    (out, snap)
}

#[test]
fn sparse_files_read_back_with_their_holes() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (pax, _) = unpacked(&g, tmp.path(), "pax-sparse");
    let (gnu, _) = unpacked(&g, tmp.path(), "gnu-sparse");
    for (root, dir) in [(&pax, "s00"), (&pax, "s01"), (&pax, "s10"), (&gnu, "gnu")] {
        for f in layers::sparse_files() {
            let path = root.join(dir).join(f.name);
            let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                got == f.content(),
                "{}: {} bytes, not the {} written",
                path.display(),
                got.len(),
                f.size
            );
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!((m.mode() & 0o7777, m.mtime()), (0o644, 1_600_000_000));
        }
        assert_eq!(
            std::fs::read(root.join(dir).join("zz-end")).unwrap(),
            b"end\n"
        );
        assert!(
            std::fs::read_dir(root.join(dir)).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("GNUSparse")),
            "the real names, not GNU tar's placeholders"
        );
    }
    assert_eq!(
        std::fs::read(pax.join("after")).unwrap(),
        b"after the sparse files"
    );
}

#[test]
fn binary_pax_values_and_base256_ids_come_through() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (root, s) = unpacked(&g, tmp.path(), "pax-binary-values");
    let x = |p: &str, n: &str| s.entries[p].xattrs.get(n).cloned();
    assert_eq!(
        x("/bin/cp", "security.capability"),
        Some(layers::cap_dac_override_fowner())
    );
    assert_eq!(
        x("/bin/blob", "user.blob").as_deref(),
        Some(layers::BINARY_XATTR)
    );
    assert_eq!(x("/bin/blob", "user.eq").as_deref(), Some(&b"k=v=w"[..]));
    assert_eq!(x("/nl/frac", "user.nl").as_deref(), Some(&b"\n"[..]));
    assert_eq!(
        std::fs::read(root.join("nl/new\nline")).unwrap(),
        b"newline in the PAX path"
    );
    assert!(!root.join("nl/placeholder").exists());
    assert_eq!(s.entries["/nl/link"].target, "to\nnewline");
    assert_eq!(s.entries["/nl/frac"].mtime, Some(1_600_000_000));

    let (_, s) = unpacked(&g, tmp.path(), "base256-ids");
    let ids = |p: &str| (s.entries[p].uid, s.entries[p].gid);
    assert_eq!(ids("/ids"), (3_000_000, 4_000_000));
    assert_eq!(ids("/ids/big"), (2_097_152, 4_294_967_294));
    assert_eq!(ids("/ids/link"), (16_777_216, 5));
}

#[test]
fn global_pax_records_apply_to_later_entries() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let (_, s) = unpacked(&g, tmp.path(), "pax-global-header");
    let e = |p: &str| &s.entries[p];
    assert_eq!(
        (e("/before").uid, e("/before").mtime),
        (0, Some(1_700_000_000))
    );
    assert_eq!((e("/g/a").uid, e("/g/a").gid), (77, 88));
    assert_eq!(e("/g/a").mtime, Some(1_234_567_890));
    assert_eq!(e("/g/b").uid, 99, "a local record wins");
    assert_eq!(e("/g/link").uid, 77);
    assert_eq!((e("/g/c").uid, e("/g/c").gid), (55, 88));
    assert!(!s.entries.contains_key("/pax_global_header"));
}

/// Where GNU tar 1.34 is no reference either: it drops all earlier global
/// records at each global header and applies no xattr from one. gridship
/// follows POSIX: a global record holds until a later one for the same
/// key; xattrs included.
#[test]
fn global_pax_records_override_key_by_key() {
    use layers::{Comp, file, global_pax};
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(
        &layout,
        "1",
        &[(
            Comp::Gzip,
            vec![
                global_pax(&[
                    ("uid", b"77"),
                    ("gid", b"88"),
                    ("SCHILY.xattr.user.global", b"g\nlobal"),
                ]),
                file("a", 0o644, b"a"),
                file("own", 0o644, b"o").pax("SCHILY.xattr.user.global", b"mine"),
                file("unset", 0o644, b"u").pax("gid", b""),
                global_pax(&[("uid", b"55"), ("SCHILY.xattr.user.global", b"")]),
                file("c", 0o644, b"c"),
            ],
        )],
    );
    let out = tmp.path().join("out");
    unpack(&g, &layout, &out);
    let s = snapshot(&out);
    let e = |p: &str| &s.entries[p];
    assert_eq!((e("/a").uid, e("/a").gid), (77, 88));
    assert_eq!(e("/a").xattrs["user.global"], b"g\nlobal");
    assert_eq!(e("/own").xattrs["user.global"], b"mine");
    assert_eq!(e("/unset").gid, 0, "an empty local value: the header's");
    assert_eq!((e("/c").uid, e("/c").gid), (55, 88), "gid still in force");
    assert!(e("/c").xattrs.is_empty(), "an empty global value unsets");
}

/// Times before 1970, from a PAX record and from a base-256 header field:
/// unpack and export agree with umoci. (Not a shared case: squashfs keeps
/// unsigned 32-bit times, so no squashfs writer can hold them.)
#[test]
fn negative_mtimes_unpack_and_export_like_umoci() {
    use layers::{Comp, file, raw_members};
    let mut h = tar::Header::new_gnu();
    h.set_path("base256-time").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // -86400 in base-256: 0xff sign bytes, two's complement.
    let mut field = [0xffu8; 12];
    field[4..].copy_from_slice(&(-86_400i64).to_be_bytes());
    h.as_mut_bytes()[136..148].copy_from_slice(&field);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.push(b'b');
    raw.resize(1024, 0);
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(
        &layout,
        "1",
        &[(
            Comp::Gzip,
            vec![
                file("pax-time", 0o644, b"p").pax("mtime", b"-1.25"),
                raw_members(raw),
            ],
        )],
    );
    let ours = tmp.path().join("ours");
    unpack(&g, &layout, &ours);
    let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    let want = snapshot(&theirs);
    assert_eq!(want.entries["/pax-time"].mtime, Some(-2));
    assert_eq!(want.entries["/base256-time"].mtime, Some(-86_400));
    assert_eq!(diff(&snapshot(&ours), &want), Vec::<String>::new());
    let tar = tmp.path().join("export.tar");
    g.run(&[
        "export",
        &format!("oci:{}:1", layout.display()),
        tar.to_str().unwrap(),
    ])
    .ok();
    let extracted = tmp.path().join("exported");
    gnu_extract(&tar, &extracted);
    assert_eq!(diff(&snapshot(&extracted), &want), Vec::<String>::new());
}

/// The layers hold what the format cases are about (so a change to the
/// writers above cannot quietly make them trivial).
#[test]
fn the_case_layers_exercise_the_formats() {
    let bytes = |name: &str| -> Vec<u8> {
        case(name)
            .layers
            .iter()
            .flat_map(|(_, e)| layers::tar_bytes(e))
            .collect()
    };
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let binary = bytes("pax-binary-values");
    let mut cap = b"SCHILY.xattr.security.capability=".to_vec();
    cap.extend_from_slice(&layers::cap_dac_override_fowner());
    assert!(has(&binary, &cap) && cap.contains(&b'\n'));
    assert!(has(&binary, b" path=nl/new\nline\n"));

    let ids = bytes("base256-ids");
    assert!(
        ids.chunks(512)
            .any(|h| h.len() == 512 && h[108] & 0x80 != 0 && h[116] & 0x80 != 0),
        "uid and gid in base-256"
    );

    let sparse = bytes("pax-sparse");
    for key in [
        &b"GNU.sparse.offset="[..],
        b"GNU.sparse.map=",
        b"GNU.sparse.major=1",
    ] {
        assert!(has(&sparse, key), "{}", String::from_utf8_lossy(key));
    }
    let gnu = bytes("gnu-sparse");
    let s_headers = gnu
        .chunks(512)
        .filter(|h| h.len() == 512 && h[156] == b'S')
        .count();
    assert_eq!(s_headers, layers::sparse_files().len());
    // The islands file needs extension blocks: its header says so.
    assert!(
        gnu.chunks(512)
            .any(|h| h.len() == 512 && h[156] == b'S' && h[482] == 1)
    );

    let global = bytes("pax-global-header");
    assert_eq!(
        global
            .chunks(512)
            .filter(|h| h.len() == 512 && h[156] == b'g')
            .count(),
        2
    );
}
