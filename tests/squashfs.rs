//! The squashfs writer against squashfs-tools: `unsquashfs` of what gridship
//! writes equals `umoci unpack` of the same image, file by file, for every
//! merge case and the Debian fixture, with every compression.

mod common;

use std::fs::File;
use std::path::Path;

use common::layers;
use common::*;
use gridship::encode::squashfs::{Compression, SquashfsOptions, write_squashfs};
use gridship::image::PlatformWanted;
use gridship::index::FsIndex;
use gridship::reference::ImageRef;
use gridship::transport::{self, Context};

fn context(store: &Path) -> Context {
    Context {
        store: store.to_path_buf(),
        platform: PlatformWanted::host(),
        ..Context::default()
    }
}

/// Write `layout:tag` as squashfs with `opts`; returns the file.
fn squash(
    layout: &Path,
    out: &Path,
    opts: &SquashfsOptions,
    store: &Path,
) -> gridship::encode::squashfs::SquashfsReport {
    let r: ImageRef = format!("oci:{}:1", layout.display()).parse().unwrap();
    let image = transport::open(&r, &context(store)).unwrap();
    let index = FsIndex::from_image(&image).unwrap();
    let mut f = File::create(out).unwrap();
    write_squashfs(&index, &image, &mut f, opts).unwrap()
}

fn unsquash(sqfs: &Path, dir: &Path) {
    tool(
        "unsquashfs",
        &[
            "-no-progress",
            "-d",
            dir.to_str().unwrap(),
            sqfs.to_str().unwrap(),
        ],
    );
}

#[test]
fn every_merge_case_round_trips_through_unsquashfs() {
    let store = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, case) in layers::cases().into_iter().enumerate() {
        // Each case with another compressor, so all four are exercised.
        let compression = [
            Compression::Gzip { level: 9 },
            Compression::Zstd { level: 15 },
            Compression::Xz { level: 6 },
            Compression::Lz4,
        ][i % 4];
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        layers::write_image(&layout, "1", &case.layers);
        let sqfs = tmp.path().join("fs.sqfs");
        let mut opts = SquashfsOptions::new(compression);
        opts.block_size = 4096; // small blocks: multi-block files and fragments in tiny cases
        squash(&layout, &sqfs, &opts, store.path());
        let ours = tmp.path().join("ours");
        unsquash(&sqfs, &ours);
        let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
        let d = diff(&snapshot(&ours), &snapshot(&theirs));
        if !d.is_empty() {
            failures.push(format!(
                "{} ({}):\n{}",
                case.name,
                compression.name(),
                d.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Files that exercise the data paths: empty, fragment-sized, exactly one
/// block, multi-block with a tail, all-zero (sparse) blocks, duplicates,
/// a large directory (index entries, headers every 256 entries), hardlinks
/// to a multi-block file.
#[test]
fn data_layout_edge_cases_round_trip() {
    use layers::{Comp, dir, file, hardlink};
    let bs = 4096usize;
    let pattern = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let mut zeros_then_data = vec![0u8; bs * 3];
    zeros_then_data.extend(pattern(100, 7));
    let mut entries = vec![
        dir("d", 0o755),
        file("d/empty", 0o644, b""),
        file("d/tiny", 0o644, b"x"),
        file("d/one-block", 0o644, &pattern(bs, 1)),
        file("d/blocks-and-tail", 0o644, &pattern(bs * 5 + 123, 2)),
        file("d/zeros", 0o644, &vec![0u8; bs * 4]),
        file("d/zeros-then-data", 0o600, &zeros_then_data),
        file("d/dup-a", 0o644, &pattern(bs * 2 + 5, 3)),
        file("d/dup-b", 0o755, &pattern(bs * 2 + 5, 3)),
        file("d/small-dup-a", 0o644, b"same small"),
        file("d/small-dup-b", 0o644, b"same small"),
        hardlink("d/big-link", "d/blocks-and-tail"),
        dir("big", 0o755),
    ];
    for i in 0..700 {
        entries.push(file(
            &format!("big/entry-with-a-longish-name-{i:04}"),
            0o644,
            format!("{i}").as_bytes(),
        ));
    }
    let store = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(&layout, "1", &[(Comp::Gzip, entries)]);
    for compression in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        let sqfs = tmp.path().join(format!("fs-{}.sqfs", compression.name()));
        let mut opts = SquashfsOptions::new(compression);
        opts.block_size = bs as u32;
        let report = squash(&layout, &sqfs, &opts, store.path());
        assert_eq!(
            report.duplicate_files, 2,
            "dup-b and small-dup-b are stored once"
        );
        assert!(
            report.sparse_blocks >= 7,
            "zero blocks are sparse: {report:?}"
        );
        let ours = tmp.path().join(format!("ours-{}", compression.name()));
        unsquash(&sqfs, &ours);
        let theirs = umoci_unpack(
            &layout,
            "1",
            &tmp.path().join(format!("bundle-{}", compression.name())),
        );
        assert_same_tree(&ours, &theirs, compression.name());
        // unsquashfs -s reads the superblock the way the kernel does.
        let stat = tool("unsquashfs", &["-s", sqfs.to_str().unwrap()]);
        assert!(
            stat.contains("Block size 4096") && stat.contains("Duplicates are removed"),
            "{stat}"
        );
        assert!(stat.contains("Filesystem is exportable via NFS"), "{stat}");
    }
}

#[test]
fn debian_fixture_matches_umoci() {
    let store = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures().join("debian-oci");
    let sqfs = tmp.path().join("debian.sqfs");
    let report = squash(
        &layout,
        &sqfs,
        &SquashfsOptions::new(Compression::Gzip { level: 9 }),
        store.path(),
    );
    let ours = tmp.path().join("ours");
    unsquash(&sqfs, &ours);
    let theirs = umoci_unpack(&layout, "1", &tmp.path().join("bundle"));
    assert_same_tree(&ours, &theirs, "debian fixture through squashfs");
    let caps = snapshot(&ours);
    assert!(
        caps.entries["/usr/local/bin/gridship-netraw"]
            .xattrs
            .contains_key("security.capability"),
        "security.capability survives"
    );
    // Size against mksquashfs at the same compression is measured by ci/bench.
    assert!(report.bytes > 0 && report.duplicate_files > 0);
}
