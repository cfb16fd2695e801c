//! The tar sink against real readers: every merge case, an extra set of
//! tar-format edge cases and the Debian fixture are written as one tar,
//! extracted by GNU tar and by mksquashfs 4.5.1 (read back with
//! unsquashfs), and compared file by file with `umoci unpack` of the same
//! image. Also: entry order, exact times, determinism, the mtime clamp and
//! bytes added by transforms.

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::layers::{self, Case};
use common::*;
use gridship::encode::tar::{TarOptions, TarReport, mksquashfs_root_args, write_tar};
use gridship::image::{Image, PlatformWanted};
use gridship::index::{Data, FsIndex, Kind, Meta, Node};
use gridship::store::Layout;

fn open_image(layout: &Path, tag: &str) -> Image {
    let l = Layout::open(layout).unwrap();
    let desc = l.resolve(Some(tag)).unwrap();
    let name = format!("oci:{}:{tag}", layout.display());
    Image::load(l, desc, &name, &PlatformWanted::host()).unwrap()
}

fn write(index: &FsIndex, image: &Image, opts: &TarOptions, path: &Path) -> TarReport {
    let f = File::create(path).unwrap();
    write_tar(index, image, f, opts).unwrap_or_else(|e| panic!("{}: {e}", image.name))
}

/// GNU tar as root, restoring owners, modes, xattrs and (with
/// --delay-directory-restore, see src/sink/tar.rs) exact directory times.
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

/// `mksquashfs - OUT -tar` fed the tar on stdin, then `unsquashfs -d`
/// (as root it restores owners, and xattrs by default). Returns
/// mksquashfs's stderr.
fn squash_extract(tar: &Path, root_args: &[String], sqfs: &Path, dest: &Path) -> String {
    let out = Command::new("mksquashfs")
        .args(["-", sqfs.to_str().unwrap(), "-tar", "-noappend"])
        .args(["-quiet", "-no-progress", "-exit-on-error"])
        .args(root_args)
        .stdin(File::open(tar).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("mksquashfs runs (ci/setup installs squashfs-tools)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mksquashfs failed: {stderr}");
    tool(
        "unsquashfs",
        &[
            "-q",
            "-n",
            "-d",
            dest.to_str().unwrap(),
            sqfs.to_str().unwrap(),
        ],
    );
    stderr
}

fn rel(key: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(key))
}

fn expected_time(meta: &Meta, opts: &TarOptions) -> (i64, i64) {
    match opts.reproducible {
        Some(e) if (meta.mtime, meta.mtime_nsec) > (e, 0) => (e, 0),
        _ => (meta.mtime, meta.mtime_nsec as i64),
    }
}

/// Times of every path (directories and the root included, which the
/// snapshot leaves out) against the index. `nanos`: the reader keeps
/// nanoseconds (squashfs has whole seconds).
fn time_diffs(
    index: &FsIndex,
    root: &Path,
    opts: &TarOptions,
    nanos: bool,
    skip_root: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, _, node) in index.iter() {
        if key.is_empty() && skip_root {
            continue;
        }
        let path = root.join(rel(key));
        let m = std::fs::symlink_metadata(&path).unwrap();
        let (s, ns) = expected_time(&node.meta, opts);
        let got = (m.mtime(), if nanos { m.mtime_nsec() } else { 0 });
        let want = (s, if nanos { ns } else { 0 });
        if got != want {
            out.push(format!(
                "mtime of /{}: {got:?}, index says {want:?}",
                path.strip_prefix(root).unwrap().display()
            ));
        }
    }
    out
}

fn normalize(name: &[u8]) -> Vec<u8> {
    let n = name.strip_prefix(b"./").unwrap_or(name);
    n.strip_suffix(b"/").unwrap_or(n).to_vec()
}

