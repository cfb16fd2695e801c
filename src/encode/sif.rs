//! SIF (Singularity Image Format) files as Apptainer writes them: a 128-byte
//! header, 48 descriptors at 4096, data from 32176; a Deffile, the
//! `inspect-metadata.json` and `oci-config.json` objects (sorted by name),
//! and one squashfs PrimSys partition aligned to 4096. Also a reader, for
//! `gridship sif-info` and the tests. Layout facts: sylabs/apptainer sif
//! `pkg/sif` (all little-endian, no padding between fields).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;

use crate::error::IoContext;
use crate::{Error, Result};

pub const LAUNCH_SCRIPT: &[u8] = b"#!/usr/bin/env run-singularity\n";
const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
const VERSION: &[u8; 3] = b"01\0";
const HEADER_SIZE: usize = 128;
const DESCRIPTORS_OFFSET: u64 = 4096;
const DESCRIPTORS_TOTAL: usize = 48;
const DESCRIPTOR_SIZE: usize = 585;
pub const DATA_OFFSET: u64 = DESCRIPTORS_OFFSET + (DESCRIPTORS_TOTAL * DESCRIPTOR_SIZE) as u64;
const GROUP_MASK: u32 = 0xf000_0000;
const PARTITION_ALIGN: u64 = 4096;
/// `time.Time{}.Unix()`: what Go's SIF library stores in deterministic mode.
pub const DETERMINISTIC_TIME: i64 = -62_135_596_800;

pub const DATA_DEFFILE: i32 = 0x4001;
pub const DATA_PARTITION: i32 = 0x4004;
pub const DATA_GENERIC_JSON: i32 = 0x4006;
pub const FS_SQUASHFS: i32 = 1;
pub const PART_PRIMSYS: i32 = 2;

/// SIF architecture code ("02" for amd64) of an OCI architecture name.
pub fn arch_code(oci_arch: &str) -> &'static str {
    match oci_arch {
        "386" => "01",
        "amd64" => "02",
        "arm" => "03",
        "arm64" => "04",
        "ppc64" => "05",
        "ppc64le" => "06",
        "mips" => "07",
        "mipsle" => "08",
        "mips64" => "09",
        "mips64le" => "10",
        "s390x" => "11",
        "riscv64" => "12",
        "loong64" => "13",
        _ => "00",
    }
}

pub fn arch_name(code: &str) -> &'static str {
    match code {
        "01" => "386",
        "02" => "amd64",
        "03" => "arm",
        "04" => "arm64",
        "05" => "ppc64",
        "06" => "ppc64le",
        "07" => "mips",
        "08" => "mipsle",
        "09" => "mips64",
        "10" => "mips64le",
        "11" => "s390x",
        "12" => "riscv64",
        "13" => "loong64",
        _ => "unknown",
    }
}

/// How a SIF is stamped: times and UUID, or deterministic.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Seconds for every time field.
    pub time: i64,
    pub uuid: [u8; 16],
}

impl Stamp {
    /// Reproducible: nil UUID and Go's zero time, as Apptainer does with
    /// SOURCE_DATE_EPOCH.
    pub fn deterministic() -> Stamp {
        Stamp {
            time: DETERMINISTIC_TIME,
            uuid: [0; 16],
        }
    }

