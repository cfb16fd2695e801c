//! Our own streaming reader for layer tars.
//!
//! Why not the tar crate: it splits PAX records at every newline byte
//! instead of using their length prefix, so a binary xattr (a file
//! capability whose mask holds 0x0a), or a path with a newline, makes it
//! refuse layers that every container runtime reads.
//!
//! The reading follows Go's archive/tar (what umoci, Docker and containerd
//! read layers with), except where noted:
//! - headers: v7, ustar (and star's prefix), GNU; checksum as unsigned or
//!   signed byte sum; numbers in octal or GNU base-256;
//! - extension headers: GNU `L`/`K` long names, PAX `x` records parsed by
//!   their length prefix. Name precedence: GNU long name, then PAX `path`,
//!   then the header (Go's order; GNU tar lets PAX win);
//! - PAX `g` global records apply to every later entry until a later global
//!   record overrides them (POSIX, GNU tar). Go does not apply them, and
//!   umoci refuses a layer that holds one. `path`, `linkpath`, `size` and
//!   `GNU.sparse.*` in a global header are ignored: they describe a single
//!   member, and honouring `size` would desynchronise this reader from Go's;
//! - an empty PAX value falls back to the header's value (Go); in a global
//!   header it removes the earlier global value (POSIX);
//! - sparse files: old GNU (`S`) and PAX 0.0, 0.1 and 1.0, read back with
//!   zero-filled holes; maps are validated up front (sorted, inside the
//!   file, covering exactly the stored bytes); other sparse versions are
//!   refused rather than read as their raw stored bytes (which Go does);
//! - link, symlink, device, directory and fifo entries have no data,
//!   whatever their size field says (Go);
//! - two PAX `x` or two GNU long-name headers for one entry are refused
//!   (Go keeps the last one: an ambiguity worth refusing);
//! - end of archive: two zero blocks, or EOF at a header boundary; a zero
//!   block followed by a header is refused (Go).
//!
//! Hostile input cannot make it allocate without bound: extension headers
//! are capped at 1 MiB (Go's limit) and sparse maps at [`MAX_SPARSE_ENTRIES`].

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::digest::unwrap_io;
use crate::{Error, Result};

const BLOCK: u64 = 512;
/// Largest PAX header or GNU long name accepted (Go's archive/tar limit).
pub const MAX_EXTENSION: u64 = 1 << 20;
/// Most entries a sparse map may have (16 MiB of map in memory).
pub const MAX_SPARSE_ENTRIES: usize = 1 << 20;

const SCHILY_XATTR: &[u8] = b"SCHILY.xattr.";
const LIBARCHIVE_XATTR: &[u8] = b"LIBARCHIVE.xattr.";

/// What an entry is, after the extension headers are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// `0`, NUL (old v7), `7` (contiguous) and `S` (old GNU sparse).
    Regular,
    Link,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
    /// Any other type flag (GNU `D`, `M`, `V`, vendor types), left to the
    /// caller to refuse.
    Other(u8),
}

impl EntryType {
    fn from_flag(flag: u8) -> EntryType {
        match flag {
            b'0' | 0 | b'7' | b'S' => EntryType::Regular,
            b'1' => EntryType::Link,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::Char,
            b'4' => EntryType::Block,
            b'5' => EntryType::Directory,
            b'6' => EntryType::Fifo,
            other => EntryType::Other(other),
        }
    }

    /// Types whose data area is empty whatever the size field says.
    fn header_only(self) -> bool {
        !matches!(self, EntryType::Regular | EntryType::Other(_))
    }
}

/// One entry's metadata, with PAX, GNU and sparse extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Offset of the entry's own header block (after its extension
    /// headers) in the uncompressed stream: the same in every pass over a
    /// layer, so it keys an entry's content.
    pub header_pos: u64,
    /// The type flag byte as stored.
    pub typeflag: u8,
    pub entry_type: EntryType,
    pub path: Vec<u8>,
    pub link_name: Vec<u8>,
    /// Logical size: what reading the entry yields (a sparse file's full
    /// length; 0 for types without data).
    pub size: u64,
    /// The mode field (permission and, for some writers, type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Device numbers (char and block devices only, else 0).
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The entry is a sparse file (holes read back as zeros).
    pub sparse: bool,
}

/// A data segment of a sparse file: `len` stored bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// Where the reader is inside the data of the entry it last returned.
#[derive(Default)]
struct Current {
    /// Stored data bytes not yet consumed.
    left: u64,
    /// Padding after the stored data, up to the next block.
    pad: u64,
    sparse: Option<Sparse>,
    name: Vec<u8>,
}

struct Sparse {
    map: Vec<Segment>,
    /// First segment that may still hold unread bytes.
    next: usize,
    /// Logical position and size.
    pos: u64,
    size: u64,
}

/// A streaming tar reader over one layer's uncompressed bytes.
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    layer: String,
    what: String,
    /// PAX global records in force.
    globals: BTreeMap<Vec<u8>, Vec<u8>>,
    cur: Current,
    done: bool,
}

/// An entry: its header, and a `Read` over exactly its (logical) data.
/// Unread data is skipped when the next entry is asked for.
pub struct Entry<'a, R: Read> {
    pub header: Header,
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_data(buf)
    }
}

/// A header block's fields, before extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    name: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: i64,
    uid: i64,
    gid: i64,
    size: i64,
    mtime: i64,
    gnu: bool,
    v7: bool,
}

fn cut_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// A numeric header field: octal text (NUL or space padded) or, with the
/// high bit of the first byte set, GNU base-256 two's complement.
fn parse_numeric(field: &[u8]) -> Option<i64> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => {
            let negative = b & 0x40 != 0;
            let flip = if negative { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, &c) in field.iter().enumerate() {
                let mut c = c ^ flip;
                if i == 0 {
                    c &= 0x7f;
                }
                x = x.checked_mul(256)?.checked_add(u64::from(c))?;
            }
            let x = i64::try_from(x).ok()?;
            Some(if negative { !x } else { x })
        }
        _ => parse_octal(field),
    }
}

fn parse_octal(field: &[u8]) -> Option<i64> {
    let pad = |c: &u8| *c == b' ' || *c == 0;
    let start = field.iter().position(|c| !pad(c)).unwrap_or(field.len());
    let end = field.iter().rposition(|c| !pad(c)).map_or(start, |i| i + 1);
    let digits = cut_nul(&field[start..end]);
    let mut x: i64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        x = x.checked_mul(8)?.checked_add(i64::from(c - b'0'))?;
    }
    Some(x)
}

/// Parse and check one header block.
fn parse_header(blk: &[u8; 512]) -> std::result::Result<Raw, String> {
    let stored = parse_octal(&blk[148..156]).ok_or("unreadable header checksum field")?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in blk.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        return Err(format!(
            "header checksum mismatch (stored {stored:o}, computed {unsigned:o})"
        ));
    }
    let num = |range: std::ops::Range<usize>, what: &str| {
        parse_numeric(&blk[range]).ok_or_else(|| format!("unreadable {what} field"))
    };
    let magic = &blk[257..263];
    let version = &blk[263..265];
    let ustar = magic == b"ustar\0";
    let star = ustar && &blk[508..512] == b"tar\0";
    let gnu = magic == b"ustar " && version == b" \0";
    let mut name = cut_nul(&blk[..100]).to_vec();
    let prefix: &[u8] = if star {
        cut_nul(&blk[345..476])
    } else if ustar {
        cut_nul(&blk[345..500])
    } else if gnu && gnu_times_unreadable(blk) {
        // Go before 1.8 wrote a ustar prefix into GNU headers (golang.org/
        // issue/12594); Go reads it back when the time fields cannot be
        // numbers and the bytes are text.
        let p = cut_nul(&blk[345..500]);
        if p.is_ascii() { p } else { b"" }
    } else {
        b""
    };
    if !prefix.is_empty() {
        let mut full = prefix.to_vec();
        full.push(b'/');
        full.extend_from_slice(&name);
        name = full;
    }
    Ok(Raw {
        name,
        link: cut_nul(&blk[157..257]).to_vec(),
        typeflag: blk[156],
        mode: num(100..108, "mode")?,
        uid: num(108..116, "uid")?,
        gid: num(116..124, "gid")?,
        size: num(124..136, "size")?,
        mtime: num(136..148, "mtime")?,
        gnu,
        v7: !ustar && !gnu,
    })
}

