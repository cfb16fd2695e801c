//! Transforms: named rule sets that edit the merged index and the image
//! config, each reporting what it did (paths, bytes, reasons) so a site can
//! see and tune it. Sinks read the result; no transform writes anything.

pub mod apptainer;
pub mod overlay;

use serde::Serialize;

use crate::Result;
use crate::image::ImageConfig;
use crate::index::FsIndex;

/// One change a rule made.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// Absolute path in the image (or `config:KEY` for config edits).
    pub path: String,
    pub bytes: u64,
    pub reason: String,
}

/// The report line of one rule.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RuleReport {
    pub rule: String,
    pub description: String,
    pub added: Vec<Change>,
    pub removed: Vec<Change>,
    pub changed: Vec<Change>,
    pub warnings: Vec<String>,
}

impl RuleReport {
    pub fn new(rule: &str, description: &str) -> Self {
        RuleReport {
            rule: rule.into(),
            description: description.into(),
            ..Default::default()
        }
    }
    pub fn bytes_removed(&self) -> u64 {
        self.removed.iter().map(|c| c.bytes).sum()
    }
    pub fn bytes_added(&self) -> u64 {
        self.added.iter().map(|c| c.bytes).sum()
    }
    pub fn add(&mut self, path: impl Into<String>, bytes: u64, reason: impl Into<String>) {
        self.added.push(Change {
            path: path.into(),
            bytes,
            reason: reason.into(),
        });
    }
    pub fn remove(&mut self, path: impl Into<String>, bytes: u64, reason: impl Into<String>) {
        self.removed.push(Change {
            path: path.into(),
            bytes,
            reason: reason.into(),
        });
    }
    pub fn change(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.changed.push(Change {
            path: path.into(),
            bytes: 0,
            reason: reason.into(),
        });
    }
}

/// A rule set over the merged tree and the config.
pub trait Transform {
    /// Short stable name, used in reports and to select or skip the rule.
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn apply(
        &self,
        index: &mut FsIndex,
        config: &mut ImageConfig,
        report: &mut RuleReport,
    ) -> Result<()>;
}

/// Run transforms in order; one report per transform.
pub fn apply_all(
    transforms: &[&dyn Transform],
    index: &mut FsIndex,
    config: &mut ImageConfig,
) -> Result<Vec<RuleReport>> {
    let mut reports = Vec::new();
    for t in transforms {
        let mut report = RuleReport::new(t.name(), t.description());
        t.apply(index, config, &mut report)?;
        reports.push(report);
    }
    Ok(reports)
}