    /// Now, with a random version 4 UUID.
    pub fn now() -> Result<Stamp> {
        let mut uuid = [0u8; 16];
        rustix::rand::getrandom(&mut uuid[..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| Error::io("reading random bytes for the SIF UUID", e.into()))?;
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Ok(Stamp { time, uuid })
    }
}

/// A descriptor as written or read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Descriptor {
    pub id: u32,
    pub data_type: i32,
    pub type_name: String,
    pub group: u32,
    pub linked: u32,
    pub offset: i64,
    pub size: i64,
    pub size_with_padding: i64,
    pub created: i64,
    pub modified: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionInfo {
    pub fs_type: i32,
    pub part_type: i32,
    pub arch: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SifInfo {
    pub launch_script: String,
    pub version: String,
    pub arch: String,
    pub uuid: String,
    pub created: i64,
    pub modified: i64,
    pub descriptors_free: i64,
    pub descriptors_total: i64,
    pub descriptors_offset: i64,
    pub descriptors_size: i64,
    pub data_offset: i64,
    pub data_size: i64,
    pub descriptors: Vec<Descriptor>,
}

impl SifInfo {
    /// The primary system partition (exactly one in a valid image).
    pub fn primary_partition(&self) -> Option<&Descriptor> {
        self.descriptors.iter().find(|d| {
            d.data_type == DATA_PARTITION
                && d.partition
                    .as_ref()
                    .is_some_and(|p| p.part_type == PART_PRIMSYS)
        })
    }
}

pub fn type_name(t: i32) -> &'static str {
    match t {
        0x4001 => "Def.FILE",
        0x4002 => "Env.Vars",
        0x4003 => "JSON.Labels",
        0x4004 => "FS",
        0x4005 => "Signature",
        0x4006 => "JSON.Generic",
        0x4007 => "Generic/Raw",
        0x4008 => "Cryptographic Message",
        0x4009 => "SBOM",
        0x400a => "OCI.RootIndex",
        0x400b => "OCI.Blob",
        _ => "Unknown",
    }
}

fn uuid_string(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The objects of a SIF, in the order Apptainer writes them.
pub struct SifContent<'a> {
    pub deffile: &'a [u8],
    /// (name, bytes), written in name order.
    pub json: Vec<(&'a str, &'a [u8])>,
    /// OCI architecture of the partition.
    pub arch: &'a str,
}

/// Write a SIF to `dest`: objects, then the partition that `write_partition`
/// produces at a 4096-aligned offset (it returns the partition's size and
/// must leave the writer at its end). Written to a temporary file beside
/// `dest`, mode 0755, and renamed into place.
pub fn write_sif<T>(
    dest: &Path,
    content: &SifContent<'_>,
    stamp: Stamp,
    write_partition: impl FnOnce(&mut BufWriter<File>) -> Result<(u64, T)>,
) -> Result<T> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".gridship-sif-")
        .tempfile_in(&dir)
        .at("creating a temporary file in", &dir)?;
    let mut out = BufWriter::with_capacity(1 << 20, tmp.reopen().at("opening", tmp.path())?);
    let io_err = |e: io::Error| Error::io_path(dest, "writing", e);

    out.write_all(&vec![0u8; DATA_OFFSET as usize])
        .map_err(io_err)?;
    let mut pos = DATA_OFFSET;
    let mut descriptors: Vec<Vec<u8>> = Vec::new();
    let mut prev_end = DATA_OFFSET;
    let mut push = |descriptors: &mut Vec<Vec<u8>>,
                    data_type: i32,
                    name: &str,
                    offset: u64,
                    size: u64,
                    extra: &[u8]| {
        let id = descriptors.len() as u32 + 1;
        let mut d = Vec::with_capacity(DESCRIPTOR_SIZE);
        d.extend_from_slice(&data_type.to_le_bytes());
        d.push(1); // used
        d.extend_from_slice(&id.to_le_bytes());
        d.extend_from_slice(&(1 | GROUP_MASK).to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes()); // linked: none
        d.extend_from_slice(&(offset as i64).to_le_bytes());
        d.extend_from_slice(&(size as i64).to_le_bytes());
        d.extend_from_slice(&((offset - prev_end + size) as i64).to_le_bytes());
        d.extend_from_slice(&stamp.time.to_le_bytes());
        d.extend_from_slice(&stamp.time.to_le_bytes());
        d.extend_from_slice(&0i64.to_le_bytes()); // uid (deprecated)
        d.extend_from_slice(&0i64.to_le_bytes()); // gid (deprecated)
        let mut namebuf = [0u8; 128];
        namebuf[..name.len().min(127)].copy_from_slice(&name.as_bytes()[..name.len().min(127)]);
        d.extend_from_slice(&namebuf);
        let mut extrabuf = [0u8; 384];
        extrabuf[..extra.len()].copy_from_slice(extra);
        d.extend_from_slice(&extrabuf);
        debug_assert_eq!(d.len(), DESCRIPTOR_SIZE);
        descriptors.push(d);
        prev_end = offset + size;
    };

    out.write_all(content.deffile).map_err(io_err)?;
    push(
        &mut descriptors,
        DATA_DEFFILE,
        "",
        pos,
        content.deffile.len() as u64,
        &[],
    );
    pos += content.deffile.len() as u64;
    let mut json = content.json.clone();
    json.sort_by_key(|(n, _)| *n);
    for (name, data) in json {
        out.write_all(data).map_err(io_err)?;
        push(
            &mut descriptors,
            DATA_GENERIC_JSON,
            name,
            pos,
            data.len() as u64,
            &[],
        );
        pos += data.len() as u64;
    }
    let part_offset = pos.div_ceil(PARTITION_ALIGN) * PARTITION_ALIGN;
    out.write_all(&vec![0u8; (part_offset - pos) as usize])
        .map_err(io_err)?;
    let (part_size, result) = write_partition(&mut out)?;
    let arch = arch_code(content.arch);
    let mut extra = Vec::with_capacity(11);
    extra.extend_from_slice(&FS_SQUASHFS.to_le_bytes());
    extra.extend_from_slice(&PART_PRIMSYS.to_le_bytes());
    extra.extend_from_slice(arch.as_bytes());
    extra.push(0);
    push(
        &mut descriptors,
        DATA_PARTITION,
        "",
        part_offset,
        part_size,
        &extra,
    );
    let data_end = part_offset + part_size;

    let mut header = Vec::with_capacity(HEADER_SIZE);
    let mut launch = [0u8; 32];
    launch[..LAUNCH_SCRIPT.len()].copy_from_slice(LAUNCH_SCRIPT);
    header.extend_from_slice(&launch);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(VERSION);
    header.extend_from_slice(arch.as_bytes());
    header.push(0);
    header.extend_from_slice(&stamp.uuid);
    header.extend_from_slice(&stamp.time.to_le_bytes());
    header.extend_from_slice(&stamp.time.to_le_bytes());
    header.extend_from_slice(&((DESCRIPTORS_TOTAL - descriptors.len()) as i64).to_le_bytes());
    header.extend_from_slice(&(DESCRIPTORS_TOTAL as i64).to_le_bytes());
    header.extend_from_slice(&(DESCRIPTORS_OFFSET as i64).to_le_bytes());
    header.extend_from_slice(&((DESCRIPTORS_TOTAL * DESCRIPTOR_SIZE) as i64).to_le_bytes());
    header.extend_from_slice(&(DATA_OFFSET as i64).to_le_bytes());
    header.extend_from_slice(&((data_end - DATA_OFFSET) as i64).to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_SIZE);

    out.seek(SeekFrom::Start(0)).map_err(io_err)?;
    out.write_all(&header).map_err(io_err)?;
    out.seek(SeekFrom::Start(DESCRIPTORS_OFFSET))
        .map_err(io_err)?;
    for d in &descriptors {
        out.write_all(d).map_err(io_err)?;
    }
    let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.set_len(data_end).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).map_err(io_err)?;
    crate::fsutil::persist(tmp, dest)?;
    Ok(result)
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}
fn le_i32(b: &[u8]) -> i32 {
    i32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Read a SIF's header and descriptors, checking what a reader must.
pub fn read_sif(path: &Path) -> Result<SifInfo> {
    let mut f = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::bad_input(path.display().to_string(), "no such file")
        } else {
            Error::io_path(path, "opening", e)
        }
    })?;
    let bad = |reason: String| Error::bad_input(path.display().to_string(), reason);
    let mut header = [0u8; HEADER_SIZE];
    f.read_exact(&mut header)
        .map_err(|_| bad("too short for a SIF header".into()))?;
    if &header[32..42] != MAGIC {
        return Err(bad("not a SIF file (no SIF_MAGIC)".into()));
    }
    if &header[42..45] != VERSION {
        return Err(bad(format!(
            "SIF version {:?} is not supported",
            cstr(&header[42..45])
        )));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&header[48..64]);
    let total = le_i64(&header[88..]);
    let doff = le_i64(&header[96..]);
    if !(0..=1024).contains(&total) || doff < HEADER_SIZE as i64 {
        return Err(bad(format!(
            "implausible descriptor table ({total} at {doff})"
        )));
    }
    let mut table = vec![0u8; total as usize * DESCRIPTOR_SIZE];
    f.seek(SeekFrom::Start(doff as u64)).at("reading", path)?;
    f.read_exact(&mut table)
        .map_err(|_| bad("the descriptor table is cut short".into()))?;
    let len = f.metadata().at("reading", path)?.len() as i64;
    let mut descriptors = Vec::new();
    for raw in table.chunks(DESCRIPTOR_SIZE) {
        if raw[4] == 0 {
            continue;
        }
        let data_type = le_i32(raw);
        let offset = le_i64(&raw[17..]);
        let size = le_i64(&raw[25..]);
        if offset < 0 || size < 0 || offset + size > len {
            return Err(bad(format!(
                "descriptor {} points past the end of the file ({offset}+{size} > {len})",
                le_u32(&raw[5..])
            )));
        }
        let extra = &raw[201..];
        descriptors.push(Descriptor {
            id: le_u32(&raw[5..]),
            data_type,
            type_name: type_name(data_type).into(),
            group: le_u32(&raw[9..]) & !GROUP_MASK,
            linked: le_u32(&raw[13..]),
            offset,
            size,
            size_with_padding: le_i64(&raw[33..]),
            created: le_i64(&raw[41..]),
            modified: le_i64(&raw[49..]),
            name: cstr(&raw[73..201]),
            partition: (data_type == DATA_PARTITION).then(|| PartitionInfo {
                fs_type: le_i32(extra),
                part_type: le_i32(&extra[4..]),
                arch: arch_name(&cstr(&extra[8..11])).into(),
            }),
        });
    }
    Ok(SifInfo {
        launch_script: cstr(&header[..32]),
        version: cstr(&header[42..45]),
        arch: arch_name(&cstr(&header[45..48])).into(),
        uuid: uuid_string(&uuid),
        created: le_i64(&header[64..]),
        modified: le_i64(&header[72..]),
        descriptors_free: le_i64(&header[80..]),
        descriptors_total: total,
        descriptors_offset: doff,
        descriptors_size: le_i64(&header[104..]),
        data_offset: le_i64(&header[112..]),
        data_size: le_i64(&header[120..]),
        descriptors,
    })
}

/// Read one object's bytes (small objects: Deffile, JSON).
pub fn read_object(path: &Path, d: &Descriptor) -> Result<Vec<u8>> {
    if d.size > 64 << 20 {
        return Err(Error::bad_input(
            path.display().to_string(),
            format!("object {} is too large to read whole", d.id),
        ));
    }
    let mut f = File::open(path).at("opening", path)?;
    f.seek(SeekFrom::Start(d.offset as u64))
        .at("reading", path)?;
    let mut buf = vec![0u8; d.size as usize];
    f.read_exact(&mut buf).at("reading", path)?;
    Ok(buf)
}
