//! The merged tree as one clean tar stream: no whiteouts, every file once,
//! for `mksquashfs - OUT -tar` (SIF), `cvmfs_server ingest -t -`, flattened
//! OCI layers and `tar -x`.
//!
//! Streaming: nothing is unpacked to disk and no file is held in memory;
//! regular files are written as [`FsIndex::for_each_content`] delivers
//! them (content order, not tree order), through one bounded buffer.
//!
//! Entry order, deterministic for one index:
//! 1. `./`, the root, carrying its mode, owner, mtime and xattrs (unless
//!    [`TarOptions::omit_root`]);
//! 2. every directory, in key order (parents before children);
//! 3. regular files, in content order, each as its bytes arrive;
//! 4. symlinks, devices and fifos, in key order;
//! 5. the further paths of hardlinked nodes, in key order, as link
//!    entries naming the node's first path (written in 3 or 4).
//!
//! So every directory comes before anything inside it and every hardlink
//! after its target. Directory metadata travels in the early directory
//! entries: mksquashfs builds its tree in memory and keeps it; GNU tar by
//! default (`--no-delay-directory-restore`) applies a directory's times and
//! mode as soon as it meets an entry outside it, and the files extracted
//! into it later bump its mtime. Extract with `tar --delay-directory-restore`
//! to get exact directory times (and to let non-root users fill read-only
//! directories).
//!
//! Headers are POSIX ustar with PAX extended headers: numeric owners only
//! (no user or group names), mode with setuid/setgid/sticky, and PAX records
//! where ustar cannot say it: `path` (names that do not fit 100 bytes or a
//! 155/100 prefix split), `linkpath` (hardlink names over 100 bytes),
//! `uid`/`gid`/`size` beyond the octal fields, `mtime` with nanoseconds or
//! outside the field, and `SCHILY.xattr.NAME` for every xattr. Names that
//! fit go into the ustar fields byte for byte, whatever their encoding
//! (readers copy those verbatim, while a PAX `path` is meant to be UTF-8
//! and some readers transcode it); longer ones go into `path` as raw bytes,
//! without `hdrcharset`, which GNU tar 1.34 and mksquashfs 4.5.1 warn
//! about as unknown and both read raw anyway.
//!
//! One exception: a symlink target over 100 bytes goes into a GNU
//! `././@LongLink` entry. mksquashfs 4.5.1 strips leading `/`, `./` and
//! `../` from a PAX `linkpath`, turning `/usr/lib/x` into `usr/lib/x` and
//! `../../x` into `x` (4.6 fixed it); it reads a GNU long link verbatim, as
//! GNU tar does. Hardlink names are paths in the archive, so a PAX
//! `linkpath` is safe for them.
//!
//! mksquashfs 4.5.1 ignores the `./` entry ("Empty tar filename"); the
//! root's mode must come from `-root-mode` ([`mksquashfs_root_args`]). In
//! `-tar` mode it ignores `-root-uid`, `-root-gid` and `-root-time` (they
//! work with a directory source): the root is always 0:0, without xattrs,
//! stamped with the build time unless SOURCE_DATE_EPOCH is set in its
//! environment, which sets every inode's time, not only the root's.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};

use serde::Serialize;

