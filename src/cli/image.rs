//! `copy`, `inspect`, `unpack`: the image commands.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{GlobalOpts, print_json};
use crate::image::{Image, PlatformWanted};
use crate::pipeline::convert::{ConvertOptions, convert};
use crate::reference::ImageRef;
use crate::registry::RegistryOptions;
use crate::sink::dir::DirSink;
use crate::store::default_store_path;
use crate::transport::{self, Context};
use crate::{Error, Result};

/// How to reach registries and which platform to take; flattened into every
/// command that reads or writes images.
#[derive(Debug, Clone, Args)]
pub struct AccessOpts {
    /// Registry credentials USER:PASSWORD (default: the Docker client config).
    #[arg(long, value_name = "USER:PASSWORD", value_parser = parse_creds)]
    pub creds: Option<(String, String)>,

    /// Require HTTPS with a verified certificate; `--tls-verify=false` also
    /// allows plain HTTP (for a local registry).
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,

    /// Extra CA certificates (*.crt) for the registry.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,

    /// Platform to take from a multi-arch index: amd64, arm64/v8, linux/arm/v7.
    /// Default: the host's.
    #[arg(long, value_name = "PLATFORM", value_parser = parse_arch)]
    pub arch: Option<PlatformWanted>,

    /// Freeze a container: source (docker pause) while the engine captures
    /// it; by default it runs on.
    #[arg(long)]
    pub pause: bool,
}

fn parse_creds(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err("write the credentials as USER:PASSWORD".into()),
    }
}

fn parse_arch(s: &str) -> std::result::Result<PlatformWanted, String> {
    PlatformWanted::parse(s).map_err(|e| e.to_string())
}

pub fn parse_ref(s: &str) -> std::result::Result<ImageRef, String> {
    s.parse::<ImageRef>().map_err(|e| e.to_string())
}

impl AccessOpts {
    pub fn context(&self, global: &GlobalOpts) -> Context {
        Context {
            store: global.store.clone().unwrap_or_else(default_store_path),
            registry: RegistryOptions {
                creds: self.creds.clone(),
                tls_verify: self.tls_verify,
                cert_dir: self.cert_dir.clone(),
            },
            platform: self.arch.clone().unwrap_or_else(PlatformWanted::host),
            pause_containers: self.pause,
        }
    }
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source image, e.g. docker://REG/REPO:TAG, docker-daemon:NAME:TAG, oci:DIR:TAG.
    #[arg(value_parser = parse_ref)]
    pub source: ImageRef,
    /// Destination, in the same spelling.
    #[arg(value_parser = parse_ref)]
    pub destination: ImageRef,
    #[command(flatten)]
    pub access: AccessOpts,
}

pub fn copy(global: &GlobalOpts, args: &CopyArgs) -> anyhow::Result<()> {
    let ctx = args.access.context(global);
    let report = transport::copy(&args.source, &args.destination, &ctx)?;
    if global.json {
        return print_json(&report);
    }
    println!(
        "copied {} -> {}\n  manifest {} ({} blobs written, {} total)",
        report.source,
        report.destination,
        report.manifest_digest,
        report.blobs_copied,
        human_bytes(report.bytes)
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(value_parser = parse_ref)]
    pub image: ImageRef,
    #[command(flatten)]
    pub access: AccessOpts,
}

#[derive(Serialize)]
struct LayerView<'a> {
    digest: &'a crate::digest::Digest,
    media_type: &'a str,
    size: u64,
    diff_id: &'a crate::digest::Digest,
}

#[derive(Serialize)]
struct InspectView<'a> {
    name: &'a str,
    manifest: &'a crate::store::Descriptor,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a crate::store::Descriptor>,
    platform: String,
    created: Option<&'a str>,
    layers: Vec<LayerView<'a>>,
    compressed_size: u64,
    config: serde_json::Value,
}