fn gnu_times_unreadable(blk: &[u8; 512]) -> bool {
    [&blk[345..357], &blk[357..369]]
        .iter()
        .any(|f| f[0] != 0 && parse_numeric(f).is_none())
}

/// One PAX record list, in order (0.0 sparse maps repeat their keys).
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Parse `LEN key=value\n` records, each read by its length prefix: values
/// may hold newlines, NULs and `=`. `base` is the stream offset of `data`.
fn parse_pax(data: &[u8], base: u64) -> std::result::Result<Records, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        let bad = |why: &str| format!("malformed PAX record at offset {}: {why}", base + at as u64);
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || rest.get(digits) != Some(&b' ') {
            return Err(bad("no `LEN ` prefix"));
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad length"))?;
        if len > rest.len() {
            return Err(bad(&format!(
                "length {len} runs past the header ({} bytes left)",
                rest.len()
            )));
        }
        // The shortest record is "N k=\n".
        if len < digits + 4 {
            return Err(bad(&format!("length {len} is too short")));
        }
        let record = &rest[..len];
        if record[len - 1] != b'\n' {
            return Err(bad("the record does not end with a newline"));
        }
        let body = &record[digits + 1..len - 1];
        let eq = body
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad("no `=` after the key"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        if key.is_empty() || key.contains(&0) {
            return Err(bad("empty key or NUL in the key"));
        }
        out.push((key.to_vec(), value.to_vec()));
        at += len;
    }
    Ok(out)
}

/// A PAX time: decimal seconds with an optional fraction (up to 9 digits
/// kept); negative times count down from the whole second.
pub(crate) fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut nsec: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if s.starts_with('-') && nsec > 0 {
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Keys that describe a single member: ignored in global headers.
fn member_only(key: &[u8]) -> bool {
    matches!(key, b"path" | b"linkpath" | b"size") || key.starts_with(b"GNU.sparse.")
}

/// Check a sparse map against the logical size and the stored bytes.
fn check_map(map: &[Segment], size: u64, stored: u64) -> std::result::Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for s in map {
        let seg_end = s
            .offset
            .checked_add(s.len)
            .ok_or("sparse map entry overflows")?;
        if s.offset < end {
            return Err(format!(
                "sparse map entries overlap or are out of order at offset {}",
                s.offset
            ));
        }
        if seg_end > size {
            return Err(format!(
                "sparse map entry {}+{} lies past the file size {size}",
                s.offset, s.len
            ));
        }
        end = seg_end;
        total += s.len;
    }
    if total != stored {
        return Err(format!(
            "sparse map covers {total} bytes but the entry stores {stored}"
        ));
    }
    Ok(())
}

/// What the PAX records say about a sparse file.
#[derive(Debug, PartialEq, Eq)]
struct PaxSparse {
    /// Format 1.0: the map is at the start of the data.
    map_in_data: bool,
    /// The map of formats 0.0 and 0.1.
    map: Vec<Segment>,
    real_size: Option<u64>,
    real_name: Option<Vec<u8>>,
}

/// GNU sparse PAX records (formats 0.0, 0.1 and 1.0), if any.
fn pax_sparse(
    pax: &BTreeMap<Vec<u8>, Vec<u8>>,
    local: &Records,
) -> std::result::Result<Option<PaxSparse>, String> {
    let get = |k: &str| pax.get(k.as_bytes()).map(Vec::as_slice);
    let lossy = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let number = |v: &[u8], what: &str| {
        decimal(v)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("bad {what} {:?}", lossy(v)))
    };
    // 0.0 repeats offset/numbytes records, in pairs.
    let pairs: Vec<(&[u8], &[u8])> = local
        .iter()
        .filter(|(k, _)| k == b"GNU.sparse.offset" || k == b"GNU.sparse.numbytes")
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let map_in_data = match (get("GNU.sparse.major"), get("GNU.sparse.minor")) {
        (Some(b"1"), Some(b"0")) => true,
        (Some(b"0"), Some(b"0" | b"1")) => false,
        (None, None) if get("GNU.sparse.map").is_some() || !pairs.is_empty() => false,
        (None, None) => return Ok(None),
        (major, minor) => {
            return Err(format!(
                "GNU sparse format {}.{} is not supported (0.0, 0.1 and 1.0 are)",
                lossy(major.unwrap_or(b"")),
                lossy(minor.unwrap_or(b""))
            ));
        }
    };
    let real_size = match get("GNU.sparse.size").or(get("GNU.sparse.realsize")) {
        Some(v) => Some(number(v, "GNU.sparse size")?),
        None => None,
    };
    let real_name = get("GNU.sparse.name").map(<[u8]>::to_vec);
    let mut map = Vec::new();
    if !map_in_data {
        let list: Vec<&[u8]> = if !pairs.is_empty() {
            for (i, (k, _)) in pairs.iter().enumerate() {
                let want: &[u8] = if i % 2 == 0 {
                    b"GNU.sparse.offset"
                } else {
                    b"GNU.sparse.numbytes"
                };
                if *k != want {
                    return Err("GNU.sparse.offset and numbytes records out of order".into());
                }
            }
            pairs.iter().map(|(_, v)| *v).collect()
        } else {
            match get("GNU.sparse.map") {
                Some(m) => m.split(|&c| c == b',').collect(),
                None => Vec::new(),
            }
        };
        let count = get("GNU.sparse.numblocks").ok_or("GNU.sparse.numblocks is missing")?;
        let count = number(count, "GNU.sparse.numblocks")?;
        if !list.len().is_multiple_of(2) || list.len() as u64 / 2 != count {
            return Err(format!(
                "GNU.sparse.numblocks is {count} but the map has {} numbers",
                list.len()
            ));
        }
        if list.len() / 2 > MAX_SPARSE_ENTRIES {
            return Err(format!(
                "sparse map longer than {MAX_SPARSE_ENTRIES} entries"
            ));
        }
        for pair in list.chunks_exact(2) {
            map.push(Segment {
                offset: number(pair[0], "sparse offset")?,
                len: number(pair[1], "sparse length")?,
            });
        }
    }
    Ok(Some(PaxSparse {
        map_in_data,
        map,
        real_size,
        real_name,
    }))
}

impl<R: Read> TarReader<R> {
    /// `layer` (the digest) and `what` (a description) name the layer in
    /// errors.
    pub fn new(inner: R, layer: impl Into<String>, what: impl Into<String>) -> Self {
        TarReader {
            inner,
            pos: 0,
            layer: layer.into(),
            what: what.into(),
            globals: BTreeMap::new(),
            cur: Current::default(),
            done: false,
        }
    }

