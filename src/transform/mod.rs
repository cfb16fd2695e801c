//! Transforms: named rule sets that edit the merged index and the image
//! config, each reporting what it did (paths, bytes, reasons) so a site can
//! see and tune it. Sinks read the result; no transform writes anything.

pub mod apptainer;
pub mod overlay;
pub mod paths;
pub mod readable;
pub mod scan;
pub mod secrets;
pub mod slim;
pub mod sshd;

use serde::Serialize;

use std::collections::HashSet;

use crate::Result;
use crate::image::ImageConfig;
use crate::index::{FsIndex, Kind, Node, NodeId, display_path, is_under};

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

/// Remove every path `pick` gives a reason for, a directory with all below
/// it, except what `spare` covers (and the directories above a spared
/// path, whose other children are then judged one by one with the same
/// reason). Each removal is one line in `report`, with the bytes of the
/// regular files it held.
pub fn remove_where(
    index: &mut FsIndex,
    report: &mut RuleReport,
    pick: impl Fn(&[u8], NodeId, &Node) -> Option<String>,
    spare: impl Fn(&[u8]) -> bool,
) {
    let keys: Vec<Vec<u8>> = index.iter().map(|(k, _, _)| k.to_vec()).collect();
    // Directories whose reason their children inherit.
    let mut inherited: Vec<(Vec<u8>, String)> = Vec::new();
    let mut removed: Option<Vec<u8>> = None;
    for key in keys {
        if key.is_empty() {
            continue;
        }
        if removed.as_deref().is_some_and(|r| is_under(&key, r)) {
            continue;
        }
        while inherited.last().is_some_and(|(d, _)| !is_under(&key, d)) {
            inherited.pop();
        }
        let Some((id, node)) = index.get(&key) else {
            continue;
        };
        let Some(reason) =
            pick(&key, id, node).or_else(|| inherited.last().map(|(_, r)| r.clone()))
        else {
            continue;
        };
        if spare(&key) {
            continue;
        }
        let below = index.subtree(&key);
        if node.kind.is_dir() && below.iter().any(|k| spare(k)) {
            inherited.push((key, reason));
            continue;
        }
        let mut seen = HashSet::new();
        let bytes: u64 = std::iter::once(&key)
            .chain(below.iter())
            .filter_map(|k| index.get(k))
            .filter(|(id, _)| seen.insert(*id))
            .map(|(_, n)| match n.kind {
                Kind::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        index.remove_tree(&key);
        report.remove(display_path(&key), bytes, reason);
        removed = Some(key);
    }
}
