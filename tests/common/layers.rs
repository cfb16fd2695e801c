//! Hand-written tar layers and OCI layouts: every case the merge must get
//! right, and the unsafe ones it must refuse. Headers are written byte by
//! byte where the tar crate would refuse (`..`, NUL), so the tests feed
//! gridship exactly what a hostile image would hold. Sparse files are
//! archived by GNU tar itself, in each of its sparse formats.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub dev: (u32, u32),
    pub pax: Vec<(String, Vec<u8>)>,
    /// Tar members written verbatim instead of this entry (GNU tar output).
    pub raw: Option<Vec<u8>>,
}

impl Entry {
    fn new(name: &str, kind: tar::EntryType, mode: u32) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link: Vec::new(),
            data: Vec::new(),
            dev: (0, 0),
            pax: Vec::new(),
            raw: None,
        }
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }
    pub fn pax(mut self, k: &str, v: &[u8]) -> Self {
        self.pax.push((k.to_string(), v.to_vec()));
        self
    }
    pub fn raw_name(mut self, name: &[u8]) -> Self {
        self.name = name.to_vec();
        self
    }
}

pub fn dir(name: &str, mode: u32) -> Entry {
    Entry::new(name, tar::EntryType::Directory, mode)
}
pub fn file(name: &str, mode: u32, data: &[u8]) -> Entry {
    let mut e = Entry::new(name, tar::EntryType::Regular, mode);
    e.data = data.to_vec();
    e
}
pub fn symlink(name: &str, target: &str) -> Entry {
    let mut e = Entry::new(name, tar::EntryType::Symlink, 0o777);
    e.link = target.as_bytes().to_vec();
    e
}
pub fn hardlink(name: &str, target: &str) -> Entry {
    let mut e = Entry::new(name, tar::EntryType::Link, 0o644);
    e.link = target.as_bytes().to_vec();
    e
}
pub fn chardev(name: &str, major: u32, minor: u32) -> Entry {
    let mut e = Entry::new(name, tar::EntryType::Char, 0o666);
    e.dev = (major, minor);
    e
}
pub fn blockdev(name: &str, major: u32, minor: u32) -> Entry {
    let mut e = Entry::new(name, tar::EntryType::Block, 0o660);
    e.dev = (major, minor);
    e
}
pub fn fifo(name: &str) -> Entry {
    Entry::new(name, tar::EntryType::Fifo, 0o644)
}
/// A whiteout is an empty regular file with the `.wh.` name.
pub fn whiteout(name: &str) -> Entry {
    file(name, 0o644, b"")
}
/// A PAX `x` header with exactly `data` (well-formed or not).
pub fn pax_header(data: &[u8]) -> Entry {
    let mut e = Entry::new("PaxHeaders/victim", tar::EntryType::XHeader, 0o644);
    e.data = data.to_vec();
    e
}
/// A PAX global header (`g`): its records apply to every later entry.
pub fn global_pax(records: &[(&str, &[u8])]) -> Entry {
    let mut e = Entry::new("pax_global_header", tar::EntryType::XGlobalHeader, 0o644);
    e.data = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    e
}

/// One PAX record, "LEN key=value\n" where LEN counts itself.
pub fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body_len = 1 + k.len() + 1 + v.len() + 1;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len = len.to_string().len() + body_len;
    }
    let mut data = format!("{len} {k}=").into_bytes();
    data.extend_from_slice(v);
    data.push(b'\n');
    data
}

fn header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let bytes = h.as_mut_bytes();
    let n = name.len().min(100);
    bytes[..n].copy_from_slice(&name[..n]);
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn append(out: &mut Vec<u8>, mut h: tar::Header, data: &[u8]) {
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    pad(out);
}

