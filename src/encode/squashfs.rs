//! A squashfs 4.0 writer over the merged index: streaming, with data blocks
//! compressed in parallel, and the layout mksquashfs 4.5 gives by default
//! (fragments for small files, duplicate detection, sparse zero blocks,
//! export table, xattrs, hardlinks as shared inodes, directory indexes).
//!
//! Content arrives in the index's content order (layers are streamed, no
//! rootfs on disk); each file's blocks are consecutive on disk, as the
//! format requires. Metadata (inodes, directories, tables) is built at the
//! end from the index. Memory stays bounded: only a window of blocks in
//! flight, one fragment buffer, and per-file block lists.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::image::Image;
use crate::index::{FsIndex, Kind, Node, NodeId, display_path};
use crate::{Error, Result};

const MAGIC: u32 = 0x7371_7368;
const SUPERBLOCK_SIZE: u64 = 96;
const METADATA_SIZE: usize = 8192;
const META_UNCOMPRESSED: u16 = 1 << 15;
const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
const INVALID_FRAG: u32 = 0xffff_ffff;
const INVALID_XATTR: u32 = 0xffff_ffff;
const INVALID_TABLE: u64 = 0xffff_ffff_ffff_ffff;
/// Files up to this size are read whole, so duplicates are found before
/// any block is written.
const DEDUP_MAX: u64 = 8 << 20;

// Superblock flags (squashfs_fs.h SQUASHFS_MKFLAGS).
const FLAG_DUPLICATES: u16 = 1 << 6;
const FLAG_EXPORTABLE: u16 = 1 << 7;
const FLAG_NO_XATTRS: u16 = 1 << 9;
const FLAG_COMPRESSOR_OPTIONS: u16 = 1 << 10;

// Inode types.
const DIR: u16 = 1;
const FILE: u16 = 2;
const SYMLINK: u16 = 3;
const BLKDEV: u16 = 4;
const CHRDEV: u16 = 5;
const FIFO: u16 = 6;
const LDIR: u16 = 8;
const LREG: u16 = 9;
const LSYMLINK: u16 = 10;
const LBLKDEV: u16 = 11;
const LCHRDEV: u16 = 12;
const LFIFO: u16 = 13;

/// Compression of data and metadata blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "name")]
pub enum Compression {
    /// zlib streams (squashfs calls it gzip); libdeflate levels 1-12.
    Gzip {
        level: u32,
    },
    Zstd {
        level: i32,
    },
    Xz {
        level: u32,
    },
    Lz4,
}

impl Compression {
    /// `--compression NAME [--level N]`; levels default as mksquashfs does.
    pub fn parse(name: &str, level: Option<i64>) -> Result<Compression> {
        let bad = |reason: String| {
            Error::BadInput {
            input: format!("--compression {name}{}", level.map(|l| format!(" --level {l}")).unwrap_or_default()),
            place: String::new(),
            reason,
            hint: Some("gzip (levels 1-12, default 9), zstd (1-22, default 15), xz (0-9, default 6), lz4 (no level)".into()),
        }
        };
        let c = match name {
            "gzip" => Compression::Gzip {
                level: level.unwrap_or(9) as u32,
            },
            "zstd" => Compression::Zstd {
                level: level.unwrap_or(15) as i32,
            },
            "xz" => Compression::Xz {
                level: level.unwrap_or(6) as u32,
            },
            "lz4" => {
                if level.is_some() {
                    return Err(bad("lz4 has no levels".into()));
                }
                Compression::Lz4
            }
            other => return Err(bad(format!("unknown compression {other:?}"))),
        };
        let ok = match c {
            Compression::Gzip { level } => (1..=12).contains(&level),
            Compression::Zstd { level } => (1..=22).contains(&level),
            Compression::Xz { level } => level <= 9,
            Compression::Lz4 => true,
        } && level.is_none_or(|l| l >= 0);
        if !ok {
            return Err(bad("level out of range".into()));
        }
        Ok(c)
    }

    fn id(&self) -> u16 {
        match self {
            Compression::Gzip { .. } => 1,
            Compression::Xz { .. } => 4,
            Compression::Lz4 => 5,
            Compression::Zstd { .. } => 6,
        }
    }

    /// The compressor options block, when mksquashfs would write one.
    fn options(&self) -> Option<Vec<u8>> {
        match *self {
            Compression::Gzip { level } if level != 9 => {
                let mut v = Vec::new();
                v.extend_from_slice(&(level as i32).to_le_bytes());
                v.extend_from_slice(&15i16.to_le_bytes()); // window size
                v.extend_from_slice(&0i16.to_le_bytes()); // strategies
                Some(v)
            }
            Compression::Zstd { level } if level != 15 => Some(level.to_le_bytes().to_vec()),
            // The kernel requires lz4's options (it checks the format version).
            Compression::Lz4 => {
                let mut v = Vec::new();
                v.extend_from_slice(&1i32.to_le_bytes()); // LZ4_LEGACY
                v.extend_from_slice(&0i32.to_le_bytes()); // no HC
                Some(v)
            }
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
            Compression::Xz { .. } => "xz",
            Compression::Lz4 => "lz4",
        }
    }
}

