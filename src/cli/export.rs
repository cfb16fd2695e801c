//! `export`: an image's merged filesystem as one tar (file or stdout).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::image::{AccessOpts, human_bytes};
use super::{GlobalOpts, print_json};
use crate::error::IoContext;
use crate::index::FsIndex;
use crate::reference::ImageRef;
use crate::sink::tar::{TarOptions, TarReport, write_tar};
use crate::transport;
use crate::{Error, Result};

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
    let tmp = if to_stdout {
        None
    } else {
        Some(temp_beside(&args.file)?)
    };
    let ctx = args.access.context(global);
    let image = transport::open(&args.image, &ctx)?;
    let index = FsIndex::from_image(&image)?;
    let opts = TarOptions {
        reproducible: args.source_date_epoch,
        omit_root: args.omit_root,
    };
    let report = match tmp {
        None => write_tar(&index, &image, std::io::stdout().lock(), &opts)?,
        Some(tmp) => {
            let report = write_tar(&index, &image, tmp.as_file(), &opts)?;
            tmp.as_file()
                .sync_all()
                .at("syncing", tmp.path().to_path_buf())?;
            crate::fsutil::persist(tmp, &args.file)?;
            report
        }
    };
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
        r.directories,
        r.files,
        human_bytes(r.content_bytes),
        r.symlinks,
        r.hardlinks,
        r.devices,
        r.fifos,
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

/// A temporary file in the destination's directory (so the rename is
/// atomic), created with the usual 0666 less umask.
fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let bad = |reason: &str| Error::bad_input(dest.display().to_string(), reason);
    let name = dest.file_name().ok_or_else(|| bad("has no file name"))?;
    if dest.is_dir() {
        return Err(bad("is a directory; give the tar file's name"));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::BadInput {
            input: dest.display().to_string(),
            place: String::new(),
            reason: format!("the directory {} does not exist", parent.display()),
            hint: Some("create it first, or give a file in an existing directory".into()),
        });
    }
    tempfile::Builder::new()
        .prefix(&format!(".{}.gridship-", name.to_string_lossy()))
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(parent)
        .at("creating a temporary file in", parent)
}