/// Serialize entries into one tar stream (with end-of-archive blocks).
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if let Some(raw) = &e.raw {
            out.extend_from_slice(raw);
            continue;
        }
        if !e.pax.is_empty() {
            let data: Vec<u8> = e.pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            append(
                &mut out,
                header(b"PaxHeader", tar::EntryType::XHeader, data.len() as u64),
                &data,
            );
        }
        let has_pax_path = e.pax.iter().any(|(k, _)| k == "path");
        if e.name.len() > 100 && !has_pax_path {
            let mut data = e.name.clone();
            data.push(0);
            append(
                &mut out,
                header(
                    b"././@LongLink",
                    tar::EntryType::GNULongName,
                    data.len() as u64,
                ),
                &data,
            );
        }
        if e.link.len() > 100 {
            let mut data = e.link.clone();
            data.push(0);
            append(
                &mut out,
                header(
                    b"././@LongLink",
                    tar::EntryType::GNULongLink,
                    data.len() as u64,
                ),
                &data,
            );
        }
        let mut h = header(&e.name, e.kind, e.data.len() as u64);
        h.set_mode(e.mode);
        // Ids over 0o7777777 go in GNU base-256 (the tar crate's choice).
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        if !e.link.is_empty() {
            let bytes = h.as_mut_bytes();
            let n = e.link.len().min(100);
            bytes[157..157 + n].copy_from_slice(&e.link[..n]);
        }
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        append(&mut out, h, &e.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn compress(data: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::Plain => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

fn media_type(comp: Comp) -> &'static str {
    match comp {
        Comp::Plain => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let hex = sha(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

/// Store the blobs of one image (layers, config for `arch`, manifest);
/// returns the manifest digest and size, and the layer digests.
pub fn write_manifest(
    layout: &Path,
    arch: &str,
    layers: &[(Comp, Vec<Entry>)],
) -> (String, u64, Vec<String>) {
    write_manifest_env(layout, arch, &["PATH=/usr/bin:/bin"], layers)
}

/// [`write_manifest`] with the config's Env given.
pub fn write_manifest_env(
    layout: &Path,
    arch: &str,
    env: &[&str],
    layers: &[(Comp, Vec<Entry>)],
) -> (String, u64, Vec<String>) {
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    for (comp, entries) in layers {
        let tar = tar_bytes(entries);
        diff_ids.push(format!("sha256:{}", sha(&tar)));
        let blob = compress(&tar, *comp);
        let (digest, size) = put_blob(layout, &blob);
        digests.push(digest.clone());
        descs.push(
            serde_json::json!({"mediaType": media_type(*comp), "digest": digest, "size": size}),
        );
    }
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": env, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let (cd, cs) = put_blob(layout, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let (md, ms) = put_blob(layout, &manifest);
    (md, ms, digests)
}

fn write_index(layout: &Path, tag: &str, media_type: &str, digest: &str, size: u64) {
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Write an OCI layout at `layout` holding one image tagged `tag` whose
/// layers are `layers` (each compressed with its own method). Returns the
/// layer digests.
pub fn write_image(layout: &Path, tag: &str, layers: &[(Comp, Vec<Entry>)]) -> Vec<String> {
    let (md, ms, digests) = write_manifest(layout, "amd64", layers);
    write_index(
        layout,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &md,
        ms,
    );
    digests
}

/// [`write_image`] with the config's Env given.
pub fn write_image_env(
    layout: &Path,
    tag: &str,
    env: &[&str],
    layers: &[(Comp, Vec<Entry>)],
) -> Vec<String> {
    let (md, ms, digests) = write_manifest_env(layout, "amd64", env, layers);
    write_index(
        layout,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &md,
        ms,
    );
    digests
}

/// A multi-arch image: one manifest per architecture under an image index
/// tagged `tag`. Returns the manifest digest of each architecture.
pub fn write_multiarch(layout: &Path, tag: &str, arches: &[&str]) -> Vec<String> {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for arch in arches {
        let layer = vec![(Comp::Gzip, vec![file("arch", 0o644, arch.as_bytes())])];
        let (md, ms, _) = write_manifest(layout, arch, &layer);
        let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
        if *arch == "arm64" {
            platform["variant"] = "v8".into();
        }
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms, "platform": platform,
        }));
        digests.push(md);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index = serde_json::to_vec(&index).unwrap();
    let (id, is) = put_blob(layout, &index);
    write_index(
        layout,
        tag,
        "application/vnd.oci.image.index.v1+json",
        &id,
        is,
    );
    digests
}

/// A one-layer image whose layer is unique to this call (random content),
/// so tests may corrupt it in a shared registry.
pub fn write_unique_image(layout: &Path, tag: &str) -> Vec<String> {
    let mut noise = vec![0u8; 64 * 1024];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ std::process::id() as u64;
    let mut x = seed | 1;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    write_image(
        layout,
        tag,
        &[(Comp::Gzip, vec![file("noise", 0o644, &noise)])],
    )
}

/// `security.capability` for cap_net_raw+ep (VFS_CAP_REVISION_2).
pub fn cap_net_raw() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // revision 2, effective
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted: CAP_NET_RAW
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// `security.capability` for cap_dac_override,cap_fowner+ep: the permitted
/// mask is 0x0a, a newline byte inside the PAX record.
pub fn cap_dac_override_fowner() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // revision 2, effective
    v.extend_from_slice(&((1u32 << 1) | (1u32 << 3)).to_le_bytes()); // permitted
    v.extend_from_slice(&[0u8; 12]); // inheritable, high words
    v
}

/// A user xattr value with newlines, NULs and `=`.
pub const BINARY_XATTR: &[u8] = b"line1\nline2\0\0\n=x=\n\0end\n";

/// A file with holes, as the sparse cases archive it.
pub struct SparseFile {
    pub name: &'static str,
    pub size: u64,
    /// Data at offsets; the rest is holes.
    pub islands: Vec<(u64, Vec<u8>)>,
}

impl SparseFile {
    /// The bytes a reader must see.
    pub fn content(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size as usize];
        for (at, data) in &self.islands {
            v[*at as usize..*at as usize + data.len()].copy_from_slice(data);
        }
        v
    }
}

/// Files with holes: a trailing hole, many islands (the old GNU map needs
/// extension blocks), no data at all, data up to the end.
pub fn sparse_files() -> Vec<SparseFile> {
    let pattern = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
            .collect()
    };
    vec![
        SparseFile {
            name: "holes",
            size: 1 << 20,
            islands: vec![(100_000, b"hello".to_vec()), (600_000, b"world".to_vec())],
        },
        SparseFile {
            name: "islands",
            size: 2 << 20,
            islands: (0..30u64)
                .map(|i| (i * 65536, pattern(4096, i as u8)))
                .collect(),
        },
        SparseFile {
            name: "all-hole",
            size: 256 << 10,
            islands: vec![],
        },
        SparseFile {
            name: "data-at-end",
            size: 300_000,
            islands: vec![(200_000, pattern(100_000, 7))],
        },
    ]
}