/// One thread's compressor.
enum Compressor {
    Gzip(libdeflater::Compressor),
    Zstd(zstd::bulk::Compressor<'static>),
    Xz { level: u32, dict: u32 },
    Lz4,
}

impl Compressor {
    fn new(c: Compression, block_size: u32) -> Result<Compressor> {
        Ok(match c {
            Compression::Gzip { level } => Compressor::Gzip(libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).map_err(|_| {
                    Error::bad_input("--level", format!("gzip level {level} is not 1-12"))
                })?,
            )),
            Compression::Zstd { level } => Compressor::Zstd(
                zstd::bulk::Compressor::new(level).map_err(|e| Error::io("starting zstd", e))?,
            ),
            Compression::Xz { level } => Compressor::Xz {
                level,
                dict: block_size,
            },
            Compression::Lz4 => Compressor::Lz4,
        })
    }

    /// Compress `input`; `None` when the result would not be smaller (the
    /// block is then stored as it is, as mksquashfs does).
    fn compress(&mut self, input: &[u8]) -> Result<Option<Vec<u8>>> {
        let out = match self {
            Compressor::Gzip(c) => {
                let mut out = vec![0u8; c.zlib_compress_bound(input.len())];
                let n = c
                    .zlib_compress(input, &mut out)
                    .map_err(|e| Error::Other(format!("deflate failed: {e:?}")))?;
                out.truncate(n);
                out
            }
            Compressor::Zstd(c) => c
                .compress(input)
                .map_err(|e| Error::io("zstd compression", e))?,
            Compressor::Xz { level, dict } => {
                let mut opts = liblzma::stream::LzmaOptions::new_preset(*level)
                    .map_err(|e| Error::Other(format!("xz preset {level}: {e}")))?;
                // The kernel's decoder has a dictionary of one block.
                opts.dict_size((*dict).min(input.len().max(4096) as u32).max(4096));
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                let mut stream = liblzma::stream::Stream::new_stream_encoder(
                    &filters,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(|e| Error::Other(format!("xz encoder: {e}")))?;
                let mut out = Vec::with_capacity(input.len() + 128);
                loop {
                    let status = stream
                        .process_vec(input, &mut out, liblzma::stream::Action::Finish)
                        .map_err(|e| Error::Other(format!("xz compression: {e}")))?;
                    if status == liblzma::stream::Status::StreamEnd {
                        break;
                    }
                    out.reserve(input.len());
                }
                out
            }
            Compressor::Lz4 => lz4_flex::block::compress(input),
        };
        Ok((out.len() < input.len()).then_some(out))
    }
}

#[derive(Debug, Clone)]
pub struct SquashfsOptions {
    pub compression: Compression,
    /// Power of two, 4 KiB to 1 MiB (mksquashfs default 128 KiB).
    pub block_size: u32,
    /// Filesystem creation time.
    pub mkfs_time: u32,
    /// Clamp every inode time to at most this (SOURCE_DATE_EPOCH).
    pub clamp_mtime: Option<u32>,
    pub threads: usize,
}

impl SquashfsOptions {
    pub fn new(compression: Compression) -> Self {
        SquashfsOptions {
            compression,
            block_size: 128 * 1024,
            mkfs_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0),
            clamp_mtime: None,
            threads: thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }

