//! `sif` and `sif-info`.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::image::{AccessOpts, human_bytes, parse_ref};
use super::{GlobalOpts, print_json};
use crate::encode::sif;
use crate::encode::squashfs::{Compression, SquashfsOptions, SquashfsReport};
use crate::pipeline::convert::{ConvertOptions, convert};
use crate::reference::ImageRef;
use crate::sink::sif::SifSink;
use crate::transform::apptainer::BaseImage;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct SifArgs {
    /// Image to convert, e.g. docker://REG/REPO:TAG or oci:DIR:TAG.
    #[arg(value_parser = parse_ref)]
    pub image: ImageRef,
    /// The SIF file to write (written beside it, then renamed).
    pub output: PathBuf,
    /// Squashfs compression: gzip (every kernel and squashfuse reads it), zstd, xz, lz4.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "xz", "lz4"])]
    pub compression: String,
    /// Compression level (gzip 1-12, default 9; zstd 1-22, default 15; xz 0-9, default 6).
    #[arg(long)]
    pub level: Option<i64>,
    /// Squashfs block size in bytes (power of two, 4096 to 1048576).
    #[arg(long, default_value_t = 131072)]
    pub block_size: u32,
    /// Byte-identical output for the same image: nil UUID, fixed times, times
    /// clamped to SOURCE_DATE_EPOCH (or the image's creation time). Implied by
    /// SOURCE_DATE_EPOCH.
    #[arg(long)]
    pub reproducible: bool,
    /// Compression threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub readable: WorldReadableArg,
    #[command(flatten)]
    pub access: AccessOpts,
}

/// The world-readable rule as an option (`gridship sif`, `cvmfs publish`;
/// promote runs it unless --no-world-readable).
#[derive(Debug, Clone, Args)]
pub struct WorldReadableArg {
    /// Give group and others the owner's read and execute/search bits on
    /// every file and directory (never write, setuid or setgid), so a grid
    /// job's pool account can read a home made 0700 by adduser.
    #[arg(long)]
    pub world_readable: bool,
}

#[derive(Serialize)]
struct SifView {
    image: String,
    output: PathBuf,
    sha256: String,
    input_bytes: u64,
    output_bytes: u64,
    seconds: f64,
    compression: Compression,
    block_size: u32,
    reproducible: bool,
    squashfs: SquashfsReport,
    /// Rules asked for on the command line (--world-readable), in order.
    rules: Vec<crate::transform::RuleReport>,
    transform: crate::transform::RuleReport,
    /// What the user should know (a home closed to pool accounts).
    warnings: Vec<String>,
}

/// SOURCE_DATE_EPOCH as seconds, if set (a bad value is bad input).
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Error::BadInput {
                input: format!("SOURCE_DATE_EPOCH={v}"),
                place: String::new(),
                reason: "not a number of seconds since 1970".into(),
                hint: Some("e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)".into()),
            }),
        _ => Ok(None),
    }
}

pub fn sif(global: &GlobalOpts, args: &SifArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let compression = Compression::parse(&args.compression, args.level)?;
    SquashfsOptions::check_block_size(args.block_size)?;
    let epoch = source_date_epoch()?;
    let reproducible = args.reproducible || epoch.is_some();

    let ctx = args.access.context(global);
    let opts = ConvertOptions {
        world_readable: args.readable.world_readable,
        warn_closed_homes: true,
        merge_cache: None,
    };
    let (done, sink) = convert(&args.image, &ctx, &opts, |image| {
        // The build time: SOURCE_DATE_EPOCH, else (reproducible) the
        // image's creation time, else now.
        let build_time = match (epoch, reproducible) {
            (Some(e), _) => e,
            (None, true) => image
                .config
                .created
                .as_deref()
                .and_then(crate::clock::parse_rfc3339)
                .unwrap_or(0),
            (None, false) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        let mut squashfs = SquashfsOptions::new(compression);
        squashfs.block_size = args.block_size;
        if let Some(t) = args.threads {
            squashfs.threads = t.max(1);
        }
        if reproducible {
            let t = build_time.clamp(0, u32::MAX as i64) as u32;
            squashfs.mkfs_time = t;
            squashfs.clamp_mtime = Some(t);
        }
        let base = match &args.image {
            ImageRef::Registry(r) => Some(BaseImage {
                name: r.with_tag(r.tag.as_deref().unwrap_or("latest")).to_string(),
                digest: image.manifest_desc.digest.to_string(),
            }),
            _ => None,
        };
        Ok(SifSink {
            dest: args.output.clone(),
            uri: args.image.to_string(),
            base,
            created: build_time,
            reproducible,
            squashfs,
            report: None,
        })
    })?;
    for w in &done.run.warnings {
        tracing::warn!("{w}");
    }
    let report = sink.report.expect("written");
    let image = &done.image;
    let view = SifView {
        image: image.name.clone(),
        output: args.output.clone(),
        sha256: done.artifacts[0].digest.clone().unwrap_or_default(),
        input_bytes: image.layers().iter().map(|l| l.size).sum(),
        output_bytes: done.artifacts[0].bytes,
        seconds: started.elapsed().as_secs_f64(),
        compression,
        block_size: args.block_size,
        reproducible,
        squashfs: report.squashfs,
        rules: report.rules,
        transform: report.transform,
        warnings: done.run.warnings,
    };
    if global.json {
        return print_json(&view);
    }
    for x in &view.squashfs.skipped_xattrs {
        tracing::warn!("xattr not representable in squashfs, skipped: {x}");
    }
    println!(
        "wrote {} from {}\n  {} ({} of layers in), {} compression, {} inodes, {} duplicate files, {:.1}s\n  {}",
        view.output.display(),
        view.image,
        human_bytes(view.output_bytes),
        human_bytes(view.input_bytes),
        compression.name(),
        view.squashfs.inodes,
        view.squashfs.duplicate_files,
        view.seconds,
        view.sha256
    );
    for r in &view.rules {
        println!(
            "  {}: {} entries widened (see --json for each)",
            r.rule,
            r.changed.len()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct SifInfoArgs {
    /// A SIF file.
    pub file: PathBuf,
}

pub fn sif_info(global: &GlobalOpts, args: &SifInfoArgs) -> anyhow::Result<()> {
    let info = sif::read_sif(&args.file)?;
    if global.json {
        return print_json(&info);
    }
    println!("File:        {}", args.file.display());
    println!("Arch:        {}", info.arch);
    println!("UUID:        {}", info.uuid);
    println!("Created:     {}", info.created);
    println!(
        "Descriptors: {} used of {} (at {}), data {}+{}",
        info.descriptors_total - info.descriptors_free,
        info.descriptors_total,
        info.descriptors_offset,
        info.data_offset,
        info.data_size
    );
    println!(
        "{:<4} {:<6} {:<14} {:>10} {:>12}  NAME",
        "ID", "GROUP", "TYPE", "OFFSET", "SIZE"
    );
    for d in &info.descriptors {
        let kind = match &d.partition {
            Some(p) => format!(
                "FS ({}/{}/{})",
                if p.fs_type == sif::FS_SQUASHFS {
                    "Squashfs"
                } else {
                    "Other"
                },
                if p.part_type == sif::PART_PRIMSYS {
                    "*System"
                } else {
                    "Other"
                },
                p.arch
            ),
            None => d.type_name.clone(),
        };
        println!(
            "{:<4} {:<6} {:<14} {:>10} {:>12}  {}",
            d.id, d.group, kind, d.offset, d.size, d.name
        );
    }
    Ok(())
}
