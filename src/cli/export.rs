//! `export`: an image's merged filesystem as one tar (file or stdout).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::image::{AccessOpts, human_bytes};
use super::{GlobalOpts, print_json};
use crate::Error;
use crate::encode::tar::{TarOptions, TarReport};
use crate::pipeline::convert::{ConvertOptions, convert};
use crate::reference::ImageRef;
use crate::sink::tar::TarSink;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(value_parser = parse_ref)]
    pub image: ImageRef,
    /// Tar file to write (built beside it and renamed into place), or `-`
    /// for stdout.
    pub file: PathBuf,
    /// Clamp every mtime to at most this time (seconds since the epoch), for
    /// reproducible output; older times are kept.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
    /// Leave out the `./` entry that carries the root directory's mode,
    /// owner and time (mksquashfs ignores it with a warning).
    #[arg(long)]
    pub omit_root: bool,
    #[command(flatten)]
    pub access: AccessOpts,
}

fn parse_ref(s: &str) -> std::result::Result<ImageRef, String> {
    s.parse::<ImageRef>().map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct ExportView<'a> {
    image: &'a str,
    manifest: &'a crate::digest::Digest,
    file: &'a Path,
    #[serde(flatten)]
    report: TarReport,
    seconds: f64,
}

pub fn export(global: &GlobalOpts, args: &ExportArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let to_stdout = args.file.as_os_str() == "-";
    if to_stdout && global.json {
        return Err(Error::BadInput {
            input: "--json".into(),
            place: String::new(),
            reason: "stdout carries the tar when FILE is `-`".into(),
            hint: Some("write the tar to a file to get the JSON report".into()),
        }
        .into());
    }
    // Before the pull and merge, so a wrong path fails at once.
    let sink = TarSink::new(
        (!to_stdout).then(|| args.file.clone()),
        TarOptions {
            reproducible: args.source_date_epoch,
            omit_root: args.omit_root,
        },
    )?;
    let ctx = args.access.context(global);
    let (done, sink) = convert(&args.image, &ctx, &ConvertOptions::default(), |_| Ok(sink))?;
    let image = &done.image;
    let report = sink.report.expect("written");
    let view = ExportView {
        image: &image.name,
        manifest: &image.manifest_desc.digest,
        file: &args.file,
        report,
        seconds: started.elapsed().as_secs_f64(),
    };
    if global.json {
        return print_json(&view);
    }
    let r = &view.report;
    let line = format!(
        "exported {} to {}\n  {} entries: {} directories, {} files ({}), {} symlinks, {} hardlinks, {} devices, {} fifos; {} of tar in {:.1}s",
        view.image,
        if to_stdout {
            "stdout".into()
        } else {
            view.file.display().to_string()
        },
        r.entries,
        r.kinds.directories,
        r.kinds.files,
        human_bytes(r.content_bytes),
        r.kinds.symlinks,
        r.kinds.hardlinks,
        r.kinds.devices,
        r.kinds.fifos,
        human_bytes(r.tar_bytes),
        view.seconds
    );
    // With `-`, stdout is the tar.
    if to_stdout {
        if !global.quiet {
            eprintln!("{line}");
        }
    } else {
        writeln!(std::io::stdout().lock(), "{line}")?;
    }
    Ok(())
}