use crate::digest::unwrap_io;
use crate::image::Image;
use crate::index::{FsIndex, Kind, Meta, Node, NodeId, display_path};
use crate::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct TarOptions {
    /// SOURCE_DATE_EPOCH: clamp every mtime to at most this (like GNU tar's
    /// `--clamp-mtime --mtime=@EPOCH`); older times are kept.
    pub reproducible: Option<i64>,
    /// Leave out the `./` entry (the root's metadata), e.g. for mksquashfs,
    /// which ignores it with a warning and takes [`mksquashfs_root_args`].
    pub omit_root: bool,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct TarReport {
    /// Tar members written (not counting PAX and long-link headers).
    pub entries: u64,
    #[serde(flatten)]
    pub kinds: super::EntryKinds,
    /// Bytes of regular file content.
    pub content_bytes: u64,
    /// Bytes of the whole tar stream.
    pub tar_bytes: u64,
}

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// Largest values of the octal ustar fields (one byte is the terminator).
const ID_MAX: u64 = 0o7_777_777;
const SIZE_MAX: u64 = 0o77_777_777_777;
const TIME_MAX: i64 = 0o77_777_777_777;
/// Content goes through one buffer of this size.
const COPY_BUF: usize = 256 * 1024;

/// Write the tree of `index` (layer content from `image`) to `out` as one
/// tar stream, end-of-archive blocks included. `out` is buffered here.
pub fn write_tar(
    index: &FsIndex,
    image: &Image,
    out: impl Write,
    opts: &TarOptions,
) -> Result<TarReport> {
    let mut report = TarReport::default();
    let mut w = TarOut {
        out: BufWriter::with_capacity(COPY_BUF, out),
        written: 0,
    };

    // The first path of a node (key order) holds it; further paths link to it.
    let mut primary: HashMap<NodeId, &[u8]> = HashMap::new();
    let mut dirs: Vec<(&[u8], &Node)> = Vec::new();
    let mut others: Vec<(&[u8], &Node)> = Vec::new();
    let mut links: Vec<(&[u8], &[u8], &Node)> = Vec::new();
    let mut pending: HashMap<NodeId, &[u8]> = HashMap::new();
    let mut root = None;
    for (key, id, node) in index.iter() {
        if key.is_empty() {
            root = Some(node);
            continue;
        }
        if let Some(first) = primary.get(&id) {
            links.push((key, first, node));
            continue;
        }
        primary.insert(id, key);
        match &node.kind {
            Kind::Dir => dirs.push((key, node)),
            Kind::File { .. } => {
                pending.insert(id, key);
            }
            _ => others.push((key, node)),
        }
    }

    if let (Some(root), false) = (root, opts.omit_root) {
        w.member(&member(b"./".to_vec(), root, opts), &mut report)?;
    }
    for (key, node) in dirs {
        let mut name = key.to_vec();
        name.push(b'/');
        w.member(&member(name, node, opts), &mut report)?;
    }

    let mut buf = vec![0u8; COPY_BUF];
    index.for_each_content(image, |id, reader| {
        let Some(key) = pending.remove(&id) else {
            return Err(Error::Other(format!(
                "content for node {id} arrived twice or for no regular file in the index"
            )));
        };
        let node = index.node(id);
        let m = member(key.to_vec(), node, opts);
        w.member(&m, &mut report)?;
        w.content(reader, m.size, &mut buf, key)?;
        report.content_bytes += m.size;
        Ok(())
    })?;
    if let Some(key) = pending.values().min() {
        return Err(Error::Other(format!(
            "the content of {} was not found in its layer; the index and the image disagree",
            display_path(key)
        )));
    }

    for (key, node) in others {
        w.member(&member(key.to_vec(), node, opts), &mut report)?;
    }
    for (key, first, node) in links {
        let mut m = member(key.to_vec(), node, opts);
        m.typeflag = ::tar::EntryType::Link.as_byte();
        m.size = 0;
        m.link = first.to_vec();
        m.dev = (0, 0);
        // The target's entry carries the xattrs; a link entry adds a name.
        m.xattrs.clear();
        w.member(&m, &mut report)?;
    }

    // End of archive: two zero blocks.
    w.put(&[0u8; 2 * BLOCK])?;
    w.out
        .flush()
        .map_err(|e| Error::io("writing the tar stream", e))?;
    report.tar_bytes = w.written;
    Ok(report)
}

/// The root directory's metadata as mksquashfs options (`-root-mode`,
/// `-root-uid`, `-root-gid`, `-root-time`), since mksquashfs ignores a tar's
/// `./` entry and would make the root 0777. With `-tar`, 4.5.1 applies only
/// `-root-mode` (see the module notes); root xattrs cannot be given at all.
pub fn mksquashfs_root_args(index: &FsIndex, opts: &TarOptions) -> Vec<String> {
    let Some((_, root)) = index.get(b"") else {
        return Vec::new();
    };
    let (mtime, _) = clamped_time(&root.meta, opts);
    vec![
        "-root-mode".into(),
        format!("{:o}", root.meta.mode & 0o7777),
        "-root-uid".into(),
        root.meta.uid.to_string(),
        "-root-gid".into(),
        root.meta.gid.to_string(),
        // Squashfs times are unsigned 32-bit seconds.
        "-root-time".into(),
        mtime.clamp(0, u32::MAX as i64).to_string(),
    ]
}

/// Everything one tar member says.
#[derive(Debug, Clone)]
struct Member {
    /// The name as written (directories end in `/`).
    name: Vec<u8>,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    mtime_nsec: u32,
    size: u64,
    link: Vec<u8>,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn clamped_time(meta: &Meta, opts: &TarOptions) -> (i64, u32) {
    match opts.reproducible {
        Some(epoch) if (meta.mtime, meta.mtime_nsec) > (epoch, 0) => (epoch, 0),
        _ => (meta.mtime, meta.mtime_nsec),
    }
}

fn member(name: Vec<u8>, node: &Node, opts: &TarOptions) -> Member {
    use ::tar::EntryType as T;
    let (mtime, mtime_nsec) = clamped_time(&node.meta, opts);
    let (typeflag, size, link, dev) = match &node.kind {
        Kind::Dir => (T::Directory, 0, Vec::new(), (0, 0)),
        Kind::File { size, .. } => (T::Regular, *size, Vec::new(), (0, 0)),
        Kind::Symlink { target } => (T::Symlink, 0, target.clone(), (0, 0)),
        Kind::CharDevice { major, minor } => (T::Char, 0, Vec::new(), (*major, *minor)),
        Kind::BlockDevice { major, minor } => (T::Block, 0, Vec::new(), (*major, *minor)),
        Kind::Fifo => (T::Fifo, 0, Vec::new(), (0, 0)),
    };
    Member {
        name,
        typeflag: typeflag.as_byte(),
        mode: node.meta.mode & 0o7777,
        uid: node.meta.uid,
        gid: node.meta.gid,
        mtime,
        mtime_nsec,
        size,
        link,
        dev,
        xattrs: node
            .meta
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

struct TarOut<W: Write> {
    out: BufWriter<W>,
    written: u64,
}

impl<W: Write> TarOut<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("writing the tar stream", e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn member(&mut self, m: &Member, report: &mut TarReport) -> Result<()> {
        let bytes = encode(m)?;
        self.put(&bytes)?;
        report.entries += 1;
        crate::event::advance_paths(1);
        use ::tar::EntryType as T;
        match ::tar::EntryType::new(m.typeflag) {
            T::Directory => report.kinds.directories += 1,
            T::Regular => report.kinds.files += 1,
            T::Symlink => report.kinds.symlinks += 1,
            T::Link => report.kinds.hardlinks += 1,
            T::Char | T::Block => report.kinds.devices += 1,
            T::Fifo => report.kinds.fifos += 1,
            _ => {}
        }
        Ok(())
    }

    /// Exactly `size` bytes from `reader`, then padding to a block.
    fn content(
        &mut self,
        reader: &mut dyn Read,
        size: u64,
        buf: &mut [u8],
        key: &[u8],
    ) -> Result<()> {
        let path = || display_path(key);
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match reader.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(unwrap_io(e, || {
                        format!("reading the content of {}", path())
                    }));
                }
            };
            if n == 0 {
                return Err(Error::Other(format!(
                    "the content of {} ended after {} of {size} bytes",
                    path(),
                    size - left
                )));
            }
            self.put(&buf[..n])?;
            left -= n as u64;
        }
        // More bytes than the header says would shift every later entry.
        loop {
            match reader.read(&mut buf[..1]) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(Error::Other(format!(
                        "the content of {} is longer than the {size} bytes the index records",
                        path()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(unwrap_io(e, || {
                        format!("reading the content of {}", path())
                    }));
                }
            }
        }
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

/// The blocks of one member's headers: PAX extended header and GNU long
/// link when needed, then the ustar header.
fn encode(m: &Member) -> Result<Vec<u8>> {
    let mut pax = Vec::new();
    let mut out = Vec::new();

    let (prefix, name) = match split_ustar(&m.name) {
        Some(split) => split,
        None => {
            pax_record(&mut pax, b"path", &m.name);
            (&b""[..], &m.name[..NAME_LEN])
        }
    };
    let mut gnu_long_link = None;
    let link: &[u8] = if m.link.len() <= NAME_LEN {
        &m.link
    } else if m.typeflag == ::tar::EntryType::Symlink.as_byte() {
        // mksquashfs 4.5.1 strips a leading `/`, `./`, `../` from a PAX
        // linkpath; it keeps a GNU long link intact.
        gnu_long_link = Some(&m.link);
        &m.link[..NAME_LEN]
    } else {
        pax_record(&mut pax, b"linkpath", &m.link);
        &m.link[..NAME_LEN]
    };
    let uid = if m.uid > ID_MAX {
        pax_record(&mut pax, b"uid", m.uid.to_string().as_bytes());
        0
    } else {
        m.uid
    };
    let gid = if m.gid > ID_MAX {
        pax_record(&mut pax, b"gid", m.gid.to_string().as_bytes());
        0
    } else {
        m.gid
    };
    let size = if m.size > SIZE_MAX {
        pax_record(&mut pax, b"size", m.size.to_string().as_bytes());
        0
    } else {
        m.size
    };
    let mtime = if m.mtime_nsec != 0 || !(0..=TIME_MAX).contains(&m.mtime) {
        pax_record(
            &mut pax,
            b"mtime",
            pax_time(m.mtime, m.mtime_nsec).as_bytes(),
        );
        m.mtime.clamp(0, TIME_MAX) as u64
    } else {
        m.mtime as u64
    };
    for (k, v) in &m.xattrs {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(Error::BadInput {
                input: display_path(m.name.strip_suffix(b"/").unwrap_or(&m.name)),
                place: format!("xattr {k:?}: "),
                reason: "a PAX record cannot carry an xattr name that is empty or holds `=` or NUL"
                    .into(),
                hint: Some("remove the xattr in a transform before writing a tar".into()),
            });
        }
        pax_record(&mut pax, format!("SCHILY.xattr.{k}").as_bytes(), v);
    }
    for (what, v) in [("major", m.dev.0), ("minor", m.dev.1)] {
        if u64::from(v) > ID_MAX {
            return Err(Error::bad_input(
                display_path(&m.name),
                format!("device {what} number {v} does not fit a tar header"),
            ));
        }
    }

    if !pax.is_empty() {
        let mut h = Header::new();
        h.field(0, NAME_LEN, &pax_header_name(&m.name));
        h.octal(100, 8, 0o644);
        h.octal(108, 8, 0);
        h.octal(116, 8, 0);
        h.octal(124, 12, pax.len() as u64);
        h.octal(136, 12, 0);
        h.0[156] = ::tar::EntryType::XHeader.as_byte();
        h.ustar_magic();
        out.extend_from_slice(&h.finish());
        out.extend_from_slice(&pax);
        pad_to_block(&mut out);
    }
    if let Some(target) = gnu_long_link {
        let mut h = Header::new();
        h.field(0, NAME_LEN, b"././@LongLink");
        h.octal(100, 8, 0o644);
        h.octal(108, 8, 0);
        h.octal(116, 8, 0);
        h.octal(124, 12, target.len() as u64 + 1);
        h.octal(136, 12, 0);
        h.0[156] = ::tar::EntryType::GNULongLink.as_byte();
        // A GNU extension, so the GNU magic, as GNU tar writes it.
        h.0[257..265].copy_from_slice(b"ustar  \0");
        out.extend_from_slice(&h.finish());
        out.extend_from_slice(target);
        out.push(0);
        pad_to_block(&mut out);
    }

    let mut h = Header::new();
    h.field(0, NAME_LEN, name);
    h.octal(100, 8, u64::from(m.mode));
    h.octal(108, 8, uid);
    h.octal(116, 8, gid);
    h.octal(124, 12, size);
    h.octal(136, 12, mtime);
    h.0[156] = m.typeflag;
    h.field(157, NAME_LEN, link);
    h.ustar_magic();
    h.octal(329, 8, u64::from(m.dev.0));
    h.octal(337, 8, u64::from(m.dev.1));
    h.field(345, PREFIX_LEN, prefix);
    out.extend_from_slice(&h.finish());
    Ok(out)
}

struct Header([u8; BLOCK]);

impl Header {
    fn new() -> Self {
        Header([0u8; BLOCK])
    }
    /// Bytes into a field, NUL-padded (a full field has no terminator).
    fn field(&mut self, at: usize, len: usize, value: &[u8]) {
        debug_assert!(value.len() <= len);
        self.0[at..at + value.len()].copy_from_slice(value);
    }
    /// Zero-padded octal digits and a NUL; callers check the range.
    fn octal(&mut self, at: usize, len: usize, value: u64) {
        let digits = format!("{value:0width$o}", width = len - 1);
        debug_assert!(digits.len() == len - 1);
        self.0[at..at + len - 1].copy_from_slice(digits.as_bytes());
        self.0[at + len - 1] = 0;
    }
    fn ustar_magic(&mut self) {
        self.0[257..263].copy_from_slice(b"ustar\0");
        self.0[263..265].copy_from_slice(b"00");
    }
    fn finish(mut self) -> [u8; BLOCK] {
        self.0[148..156].fill(b' ');
        let sum: u32 = self.0.iter().map(|&b| u32::from(b)).sum();
        self.0[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
        self.0[154] = 0;
        self.0[155] = b' ';
        self.0
    }
}

/// `(prefix, name)` when `full` fits the ustar fields: whole in the name
/// field, or split at a `/` into a prefix of at most 155 bytes and a name
/// of at most 100.
fn split_ustar(full: &[u8]) -> Option<(&[u8], &[u8])> {
    if full.len() <= NAME_LEN {
        return Some((b"", full));
    }
    full.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| (&full[..i], &full[i + 1..]))
        .find(|(prefix, name)| {
            !prefix.is_empty()
                && prefix.len() <= PREFIX_LEN
                && !name.is_empty()
                && name.len() <= NAME_LEN
        })
}

/// Append one PAX record, `"LEN key=value\n"`, where LEN counts itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: seconds and a fraction without trailing zeros; negative
/// times count down (`secs = -2, nsec = 750_000_000` is `-1.25`).
fn pax_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        ("", secs, nsec)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// A fixed, ASCII name for a PAX header (GNU tar puts its pid there, which
/// would break reproducible output).
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(b"");
    let mut out = b"PaxHeaders/".to_vec();
    out.extend(
        base.iter()
            .map(|&b| if b.is_ascii_graphic() { b } else { b'_' })
            .take(NAME_LEN - out.len()),
    );
    out
}

fn pad_to_block(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &[u8]) -> Member {
        Member {
            name: name.to_vec(),
            typeflag: ::tar::EntryType::Regular.as_byte(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            size: 0,
            link: Vec::new(),
            dev: (0, 0),
            xattrs: Vec::new(),
        }
    }

    /// Read encoded headers back with the tar crate (a different reader).
    type Pax = Vec<(String, Vec<u8>)>;

    /// Name, link name and PAX records of an encoded member.
    fn read_back(m: &Member) -> (Vec<u8>, Vec<u8>, Pax) {
        let mut bytes = encode(m).unwrap();
        bytes.resize(bytes.len() + BLOCK * 2, 0);
        let mut ar = ::tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        let path = e.path_bytes().into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        let pax = e
            .pax_extensions()
            .unwrap()
            .map(|exts| {
                exts.map(|x| {
                    let x = x.unwrap();
                    (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                })
                .collect()
            })
            .unwrap_or_default();
        (path, link, pax)
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [0, 1, 5, 6, 7, 90, 95, 96, 97, 990, 995, 996, 997] {
            let mut out = Vec::new();
            pax_record(&mut out, b"k", &vec![b'v'; n]);
            let text = String::from_utf8(out.clone()).unwrap();
            let len: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(1_600_000_000, 123_456_789), "1600000000.123456789");
        assert_eq!(pax_time(1, 500_000_000), "1.5");
        assert_eq!(pax_time(-2, 750_000_000), "-1.25");
        assert_eq!(pax_time(-1, 500_000_000), "-0.5");
        assert_eq!(pax_time(-7, 0), "-7");
    }

    #[test]
    fn names_split_or_go_to_pax() {
        let long_dir = format!("{}/{}/", "a".repeat(150), "b".repeat(99));
        let (prefix, name) = split_ustar(long_dir.as_bytes()).unwrap();
        assert_eq!((prefix.len(), name.len()), (150, 100));
        assert!(split_ustar(format!("{}/", "a".repeat(120)).as_bytes()).is_none());
        assert!(split_ustar(format!("{}/x", "a".repeat(156)).as_bytes()).is_none());

        let (path, _, pax) = read_back(&m(long_dir.as_bytes()));
        assert_eq!(path, long_dir.as_bytes());
        assert!(pax.is_empty(), "a prefix split needs no PAX");

        let very = format!("{}/{}", "c".repeat(200), "d".repeat(120));
        let (path, _, pax) = read_back(&m(very.as_bytes()));
        assert_eq!(path, very.as_bytes());
        assert_eq!(pax[0].0, "path");

        // Non-UTF-8 bytes that fit stay in the ustar field, untouched.
        let (path, _, pax) = read_back(&m(b"caf\xe9"));
        assert_eq!(path, b"caf\xe9");
        assert!(pax.is_empty());
    }

    #[test]
    fn big_values_go_to_pax() {
        let mut x = m(b"f");
        x.uid = 3_000_000;
        x.gid = ID_MAX;
        x.size = SIZE_MAX + 1;
        x.mtime = -2;
        x.mtime_nsec = 750_000_000;
        // No b'\n' in the value: the tar crate's PAX reader splits records
        // at newlines (GNU tar and mksquashfs go by the length).
        x.xattrs = vec![("security.capability".into(), vec![1, 0, 0, 2, 0, b'=', 0])];
        let mut bytes = encode(&x).unwrap();
        bytes.resize(bytes.len() + BLOCK * 2, 0);
        let mut ar = ::tar::Archive::new(&bytes[..]);
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        let pax: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.key().unwrap().into(), r.value_bytes().into())
            })
            .collect();
        let keys: Vec<&str> = pax.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["uid", "size", "mtime", "SCHILY.xattr.security.capability"]
        );
        assert_eq!(pax[0].1, b"3000000");
        assert_eq!(pax[2].1, b"-1.25");
        assert_eq!(pax[3].1, [1, 0, 0, 2, 0, b'=', 0]);
        assert_eq!(e.header().gid().unwrap(), ID_MAX);
        assert_eq!(e.header().mtime().unwrap(), 0);
    }

    #[test]
    fn long_symlink_targets_use_gnu_long_links_hardlinks_pax() {
        let target = format!("/usr/{}", "t".repeat(150));
        let mut s = m(b"link");
        s.typeflag = ::tar::EntryType::Symlink.as_byte();
        s.link = target.clone().into_bytes();
        let (_, link, pax) = read_back(&s);
        assert_eq!(link, target.as_bytes());
        assert!(pax.is_empty(), "no PAX linkpath for a symlink");

        let mut h = m(b"hard");
        h.typeflag = ::tar::EntryType::Link.as_byte();
        h.link = target.clone().into_bytes();
        let (_, link, pax) = read_back(&h);
        assert_eq!(link, target.as_bytes());
        assert_eq!(pax, [("linkpath".to_string(), target.into_bytes())]);
    }

    #[test]
    fn bad_xattr_names_and_devices_are_errors() {
        let mut x = m(b"f");
        x.xattrs = vec![("user.a=b".into(), b"v".to_vec())];
        assert!(matches!(encode(&x), Err(Error::BadInput { .. })));
        let mut d = m(b"dev");
        d.typeflag = ::tar::EntryType::Char.as_byte();
        d.dev = (1, 1 << 24);
        assert!(matches!(encode(&d), Err(Error::BadInput { .. })));
    }

    #[test]
    fn header_is_ustar_with_numeric_owner() {
        let mut x = m(b"dir/");
        x.typeflag = ::tar::EntryType::Directory.as_byte();
        x.mode = 0o4755;
        x.uid = 1234;
        let bytes = encode(&x).unwrap();
        assert_eq!(bytes.len(), BLOCK);
        assert_eq!(&bytes[257..265], b"ustar\x0000");
        assert!(
            bytes[265..329].iter().all(|&b| b == 0),
            "no user or group names"
        );
        let h = ::tar::Header::from_byte_slice(&bytes);
        assert_eq!(h.mode().unwrap(), 0o4755);
        assert_eq!(h.uid().unwrap(), 1234);
        assert_eq!(h.cksum().unwrap(), {
            let mut b = bytes.clone();
            b[148..156].fill(b' ');
            b.iter().map(|&v| u32::from(v)).sum::<u32>()
        });
    }

    #[test]
    fn pax_header_names_are_fixed_ascii() {
        assert_eq!(pax_header_name(b"a/b\xe9c/"), b"PaxHeaders/b_c");
        assert_eq!(pax_header_name(b"./"), b"PaxHeaders/.");
        assert!(pax_header_name(&[b'x'; 300]).len() == NAME_LEN);
    }
}
