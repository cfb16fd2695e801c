//! Hand-written tar layers and OCI layouts: every case the merge must get
//! right, and the unsafe ones it must refuse. Headers are written byte by
//! byte where the tar crate would refuse (`..`, NUL), so the tests feed
//! gridship exactly what a hostile image would hold.

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
        if !e.pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &e.pax {
                // A record is "LEN key=value\n" where LEN counts itself.
                let body_len = 1 + k.len() + 1 + v.len() + 1;
                let mut len = body_len + 1;
                while len.to_string().len() + body_len != len {
                    len = len.to_string().len() + body_len;
                }
                data.extend_from_slice(format!("{len} {k}=").as_bytes());
                data.extend_from_slice(v);
                data.push(b'\n');
            }
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
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
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
    ]
}
