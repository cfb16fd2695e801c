//! The tar sink: a transformed tree as one tar (`gridship export`, promote
//! `--to tar`), a file written beside its name and renamed into place, or
//! stdout. The format is crate::encode::tar.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Artifact, Sink, SinkInput, Spec};
use crate::encode::tar::{TarOptions, TarReport, write_tar};
use crate::error::IoContext;
use crate::{Error, Result};

pub struct TarSink {
    /// None: stdout.
    pub dest: Option<PathBuf>,
    pub options: TarOptions,
    tmp: Option<tempfile::NamedTempFile>,
    /// After [`Sink::write`].
    pub report: Option<TarReport>,
}

impl TarSink {
    /// A tar at `dest` (None: stdout). The temporary file is made now, so
    /// a wrong path fails before any layer is read.
    pub fn new(dest: Option<PathBuf>, options: TarOptions) -> Result<TarSink> {
        let tmp = dest.as_deref().map(temp_beside).transpose()?;
        Ok(TarSink {
            dest,
            options,
            tmp,
            report: None,
        })
    }

    /// Promote's tar: OUT/NAME.tar, the tar of promote's OCI image layer
    /// (the tree's own times, as that layer has them).
    pub fn from_spec(spec: &Spec) -> Result<Box<dyn Sink>> {
        Ok(Box::new(TarSink::new(
            Some(spec.out.join(format!("{}.tar", spec.name))),
            TarOptions::default(),
        )?))
    }
}

impl Sink for TarSink {
    fn kind(&self) -> &'static str {
        "tar"
    }

    fn write(&mut self, input: &SinkInput) -> Result<Vec<Artifact>> {
        let tree = input.tree(self)?;
        let (Some(dest), Some(tmp)) = (&self.dest, self.tmp.take()) else {
            let report = write_tar(
                &tree.index,
                &tree.data,
                std::io::stdout().lock(),
                &self.options,
            )?;
            let bytes = report.tar_bytes;
            self.report = Some(report);
            return Ok(vec![Artifact {
                kind: "tar".into(),
                path: "-".into(),
                digest: None,
                bytes,
                runs_as: None,
            }]);
        };
        // Hashed while written: no second read for the digest.
        let mut w = crate::digest::HashingWriter::new(tmp.as_file());
        let report = write_tar(&tree.index, &tree.data, &mut w, &self.options)?;
        let (_, digest, _) = w.finish();
        tmp.as_file()
            .sync_all()
            .at("syncing", tmp.path().to_path_buf())?;
        crate::fsutil::persist(tmp, dest)?;
        let bytes = report.tar_bytes;
        self.report = Some(report);
        Ok(vec![Artifact {
            kind: "tar".into(),
            path: dest.display().to_string(),
            digest: Some(digest.to_string()),
            bytes,
            runs_as: None,
        }])
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.report
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
    }
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