fn inspect_view(image: &Image) -> Result<InspectView<'_>> {
    let config: serde_json::Value = serde_json::from_slice(&image.config_raw)
        .map_err(|e| Error::bad_input(image.name.clone(), format!("config: {e}")))?;
    let c = &image.config;
    Ok(InspectView {
        name: &image.name,
        manifest: &image.manifest_desc,
        index: image.index_desc.as_ref(),
        platform: format!(
            "{}/{}{}",
            c.os,
            c.architecture,
            c.variant
                .as_ref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        ),
        created: c.created.as_deref(),
        layers: image
            .layers()
            .iter()
            .zip(&c.rootfs.diff_ids)
            .map(|(l, d)| LayerView {
                digest: &l.digest,
                media_type: &l.media_type,
                size: l.size,
                diff_id: d,
            })
            .collect(),
        compressed_size: image.layers().iter().map(|l| l.size).sum(),
        config,
    })
}

pub fn inspect(global: &GlobalOpts, args: &InspectArgs) -> anyhow::Result<()> {
    let ctx = args.access.context(global);
    let image = transport::open(&args.image, &ctx)?;
    let view = inspect_view(&image)?;
    if global.json {
        return print_json(&view);
    }
    let c = &image.config.config;
    println!("Image:      {}", view.name);
    println!(
        "Manifest:   {} ({}, {} bytes)",
        view.manifest.digest, view.manifest.media_type, view.manifest.size
    );
    if let Some(i) = view.index {
        println!("Index:      {} ({})", i.digest, i.media_type);
    }
    println!("Platform:   {}", view.platform);
    if let Some(created) = view.created {
        println!("Created:    {created}");
    }
    println!("Config:     {}", image.manifest.config.digest);
    println!(
        "Layers:     {} ({} compressed)",
        view.layers.len(),
        human_bytes(view.compressed_size)
    );
    for (i, l) in view.layers.iter().enumerate() {
        println!(
            "  {:>3}  {}  {:>10}  {}",
            i + 1,
            l.digest,
            human_bytes(l.size),
            l.media_type
        );
    }
    let list = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| serde_json::to_string(v).unwrap_or_default())
            .unwrap_or_else(|| "-".into())
    };
    println!("Entrypoint: {}", list(&c.entrypoint));
    println!("Cmd:        {}", list(&c.cmd));
    println!("WorkingDir: {}", c.working_dir.as_deref().unwrap_or("-"));
    println!(
        "User:       {}",
        c.user.as_deref().filter(|u| !u.is_empty()).unwrap_or("-")
    );
    for e in c.env.iter().flatten() {
        println!("Env:        {e}");
    }
    for (k, v) in c.labels.iter().flatten() {
        println!("Label:      {k}={v}");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    #[arg(value_parser = parse_ref)]
    pub image: ImageRef,
    /// Directory to create (or an empty one); the tree is built beside it and
    /// renamed into place.
    pub dir: PathBuf,
    #[command(flatten)]
    pub access: AccessOpts,
}

#[derive(Serialize)]
struct UnpackView<'a> {
    image: &'a str,
    manifest: &'a crate::digest::Digest,
    dir: &'a std::path::Path,
    entries: usize,
    #[serde(flatten)]
    report: crate::encode::dir::DirReport,
    seconds: f64,
}

pub fn unpack(global: &GlobalOpts, args: &UnpackArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let sink = DirSink::new(args.dir.clone())?;
    let ctx = args.access.context(global);
    let (done, sink) = convert(&args.image, &ctx, &ConvertOptions::default(), |_| Ok(sink))?;
    let (report, entries) = sink.report.expect("written");
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    let image = &done.image;
    let view = UnpackView {
        image: &image.name,
        manifest: &image.manifest_desc.digest,
        dir: &args.dir,
        entries,
        report,
        seconds: started.elapsed().as_secs_f64(),
    };
    if global.json {
        return print_json(&view);
    }
    let r = &view.report;
    println!(
        "unpacked {} into {}\n  {} entries: {} directories, {} files ({}), {} symlinks, {} hardlinks, {} devices, {} fifos in {:.1}s",
        view.image,
        view.dir.display(),
        view.entries,
        r.kinds.directories,
        r.kinds.files,
        human_bytes(r.bytes),
        r.kinds.symlinks,
        r.kinds.hardlinks,
        r.kinds.devices,
        r.kinds.fifos,
        view.seconds
    );
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
