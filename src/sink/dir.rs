//! The directory sink: a transformed tree unpacked into a new directory
//! (`gridship unpack`, promote `--to dir`), through crate::encode::dir.

use std::path::PathBuf;

use super::{Artifact, Sink, SinkInput, Spec};
use crate::Result;
use crate::encode::dir::{DirReport, UnpackOptions, check_destination, unpack};

pub struct DirSink {
    /// Absent or empty; the tree is built beside it and renamed into place.
    pub dest: PathBuf,
    pub options: UnpackOptions,
    /// After [`Sink::write`]: what was written, and the tree's entries.
    pub report: Option<(DirReport, usize)>,
}

impl DirSink {
    pub fn new(dest: PathBuf) -> Result<DirSink> {
        // Before any layer is read, so a wrong path fails at once.
        check_destination(&dest)?;
        Ok(DirSink {
            dest,
            options: UnpackOptions::for_current_user(),
            report: None,
        })
    }

    /// Promote's directory: OUT/NAME.
    pub fn from_spec(spec: &Spec) -> Result<Box<dyn Sink>> {
        Ok(Box::new(DirSink::new(spec.out.join(&spec.name))?))
    }
}

impl Sink for DirSink {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn write(&mut self, input: &SinkInput) -> Result<Vec<Artifact>> {
        let tree = input.tree(self)?;
        let report = unpack(&tree.index, &tree.data, &self.dest, &self.options)?;
        let bytes = report.bytes;
        self.report = Some((report, tree.index.len()));
        Ok(vec![Artifact {
            kind: "dir".into(),
            path: self.dest.display().to_string(),
            digest: None,
            bytes,
            runs_as: None,
        }])
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.report
            .as_ref()
            .and_then(|(r, _)| serde_json::to_value(r).ok())
    }
}