/// GNU tar's own members for the sparse files under `dir/` (GNU tar run
/// with `format` options), end-of-archive blocks removed, then a marker
/// file `dir/zz-end` whose data stops the trimming of trailing zero blocks.
pub fn gnu_tar_sparse(dir: &str, format: &[&str]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
    let mut names = Vec::new();
    for f in sparse_files() {
        let name = format!("{dir}/{}", f.name);
        let file = std::fs::File::create(tmp.path().join(&name)).unwrap();
        file.set_len(f.size).unwrap();
        for (at, data) in &f.islands {
            std::os::unix::fs::FileExt::write_all_at(&file, data, *at).unwrap();
        }
        names.push(name);
    }
    let marker = format!("{dir}/zz-end");
    std::fs::write(tmp.path().join(&marker), b"end\n").unwrap();
    names.push(marker);
    let out = std::process::Command::new("tar")
        .args(["--sparse", "--owner=0", "--group=0", "--numeric-owner"])
        .args(["--mtime=@1600000000", "--mode=u=rw,go=r"])
        .args(format)
        .arg("-C")
        .arg(tmp.path())
        .args(["-cf", "-"])
        .args(&names)
        .output()
        .expect("GNU tar runs (ci/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = out.stdout;
    while bytes.len() >= 512 && bytes[bytes.len() - 512..].iter().all(|&b| b == 0) {
        bytes.truncate(bytes.len() - 512);
    }
    let sparse = bytes.windows(10).any(|w| w == b"GNU.sparse") || bytes[156] == b'S';
    assert!(
        sparse,
        "GNU tar {format:?} stored no sparse file: does {} support holes?",
        tmp.path().display()
    );
    bytes
}

/// Raw tar members as an entry of a layer.
pub fn raw_members(bytes: Vec<u8>) -> Entry {
    let mut e = Entry::new("raw", tar::EntryType::Regular, 0);
    e.raw = Some(bytes);
    e
}

/// A case of the merge that gridship and umoci must agree on.
pub struct Case {
    pub name: &'static str,
    pub layers: Vec<(Comp, Vec<Entry>)>,
}

fn long(prefix: &str, n: usize) -> String {
    let mut s = String::from(prefix);
    while s.len() < n {
        s.push_str("/segment-of-a-very-long-path");
    }
    s
}

/// Every merge case of the foundation issue. Each uses gzip or plain layers
/// (umoci 0.4.7 reads no zstd); the zstd test re-encodes them.
pub fn cases() -> Vec<Case> {
    use Comp::*;
    let long_gnu = long("gnu", 180);
    let long_pax = long("pax", 240);
    let long_target = long("/usr/share/target", 150);
    vec![
        Case {
            name: "whiteouts",
            layers: vec![
                (
                    Gzip,
                    vec![
                        dir("a", 0o755),
                        file("a/file1", 0o644, b"one"),
                        file("a/file2", 0o644, b"two"),
                        dir("b", 0o755),
                        file("b/x", 0o644, b"x"),
                        dir("b/sub", 0o700),
                        file("b/sub/y", 0o600, b"y"),
                        file("keep", 0o644, b"keep"),
                    ],
                ),
                (
                    Gzip,
                    vec![
                        whiteout("a/.wh.file1"),
                        whiteout(".wh.b"),
                        whiteout("a/.wh.never-existed"),
                    ],
                ),
            ],
        },
        Case {
            name: "opaque-dirs",
            layers: vec![
                (
                    Gzip,
                    vec![
                        dir("d", 0o755),
                        file("d/old1", 0o644, b"old1"),
                        dir("d/sub", 0o755),
                        file("d/sub/old2", 0o644, b"old2"),
                        dir("e", 0o755),
                        file("e/old", 0o644, b"e"),
                    ],
                ),
                // Entries added in the same layer before the opaque marker survive.
                (
                    Plain,
                    vec![
                        dir("d", 0o750),
                        file("d/new1", 0o644, b"new1"),
                        whiteout("d/.wh..wh..opq"),
                        file("d/new2", 0o644, b"new2"),
                        whiteout("e/.wh..wh..opq"),
                        dir("e/fresh", 0o755),
                    ],
                ),
            ],
        },
        Case {
            name: "file-dir-file",
            layers: vec![
                (
                    Gzip,
                    vec![
                        file("p", 0o644, b"file"),
                        dir("q", 0o755),
                        file("q/inner", 0o644, b"in"),
                    ],
                ),
                (
                    Gzip,
                    vec![
                        dir("p", 0o755),
                        file("p/child", 0o644, b"child"),
                        file("q", 0o600, b"now a file"),
                    ],
                ),
                (
                    Gzip,
                    vec![
                        file("p", 0o640, b"file again"),
                        dir("q", 0o711),
                        file("q/again", 0o644, b"a"),
                    ],
                ),
            ],
        },
        Case {
            name: "hardlinks",
            layers: vec![
                (
                    Gzip,
                    vec![
                        dir("h", 0o755),
                        file("h/target", 0o755, b"content A"),
                        file("h/over", 0o644, b"old content"),
                        file("h/g1", 0o600, b"group"),
                        hardlink("h/g2", "h/g1"),
                        hardlink("h/g3", "./h/g1"),
                    ],
                ),
                // Links to files of the earlier layer.
                (
                    Gzip,
                    vec![
                        hardlink("h/link", "h/target"),
                        hardlink("h/link-over", "h/over"),
                    ],
                ),
                // The target is whited out; the overwritten file gets new content:
                // the links keep what they linked.
                (
                    Gzip,
                    vec![
                        whiteout("h/.wh.target"),
                        file("h/over", 0o644, b"new content"),
                    ],
                ),
            ],
        },
        Case {
            name: "symlinks",
            layers: vec![
                (
                    Gzip,
                    vec![
                        dir("usr", 0o755),
                        dir("usr/lib", 0o755),
                        file("usr/lib/libx.so", 0o644, b"elf"),
                        dir("usr/share", 0o755),
                        file("usr/share/f", 0o644, b"share"),
                        symlink("lib", "usr/lib"),
                        symlink("abs", "/usr/lib/libx.so"),
                        symlink("rel", "../usr/lib/libx.so"),
                        symlink("dangling", "/does/not/exist"),
                        symlink(&long("long-target-link", 20), &long_target),
                    ],
                ),
                // Written through the symlink: lands in usr/lib.
                (
                    Gzip,
                    vec![
                        file("lib/through-link", 0o644, b"via lib"),
                        symlink("usr/lib/self", "."),
                    ],
                ),
                // A symlink replaced by a directory, and a directory by a symlink.
                (
                    Gzip,
                    vec![
                        dir("abs", 0o755),
                        file("abs/f", 0o644, b"f"),
                        symlink("usr/share", "/opt"),
                    ],
                ),
            ],
        },
        Case {
            name: "devices-and-bits",
            layers: vec![(
                Plain,
                vec![
                    dir("dev", 0o755),
                    chardev("dev/null", 1, 3),
                    chardev("dev/tty0", 4, 0),
                    blockdev("dev/loop0", 7, 0),
                    fifo("dev/pipe"),
                    file("setuid", 0o4755, b"su"),
                    file("setgid", 0o2755, b"sg"),
                    dir("sticky", 0o1777),
                    file("owned", 0o640, b"o").owner(1234, 5678),
                    dir("odd", 0o555).owner(42, 43),
                    file("odd/zero-mode", 0o000, b"z"),
                ],
            )],
        },
        Case {
            name: "xattrs",
            layers: vec![(
                Gzip,
                vec![
                    dir("bin", 0o755),
                    file("bin/ping", 0o755, b"ping")
                        .pax("SCHILY.xattr.security.capability", &cap_net_raw()),
                    file("bin/tagged", 0o644, b"t")
                        .pax("SCHILY.xattr.user.gridship", b"value with spaces"),
                    dir("xdir", 0o755).pax("SCHILY.xattr.user.dirattr", b"d"),
                ],
            )],
        },
        Case {
            name: "long-names",
            layers: vec![(
                Gzip,
                vec![
                    dir("gnu", 0o755),
                    dir("pax", 0o755),
                    file(&long_gnu, 0o644, b"gnu long name"),
                    file("pax/short-in-header", 0o644, b"pax long name")
                        .pax("path", long_pax.as_bytes()),
                    symlink("pax/long-link", &long_target),
                    hardlink("pax/hl-to-long", &long_gnu),
                    file("pax/time", 0o644, b"t").pax("mtime", b"1600000000.123456789"),
                    file("pax/big-ids", 0o644, b"i")
                        .pax("uid", b"3000000")
                        .pax("gid", b"3000001"),
                ],
            )],
        },
        Case {
            name: "root-and-implicit-parents",
            layers: vec![
                (
                    Gzip,
                    vec![
                        dir("./", 0o751).owner(0, 0),
                        file("x/y/z/deep", 0o644, b"deep"),
                    ],
                ),
                (Gzip, vec![file("x/y/other", 0o644, b"o"), dir("x", 0o700)]),
            ],
        },
        // Values the tar crate split at newline bytes: a capability whose
        // mask is 0x0a, binary xattrs, a path and a link target with newlines.
        Case {
            name: "pax-binary-values",
            layers: vec![(
                Gzip,
                vec![
                    dir("bin", 0o755),
                    file("bin/cp", 0o755, b"cp").pax(
                        "SCHILY.xattr.security.capability",
                        &cap_dac_override_fowner(),
                    ),
                    file("bin/blob", 0o644, b"b")
                        .pax("SCHILY.xattr.user.blob", BINARY_XATTR)
                        .pax("SCHILY.xattr.user.eq", b"k=v=w"),
                    dir("nl", 0o755),
                    file("nl/placeholder", 0o644, b"newline in the PAX path")
                        .pax("path", b"nl/new\nline"),
                    symlink("nl/link", "placeholder").pax("linkpath", b"to\nnewline"),
                    file("nl/frac", 0o644, b"f")
                        .pax("mtime", b"1600000000.999999999")
                        .pax("SCHILY.xattr.user.nl", b"\n"),
                ],
            )],
        },
        // Ids over 0o7777777 in the header itself, GNU base-256.
        Case {
            name: "base256-ids",
            layers: vec![(
                Plain,
                vec![
                    dir("ids", 0o750).owner(3_000_000, 4_000_000),
                    file("ids/big", 0o640, b"base-256").owner(2_097_152, 4_294_967_294),
                    symlink("ids/link", "big").owner(16_777_216, 5),
                ],
            )],
        },
        // GNU tar's PAX sparse formats 0.0, 0.1 and 1.0 (Go reads all three).
        Case {
            name: "pax-sparse",
            layers: vec![(
                Gzip,
                vec![
                    dir("s00", 0o755),
                    raw_members(gnu_tar_sparse(
                        "s00",
                        &["--format=posix", "--sparse-version=0.0", PAX_QUIET],
                    )),
                    dir("s01", 0o755),
                    raw_members(gnu_tar_sparse(
                        "s01",
                        &["--format=posix", "--sparse-version=0.1", PAX_QUIET],
                    )),
                    dir("s10", 0o755),
                    raw_members(gnu_tar_sparse(
                        "s10",
                        &["--format=posix", "--sparse-version=1.0", PAX_QUIET],
                    )),
                    file("after", 0o644, b"after the sparse files"),
                ],
            )],
        },
        Case {
            name: "escaping-symlinks-stay-inside",
            layers: vec![
                (
                    Gzip,
                    vec![
                        symlink("evil", "../../../../../tmp"),
                        symlink("evil2", "/etc"),
                    ],
                ),
                // Through the links, but inside the image: /tmp/pwned and /etc/pwned.
                (
                    Gzip,
                    vec![
                        file("evil/pwned", 0o644, b"inside"),
                        file("evil2/pwned", 0o644, b"inside"),
                    ],
                ),
            ],
        },
    ]
}

/// PAX without atime/ctime records (GNU tar adds them by default).
const PAX_QUIET: &str = "--pax-option=delete=atime,delete=ctime";

/// Cases where umoci 0.4.7 is no reference: it refuses them, because Go's
/// archive/tar hands it entries it does not handle (old GNU sparse files
/// keep their `S` type flag; a global PAX header is returned as an entry
/// of type `g`, and Go does not apply its records to later entries). GNU
/// tar's extraction of the layer is the reference for these instead.
pub fn gnu_tar_cases() -> Vec<Case> {
    use Comp::*;
    vec![
        Case {
            name: "gnu-sparse",
            layers: vec![(
                Gzip,
                vec![
                    dir("gnu", 0o755),
                    raw_members(gnu_tar_sparse("gnu", &["--format=gnu"])),
                    file("after", 0o644, b"after the sparse files"),
                ],
            )],
        },
        Case {
            name: "pax-global-header",
            layers: vec![(
                Plain,
                vec![
                    file("before", 0o644, b"before any global header"),
                    global_pax(&[("mtime", b"1234567890.5"), ("uid", b"77"), ("gid", b"88")]),
                    dir("g", 0o755),
                    file("g/a", 0o644, b"a"),
                    file("g/b", 0o600, b"b").pax("uid", b"99"),
                    symlink("g/link", "a"),
                    // A later global header overrides. GNU tar 1.34 drops
                    // every earlier global record then (POSIX, and gridship,
                    // override key by key), so this one restates them all.
                    global_pax(&[("mtime", b"1234567890.5"), ("uid", b"55"), ("gid", b"88")]),
                    file("g/c", 0o644, b"c"),
                ],
            )],
        },
    ]
}

/// An entry that must make gridship refuse the image, and the words the
/// error must contain.
pub struct UnsafeCase {
    pub name: &'static str,
    pub layers: Vec<(Comp, Vec<Entry>)>,
    pub entry: &'static str,
    pub reason: &'static str,
}

pub fn unsafe_cases() -> Vec<UnsafeCase> {
    use Comp::*;
    vec![
        UnsafeCase {
            name: "dotdot",
            layers: vec![(
                Gzip,
                vec![
                    file("ok", 0o644, b"ok"),
                    file("x", 0o644, b"evil").raw_name(b"../escape"),
                ],
            )],
            entry: "../escape",
            reason: "escape the image root",
        },
        UnsafeCase {
            name: "dotdot-inside",
            layers: vec![(
                Plain,
                vec![file("x", 0o644, b"evil").raw_name(b"a/../../etc/passwd")],
            )],
            entry: "a/../../etc/passwd",
            reason: "escape the image root",
        },
        UnsafeCase {
            name: "hardlink-outside",
            layers: vec![(Gzip, vec![hardlink("shadow", "../../../etc/shadow")])],
            entry: "shadow",
            reason: "hardlink target",
        },
        UnsafeCase {
            name: "nul-in-name",
            layers: vec![(
                Gzip,
                vec![file("placeholder", 0o644, b"x").pax("path", b"etc/pass\0wd")],
            )],
            entry: "etc/pass",
            reason: "NUL",
        },
        UnsafeCase {
            name: "root-replaced",
            layers: vec![(Gzip, vec![symlink("./", "/")])],
            entry: "./",
            reason: "root directory",
        },
        UnsafeCase {
            name: "hardlink-missing",
            layers: vec![(Gzip, vec![hardlink("link", "nowhere")])],
            entry: "link",
            reason: "does not exist",
        },
        UnsafeCase {
            name: "malformed-pax-record",
            layers: vec![(
                Gzip,
                vec![
                    file("ok", 0o644, b"ok"),
                    // The length prefix runs past the header's data.
                    pax_header(b"30 path=short\n"),
                    file("victim", 0o644, b"v"),
                ],
            )],
            entry: "PaxHeaders/victim",
            reason: "malformed PAX record at offset 1536",
        },
        UnsafeCase {
            name: "sparse-map-past-the-data",
            layers: vec![(
                Plain,
                vec![
                    file("sparse", 0o644, b"0123456789")
                        .pax("GNU.sparse.major", b"0")
                        .pax("GNU.sparse.minor", b"1")
                        .pax("GNU.sparse.size", b"100")
                        .pax("GNU.sparse.numblocks", b"1")
                        .pax("GNU.sparse.map", b"0,20"),
                ],
            )],
            entry: "sparse",
            reason: "sparse map covers 20 bytes but the entry stores 10",
        },
    ]
}

/// A new layout at `dst` (tag `tag`): the image `src:src_tag` (one
/// platform) with `extra` layers on top and its config edited by `edit`
/// (e.g. a hostile Env). The source's blobs are copied.
pub fn extend_image(
    src: &Path,
    src_tag: &str,
    dst: &Path,
    tag: &str,
    extra: &[(Comp, Vec<Entry>)],
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let read_json = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(src.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == src_tag)
        .unwrap_or_else(|| panic!("{}: no tag {src_tag}", src.display()));
    let mut manifest = read_json(desc["digest"].as_str().unwrap());
    let mut config = read_json(manifest["config"]["digest"].as_str().unwrap());
    std::fs::create_dir_all(dst.join("blobs/sha256")).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        std::fs::copy(
            src.join("blobs/sha256").join(hex),
            dst.join("blobs/sha256").join(hex),
        )
        .unwrap();
    }
    for (comp, entries) in extra {
        let tar = tar_bytes(entries);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(format!("sha256:{}", sha(&tar)).into());
        let (digest, size) = put_blob(dst, &compress(&tar, *comp));
        manifest["layers"].as_array_mut().unwrap().push(
            serde_json::json!({"mediaType": media_type(*comp), "digest": digest, "size": size}),
        );
    }
    edit(&mut config);
    let (cd, cs) = put_blob(dst, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put_blob(dst, &serde_json::to_vec(&manifest).unwrap());
    write_index(
        dst,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &md,
        ms,
    );
}