    /// The offset in the stream the reader has reached.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader, positioned after the end-of-archive marker
    /// (or wherever reading stopped): what follows is the caller's.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn bad(&self, entry: &[u8], reason: String) -> Error {
        Error::UnsafeEntry {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason,
        }
    }

    fn io_err(&self, e: io::Error) -> Error {
        unwrap_io(e, || format!("reading {}", self.what))
    }

    fn truncated(&self, inside: String) -> Error {
        Error::io(
            format!("reading {}", self.what),
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "truncated tar stream: it ends inside {inside} (offset {})",
                    self.pos
                ),
            ),
        )
    }

    /// Read until `buf` is full or EOF; returns how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.pos += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Skip `n` bytes; false when the stream ended first.
    fn skip(&mut self, n: u64) -> io::Result<bool> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += copied;
        Ok(copied == n)
    }

    /// A whole block, `None` at EOF on the block boundary.
    fn block(&mut self, inside: &dyn Fn() -> String) -> Result<Option<[u8; 512]>> {
        let mut blk = [0u8; 512];
        match self.fill(&mut blk).map_err(|e| self.io_err(e))? {
            0 => Ok(None),
            512 => Ok(Some(blk)),
            _ => Err(self.truncated(inside())),
        }
    }

    /// Read an extension header's data (capped) and its padding.
    fn extension(&mut self, raw: &Raw, pos: u64) -> Result<Vec<u8>> {
        let size = raw.size as u64;
        if size > MAX_EXTENSION {
            return Err(self.bad(
                &raw.name,
                format!(
                    "extension header of {size} bytes at offset {pos} (the limit is {MAX_EXTENSION})"
                ),
            ));
        }
        let mut data = vec![0u8; size as usize];
        let n = self.fill(&mut data).map_err(|e| self.io_err(e))?;
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        if n < data.len() || !self.skip(pad).map_err(|e| self.io_err(e))? {
            return Err(self.truncated(format!(
                "extension header {:?}",
                String::from_utf8_lossy(&raw.name)
            )));
        }
        Ok(data)
    }

    /// Skip what is left of the previous entry's data and padding.
    fn skip_rest(&mut self) -> Result<()> {
        let n = self.cur.left + self.cur.pad;
        if n > 0 {
            let ok = self.skip(n).map_err(|e| self.io_err(e))?;
            self.cur.left = 0;
            self.cur.pad = 0;
            if !ok {
                let name = String::from_utf8_lossy(&self.cur.name).into_owned();
                return Err(self.truncated(format!("the data of {name:?}")));
            }
        }
        self.cur.sparse = None;
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut local: Option<Records> = None;
        // The first extension header of the pending entry, for errors.
        let mut pending: Option<(Vec<u8>, u64)> = None;
        loop {
            let header_pos = self.pos;
            let blk = self.block(&|| "a header block".into())?;
            let blk = match blk {
                Some(b) if b.iter().any(|&c| c != 0) => b,
                Some(_) => {
                    // One zero block: the end if EOF or a second one follows.
                    match self.block(&|| "the end-of-archive marker".into())? {
                        Some(b) if b.iter().any(|&c| c != 0) => {
                            return Err(self.bad(
                                cut_nul(&b[..100]),
                                format!(
                                    "a header at offset {} follows a zero block \
                                     (a single zero block is not an end of archive)",
                                    self.pos - BLOCK
                                ),
                            ));
                        }
                        _ => {}
                    }
                    return self.end(pending);
                }
                None => return self.end(pending),
            };
            let raw = parse_header(&blk).map_err(|r| {
                self.bad(
                    cut_nul(&blk[..100]),
                    format!("{r} in the header at offset {header_pos}"),
                )
            })?;
            if raw.size < 0 {
                return Err(self.bad(
                    &raw.name,
                    format!("negative size in the header at offset {header_pos}"),
                ));
            }
            let twice = |what: &str| {
                self.bad(
                    &raw.name,
                    format!("a second {what} for the same entry at offset {header_pos}"),
                )
            };
            match raw.typeflag {
                b'x' => {
                    if local.is_some() {
                        return Err(twice("PAX header"));
                    }
                    let data = self.extension(&raw, header_pos)?;
                    let records =
                        parse_pax(&data, header_pos + BLOCK).map_err(|r| self.bad(&raw.name, r))?;
                    local = Some(records);
                    pending.get_or_insert((raw.name, header_pos));
                }
                b'g' => {
                    let data = self.extension(&raw, header_pos)?;
                    let records =
                        parse_pax(&data, header_pos + BLOCK).map_err(|r| self.bad(&raw.name, r))?;
                    for (k, v) in records {
                        if member_only(&k) {
                            continue;
                        }
                        if v.is_empty() {
                            self.globals.remove(&k);
                        } else {
                            self.globals.insert(k, v);
                        }
                    }
                }
                b'L' | b'K' => {
                    let slot = if raw.typeflag == b'L' {
                        &long_name
                    } else {
                        &long_link
                    };
                    if slot.is_some() {
                        return Err(twice("GNU long name header"));
                    }
                    let data = self.extension(&raw, header_pos)?;
                    let value = cut_nul(&data).to_vec();
                    if raw.typeflag == b'L' {
                        long_name = Some(value);
                    } else {
                        long_link = Some(value);
                    }
                    pending.get_or_insert((raw.name, header_pos));
                }
                _ => {
                    let header = self.member(raw, &blk, header_pos, long_name, long_link, local)?;
                    return Ok(Some(Entry {
                        header,
                        reader: self,
                    }));
                }
            }
        }
    }

    fn end(&mut self, pending: Option<(Vec<u8>, u64)>) -> Result<Option<Entry<'_, R>>> {
        self.done = true;
        match pending {
            Some((name, pos)) => Err(self.bad(
                &name,
                format!(
                    "the extension header at offset {pos} describes no entry: the archive ends"
                ),
            )),
            None => Ok(None),
        }
    }

    /// Build a member's header from its block and extensions, and set up
    /// the reading of its data.
    fn member(
        &mut self,
        raw: Raw,
        blk: &[u8; 512],
        header_pos: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        local: Option<Records>,
    ) -> Result<Header> {
        let local = local.unwrap_or_default();
        // Global records first, the entry's own on top; an empty local value
        // unsets the key (the header's value stands).
        let mut pax = self.globals.clone();
        for (k, v) in &local {
            pax.insert(k.clone(), v.clone());
        }
        pax.retain(|_, v| !v.is_empty());
        let get = |k: &str| pax.get(k.as_bytes()).map(Vec::as_slice);
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();

        let mut path = raw.name.clone();
        if let Some(p) = get("path") {
            path = p.to_vec();
        }
        if let Some(n) = long_name {
            path = n;
        }
        let mut link_name = raw.link.clone();
        if let Some(l) = get("linkpath") {
            link_name = l.to_vec();
        }
        if let Some(l) = long_link {
            link_name = l;
        }
        let at = |reason: String| format!("{reason} (header at offset {header_pos})");
        let nonneg = |v: i64, what: &str| {
            u64::try_from(v).map_err(|_| self.bad(&path, at(format!("negative {what}"))))
        };
        let mode = nonneg(raw.mode, "mode")? as u32;
        let mut uid = nonneg(raw.uid, "uid")?;
        let mut gid = nonneg(raw.gid, "gid")?;
        let mut size = raw.size as u64;
        let mut mtime = raw.mtime;
        let mut mtime_nsec = 0;
        if let Some(v) = get("uid") {
            uid = decimal(v)
                .ok_or_else(|| self.bad(&path, at(format!("bad PAX uid {:?}", text(v)))))?;
        }
        if let Some(v) = get("gid") {
            gid = decimal(v)
                .ok_or_else(|| self.bad(&path, at(format!("bad PAX gid {:?}", text(v)))))?;
        }
        if let Some(v) = get("mtime") {
            (mtime, mtime_nsec) = std::str::from_utf8(v)
                .ok()
                .and_then(parse_pax_time)
                .ok_or_else(|| self.bad(&path, at(format!("bad PAX mtime {:?}", text(v)))))?;
        }
        if let Some(v) = get("size") {
            size = decimal(v)
                .filter(|&s| s <= i64::MAX as u64)
                .ok_or_else(|| self.bad(&path, at(format!("bad PAX size {:?}", text(v)))))?;
        }
        let mut xattrs = BTreeMap::new();
        let mut libarchive = BTreeMap::new();
        for (k, v) in &pax {
            if let Some(name) = k.strip_prefix(SCHILY_XATTR) {
                if let Ok(name) = std::str::from_utf8(name) {
                    xattrs.insert(name.to_string(), v.clone());
                }
            } else if let Some(name) = k.strip_prefix(LIBARCHIVE_XATTR) {
                use base64::Engine;
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                let name = percent_decode(name);
                let value = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(v.strip_suffix(b"=").unwrap_or(v))
                    .or_else(|_| base64::engine::general_purpose::STANDARD.decode(v))
                    .map_err(|_| {
                        self.bad(&path, at(format!("bad LIBARCHIVE.xattr value for {name}")))
                    })?;
                libarchive.insert(name, value);
            }
        }
        // SCHILY is what Go, GNU tar and docker write; LIBARCHIVE only adds
        // names it lacks.
        for (k, v) in libarchive {
            xattrs.entry(k).or_insert(v);
        }

        let mut entry_type = EntryType::from_flag(raw.typeflag);
        if raw.typeflag == 0 && path.ends_with(b"/") {
            // Old archives mark directories by a trailing slash only.
            entry_type = EntryType::Directory;
        }
        let (mut dev_major, mut dev_minor) = (0, 0);
        if matches!(entry_type, EntryType::Char | EntryType::Block) && !raw.v7 {
            let dev = |range: std::ops::Range<usize>, what: &str| {
                parse_numeric(&blk[range])
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| self.bad(&path, at(format!("bad device {what} number"))))
            };
            dev_major = dev(329..337, "major")?;
            dev_minor = dev(337..345, "minor")?;
        }

        // The stored bytes; types without data have none whatever they say.
        let stored = if entry_type.header_only() { 0 } else { size };
        self.cur = Current {
            left: stored,
            pad: (BLOCK - stored % BLOCK) % BLOCK,
            sparse: None,
            name: path.clone(),
        };

        let sparse = if raw.typeflag == b'S' {
            if !raw.gnu {
                return Err(self.bad(
                    &path,
                    at("old GNU sparse entry without a GNU header".into()),
                ));
            }
            let real = parse_numeric(&blk[483..495])
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| self.bad(&path, at("bad sparse real size".into())))?;
            Some((self.old_gnu_map(blk, &path, header_pos)?, real))
        } else if let Some(ps) = pax_sparse(&pax, &local).map_err(|r| self.bad(&path, at(r)))? {
            if entry_type != EntryType::Regular {
                return Err(self.bad(
                    &path,
                    at("a sparse map on an entry that is not a regular file".into()),
                ));
            }
            let map = if ps.map_in_data {
                self.sparse_map_1_0(&path, header_pos)?
            } else {
                ps.map
            };
            if let Some(n) = ps.real_name {
                path = n;
                self.cur.name = path.clone();
            }
            Some((map, ps.real_size.unwrap_or(size)))
        } else {
            None
        };
        let is_sparse = sparse.is_some();
        let logical = match sparse {
            Some((map, real)) => {
                check_map(&map, real, self.cur.left).map_err(|r| self.bad(&path, at(r)))?;
                self.cur.sparse = Some(Sparse {
                    map,
                    next: 0,
                    pos: 0,
                    size: real,
                });
                real
            }
            None => stored,
        };
        Ok(Header {
            header_pos,
            typeflag: raw.typeflag,
            entry_type,
            path,
            link_name,
            size: logical,
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            dev_major,
            dev_minor,
            xattrs,
            sparse: is_sparse,
        })
    }

    /// The old GNU sparse map: four slots in the header, then 21 per
    /// extension block while the "extended" flag is set. A slot whose
    /// offset starts with NUL ends the list (as GNU tar reads it).
    fn old_gnu_map(&mut self, blk: &[u8; 512], name: &[u8], pos: u64) -> Result<Vec<Segment>> {
        let mut map = Vec::new();
        let mut slots: &[u8] = &blk[386..482];
        let mut extended = blk[482] != 0;
        let mut ext;
        loop {
            for slot in slots.chunks_exact(24) {
                if slot[0] == 0 {
                    break;
                }
                let field = |f: &[u8]| parse_numeric(f).and_then(|v| u64::try_from(v).ok());
                let (Some(offset), Some(len)) = (field(&slot[..12]), field(&slot[12..24])) else {
                    return Err(self.bad(
                        name,
                        format!("bad old GNU sparse map entry (header at offset {pos})"),
                    ));
                };
                if map.len() == MAX_SPARSE_ENTRIES {
                    return Err(self.bad(
                        name,
                        format!("sparse map longer than {MAX_SPARSE_ENTRIES} entries"),
                    ));
                }
                map.push(Segment { offset, len });
            }
            if !extended {
                return Ok(map);
            }
            let lossy = String::from_utf8_lossy(name).into_owned();
            ext = self
                .block(&|| format!("the sparse map of {lossy:?}"))?
                .ok_or_else(|| self.truncated(format!("the sparse map of {lossy:?}")))?;
            slots = &ext[..504];
            extended = ext[504] != 0;
        }
    }

    /// The 1.0 map at the start of the data: decimal numbers, one per line
    /// (the count, then offset and length pairs), padded to a block.
    fn sparse_map_1_0(&mut self, name: &[u8], pos: u64) -> Result<Vec<Segment>> {
        let lossy = String::from_utf8_lossy(name).into_owned();
        let bad = |this: &Self, why: String| {
            this.bad(
                name,
                format!("bad GNU sparse 1.0 map: {why} (header at offset {pos})"),
            )
        };
        let mut text: Vec<u8> = Vec::new();
        let mut start = 0usize; // start of the next unread number in `text`
        let mut numbers: Vec<u64> = Vec::new();
        let mut wanted: Option<u64> = None;
        loop {
            // Numbers complete so far.
            while let Some(nl) = text[start..].iter().position(|&c| c == b'\n') {
                let tok = &text[start..start + nl];
                let n = decimal(tok)
                    .filter(|&n| n <= i64::MAX as u64)
                    .ok_or_else(|| {
                        bad(
                            self,
                            format!("{:?} is not a number", String::from_utf8_lossy(tok)),
                        )
                    })?;
                start += nl + 1;
                if wanted.is_none() {
                    if n > MAX_SPARSE_ENTRIES as u64 {
                        return Err(bad(
                            self,
                            format!("{n} entries (the limit is {MAX_SPARSE_ENTRIES})"),
                        ));
                    }
                    wanted = Some(2 * n);
                } else {
                    numbers.push(n);
                }
                if wanted == Some(numbers.len() as u64) {
                    let map = numbers
                        .chunks_exact(2)
                        .map(|p| Segment {
                            offset: p[0],
                            len: p[1],
                        })
                        .collect();
                    return Ok(map);
                }
            }
            // Another block of map, taken out of the stored data.
            if self.cur.left < BLOCK {
                return Err(bad(self, "the map runs past the entry's data".into()));
            }
            if start > 64 {
                // Keep only the unfinished number: the buffer stays small.
                text.drain(..start);
                start = 0;
            }
            if text.len() - start > 64 {
                return Err(bad(self, "a number longer than 64 characters".into()));
            }
            let blk = self
                .block(&|| format!("the sparse map of {lossy:?}"))?
                .ok_or_else(|| self.truncated(format!("the sparse map of {lossy:?}")))?;
            self.cur.left -= BLOCK;
            text.extend_from_slice(&blk);
        }
    }

    /// Read stored bytes of the current entry.
    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.cur.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                // Callers may add only the file's path: name the layer here.
                format!(
                    "truncated tar stream in {}: it ends inside the data of {:?} \
                     ({} bytes missing at offset {})",
                    self.what,
                    String::from_utf8_lossy(&self.cur.name),
                    self.cur.left,
                    self.pos
                ),
            ));
        }
        self.pos += n as u64;
        self.cur.left -= n as u64;
        Ok(n)
    }

    /// Read the current entry's logical data: stored bytes, and zeros for
    /// the holes of a sparse file.
    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        enum Step {
            Data(usize),
            Hole(usize),
            End,
        }
        let step = match &mut self.cur.sparse {
            None => return self.read_stored(buf),
            Some(sp) => {
                while sp
                    .map
                    .get(sp.next)
                    .is_some_and(|s| s.offset + s.len <= sp.pos)
                {
                    sp.next += 1;
                }
                let room = buf.len() as u64;
                match sp.map.get(sp.next) {
                    _ if sp.pos >= sp.size || buf.is_empty() => Step::End,
                    Some(s) if sp.pos >= s.offset => {
                        Step::Data((s.offset + s.len - sp.pos).min(room) as usize)
                    }
                    Some(s) => Step::Hole((s.offset - sp.pos).min(room) as usize),
                    None => Step::Hole((sp.size - sp.pos).min(room) as usize),
                }
            }
        };
        let n = match step {
            Step::End => return Ok(0),
            Step::Data(n) => self.read_stored(&mut buf[..n])?,
            Step::Hole(n) => {
                buf[..n].fill(0);
                n
            }
        };
        if let Some(sp) = &mut self.cur.sparse {
            sp.pos += n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "sha256:test";

    fn octal(blk: &mut [u8; 512], range: std::ops::Range<usize>, v: u64) {
        let width = range.len() - 1;
        let s = format!("{v:0width$o}");
        blk[range.start..range.start + width].copy_from_slice(s.as_bytes());
        blk[range.end - 1] = 0;
    }

    fn checksum(blk: &mut [u8; 512]) {
        blk[148..156].fill(b' ');
        let sum: u64 = blk.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        blk[148..156].copy_from_slice(s.as_bytes());
    }

    /// A ustar header (unchecksummed: call `checksum` after edits).
    fn raw_ustar(name: &[u8], flag: u8, size: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name);
        octal(&mut b, 100..108, 0o644);
        octal(&mut b, 108..116, 0);
        octal(&mut b, 116..124, 0);
        octal(&mut b, 124..136, size);
        octal(&mut b, 136..148, 1_700_000_000);
        b[156] = flag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b
    }

    fn ustar(name: &[u8], flag: u8, size: u64) -> [u8; 512] {
        let mut b = raw_ustar(name, flag, size);
        checksum(&mut b);
        b
    }

    fn gnu(name: &[u8], flag: u8, size: u64) -> [u8; 512] {
        let mut b = raw_ustar(name, flag, size);
        b[257..263].copy_from_slice(b"ustar ");
        b[263..265].copy_from_slice(b" \0");
        checksum(&mut b);
        b
    }

    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(512) {
            v.push(0);
        }
    }

    /// Append a header and its data, padded.
    fn put(out: &mut Vec<u8>, h: [u8; 512], data: &[u8]) {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        pad(out);
    }

    fn record(k: &[u8], v: &[u8]) -> Vec<u8> {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len.to_string().len() + body != len {
            len = len.to_string().len() + body;
        }
        let mut r = format!("{len} ").into_bytes();
        r.extend_from_slice(k);
        r.push(b'=');
        r.extend_from_slice(v);
        r.push(b'\n');
        r
    }

    fn records(recs: &[(&str, &[u8])]) -> Vec<u8> {
        recs.iter()
            .flat_map(|(k, v)| record(k.as_bytes(), v))
            .collect()
    }

    fn put_pax(out: &mut Vec<u8>, flag: u8, data: &[u8]) {
        put(out, ustar(b"PaxHeaders/x", flag, data.len() as u64), data);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    /// Every entry with its data, read to the end.
    fn read_all(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>> {
        let mut r = TarReader::new(bytes, LAYER, "test layer");
        let mut out = Vec::new();
        while let Some(mut e) = r.next_entry()? {
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|e| Error::io("test".to_string(), e))?;
            assert_eq!(data.len() as u64, e.header.size, "{:?}", e.header.path);
            out.push((e.header.clone(), data));
        }
        Ok(out)
    }

    fn error(bytes: &[u8]) -> String {
        match read_all(bytes) {
            Ok(v) => panic!(
                "accepted: {:?}",
                v.iter().map(|e| &e.0.path).collect::<Vec<_>>()
            ),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"  644 \0\0"), Some(0o644));
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(b"        "), Some(0));
        assert_eq!(parse_numeric(b"0000648\0"), None);
        assert_eq!(parse_numeric(b"+000644\0"), None);
        assert_eq!(parse_numeric(b"6 44\0\0\0\0"), None);
        // Base-256: the high bit marks it, big-endian two's complement.
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00]), Some(256));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_numeric(&big), Some(1 << 40));
        assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
        assert_eq!(
            parse_numeric(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Some(-2)
        );
        // 12 bytes can hold more than 63 bits: refused, not wrapped.
        let mut over = [0u8; 12];
        over[0] = 0x80;
        over[3] = 0x80;
        assert_eq!(parse_numeric(&over), None);
        assert_eq!(
            parse_numeric(&[0x80, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn base256_uid_and_size() {
        let data = vec![7u8; 600];
        let mut h = raw_ustar(b"big-ids", b'0', 0);
        h[108..116].copy_from_slice(&[0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
        h[116] = 0x80;
        h[117..124].copy_from_slice(&[0, 0, 0, 0, 0x01, 0x00, 0x00]);
        h[124..136].fill(0);
        h[124] = 0x80;
        h[134..136].copy_from_slice(&600u16.to_be_bytes());
        checksum(&mut h);
        let mut out = Vec::new();
        put(&mut out, h, &data);
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!(e[0].0.uid, 0x7fff_ffff);
        assert_eq!(e[0].0.gid, 0x1_0000);
        assert_eq!(e[0].1, data);
        // A negative uid is refused.
        let mut h = raw_ustar(b"neg", b'0', 0);
        h[108..116].fill(0xff);
        checksum(&mut h);
        let mut out = Vec::new();
        put(&mut out, h, b"");
        assert!(error(&out).contains("negative uid"));
    }

    #[test]
    fn ustar_prefix_star_prefix_and_gnu_without_prefix() {
        let mut h = raw_ustar(b"name", b'0', 0);
        h[345..351].copy_from_slice(b"a/pref");
        checksum(&mut h);
        let mut out = Vec::new();
        put(&mut out, h, b"");
        // star: a shorter prefix and the "tar\0" trailer.
        let mut s = raw_ustar(b"n2", b'0', 0);
        s[345..349].copy_from_slice(b"star");
        s[476..488].copy_from_slice(b"00000000000\0");
        s[508..512].copy_from_slice(b"tar\0");
        checksum(&mut s);
        put(&mut out, s, b"");
        // GNU headers hold times there, not a prefix.
        let mut g = gnu(b"n3", b'0', 0);
        g[345..357].copy_from_slice(b"14000000000\0");
        checksum(&mut g);
        put(&mut out, g, b"");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!(e[0].0.path, b"a/pref/name");
        assert_eq!(e[1].0.path, b"star/n2");
        assert_eq!(e[2].0.path, b"n3");
    }

    #[test]
    fn gnu_header_with_a_go_1_7_prefix() {
        // Go before 1.8 wrote a ustar prefix into GNU headers.
        let mut g = raw_ustar(b"name", b'0', 0);
        g[257..263].copy_from_slice(b"ustar ");
        g[263..265].copy_from_slice(b" \0");
        g[345..354].copy_from_slice(b"long/pref");
        checksum(&mut g);
        let mut out = Vec::new();
        put(&mut out, g, b"");
        end(&mut out);
        assert_eq!(read_all(&out).unwrap()[0].0.path, b"long/pref/name");
    }

    #[test]
    fn v7_headers() {
        let mut h = [0u8; 512];
        h[..4].copy_from_slice(b"dir/");
        octal(&mut h, 100..108, 0o755);
        octal(&mut h, 108..116, 5);
        octal(&mut h, 116..124, 6);
        octal(&mut h, 124..136, 0);
        octal(&mut h, 136..148, 12345);
        // No magic; a NUL type flag and a trailing slash: a directory.
        checksum(&mut h);
        let mut f = h;
        f[..4].copy_from_slice(b"file");
        octal(&mut f, 124..136, 3);
        checksum(&mut f);
        let mut out = Vec::new();
        put(&mut out, h, b"");
        put(&mut out, f, b"abc");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!(e[0].0.entry_type, EntryType::Directory);
        assert_eq!((e[0].0.uid, e[0].0.gid, e[0].0.mode), (5, 6, 0o755));
        assert_eq!(e[0].0.mtime, 12345);
        assert_eq!(e[1].0.entry_type, EntryType::Regular);
        assert_eq!(e[1].1, b"abc");
    }

    #[test]
    fn checksums() {
        let mut out = Vec::new();
        let mut h = ustar(b"f", b'0', 0);
        h[0] = b'g'; // changed after the checksum
        put(&mut out, h, b"");
        end(&mut out);
        let msg = error(&out);
        assert!(
            msg.contains("checksum mismatch") && msg.contains("offset 0"),
            "{msg}"
        );
        assert!(msg.contains(LAYER), "{msg}");

        // The signed sum (old writers with high bytes) is accepted too.
        let mut h = raw_ustar("é".as_bytes(), b'0', 0);
        h[148..156].fill(b' ');
        let signed: i64 = h.iter().map(|&b| i64::from(b as i8)).sum();
        h[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        let mut out = Vec::new();
        put(&mut out, h, b"");
        end(&mut out);
        assert_eq!(read_all(&out).unwrap()[0].0.path, "é".as_bytes());
    }

    #[test]
    fn gnu_long_names_and_precedence() {
        let long = vec![b'n'; 300];
        let target = vec![b't'; 200];
        let mut out = Vec::new();
        let mut name = long.clone();
        name.extend_from_slice(b"\0junk");
        put(
            &mut out,
            gnu(b"././@LongLink", b'L', name.len() as u64),
            &name,
        );
        put(
            &mut out,
            gnu(b"././@LongLink", b'K', target.len() as u64 + 1),
            &[&target[..], b"\0"].concat(),
        );
        put(&mut out, gnu(b"short", b'2', 0), b"");
        // PAX path over the header; a GNU long name over PAX (Go's order).
        put_pax(&mut out, b'x', &records(&[("path", b"from-pax")]));
        put(&mut out, gnu(b"from-header", b'0', 0), b"");
        put_pax(
            &mut out,
            b'x',
            &records(&[("path", b"from-pax"), ("linkpath", b"pax-target")]),
        );
        put(&mut out, gnu(b"././@LongLink", b'L', 9), b"from-gnu\0");
        put(&mut out, gnu(b"from-header", b'1', 0), b"");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!(e[0].0.path, long, "cut at the first NUL");
        assert_eq!(e[0].0.link_name, target);
        assert_eq!(e[1].0.path, b"from-pax");
        assert_eq!(e[2].0.path, b"from-gnu");
        assert_eq!(e[2].0.link_name, b"pax-target");
        assert_eq!(e[2].0.entry_type, EntryType::Link);
    }

    #[test]
    fn pax_values_hold_newlines_nuls_and_equals() {
        // cap_dac_override,cap_fowner+ep: the permitted mask is 0x0a.
        let mut cap = Vec::new();
        cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        cap.extend_from_slice(&0x0au32.to_le_bytes());
        cap.extend_from_slice(&[0u8; 12]);
        let binary = b"a\nb\0c\n\n=d=\0";
        let data = records(&[
            ("SCHILY.xattr.security.capability", &cap),
            ("SCHILY.xattr.user.bin", binary),
            ("path", b"dir/new\nline"),
            ("SCHILY.xattr.user.eq", b"k=v=w"),
            ("uid", b"3000000"),
            ("gid", b"42"),
            ("mtime", b"1600000000.123456789"),
            ("comment", b"unknown keys are ignored\n"),
            ("LIBARCHIVE.xattr.user.l%41b", b"aGVsbG8"),
            ("LIBARCHIVE.xattr.user.bin", b"b3RoZXI="),
        ]);
        let mut out = Vec::new();
        put_pax(&mut out, b'x', &data);
        put(&mut out, ustar(b"placeholder", b'0', 2), b"hi");
        end(&mut out);
        let e = read_all(&out).unwrap();
        let h = &e[0].0;
        assert_eq!(h.path, b"dir/new\nline");
        assert_eq!(h.xattrs["security.capability"], cap);
        assert_eq!(h.xattrs["user.bin"], binary, "SCHILY wins over LIBARCHIVE");
        assert_eq!(h.xattrs["user.eq"], b"k=v=w");
        assert_eq!(h.xattrs["user.lAb"], b"hello");
        assert_eq!((h.uid, h.gid), (3_000_000, 42));
        assert_eq!((h.mtime, h.mtime_nsec), (1_600_000_000, 123_456_789));
        assert_eq!(e[0].1, b"hi");
    }

    #[test]
    fn pax_size_overrides_the_header_and_empty_values_fall_back() {
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &records(&[("size", b"5"), ("uid", b""), ("path", b"")]),
        );
        let mut h = raw_ustar(b"f", b'0', 0);
        octal(&mut h, 108..116, 9);
        checksum(&mut h);
        put(&mut out, h, b"12345");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!((e[0].0.path.as_slice(), e[0].0.uid), (&b"f"[..], 9));
        assert_eq!(e[0].1, b"12345");
    }

    #[test]
    fn pax_record_edge_cases() {
        let ok = |d: &[u8]| parse_pax(d, 0);
        assert_eq!(ok(b"").unwrap(), vec![]);
        assert_eq!(
            ok(b"6 k=v\n").unwrap(),
            vec![(b"k".to_vec(), b"v".to_vec())]
        );
        assert_eq!(ok(b"5 k=\n").unwrap(), vec![(b"k".to_vec(), vec![])]);
        assert_eq!(ok(b"008 k=v\n").unwrap().len(), 1, "leading zeros");
        // A length that counts a newline inside the value.
        assert_eq!(ok(b"8 k=a\nb\n").unwrap()[0].1, b"a\nb");
        for (bad, why) in [
            (&b"k=v\n"[..], "LEN"),
            (b"6k=v\n", "LEN"),
            (b"x6 k=v\n", "LEN"),
            (b"7 k=v\n", "runs past"),
            (b"3 k\n", "too short"),
            (b"6 k=vv", "newline"),
            (b"6 kv\n\n", "no `=`"),
            (b"6 =vv\n", "empty key"),
            (b"6 \0=v\n", "NUL in the key"),
            (b"6 k=v\n\0\0\0", "LEN"),
            (b"99999999999999999999 k=v\n", "LEN"),
        ] {
            let e = ok(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = parse_pax(b"6 k=v\n7 k=v\n", 1024).unwrap_err();
        assert!(e.contains("at offset 1030"), "{e}");
    }

    #[test]
    fn malformed_records_name_layer_entry_and_offset() {
        let mut out = Vec::new();
        put(&mut out, ustar(b"first", b'0', 0), b"");
        put(
            &mut out,
            ustar(b"PaxHeaders/f", b'x', 12),
            b"6 k=v\n9 k=v\n",
        );
        put(&mut out, ustar(b"f", b'0', 0), b"");
        end(&mut out);
        let e = read_all(&out).unwrap_err();
        assert!(matches!(e, Error::UnsafeEntry { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(LAYER) && msg.contains("PaxHeaders/f") && msg.contains("offset 1030"),
            "{msg}"
        );
        // A bad value of a known key names the entry.
        let mut out = Vec::new();
        put_pax(&mut out, b'x', &records(&[("mtime", b"1.5x")]));
        put(&mut out, ustar(b"victim", b'0', 0), b"");
        end(&mut out);
        let msg = error(&out);
        assert!(
            msg.contains("victim") && msg.contains("bad PAX mtime"),
            "{msg}"
        );
        for (k, v) in [("uid", &b"-1"[..]), ("gid", b"x"), ("size", b"1e3")] {
            let mut out = Vec::new();
            put_pax(&mut out, b'x', &records(&[(k, v)]));
            put(&mut out, ustar(b"victim", b'0', 0), b"");
            end(&mut out);
            assert!(error(&out).contains(&format!("bad PAX {k}")));
        }
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &records(&[("LIBARCHIVE.xattr.user.x", b"!!")]),
        );
        put(&mut out, ustar(b"victim", b'0', 0), b"");
        end(&mut out);
        assert!(error(&out).contains("bad LIBARCHIVE.xattr"));
    }

    #[test]
    fn global_headers_apply_until_overridden() {
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'g',
            &records(&[
                ("mtime", b"1234567890.5"),
                ("uid", b"77"),
                ("SCHILY.xattr.user.g", b"global"),
                ("path", b"ignored"),
                ("size", b"999"),
            ]),
        );
        put(&mut out, ustar(b"a", b'0', 1), b"a");
        put_pax(&mut out, b'x', &records(&[("uid", b"99"), ("mtime", b"")]));
        put(&mut out, ustar(b"b", b'0', 1), b"b");
        put_pax(&mut out, b'g', &records(&[("uid", b""), ("gid", b"88")]));
        put(&mut out, ustar(b"c", b'0', 1), b"c");
        end(&mut out);
        let e = read_all(&out).unwrap();
        let h: Vec<&Header> = e.iter().map(|e| &e.0).collect();
        assert_eq!(h.len(), 3, "global headers are not entries");
        assert_eq!(h[0].path, b"a", "a global path is ignored");
        assert_eq!(e[0].1, b"a", "a global size is ignored");
        assert_eq!(
            (h[0].uid, h[0].mtime, h[0].mtime_nsec),
            (77, 1_234_567_890, 500_000_000)
        );
        assert_eq!(h[0].xattrs["user.g"], b"global");
        assert_eq!(h[1].uid, 99, "a local record overrides");
        assert_eq!(
            h[1].mtime, 1_700_000_000,
            "an empty local value unsets the global one"
        );
        assert_eq!(h[1].xattrs["user.g"], b"global");
        assert_eq!(
            (h[2].uid, h[2].gid),
            (0, 88),
            "a later global header overrides"
        );
        assert_eq!(h[2].mtime, 1_234_567_890);
    }

    #[test]
    fn extension_misuse_is_refused() {
        let two_pax = {
            let mut out = Vec::new();
            put_pax(&mut out, b'x', &records(&[("uid", b"1")]));
            put_pax(&mut out, b'x', &records(&[("uid", b"2")]));
            put(&mut out, ustar(b"f", b'0', 0), b"");
            end(&mut out);
            out
        };
        assert!(error(&two_pax).contains("second PAX header"));
        let two_long = {
            let mut out = Vec::new();
            put(&mut out, gnu(b"././@LongLink", b'L', 2), b"a\0");
            put(&mut out, gnu(b"././@LongLink", b'L', 2), b"b\0");
            put(&mut out, gnu(b"f", b'0', 0), b"");
            out
        };
        assert!(error(&two_long).contains("second GNU long name"));
        let dangling = {
            let mut out = Vec::new();
            put_pax(&mut out, b'x', &records(&[("path", b"p")]));
            end(&mut out);
            out
        };
        assert!(error(&dangling).contains("describes no entry"));
        // Over the cap: refused before anything is allocated or read.
        let mut huge = Vec::new();
        huge.extend_from_slice(&ustar(b"PaxHeaders/huge", b'x', 64 << 20));
        let msg = error(&huge);
        assert!(msg.contains("limit") && msg.contains("huge"), "{msg}");
    }

    #[test]
    fn end_of_archive() {
        // EOF at a block boundary, with or without the zero blocks.
        let mut out = Vec::new();
        put(&mut out, ustar(b"f", b'0', 1), b"x");
        assert_eq!(read_all(&out).unwrap().len(), 1);
        out.extend_from_slice(&[0u8; 512]);
        assert_eq!(read_all(&out).unwrap().len(), 1);
        // A zero block then a header: refused (as Go does).
        let mut bad = out.clone();
        put(&mut bad, ustar(b"hidden", b'0', 0), b"");
        assert!(error(&bad).contains("follows a zero block"));
        // After two zero blocks, the rest is left to the caller.
        out.extend_from_slice(&[0u8; 512]);
        out.extend_from_slice(b"trailing bytes");
        let mut r = TarReader::new(&out[..], LAYER, "t");
        while r.next_entry().unwrap().is_some() {}
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.position(), 2048);
        let mut rest = Vec::new();
        r.into_inner().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"trailing bytes");
    }

    #[test]
    fn truncation_is_an_error_naming_the_layer() {
        let mut out = Vec::new();
        put(&mut out, ustar(b"file", b'0', 1000), &[1u8; 1000]);
        end(&mut out);
        for cut in [100, 700, 1000, 1300] {
            let e = read_all(&out[..cut]).unwrap_err();
            assert!(matches!(e, Error::Io { .. }), "{cut}: {e:?}");
            let msg = format!("{e}: {:?}", std::error::Error::source(&e));
            assert!(
                msg.contains("test layer") && msg.contains("truncated"),
                "{msg}"
            );
        }
        // Skipping the data of an unread entry sees the truncation too.
        let mut r = TarReader::new(&out[..700], LAYER, "test layer");
        assert!(r.next_entry().unwrap().is_some());
        assert!(r.next_entry().is_err());
        // Inside an extension header.
        let mut out = Vec::new();
        put_pax(&mut out, b'x', &records(&[("path", b"p")]));
        assert!(matches!(
            read_all(&out[..520]).unwrap_err(),
            Error::Io { .. }
        ));
    }

    #[test]
    fn entries_read_bounded_and_skip_unread_data() {
        let mut out = Vec::new();
        put(&mut out, ustar(b"a", b'0', 700), &[b'a'; 700]);
        // Header-only types have no data, whatever the size field says.
        put(&mut out, ustar(b"d", b'5', 512), b"");
        put(&mut out, ustar(b"b", b'0', 3), b"bbb");
        end(&mut out);
        let mut r = TarReader::new(&out[..], LAYER, "t");
        let mut e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.header.header_pos, e.header.size), (0, 700));
        let mut two = [0u8; 2];
        e.read_exact(&mut two).unwrap();
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.header.header_pos, e.header.size), (1536, 0));
        let mut e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.header.header_pos, 2048);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"bbb");
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn header_position_is_the_entrys_own_header() {
        let mut out = Vec::new();
        put_pax(&mut out, b'g', &records(&[("uid", b"1")]));
        put_pax(&mut out, b'x', &records(&[("path", b"long")]));
        put(&mut out, gnu(b"././@LongLink", b'K', 2), b"t\0");
        put(&mut out, ustar(b"f", b'0', 1), b"x");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!(e[0].0.header_pos, 3 * 1024);
    }

    #[test]
    fn devices_and_other_types() {
        let mut c = raw_ustar(b"dev/null", b'3', 0);
        octal(&mut c, 329..337, 1);
        octal(&mut c, 337..345, 3);
        checksum(&mut c);
        let mut out = Vec::new();
        put(&mut out, c, b"");
        put(&mut out, ustar(b"vol", b'V', 0), b"");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert_eq!(
            (e[0].0.entry_type, e[0].0.dev_major, e[0].0.dev_minor),
            (EntryType::Char, 1, 3)
        );
        assert_eq!(e[1].0.entry_type, EntryType::Other(b'V'));
    }

    /// A 1 MiB file: "hello" at 100000, "world" at 600000, a hole at the end.
    fn sparse_content() -> Vec<u8> {
        let mut v = vec![0u8; 1 << 20];
        v[100_000..100_005].copy_from_slice(b"hello");
        v[600_000..600_005].copy_from_slice(b"world");
        v
    }

    /// Stored blocks for the map below (4096 bytes each, as GNU tar stores).
    fn sparse_stored() -> (Vec<(u64, u64)>, Vec<u8>) {
        let full = sparse_content();
        let map = vec![(98_304u64, 4096u64), (598_016, 4096), (1 << 20, 0)];
        let mut stored = Vec::new();
        for &(o, l) in &map {
            stored.extend_from_slice(&full[o as usize..(o + l) as usize]);
        }
        (map, stored)
    }

    #[test]
    fn old_gnu_sparse_with_extension_blocks() {
        let full = sparse_content();
        // Split the data into many segments so the map needs an extension block.
        let mut map = Vec::new();
        for i in 0..6u64 {
            map.push((98_304 + i * 512, 512u64));
        }
        map.push((598_016, 4096));
        let mut stored = Vec::new();
        for &(o, l) in &map {
            stored.extend_from_slice(&full[o as usize..(o + l) as usize]);
        }
        let mut h = gnu(b"sparse", b'S', stored.len() as u64);
        for (i, &(o, l)) in map.iter().take(4).enumerate() {
            octal(&mut h, 386 + i * 24..398 + i * 24, o);
            octal(&mut h, 398 + i * 24..410 + i * 24, l);
        }
        h[482] = 1;
        octal(&mut h, 483..495, 1 << 20);
        checksum(&mut h);
        let mut ext = [0u8; 512];
        for (i, &(o, l)) in map.iter().skip(4).enumerate() {
            octal(&mut ext, i * 24..i * 24 + 12, o);
            octal(&mut ext, i * 24 + 12..i * 24 + 24, l);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&h);
        out.extend_from_slice(&ext);
        out.extend_from_slice(&stored);
        pad(&mut out);
        put(&mut out, ustar(b"after", b'0', 2), b"ok");
        end(&mut out);
        let e = read_all(&out).unwrap();
        assert!(e[0].0.sparse);
        assert_eq!(e[0].0.entry_type, EntryType::Regular);
        assert_eq!((e[0].0.header_pos, e[0].0.size), (0, 1 << 20));
        assert!(e[0].1 == full, "holes read back as zeros");
        assert_eq!(
            (e[1].0.path.as_slice(), e[1].1.as_slice()),
            (&b"after"[..], &b"ok"[..])
        );
    }

    #[test]
    fn pax_sparse_0_0_0_1_and_1_0() {
        let full = sparse_content();
        let (map, stored) = sparse_stored();
        let mut out = Vec::new();
        // 0.0: repeated offset/numbytes records, the real name in the header.
        let mut recs = vec![
            record(b"GNU.sparse.size", b"1048576"),
            record(b"GNU.sparse.numblocks", b"3"),
        ];
        for &(o, l) in &map {
            recs.push(record(b"GNU.sparse.offset", o.to_string().as_bytes()));
            recs.push(record(b"GNU.sparse.numbytes", l.to_string().as_bytes()));
        }
        put_pax(&mut out, b'x', &recs.concat());
        put(&mut out, ustar(b"v00", b'0', stored.len() as u64), &stored);
        // 0.1: one map record, the real name in GNU.sparse.name.
        let list: Vec<String> = map
            .iter()
            .flat_map(|&(o, l)| [o.to_string(), l.to_string()])
            .collect();
        put_pax(
            &mut out,
            b'x',
            &records(&[
                ("GNU.sparse.size", b"1048576"),
                ("GNU.sparse.numblocks", b"3"),
                ("GNU.sparse.name", b"v01"),
                ("GNU.sparse.map", list.join(",").as_bytes()),
            ]),
        );
        put(
            &mut out,
            ustar(b"GNUSparseFile.1/v01", b'0', stored.len() as u64),
            &stored,
        );
        // 1.0: the map at the start of the data, padded to a block.
        let mut text = format!("{}\n", map.len());
        for &(o, l) in &map {
            text.push_str(&format!("{o}\n{l}\n"));
        }
        let mut data = text.into_bytes();
        pad(&mut data);
        data.extend_from_slice(&stored);
        put_pax(
            &mut out,
            b'x',
            &records(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"v10"),
                ("GNU.sparse.realsize", b"1048576"),
            ]),
        );
        put(
            &mut out,
            ustar(b"GNUSparseFile.1/v10", b'0', data.len() as u64),
            &data,
        );
        put(&mut out, ustar(b"after", b'0', 2), b"ok");
        end(&mut out);
        let e = read_all(&out).unwrap();
        let names: Vec<&[u8]> = e.iter().map(|e| e.0.path.as_slice()).collect();
        assert_eq!(names, [&b"v00"[..], b"v01", b"v10", b"after"]);
        for (h, data) in &e[..3] {
            assert!(h.sparse && h.size == 1 << 20, "{h:?}");
            assert!(*data == full, "{:?}", h.path);
        }
        assert_eq!(e[3].1, b"ok");
    }

    #[test]
    fn a_sparse_entry_left_unread_is_skipped() {
        let (map, stored) = sparse_stored();
        let mut text = format!("{}\n", map.len());
        for &(o, l) in &map {
            text.push_str(&format!("{o}\n{l}\n"));
        }
        let mut data = text.into_bytes();
        pad(&mut data);
        data.extend_from_slice(&stored);
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &records(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"1048576"),
            ]),
        );
        put(&mut out, ustar(b"s", b'0', data.len() as u64), &data);
        put(&mut out, ustar(b"after", b'0', 2), b"ok");
        end(&mut out);
        let mut r = TarReader::new(&out[..], LAYER, "t");
        let mut e = r.next_entry().unwrap().unwrap();
        let mut some = [1u8; 100];
        e.read_exact(&mut some).unwrap();
        assert_eq!(some, [0u8; 100]);
        let mut e = r.next_entry().unwrap().unwrap();
        let mut ok = Vec::new();
        e.read_to_end(&mut ok).unwrap();
        assert_eq!(ok, b"ok");
    }

    #[test]
    fn bad_sparse_maps_are_refused() {
        let sparse01 = |map: &str, n: &str, size: &str, stored: usize| {
            let mut out = Vec::new();
            put_pax(
                &mut out,
                b'x',
                &records(&[
                    ("GNU.sparse.size", size.as_bytes()),
                    ("GNU.sparse.numblocks", n.as_bytes()),
                    ("GNU.sparse.map", map.as_bytes()),
                ]),
            );
            put(
                &mut out,
                ustar(b"sp", b'0', stored as u64),
                &vec![1u8; stored],
            );
            end(&mut out);
            out
        };
        assert!(read_all(&sparse01("0,10,20,10", "2", "100", 20)).is_ok());
        for (out, why) in [
            (sparse01("20,10,0,10", "2", "100", 20), "out of order"),
            (sparse01("0,10,5,10", "2", "100", 20), "overlap"),
            (sparse01("0,10,95,10", "2", "100", 20), "past the file size"),
            (sparse01("0,10,20,10", "2", "100", 30), "covers 20 bytes"),
            (sparse01("0,10,20", "2", "100", 20), "numblocks"),
            (sparse01("0,10,20,10", "3", "100", 20), "numblocks"),
            (sparse01("0,x", "1", "100", 0), "sparse length"),
            (
                sparse01("0,18446744073709551615", "1", "100", 0),
                "sparse length",
            ),
        ] {
            let msg = error(&out);
            assert!(msg.contains(why) && msg.contains("sp"), "{why}: {msg}");
        }
        // An unknown version is refused, not read as raw bytes.
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &records(&[("GNU.sparse.major", b"2"), ("GNU.sparse.minor", b"0")]),
        );
        put(&mut out, ustar(b"sp", b'0', 0), b"");
        assert!(error(&out).contains("2.0 is not supported"));
        // A 1.0 map that runs out of data, or is not numbers.
        for data in [&b"3\n0\n"[..], b"1\nx\n1\n"] {
            let mut out = Vec::new();
            put_pax(
                &mut out,
                b'x',
                &records(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.realsize", b"10"),
                ]),
            );
            put(&mut out, ustar(b"sp", b'0', 512), data);
            end(&mut out);
            assert!(error(&out).contains("bad GNU sparse 1.0 map"));
        }
        // A map on a directory.
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &records(&[
                ("GNU.sparse.map", b""),
                ("GNU.sparse.major", b"0"),
                ("GNU.sparse.minor", b"1"),
                ("GNU.sparse.numblocks", b"0"),
            ]),
        );
        put(&mut out, ustar(b"d", b'5', 0), b"");
        assert!(error(&out).contains("not a regular file"));
        // Old GNU sparse in a ustar header.
        let mut out = Vec::new();
        put(&mut out, ustar(b"s", b'S', 0), b"");
        assert!(error(&out).contains("without a GNU header"));
    }

    #[test]
    fn pax_time() {
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1700000000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("1.1234567899"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("-0.5"), Some((-1, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
        assert_eq!(parse_pax_time(".5"), None);
    }

    /// A valid archive with every kind of extension, for the damage test.
    fn hostile_base() -> Vec<u8> {
        let mut out = Vec::new();
        put_pax(
            &mut out,
            b'x',
            &records(&[("path", b"a\nb"), ("SCHILY.xattr.user.x", b"\n")]),
        );
        put(&mut out, gnu(b"././@LongLink", b'L', 4), b"lng\0");
        put(&mut out, gnu(b"f", b'0', 600), &[3u8; 600]);
        put_pax(
            &mut out,
            b'x',
            &records(&[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"2000"),
            ]),
        );
        let mut data = b"1\n1000\n10\n".to_vec();
        pad(&mut data);
        data.extend_from_slice(&[9u8; 10]);
        put(&mut out, ustar(b"s", b'0', data.len() as u64), &data);
        let mut old = gnu(b"old", b'S', 20);
        octal(&mut old, 386..398, 100);
        octal(&mut old, 398..410, 10);
        old[482] = 1;
        octal(&mut old, 483..495, 5000);
        checksum(&mut old);
        let mut ext = [0u8; 512];
        octal(&mut ext, 0..12, 4000);
        octal(&mut ext, 12..24, 10);
        put(&mut out, old, &[ext.to_vec(), vec![5u8; 20]].concat());
        end(&mut out);
        out
    }

    #[test]
    fn hostile_base_is_valid() {
        let e = read_all(&hostile_base()).unwrap();
        let names: Vec<&[u8]> = e.iter().map(|e| e.0.path.as_slice()).collect();
        // The GNU long name wins over the PAX path of the same entry.
        assert_eq!(names, [&b"lng"[..], b"s", b"old"]);
        assert_eq!(e[0].0.xattrs["user.x"], b"\n");
        assert_eq!((e[1].1.len(), &e[1].1[1000..1010]), (2000, &[9u8; 10][..]));
        let mut old = vec![0u8; 5000];
        old[100..110].fill(5);
        old[4000..4010].fill(5);
        assert_eq!(e[2].1, old);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Damaged archives are errors, never panics or huge allocations.
        #[test]
        fn hostile_bytes_never_panic(
            flips in proptest::collection::vec((0usize..8192, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..8192,
        ) {
            let mut out = hostile_base();
            for (at, byte) in flips {
                if at < out.len() {
                    out[at] = byte;
                }
            }
            // Re-checksum some of the time, so damage gets past the checksum.
            if cut % 2 == 0 {
                let mut at = 0;
                while at + 512 <= out.len() {
                    let mut blk: [u8; 512] = out[at..at + 512].try_into().unwrap();
                    if blk.iter().any(|&b| b != 0) {
                        checksum(&mut blk);
                        out[at..at + 512].copy_from_slice(&blk);
                    }
                    at += 512;
                }
            }
            out.truncate(cut.max(1));
            // Read each entry (a bounded amount: a damaged sparse size may
            // claim terabytes of holes) and check it yields what it says.
            let mut r = TarReader::new(&out[..], LAYER, "t");
            while let Ok(Some(mut e)) = r.next_entry() {
                let mut data = Vec::new();
                if (&mut e).take(4 << 20).read_to_end(&mut data).is_ok() && e.header.size <= 4 << 20 {
                    proptest::prop_assert_eq!(data.len() as u64, e.header.size);
                }
            }
        }
    }
}
