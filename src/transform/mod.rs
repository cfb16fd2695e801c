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

use std::collections::{HashMap, HashSet};

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
    /// Paths the rule matched that stay, each with the reason (a protected
    /// path, a package still in use, a rule that is off).
    pub kept: Vec<Change>,
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
    pub fn keep(&mut self, path: impl Into<String>, bytes: u64, reason: impl Into<String>) {
        self.kept.push(Change {
            path: path.into(),
            bytes,
            reason: reason.into(),
        });
    }
    pub fn bytes_kept(&self) -> u64 {
        self.kept.iter().map(|c| c.bytes).sum()
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

/// What a rule decides about one path.
pub enum Pick<T> {
    /// Remove it (a directory with all below) for this reason; `T` is
    /// handed to the spare test (e.g. whether the rule may reach into a
    /// protected tree).
    Remove(String, T),
    /// It matched but stays, for this reason: reported under `kept`, and
    /// nothing below it is looked at.
    Keep(String),
}

/// Whether a path a rule picked stays after all.
pub enum Spare {
    No,
    /// Stays without a report line (`--keep`, a rule's own exceptions).
    Quiet,
    /// Stays, reported under `kept` with this reason (a protected path).
    Reported(String),
}

/// Remove every path `pick` gives a reason for, a directory with all below
/// it, except what `spare` covers (and the directories above a spared
/// path, whose other children are then judged one by one with the same
/// reason). Each removal is one line in `report`, with the bytes it frees:
/// a file still linked from outside the removed tree frees nothing (its
/// content stays), and the line says how many such files there were.
pub fn remove_where(
    index: &mut FsIndex,
    report: &mut RuleReport,
    pick: impl Fn(&[u8], NodeId, &Node) -> Option<String>,
    spare: impl Fn(&[u8]) -> bool,
) {
    prune(
        index,
        report,
        |k, id, n| pick(k, id, n).map(|r| Pick::Remove(r, ())),
        |k, _| if spare(k) { Spare::Quiet } else { Spare::No },
        None,
    )
}

/// [`remove_where`] with kept paths reported, and a report-only mode:
/// with `dry` set nothing is removed and every path the rule would remove
/// is reported as kept, with `dry` as the reason it stays.
pub fn prune<T: Clone>(
    index: &mut FsIndex,
    report: &mut RuleReport,
    pick: impl Fn(&[u8], NodeId, &Node) -> Option<Pick<T>>,
    spare: impl Fn(&[u8], &T) -> Spare,
    dry: Option<&str>,
) {
    let keys: Vec<Vec<u8>> = index.iter().map(|(k, _, _)| k.to_vec()).collect();
    // Paths per file node, to tell what a removal frees.
    let mut links: HashMap<NodeId, u32> = HashMap::new();
    for (_, id, n) in index.iter() {
        if matches!(n.kind, Kind::File { .. }) {
            *links.entry(id).or_default() += 1;
        }
    }
    // Directories whose reason their children inherit.
    let mut inherited: Vec<(Vec<u8>, String, T)> = Vec::new();
    // The last subtree removed or reported kept: nothing below is judged.
    let mut done: Option<Vec<u8>> = None;
    for key in keys {
        if key.is_empty() {
            continue;
        }
        if done.as_deref().is_some_and(|r| is_under(&key, r)) {
            continue;
        }
        while inherited.last().is_some_and(|(d, _, _)| !is_under(&key, d)) {
            inherited.pop();
        }
        let Some((id, node)) = index.get(&key) else {
            continue;
        };
        let is_dir = node.kind.is_dir();
        let picked = pick(&key, id, node).or_else(|| {
            inherited
                .last()
                .map(|(_, r, t)| Pick::Remove(r.clone(), t.clone()))
        });
        let (reason, tag) = match picked {
            None => continue,
            Some(Pick::Keep(why)) => {
                report.keep(display_path(&key), tree_bytes(index, &key), why);
                done = Some(key);
                continue;
            }
            Some(Pick::Remove(r, t)) => (r, t),
        };
        match spare(&key, &tag) {
            Spare::Quiet => continue,
            Spare::Reported(why) => {
                report.keep(
                    display_path(&key),
                    tree_bytes(index, &key),
                    format!("{reason}; kept: {why}"),
                );
                done = Some(key);
                continue;
            }
            Spare::No => {}
        }
        let below = index.subtree(&key);
        if is_dir && below.iter().any(|k| !matches!(spare(k, &tag), Spare::No)) {
            inherited.push((key, reason, tag));
            continue;
        }
        if let Some(why) = dry {
            report.keep(
                display_path(&key),
                tree_bytes(index, &key),
                format!("{reason}; kept: {why}"),
            );
            done = Some(key);
            continue;
        }
        // Links to each file node inside the removed tree.
        let mut inside: HashMap<NodeId, (u32, u64)> = HashMap::new();
        for k in std::iter::once(&key).chain(below.iter()) {
            if let Some((id, n)) = index.get(k)
                && let Kind::File { size, .. } = n.kind
            {
                inside.entry(id).or_insert((0, size)).0 += 1;
            }
        }
        let (mut freed, mut held) = (0, 0);
        for (id, (n, size)) in inside {
            let total = links.entry(id).or_default();
            *total = total.saturating_sub(n);
            if *total == 0 {
                freed += size;
            } else {
                held += n;
            }
        }
        index.remove_tree(&key);
        let reason = match held {
            0 => reason,
            1 => format!("{reason} (1 file stays: it is hardlinked from outside)"),
            n => format!("{reason} ({n} files stay: they are hardlinked from outside)"),
        };
        report.remove(display_path(&key), freed, reason);
        done = Some(key);
    }
}

/// Bytes of the regular files at and below `key`, each file node once.
pub fn tree_bytes(index: &FsIndex, key: &[u8]) -> u64 {
    let mut seen = HashSet::new();
    std::iter::once(key.to_vec())
        .chain(index.subtree(key))
        .filter_map(|k| index.get(&k).map(|(id, n)| (id, n.kind.clone())))
        .filter(|(id, _)| seen.insert(*id))
        .map(|(_, k)| match k {
            Kind::File { size, .. } => size,
            _ => 0,
        })
        .sum()
}