    pub fn check_block_size(block_size: u32) -> Result<u32> {
        if block_size.is_power_of_two() && (4096..=1 << 20).contains(&block_size) {
            Ok(block_size)
        } else {
            Err(Error::BadInput {
                input: format!("--block-size {block_size}"),
                place: String::new(),
                reason: "a squashfs block is a power of two from 4096 to 1048576 bytes".into(),
                hint: Some("131072 (128 KiB) is what mksquashfs and Apptainer use".into()),
            })
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SquashfsReport {
    /// Bytes of the filesystem, padded to 4 KiB.
    pub bytes: u64,
    pub inodes: u32,
    pub data_blocks: u64,
    pub fragments: u32,
    pub sparse_blocks: u64,
    pub duplicate_files: u64,
    /// Uncompressed bytes of file content.
    pub content_bytes: u64,
    /// Xattrs squashfs cannot hold (only user., trusted., security.).
    pub skipped_xattrs: Vec<String>,
}

/// Where a file's data lives in the filesystem.
#[derive(Debug, Clone, Default)]
struct FileData {
    /// First data block, as a block sequence number until positions are known.
    first_seq: Option<usize>,
    blocks: usize,
    fragment: Option<(u32, u32)>,
    size: u64,
}

/// A compressed (or stored) block as it will be written.
enum BlockOut {
    Sparse,
    Stored(Vec<u8>),
    Compressed(Vec<u8>),
}

struct Job {
    seq: usize,
    data: Vec<u8>,
    /// Data blocks of files may be sparse; fragment blocks never are.
    may_be_sparse: bool,
}

/// Writes data blocks in sequence order while workers compress ahead.
struct DataWriter<'a, W: Write> {
    out: &'a mut W,
    pos: u64,
    jobs: Option<mpsc::SyncSender<Job>>,
    results: mpsc::Receiver<Result<(usize, BlockOut)>>,
    pending: BTreeMap<usize, BlockOut>,
    next_seq: usize,
    next_write: usize,
    window: usize,
    /// Per sequence number: position and on-disk size field.
    placed: Vec<(u64, u32)>,
    report: &'a mut SquashfsReport,
}

impl<W: Write> DataWriter<'_, W> {
    fn submit(&mut self, data: Vec<u8>, may_be_sparse: bool) -> Result<usize> {
        while self.next_seq - self.next_write >= self.window {
            self.write_next()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.jobs
            .as_ref()
            .expect("writer open")
            .send(Job {
                seq,
                data,
                may_be_sparse,
            })
            .map_err(|_| Error::Other("a compression thread stopped".into()))?;
        Ok(seq)
    }

    /// Wait for the next block in sequence and write it.
    fn write_next(&mut self) -> Result<()> {
        while !self.pending.contains_key(&self.next_write) {
            let (seq, out) = self
                .results
                .recv()
                .map_err(|_| Error::Other("compression threads stopped".into()))??;
            self.pending.insert(seq, out);
        }
        let out = self.pending.remove(&self.next_write).expect("present");
        let field = match out {
            BlockOut::Sparse => {
                self.report.sparse_blocks += 1;
                0
            }
            BlockOut::Stored(data) => {
                self.out
                    .write_all(&data)
                    .map_err(|e| Error::io("writing squashfs data", e))?;
                self.pos += data.len() as u64;
                data.len() as u32 | BLOCK_UNCOMPRESSED
            }
            BlockOut::Compressed(data) => {
                self.out
                    .write_all(&data)
                    .map_err(|e| Error::io("writing squashfs data", e))?;
                self.pos += data.len() as u64;
                data.len() as u32
            }
        };
        let start = self.pos - u64::from(field & !BLOCK_UNCOMPRESSED);
        self.placed.push((start, field));
        self.next_write += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        while self.next_write < self.next_seq {
            self.write_next()?;
        }
        Ok(())
    }
}

/// An in-memory metadata table written as 8 KiB blocks, each compressed
/// unless that does not help, behind a 2-byte length header.
struct MetaWriter {
    compressor: Compressor,
    out: Vec<u8>,
    cur: Vec<u8>,
    /// Offset in `out` of each finished block.
    block_starts: Vec<u32>,
}

impl MetaWriter {
    fn new(c: Compression, block_size: u32) -> Result<Self> {
        Ok(MetaWriter {
            compressor: Compressor::new(c, block_size.min(METADATA_SIZE as u32).max(4096))?,
            out: Vec::new(),
            cur: Vec::with_capacity(METADATA_SIZE),
            block_starts: Vec::new(),
        })
    }

    /// Uncompressed position of the next byte.
    fn upos(&self) -> usize {
        self.block_starts.len() * METADATA_SIZE + self.cur.len()
    }

    /// Reference (block start << 16 | offset) of an uncompressed position
    /// already written or the next one.
    fn reference(&self, upos: usize) -> u64 {
        let block = upos / METADATA_SIZE;
        let start = self
            .block_starts
            .get(block)
            .copied()
            .unwrap_or(self.out.len() as u32);
        (u64::from(start) << 16) | (upos % METADATA_SIZE) as u64
    }

    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = (METADATA_SIZE - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.cur.len() == METADATA_SIZE {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        self.block_starts.push(self.out.len() as u32);
        match self.compressor.compress(&self.cur)? {
            Some(c) => {
                self.out.extend_from_slice(&(c.len() as u16).to_le_bytes());
                self.out.extend_from_slice(&c);
            }
            None => {
                self.out
                    .extend_from_slice(&(self.cur.len() as u16 | META_UNCOMPRESSED).to_le_bytes());
                self.out.extend_from_slice(&self.cur);
            }
        }
        self.cur.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<u8>, Vec<u32>)> {
        self.flush_block()?;
        Ok((self.out, self.block_starts))
    }
}

/// Unique uids and gids, as 16-bit indexes into the id table.
#[derive(Default)]
struct Ids {
    list: Vec<u32>,
    map: HashMap<u32, u16>,
}

impl Ids {
    fn index(&mut self, id: u64, what: &str) -> Result<u16> {
        let id = u32::try_from(id).map_err(|_| {
            Error::bad_input(
                what.to_string(),
                format!("owner id {id} does not fit squashfs's 32 bits"),
            )
        })?;
        if let Some(&i) = self.map.get(&id) {
            return Ok(i);
        }
        let i = u16::try_from(self.list.len()).map_err(|_| {
            Error::bad_input(what.to_string(), "more than 65536 distinct owner ids")
        })?;
        self.list.push(id);
        self.map.insert(id, i);
        Ok(i)
    }
}

/// Deduplicated xattr sets.
#[derive(Default)]
struct Xattrs {
    /// Key/value pairs of each set, in squashfs encoding.
    sets: Vec<Vec<u8>>,
    counts: Vec<u32>,
    map: HashMap<Vec<u8>, u32>,
}

impl Xattrs {
    fn index(
        &mut self,
        xattrs: &BTreeMap<String, Vec<u8>>,
        path: &str,
        skipped: &mut Vec<String>,
    ) -> u32 {
        let mut enc = Vec::new();
        let mut count = 0;
        for (name, value) in xattrs {
            let (kind, short) = if let Some(s) = name.strip_prefix("user.") {
                (0u16, s)
            } else if let Some(s) = name.strip_prefix("trusted.") {
                (1, s)
            } else if let Some(s) = name.strip_prefix("security.") {
                (2, s)
            } else {
                skipped.push(format!("{path}: {name}"));
                continue;
            };
            enc.extend_from_slice(&kind.to_le_bytes());
            enc.extend_from_slice(&(short.len() as u16).to_le_bytes());
            enc.extend_from_slice(short.as_bytes());
            enc.extend_from_slice(&(value.len() as u32).to_le_bytes());
            enc.extend_from_slice(value);
            count += 1;
        }
        if count == 0 {
            return INVALID_XATTR;
        }
        if let Some(&i) = self.map.get(&enc) {
            return i;
        }
        let i = self.sets.len() as u32;
        self.map.insert(enc.clone(), i);
        self.sets.push(enc);
        self.counts.push(count);
        i
    }
}

/// A directory's listing as the directory table holds it, with the index
/// entries mksquashfs adds every 8 KiB of listing.
#[derive(Default)]
struct Listing {
    buf: Vec<u8>,
    header_at: Option<usize>,
    count: u32,
    start_block: u32,
    base_inode: u32,
    /// Listing offset where the last index run started.
    index_from: usize,
    /// (listing offset of a header, first name) for directory indexes.
    index: Vec<(usize, Vec<u8>)>,
}

impl Listing {
    fn add(&mut self, name: &[u8], inode_ref: u64, number: u32, basic_type: u16) {
        let start_block = (inode_ref >> 16) as u32;
        let offset = (inode_ref & 0xffff) as u16;
        let entry_len = 8 + name.len();
        let too_far = (i64::from(number) - i64::from(self.base_inode)).abs() > 32767;
        let crosses_index = self.header_at.is_some()
            && self.buf.len() + entry_len - self.index_from > METADATA_SIZE;
        if self.header_at.is_none()
            || self.count == 256
            || start_block != self.start_block
            || too_far
            || crosses_index
        {
            self.close_header();
            if crosses_index {
                self.index.push((self.buf.len(), name.to_vec()));
                self.index_from = self.buf.len();
            }
            self.header_at = Some(self.buf.len());
            self.buf.extend_from_slice(&[0u8; 12]);
            self.count = 0;
            self.start_block = start_block;
            self.base_inode = number;
        }
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(
            &((i64::from(number) - i64::from(self.base_inode)) as i16).to_le_bytes(),
        );
        self.buf.extend_from_slice(&basic_type.to_le_bytes());
        self.buf
            .extend_from_slice(&((name.len() - 1) as u16).to_le_bytes());
        self.buf.extend_from_slice(name);
        self.count += 1;
    }

    fn close_header(&mut self) {
        if let Some(at) = self.header_at {
            self.buf[at..at + 4].copy_from_slice(&(self.count - 1).to_le_bytes());
            self.buf[at + 4..at + 8].copy_from_slice(&self.start_block.to_le_bytes());
            self.buf[at + 8..at + 12].copy_from_slice(&self.base_inode.to_le_bytes());
        }
    }
}

/// Write the index as a squashfs filesystem at the writer's current position
/// (`base`, e.g. a SIF partition's offset). Returns the report; the writer
/// is left at the end of the (padded) filesystem.
pub fn write_squashfs<W: Write + Seek>(
    index: &FsIndex,
    image: &Image,
    out: &mut W,
    opts: &SquashfsOptions,
) -> Result<SquashfsReport> {
    SquashfsOptions::check_block_size(opts.block_size)?;
    let base = out
        .stream_position()
        .map_err(|e| Error::io("positioning the squashfs output", e))?;
    let mut report = SquashfsReport::default();
    let io_err = |e: io::Error| Error::io("writing squashfs", e);

    // Superblock placeholder, then the compressor options block.
    out.write_all(&[0u8; SUPERBLOCK_SIZE as usize])
        .map_err(io_err)?;
    let mut pos = SUPERBLOCK_SIZE;
    let comp_opts = opts.compression.options();
    if let Some(o) = &comp_opts {
        out.write_all(&(o.len() as u16 | META_UNCOMPRESSED).to_le_bytes())
            .map_err(io_err)?;
        out.write_all(o).map_err(io_err)?;
        pos += 2 + o.len() as u64;
    }

    // Data: blocks of files in content order, small files into fragments.
    let block_size = opts.block_size as usize;
    let mut files: HashMap<NodeId, FileData> = HashMap::new();
    let mut fragment_seqs: Vec<usize> = Vec::new();
    let mut dedup: HashMap<(u64, [u8; 32]), FileData> = HashMap::new();
    let threads = opts.threads.max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 4);
    let (res_tx, res_rx) = mpsc::channel();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let compression = opts.compression;
    let (data_end, placed) = thread::scope(|scope| -> Result<(u64, Vec<(u64, u32)>)> {
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let res_tx = res_tx.clone();
            scope.spawn(move || {
                let mut compressor = match Compressor::new(compression, opts.block_size) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = res_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let job = job_rx.lock().expect("job lock").recv();
                    let Ok(job) = job else { return };
                    let out = if job.may_be_sparse && job.data.iter().all(|&b| b == 0) {
                        Ok(BlockOut::Sparse)
                    } else {
                        compressor.compress(&job.data).map(|c| match c {
                            Some(c) => BlockOut::Compressed(c),
                            None => BlockOut::Stored(job.data),
                        })
                    };
                    if res_tx.send(out.map(|o| (job.seq, o))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        let mut writer = DataWriter {
            out: &mut *out,
            pos,
            jobs: Some(job_tx),
            results: res_rx,
            pending: BTreeMap::new(),
            next_seq: 0,
            next_write: 0,
            window: threads * 8,
            placed: Vec::new(),
            report: &mut report,
        };
        let mut fragment: Vec<u8> = Vec::with_capacity(block_size);
        let mut fragment_count: u32 = 0;
        let streamed = index.for_each_content(image, |id, reader| {
            let Kind::File { size, .. } = index.node(id).kind else {
                return Ok(());
            };
            writer.report.content_bytes += size;
            let mut fd = FileData {
                size,
                ..FileData::default()
            };
            if size <= DEDUP_MAX {
                let mut data = Vec::with_capacity(size as usize);
                reader
                    .read_to_end(&mut data)
                    .map_err(|e| crate::digest::unwrap_io(e, || "reading file content".into()))?;
                let key = (data.len() as u64, <[u8; 32]>::from(Sha256::digest(&data)));
                if let Some(prev) = dedup.get(&key) {
                    writer.report.duplicate_files += 1;
                    files.insert(id, prev.clone());
                    return Ok(());
                }
                if data.len() < block_size {
                    if !data.is_empty() {
                        if fragment.len() + data.len() > block_size {
                            let full =
                                std::mem::replace(&mut fragment, Vec::with_capacity(block_size));
                            fragment_seqs.push(writer.submit(full, false)?);
                            fragment_count += 1;
                        }
                        fd.fragment = Some((fragment_count, fragment.len() as u32));
                        fragment.extend_from_slice(&data);
                    }
                } else {
                    for chunk in data.chunks(block_size) {
                        let seq = writer.submit(chunk.to_vec(), true)?;
                        fd.first_seq.get_or_insert(seq);
                        fd.blocks += 1;
                    }
                }
                dedup.insert(key, fd.clone());
            } else {
                // Large files stream block by block (no duplicate check).
                let mut left = size;
                while left > 0 {
                    let want = left.min(block_size as u64) as usize;
                    let mut chunk = vec![0u8; want];
                    reader.read_exact(&mut chunk).map_err(|e| {
                        crate::digest::unwrap_io(e, || "reading file content".into())
                    })?;
                    let seq = writer.submit(chunk, true)?;
                    fd.first_seq.get_or_insert(seq);
                    fd.blocks += 1;
                    left -= want as u64;
                }
            }
            files.insert(id, fd);
            Ok(())
        });
        let flushed = streamed.and_then(|()| {
            if !fragment.is_empty() {
                fragment_seqs.push(writer.submit(std::mem::take(&mut fragment), false)?);
            }
            writer.flush()
        });
        // Closing the job queue ends the workers, also after an error.
        drop(writer.jobs.take());
        flushed?;
        Ok((writer.pos, std::mem::take(&mut writer.placed)))
    })?;
    report.data_blocks = placed.len() as u64 - fragment_seqs.len() as u64;
    report.fragments = fragment_seqs.len() as u32;
    let mut pos = data_end;

    // Metadata.
    let mut ids = Ids::default();
    let mut xattrs = Xattrs::default();
    let mut inodes = MetaWriter::new(opts.compression, opts.block_size)?;
    let mut dirs = MetaWriter::new(opts.compression, opts.block_size)?;

    // Children of every directory, sorted by name as squashfs requires.
    let mut children: HashMap<&[u8], Vec<&[u8]>> = HashMap::new();
    let mut nlinks: HashMap<NodeId, u32> = HashMap::new();
    for (key, id, _) in index.iter() {
        *nlinks.entry(id).or_default() += 1;
        if let Some(slash) = key.iter().rposition(|&b| b == b'/') {
            children.entry(&key[..slash]).or_default().push(key);
        } else if !key.is_empty() {
            children.entry(b"").or_default().push(key);
        }
    }
    let name_of = |key: &[u8]| -> Vec<u8> {
        match key.iter().rposition(|&b| b == b'/') {
            Some(i) => key[i + 1..].to_vec(),
            None => key.to_vec(),
        }
    };
    for list in children.values_mut() {
        list.sort_by_key(|k| name_of(k));
    }

    // Inode numbers: all entries of a directory, then its subdirectories,
    // the root last (as in mksquashfs). A directory's entries get close
    // numbers, so its listing needs few headers; hardlinks share a number.
    let mut numbers: HashMap<NodeId, u32> = HashMap::new();
    let mut next_number = 1u32;
    let mut stack: Vec<&[u8]> = vec![b""];
    while let Some(dir) = stack.pop() {
        let kids = children.get(dir).map(Vec::as_slice).unwrap_or(&[]);
        for &k in kids {
            let (id, _) = index.get(k).expect("child in index");
            numbers.entry(id).or_insert_with(|| {
                next_number += 1;
                next_number - 1
            });
        }
        for &k in kids.iter().rev() {
            if index.get(k).expect("child in index").1.kind.is_dir() {
                stack.push(k);
            }
        }
    }
    let root_id = index.get(b"").expect("root").0;
    numbers.insert(root_id, next_number);
    let inode_count = next_number;

    let clamp = |t: i64| -> u32 {
        let t = t.clamp(0, u32::MAX as i64) as u32;
        match opts.clamp_mtime {
            Some(c) => t.min(c),
            None => t,
        }
    };
    let mut refs: HashMap<NodeId, u64> = HashMap::new();
    let mut skipped = Vec::new();

    // Post-order: a directory's inode follows its entries' inodes.
    struct Frame<'k> {
        key: &'k [u8],
        next: usize,
        listing: Listing,
        subdirs: u32,
    }
    let mut frames = vec![Frame {
        key: b"",
        next: 0,
        listing: Listing::default(),
        subdirs: 0,
    }];
    let mut root_ref = 0u64;
    while let Some(frame) = frames.last_mut() {
        let kids = children.get(frame.key).map(|v| v.as_slice()).unwrap_or(&[]);
        if frame.next < kids.len() {
            let k = kids[frame.next];
            frame.next += 1;
            let (id, node) = index.get(k).expect("child");
            if node.kind.is_dir() {
                frame.subdirs += 1;
                frames.push(Frame {
                    key: k,
                    next: 0,
                    listing: Listing::default(),
                    subdirs: 0,
                });
                continue;
            }
            let r = match refs.get(&id) {
                Some(&r) => r,
                None => {
                    let r = inodes.reference(inodes.upos());
                    let path = display_path(k);
                    let nlink = nlinks[&id];
                    let buf = file_inode(
                        node,
                        opts.block_size as u64,
                        numbers[&id],
                        nlink,
                        files.get(&id),
                        &placed,
                        &mut ids,
                        &mut xattrs,
                        &path,
                        &mut skipped,
                        clamp(node.meta.mtime),
                    )?;
                    inodes.write(&buf)?;
                    refs.insert(id, r);
                    r
                }
            };
            frame
                .listing
                .add(&name_of(k), r, numbers[&id], basic_type(&node.kind));
            continue;
        }
        // All entries done: place the listing, write the directory inode.
        let mut frame = frames.pop().expect("frame");
        frame.listing.close_header();
        let (id, node) = index.get(frame.key).expect("dir");
        let listing_upos = dirs.upos();
        let dir_ref = dirs.reference(listing_upos);
        dirs.write(&frame.listing.buf)?;
        let parent_number = match frames.last() {
            Some(p) => numbers[&index.get(p.key).expect("parent").0],
            None => inode_count + 1,
        };
        let path = display_path(frame.key);
        let xattr = xattrs.index(&node.meta.xattrs, &path, &mut skipped);
        let size = frame.listing.buf.len() + 3;
        let large = size > u16::MAX as usize
            || xattr != INVALID_XATTR
            || !frame.listing.index.is_empty()
            || children.get(frame.key).is_some_and(|c| c.len() > 256);
        let mut buf = Vec::new();
        base_header(
            &mut buf,
            if large { LDIR } else { DIR },
            node,
            &mut ids,
            numbers[&id],
            clamp(node.meta.mtime),
            &path,
        )?;
        let start_block = (dir_ref >> 16) as u32;
        let offset = (dir_ref & 0xffff) as u16;
        let nlink = frame.subdirs + 2;
        if large {
            buf.extend_from_slice(&nlink.to_le_bytes());
            buf.extend_from_slice(&(size as u32).to_le_bytes());
            buf.extend_from_slice(&start_block.to_le_bytes());
            buf.extend_from_slice(&parent_number.to_le_bytes());
            buf.extend_from_slice(&(frame.listing.index.len() as u16).to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(&xattr.to_le_bytes());
            for (at, name) in &frame.listing.index {
                let block = (dirs.reference(listing_upos + at) >> 16) as u32;
                buf.extend_from_slice(&(*at as u32).to_le_bytes());
                buf.extend_from_slice(&block.to_le_bytes());
                buf.extend_from_slice(&((name.len() - 1) as u32).to_le_bytes());
                buf.extend_from_slice(name);
            }
        } else {
            buf.extend_from_slice(&start_block.to_le_bytes());
            buf.extend_from_slice(&nlink.to_le_bytes());
            buf.extend_from_slice(&(size as u16).to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(&parent_number.to_le_bytes());
        }
        let r = inodes.reference(inodes.upos());
        inodes.write(&buf)?;
        refs.insert(id, r);
        match frames.last_mut() {
            Some(parent) => {
                parent
                    .listing
                    .add(&name_of(frame.key), r, numbers[&id], DIR);
            }
            None => root_ref = r,
        }
    }
    report.skipped_xattrs = skipped;
    report.inodes = inode_count;

    let io_err = |e: io::Error| Error::io("writing squashfs tables", e);
    let (inode_table, _) = inodes.finish()?;
    let inode_table_start = pos;
    out.write_all(&inode_table).map_err(io_err)?;
    pos += inode_table.len() as u64;
    let (dir_table, _) = dirs.finish()?;
    let directory_table_start = pos;
    out.write_all(&dir_table).map_err(io_err)?;
    pos += dir_table.len() as u64;

    // Fragment table: entries in metablocks, then their index.
    let mut frag_entries = Vec::with_capacity(fragment_seqs.len() * 16);
    for &seq in &fragment_seqs {
        let (start, field) = placed[seq];
        frag_entries.extend_from_slice(&start.to_le_bytes());
        frag_entries.extend_from_slice(&field.to_le_bytes());
        frag_entries.extend_from_slice(&0u32.to_le_bytes());
    }
    let fragment_table_start = write_indexed_table(out, &mut pos, &frag_entries, opts)?;

    // Export table: inode number → inode reference.
    let mut lookup = vec![0u64; inode_count as usize];
    for (id, r) in &refs {
        lookup[numbers[id] as usize - 1] = *r;
    }
    let lookup_bytes: Vec<u8> = lookup.iter().flat_map(|r| r.to_le_bytes()).collect();
    let lookup_table_start = write_indexed_table(out, &mut pos, &lookup_bytes, opts)?;

    let id_bytes: Vec<u8> = ids.list.iter().flat_map(|i| i.to_le_bytes()).collect();
    let id_table_start = write_indexed_table(out, &mut pos, &id_bytes, opts)?;

    let xattr_id_table_start = if xattrs.sets.is_empty() {
        INVALID_TABLE
    } else {
        // Key/value metablocks, then the id entries, then header + index.
        let kv_start = pos;
        let mut kv = MetaWriter::new(opts.compression, opts.block_size)?;
        let mut id_entries = Vec::new();
        for (set, count) in xattrs.sets.iter().zip(&xattrs.counts) {
            let r = kv.reference(kv.upos());
            kv.write(set)?;
            id_entries.extend_from_slice(&r.to_le_bytes());
            id_entries.extend_from_slice(&count.to_le_bytes());
            id_entries.extend_from_slice(&(set.len() as u32).to_le_bytes());
        }
        let (kv_bytes, _) = kv.finish()?;
        out.write_all(&kv_bytes).map_err(io_err)?;
        pos += kv_bytes.len() as u64;
        let mut ids_meta = MetaWriter::new(opts.compression, opts.block_size)?;
        ids_meta.write(&id_entries)?;
        let ids_start = pos;
        let (id_bytes, starts) = ids_meta.finish()?;
        out.write_all(&id_bytes).map_err(io_err)?;
        pos += id_bytes.len() as u64;
        let table_start = pos;
        let mut header = Vec::new();
        header.extend_from_slice(&kv_start.to_le_bytes());
        header.extend_from_slice(&(xattrs.sets.len() as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        for s in starts {
            header.extend_from_slice(&(ids_start + u64::from(s)).to_le_bytes());
        }
        out.write_all(&header).map_err(io_err)?;
        pos += header.len() as u64;
        table_start
    };

    let bytes_used = pos;
    // Pad to 4 KiB, as mksquashfs does, for block devices and loop mounts.
    let padded = bytes_used.div_ceil(4096) * 4096;
    out.write_all(&vec![0u8; (padded - bytes_used) as usize])
        .map_err(io_err)?;

    let mut flags = FLAG_DUPLICATES | FLAG_EXPORTABLE;
    if xattrs.sets.is_empty() {
        flags |= FLAG_NO_XATTRS;
    }
    if comp_opts.is_some() {
        flags |= FLAG_COMPRESSOR_OPTIONS;
    }
    let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
    sb.extend_from_slice(&MAGIC.to_le_bytes());
    sb.extend_from_slice(&inode_count.to_le_bytes());
    sb.extend_from_slice(&opts.mkfs_time.to_le_bytes());
    sb.extend_from_slice(&opts.block_size.to_le_bytes());
    sb.extend_from_slice(&(fragment_seqs.len() as u32).to_le_bytes());
    sb.extend_from_slice(&opts.compression.id().to_le_bytes());
    sb.extend_from_slice(&(opts.block_size.trailing_zeros() as u16).to_le_bytes());
    sb.extend_from_slice(&flags.to_le_bytes());
    sb.extend_from_slice(&(ids.list.len() as u16).to_le_bytes());
    sb.extend_from_slice(&4u16.to_le_bytes());
    sb.extend_from_slice(&0u16.to_le_bytes());
    sb.extend_from_slice(&root_ref.to_le_bytes());
    sb.extend_from_slice(&bytes_used.to_le_bytes());
    sb.extend_from_slice(&id_table_start.to_le_bytes());
    sb.extend_from_slice(&xattr_id_table_start.to_le_bytes());
    sb.extend_from_slice(&inode_table_start.to_le_bytes());
    sb.extend_from_slice(&directory_table_start.to_le_bytes());
    sb.extend_from_slice(&fragment_table_start.to_le_bytes());
    sb.extend_from_slice(&lookup_table_start.to_le_bytes());
    debug_assert_eq!(sb.len(), SUPERBLOCK_SIZE as usize);
    out.seek(SeekFrom::Start(base)).map_err(io_err)?;
    out.write_all(&sb).map_err(io_err)?;
    out.seek(SeekFrom::Start(base + padded)).map_err(io_err)?;
    report.bytes = padded;
    Ok(report)
}

/// Write a table as metablocks followed by the index of their positions;
/// returns the index's position (what the superblock points at).
fn write_indexed_table<W: Write>(
    out: &mut W,
    pos: &mut u64,
    data: &[u8],
    opts: &SquashfsOptions,
) -> Result<u64> {
    let io_err = |e: io::Error| Error::io("writing squashfs tables", e);
    let start = *pos;
    let mut meta = MetaWriter::new(opts.compression, opts.block_size)?;
    meta.write(data)?;
    let (bytes, starts) = meta.finish()?;
    out.write_all(&bytes).map_err(io_err)?;
    *pos += bytes.len() as u64;
    let index_start = *pos;
    for s in starts {
        out.write_all(&(start + u64::from(s)).to_le_bytes())
            .map_err(io_err)?;
        *pos += 8;
    }
    Ok(index_start)
}

fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir => DIR,
        Kind::File { .. } => FILE,
        Kind::Symlink { .. } => SYMLINK,
        Kind::BlockDevice { .. } => BLKDEV,
        Kind::CharDevice { .. } => CHRDEV,
        Kind::Fifo => FIFO,
    }
}

fn base_header(
    buf: &mut Vec<u8>,
    inode_type: u16,
    node: &Node,
    ids: &mut Ids,
    number: u32,
    mtime: u32,
    path: &str,
) -> Result<()> {
    buf.extend_from_slice(&inode_type.to_le_bytes());
    buf.extend_from_slice(&((node.meta.mode & 0o7777) as u16).to_le_bytes());
    buf.extend_from_slice(&ids.index(node.meta.uid, path)?.to_le_bytes());
    buf.extend_from_slice(&ids.index(node.meta.gid, path)?.to_le_bytes());
    buf.extend_from_slice(&mtime.to_le_bytes());
    buf.extend_from_slice(&number.to_le_bytes());
    Ok(())
}

/// The inode of a non-directory node.
#[allow(clippy::too_many_arguments)]
fn file_inode(
    node: &Node,
    block_size: u64,
    number: u32,
    nlink: u32,
    data: Option<&FileData>,
    placed: &[(u64, u32)],
    ids: &mut Ids,
    xattrs: &mut Xattrs,
    path: &str,
    skipped: &mut Vec<String>,
    mtime: u32,
) -> Result<Vec<u8>> {
    let xattr = xattrs.index(&node.meta.xattrs, path, skipped);
    let has_xattr = xattr != INVALID_XATTR;
    let mut buf = Vec::with_capacity(64);
    match &node.kind {
        Kind::File { size, .. } => {
            let empty = FileData {
                size: *size,
                ..FileData::default()
            };
            let fd = data.unwrap_or(&empty);
            let seqs = fd.first_seq.map(|s| s..s + fd.blocks).unwrap_or(0..0);
            let start = match fd.first_seq {
                Some(s) => placed[s].0,
                None => 0,
            };
            // Bytes held by sparse (all-zero, size 0) blocks.
            let sparse: u64 = seqs
                .clone()
                .filter(|&s| placed[s].1 == 0)
                .map(|s| {
                    let offset = (s - seqs.start) as u64 * block_size;
                    block_size.min(fd.size - offset)
                })
                .sum();
            let (frag, frag_off) = fd.fragment.unwrap_or((INVALID_FRAG, 0));
            let long = nlink > 1 || *size >= 1 << 32 || start >= 1 << 32 || sparse > 0 || has_xattr;
            base_header(
                &mut buf,
                if long { LREG } else { FILE },
                node,
                ids,
                number,
                mtime,
                path,
            )?;
            if long {
                buf.extend_from_slice(&start.to_le_bytes());
                buf.extend_from_slice(&size.to_le_bytes());
                let sparse = if sparse > 0 && sparse >= *size {
                    size - 1
                } else {
                    sparse
                };
                buf.extend_from_slice(&sparse.to_le_bytes());
                buf.extend_from_slice(&nlink.to_le_bytes());
                buf.extend_from_slice(&frag.to_le_bytes());
                buf.extend_from_slice(&frag_off.to_le_bytes());
                buf.extend_from_slice(&xattr.to_le_bytes());
            } else {
                buf.extend_from_slice(&(start as u32).to_le_bytes());
                buf.extend_from_slice(&frag.to_le_bytes());
                buf.extend_from_slice(&frag_off.to_le_bytes());
                buf.extend_from_slice(&(*size as u32).to_le_bytes());
            }
            for s in seqs {
                buf.extend_from_slice(&placed[s].1.to_le_bytes());
            }
        }
        Kind::Symlink { target } => {
            base_header(
                &mut buf,
                if has_xattr { LSYMLINK } else { SYMLINK },
                node,
                ids,
                number,
                mtime,
                path,
            )?;
            buf.extend_from_slice(&nlink.to_le_bytes());
            buf.extend_from_slice(&(target.len() as u32).to_le_bytes());
            buf.extend_from_slice(target);
            if has_xattr {
                buf.extend_from_slice(&xattr.to_le_bytes());
            }
        }
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            let is_char = matches!(node.kind, Kind::CharDevice { .. });
            let t = match (is_char, has_xattr) {
                (true, false) => CHRDEV,
                (true, true) => LCHRDEV,
                (false, false) => BLKDEV,
                (false, true) => LBLKDEV,
            };
            if *major > 0xfff || *minor > 0xfffff {
                return Err(Error::bad_input(
                    path.to_string(),
                    format!(
                        "device {major}:{minor} does not fit squashfs's 12-bit major, 20-bit minor"
                    ),
                ));
            }
            base_header(&mut buf, t, node, ids, number, mtime, path)?;
            buf.extend_from_slice(&nlink.to_le_bytes());
            let rdev = (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12);
            buf.extend_from_slice(&rdev.to_le_bytes());
            if has_xattr {
                buf.extend_from_slice(&xattr.to_le_bytes());
            }
        }
        Kind::Fifo => {
            base_header(
                &mut buf,
                if has_xattr { LFIFO } else { FIFO },
                node,
                ids,
                number,
                mtime,
                path,
            )?;
            buf.extend_from_slice(&nlink.to_le_bytes());
            if has_xattr {
                buf.extend_from_slice(&xattr.to_le_bytes());
            }
        }
        Kind::Dir => unreachable!("directories are written by the directory walk"),
    }
    Ok(buf)
}