/// Read the stream back (the tar crate) and check what extractors rely
/// on: each path once, every directory before what is inside it, every
/// hardlink after its target, no whiteouts. Returns the members in order.
fn check_order(tar: &Path) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut names = Vec::new();
    let mut dirs: HashSet<Vec<u8>> = HashSet::from([Vec::new()]);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut ar = tar::Archive::new(File::open(tar).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let raw = e.path_bytes().into_owned();
        let name = normalize(&raw);
        let show = String::from_utf8_lossy(&name).into_owned();
        names.push(raw);
        if name.is_empty() {
            if names.len() != 1 {
                problems.push("the root entry is not the first".into());
            }
            continue;
        }
        if name.split(|&b| b == b'/').any(|c| c.starts_with(b".wh.")) {
            problems.push(format!("whiteout in the stream: {show}"));
        }
        let parent = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => name[..i].to_vec(),
            None => Vec::new(),
        };
        if !dirs.contains(&parent) {
            problems.push(format!("{show} comes before its directory"));
        }
        if !seen.insert(name.clone()) {
            problems.push(format!("{show} twice"));
        }
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                dirs.insert(name);
            }
            tar::EntryType::Link => {
                let target = normalize(&e.link_name_bytes().unwrap());
                if !seen.contains(&target) {
                    problems.push(format!("hardlink {show} before its target"));
                }
            }
            _ => {}
        }
    }
    (names, problems)
}

/// Edge cases of the tar format itself, on top of the merge cases.
fn tar_edge_case() -> Case {
    use layers::*;
    let seg = "/segment-of-a-very-long-path";
    // Over 256 bytes: no ustar prefix split can hold these.
    let deep_dir = format!("deep{}", seg.repeat(9));
    let deep_file = format!("{deep_dir}/{}", "f".repeat(110));
    let abs_target = format!("/abs{}", seg.repeat(5));
    let rel_target = format!("../..{}", seg.repeat(5));
    let dot_target = format!("./dot{}", seg.repeat(5));
    let long_link_name = format!("links/{}", "n".repeat(120));
    let mut long_utf8 = b"enc/".to_vec();
    long_utf8.extend("é".repeat(60).as_bytes());
    let mut long_latin1 = b"enc/".to_vec();
    long_latin1.extend([0xe9u8; 110]);
    let mut noise = vec![0u8; 70_000];
    let mut x: u32 = 12345;
    for b in noise.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    Case {
        name: "tar-edges",
        layers: vec![
            (
                Comp::Gzip,
                vec![
                    dir("./", 0o750)
                        .owner(1, 2)
                        .pax("SCHILY.xattr.user.rootattr", b"r"),
                    dir("enc", 0o755),
                    file("x", 0o644, b"utf8").raw_name(b"enc/caf\xc3\xa9"),
                    file("x", 0o644, b"latin1").raw_name(b"enc/lat\xe9"),
                    file("x", 0o644, b"nl").raw_name(b"enc/new\nline"),
                    file("x", 0o644, b"long utf8").raw_name(&long_utf8),
                    file("x", 0o644, b"long latin1").raw_name(&long_latin1),
                    file(&deep_file, 0o600, b"deep"),
                    dir("links", 0o755),
                    symlink("links/abs", &abs_target),
                    symlink("links/rel", &rel_target),
                    symlink("links/dot", &dot_target),
                    symlink(&long_link_name, &abs_target)
                        .pax("uid", b"3000000")
                        .pax("gid", b"3000001"),
                    hardlink("links/hl-to-symlink", "links/abs"),
                    fifo("links/fifo"),
                    hardlink("links/hl-to-fifo", "links/fifo"),
                    dir("caps", 0o755),
                    file("caps/ping", 0o755, b"ping")
                        .pax("SCHILY.xattr.security.capability", &cap_net_raw()),
                    hardlink("caps/ping-link", "caps/ping"),
                    dir("gid", 0o2775).pax("gid", b"4000000"),
                    file("gid/nanos", 0o644, b"ns").pax("mtime", b"1650000000.5"),
                    dir("sizes", 0o755),
                    file("sizes/empty", 0o644, b""),
                    file("sizes/block", 0o644, &[7u8; 512]),
                    file("sizes/big", 0o644, &noise),
                ],
            ),
            // A second layer so content arrives from two layers, one of them
            // overwriting a file of the first.
            (
                Comp::Plain,
                vec![
                    file("sizes/block", 0o640, &[9u8; 513]),
                    file("sizes/later", 0o644, b"later"),
                ],
            ),
        ],
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = layers::cases();
    cases.push(tar_edge_case());
    cases
}

struct Prepared {
    tmp: tempfile::TempDir,
    image: Image,
    index: FsIndex,
    umoci: PathBuf,
}

fn prepare(case: &Case) -> Prepared {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(&layout, "1", &case.layers);
    let image = open_image(&layout, "1");
    let index = FsIndex::from_image(&image).unwrap();
    let umoci = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    Prepared {
        tmp,
        image,
        index,
        umoci,
    }
}

#[test]
fn merge_cases_extracted_by_gnu_tar_match_umoci() {
    let mut failures = Vec::new();
    for case in all_cases() {
        let p = prepare(&case);
        let opts = TarOptions::default();
        let tar = p.tmp.path().join("out.tar");
        let report = write(&p.index, &p.image, &opts, &tar);
        let (names, mut problems) = check_order(&tar);
        if report.entries != names.len() as u64 {
            problems.push(format!(
                "report says {} entries, the stream holds {}",
                report.entries,
                names.len()
            ));
        }
        if report.tar_bytes != std::fs::metadata(&tar).unwrap().len() {
            problems.push("report.tar_bytes is not the file size".into());
        }
        if report.content_bytes != p.index.content_bytes() {
            problems.push("report.content_bytes is not the index's".into());
        }
        let ours = p.tmp.path().join("gnu");
        gnu_extract(&tar, &ours);
        problems.extend(diff(&snapshot(&ours), &snapshot(&p.umoci)));
        problems.extend(time_diffs(&p.index, &ours, &opts, true, false));
        if !problems.is_empty() {
            failures.push(format!("{}:\n{}", case.name, problems.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn merge_cases_through_mksquashfs_match_umoci() {
    let mut failures = Vec::new();
    for case in all_cases() {
        let p = prepare(&case);
        let opts = TarOptions::default();
        let tar = p.tmp.path().join("out.tar");
        write(&p.index, &p.image, &opts, &tar);
        let ours = p.tmp.path().join("unsquashed");
        let stderr = squash_extract(
            &tar,
            &mksquashfs_root_args(&p.index, &opts),
            &p.tmp.path().join("out.sqfs"),
            &ours,
        );
        let mut problems = Vec::new();
        if !stderr.contains("Empty tar filename") {
            problems.push(format!(
                "mksquashfs 4.5.1 was expected to skip the ./ entry: {stderr}"
            ));
        }
        let mut theirs = snapshot(&p.umoci);
        // mksquashfs 4.5.1 in -tar mode ignores the `./` entry and, of the
        // -root-* options, honours only -root-mode: the root is always
        // 0:0 and has no xattrs. The rest of the root must match.
        let root = theirs.entries.get_mut("/").unwrap();
        root.uid = 0;
        root.gid = 0;
        root.xattrs.clear();
        problems.extend(diff(&snapshot(&ours), &theirs));
        // Squashfs keeps whole seconds; the root's time is mksquashfs's
        // build time (see above).
        problems.extend(time_diffs(&p.index, &ours, &opts, false, true));
        if !problems.is_empty() {
            failures.push(format!("{}:\n{}", case.name, problems.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn omitted_root_entry_keeps_mksquashfs_quiet() {
    let p = prepare(&tar_edge_case());
    let opts = TarOptions {
        omit_root: true,
        ..Default::default()
    };
    let tar = p.tmp.path().join("out.tar");
    write(&p.index, &p.image, &opts, &tar);
    let (names, problems) = check_order(&tar);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(names[0], b"caps/", "directories first, no ./");
    let ours = p.tmp.path().join("unsquashed");
    let stderr = squash_extract(
        &tar,
        &mksquashfs_root_args(&p.index, &opts),
        &p.tmp.path().join("out.sqfs"),
        &ours,
    );
    assert!(stderr.trim().is_empty(), "mksquashfs said: {stderr}");
    let root = std::fs::metadata(&ours).unwrap();
    assert_eq!(
        root.mode() & 0o7777,
        0o750,
        "-root-mode carries the root's mode"
    );
}

#[test]
fn output_is_byte_identical_across_runs_and_index_builds() {
    for case in all_cases() {
        let p = prepare(&case);
        let again = FsIndex::from_image(&p.image).unwrap();
        let opts = TarOptions::default();
        let (a, b) = (p.tmp.path().join("a.tar"), p.tmp.path().join("b.tar"));
        write(&p.index, &p.image, &opts, &a);
        write(&again, &p.image, &opts, &b);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{}: two runs differ",
            case.name
        );
    }
}

#[test]
fn reproducible_clamps_every_mtime() {
    let epoch = 1_650_000_000;
    for case in ["tar-edges", "long-names", "devices-and-bits"] {
        let case = all_cases().into_iter().find(|c| c.name == case).unwrap();
        let p = prepare(&case);
        let opts = TarOptions {
            reproducible: Some(epoch),
            ..Default::default()
        };
        let tar = p.tmp.path().join("out.tar");
        write(&p.index, &p.image, &opts, &tar);
        let plain = p.tmp.path().join("plain.tar");
        write(&p.index, &p.image, &TarOptions::default(), &plain);
        assert_ne!(std::fs::read(&tar).unwrap(), std::fs::read(&plain).unwrap());
        let ours = p.tmp.path().join("gnu");
        gnu_extract(&tar, &ours);
        let d = time_diffs(&p.index, &ours, &opts, true, false);
        assert!(d.is_empty(), "{}: {d:#?}", case.name);
        for (key, _, _) in p.index.iter() {
            let m = std::fs::symlink_metadata(ours.join(rel(key))).unwrap();
            assert!(
                m.mtime() <= epoch,
                "{}: /{} not clamped",
                case.name,
                rel(key).display()
            );
        }
        if case.name == "long-names" {
            // Older than the epoch: kept, nanoseconds included.
            let m = std::fs::metadata(ours.join("pax/time")).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
        }
        if case.name == "tar-edges" {
            // 1650000000.5 is after the epoch by half a second.
            let m = std::fs::metadata(ours.join("gid/nanos")).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (epoch, 0));
        }
    }
}

fn bytes_node(bytes: &[u8], mode: u32, uid: u64) -> Node {
    Node {
        kind: Kind::File {
            size: bytes.len() as u64,
            data: Data::Bytes(Arc::from(bytes)),
        },
        meta: Meta {
            mode,
            uid,
            gid: uid + 1,
            mtime: 1_600_000_000,
            ..Meta::default()
        },
    }
}

#[test]
fn bytes_added_by_a_transform_are_written() {
    let case = layers::cases()
        .into_iter()
        .find(|c| c.name == "whiteouts")
        .unwrap();
    let mut p = prepare(&case);
    let conf = b"site = glasgow\n".to_vec();
    // Larger than the copy buffer, so it goes through in several pieces.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    p.index
        .put("/etc/gridship/site.conf", bytes_node(&conf, 0o640, 7))
        .unwrap();
    p.index
        .put("/keep", bytes_node(b"replaced", 0o600, 0))
        .unwrap();
    p.index
        .put("/a/big.bin", bytes_node(&big, 0o644, 0))
        .unwrap();
    let tar = p.tmp.path().join("out.tar");
    let report = write(&p.index, &p.image, &TarOptions::default(), &tar);
    assert_eq!(report.content_bytes, p.index.content_bytes());
    let (_, problems) = check_order(&tar);
    assert!(problems.is_empty(), "{problems:?}");
    let ours = p.tmp.path().join("gnu");
    gnu_extract(&tar, &ours);
    assert_eq!(
        std::fs::read(ours.join("etc/gridship/site.conf")).unwrap(),
        conf
    );
    assert_eq!(std::fs::read(ours.join("keep")).unwrap(), b"replaced");
    assert_eq!(std::fs::read(ours.join("a/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(ours.join("a/file2")).unwrap(),
        b"two",
        "layer content too"
    );
    let m = std::fs::metadata(ours.join("etc/gridship/site.conf")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o640, 7, 8, 1_600_000_000)
    );
    let d = time_diffs(&p.index, &ours, &TarOptions::default(), true, false);
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn content_that_disagrees_with_the_index_is_an_error() {
    let case = layers::cases()
        .into_iter()
        .find(|c| c.name == "whiteouts")
        .unwrap();
    let p = prepare(&case);
    for (size, bytes) in [(10u64, &b"abc"[..]), (2, &b"abc"[..])] {
        let mut index = p.index.clone();
        let mut node = bytes_node(bytes, 0o644, 0);
        node.kind = Kind::File {
            size,
            data: Data::Bytes(Arc::from(bytes)),
        };
        index.put("/bad", node).unwrap();
        let err = write_tar(&index, &p.image, std::io::sink(), &TarOptions::default())
            .expect_err("a size mismatch must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("/bad") && msg.contains(&format!("{size} bytes")),
            "{msg}"
        );
    }
}

#[test]
fn debian_fixture_through_gnu_tar_and_mksquashfs_matches_umoci() {
    let layout = fixtures().join("debian-oci");
    let tmp = tempfile::tempdir().unwrap();
    let image = open_image(&layout, "1");
    let index = FsIndex::from_image(&image).unwrap();
    let opts = TarOptions::default();
    let tar = tmp.path().join("debian.tar");
    let t = std::time::Instant::now();
    let report = write(&index, &image, &opts, &tar);
    eprintln!("debian: {report:?} in {:.1}s", t.elapsed().as_secs_f64());
    assert!(
        report.kinds.files > 5000 && report.kinds.hardlinks > 0,
        "{report:?}"
    );
    let again = tmp.path().join("again.tar");
    write(&index, &image, &opts, &again);
    assert_eq!(
        sha256_file(&tar),
        sha256_file(&again),
        "two runs, same bytes"
    );
    std::fs::remove_file(&again).unwrap();
    let (_, problems) = check_order(&tar);
    assert!(
        problems.is_empty(),
        "{:?}",
        &problems[..problems.len().min(20)]
    );

    let theirs_dir = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    let mut theirs = snapshot(&theirs_dir);

    let gnu = tmp.path().join("gnu");
    gnu_extract(&tar, &gnu);
    let d = diff(&snapshot(&gnu), &theirs);
    assert!(d.is_empty(), "GNU tar: {:#?}", &d[..d.len().min(40)]);
    let d = time_diffs(&index, &gnu, &opts, true, false);
    assert!(d.is_empty(), "GNU tar times: {:#?}", &d[..d.len().min(40)]);
    std::fs::remove_dir_all(&gnu).unwrap();

    let sq = tmp.path().join("unsquashed");
    squash_extract(
        &tar,
        &mksquashfs_root_args(&index, &opts),
        &tmp.path().join("debian.sqfs"),
        &sq,
    );
    // mksquashfs 4.5.1: root owner 0:0 and no root xattrs (see the merge
    // case test); Debian's root is 0:0 without xattrs anyway.
    let root = theirs.entries.get_mut("/").unwrap();
    assert_eq!((root.uid, root.gid), (0, 0));
    assert!(root.xattrs.is_empty());
    let d = diff(&snapshot(&sq), &theirs);
    assert!(d.is_empty(), "mksquashfs: {:#?}", &d[..d.len().min(40)]);
    let d = time_diffs(&index, &sq, &opts, false, true);
    assert!(
        d.is_empty(),
        "mksquashfs times: {:#?}",
        &d[..d.len().min(40)]
    );
}

/// `gridship export` under a known umask and without SOURCE_DATE_EPOCH
/// from the environment (unless `epoch_env`).
fn export(g: &Gridship, args: &[&str], epoch_env: Option<&str>) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_gridship"))
        .arg("export")
        .args(args)
        .env("GRIDSHIP_STORE", g.store.path())
        .env_remove("RUST_LOG")
        .env_remove("SOURCE_DATE_EPOCH");
    if let Some(e) = epoch_env {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    c.output().unwrap()
}

#[test]
fn export_command_writes_what_the_library_writes() {
    let g = Gridship::new();
    let p = prepare(&tar_edge_case());
    let image = format!("oci:{}:1", p.image.layout.root().display());
    let lib = |opts: &TarOptions| {
        let mut v = Vec::new();
        write_tar(&p.index, &p.image, &mut v, opts).unwrap();
        v
    };
    let out = p.tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("image.tar");
    let f = file.to_str().unwrap();

    let run = to_run(export(&g, &["--json", &image, f][..], None)).ok();
    let json = run.json();
    let plain = lib(&TarOptions::default());
    assert!(
        std::fs::read(&file).unwrap() == plain,
        "same bytes as write_tar"
    );
    assert_eq!(json["tar_bytes"].as_u64(), Some(plain.len() as u64));
    assert_eq!(json["files"].as_u64(), Some(12), "{json}");
    assert_eq!(json["hardlinks"].as_u64(), Some(3), "{json}");
    assert_eq!(list(&out), ["", "image.tar"], "no temporary file is left");
    let mode = std::fs::metadata(&file).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644, "0666 less the umask, like tar -cf");

    // Replaced atomically; the clamp from the flag and from the environment.
    let clamped = lib(&TarOptions {
        reproducible: Some(1_650_000_000),
        ..Default::default()
    });
    let args = ["--source-date-epoch", "1650000000", &image, f];
    assert_eq!(to_run(export(&g, &args, None)).code, 0);
    assert!(std::fs::read(&file).unwrap() == clamped);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(to_run(export(&g, &[&image, f], Some("1650000000"))).code, 0);
    assert!(std::fs::read(&file).unwrap() == clamped);

    let no_root = lib(&TarOptions {
        omit_root: true,
        ..Default::default()
    });
    assert_eq!(
        to_run(export(&g, &["--omit-root", &image, f], None)).code,
        0
    );
    assert!(std::fs::read(&file).unwrap() == no_root);

    // To stdout: the tar there, the summary on stderr.
    let o = export(&g, &[&image, "-"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == plain, "stdout carries the same tar");
    assert!(String::from_utf8_lossy(&o.stderr).contains("exported"));
}

#[test]
fn export_to_a_closed_pipe_is_not_a_failure() {
    let g = Gridship::new();
    let p = prepare(&tar_edge_case());
    let image = format!("oci:{}:1", p.image.layout.root().display());
    let mut child = g
        .cmd()
        .args(["export", &image, "-"])
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 512];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    assert_eq!(&head[257..262], b"ustar");
    // The tar is larger than a pipe's buffer, so gridship meets the close.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn export_failures_leave_the_old_file_and_nothing_else() {
    let g = Gridship::new();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let digests = layers::write_image(&layout, "1", &layers::cases()[0].layers);
    let image = format!("oci:{}:1", layout.display());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("old.tar");
    std::fs::write(&file, b"old").unwrap();
    let f = file.to_str().unwrap();

    let r = to_run(export(&g, &["--json", &image, "-"], None));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--json") && r.stderr.contains("stdout carries the tar"));

    let missing = out.join("no/such/dir/x.tar");
    let r = to_run(export(&g, &[&image, missing.to_str().unwrap()], None));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);

    let r = to_run(export(&g, &[&image, out.to_str().unwrap()], None));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);

    let r = to_run(export(
        &g,
        &[&format!("oci:{}:nope", layout.display()), f],
        None,
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);

    let blob = layout
        .join("blobs/sha256")
        .join(digests[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let r = to_run(export(&g, &[&image, f], None));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("digest mismatch"), "{}", r.stderr);

    assert_eq!(std::fs::read(&file).unwrap(), b"old", "the old tar stays");
    assert_eq!(list(&out), ["", "old.tar"], "no temporary file is left");
}
