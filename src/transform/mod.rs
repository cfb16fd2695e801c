//! Transforms: named rule sets that edit the merged index and the image
//! config, each reporting what it did (paths, bytes, reasons) so a site can
//! see and tune it. Sinks read the result; no transform writes anything.
//!
//! Every pipeline applies the steps it needs in one order, [`Step::rank`]:
//! what a rule removes or widens is decided before the format's own layout
//! (the Apptainer metadata) is added, and the publisher's widening comes
//! last.

pub mod apptainer;
pub mod overlay;
pub mod paths;
pub mod publishable;
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

/// What a rule edits, the merged tree and the config, and the report where
/// it says what it did: `Edit(index, config, report)`.
pub struct Edit<'a>(
    pub &'a mut FsIndex,
    pub &'a mut ImageConfig,
    pub &'a mut RuleReport,
);

/// A rule set over the merged tree and the config.
pub trait Transform {
    /// Short stable name, used in reports and to select or skip the rule.
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn apply(&self, edit: Edit<'_>) -> Result<()>;
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
        t.apply(Edit(index, config, &mut report))?;
        reports.push(report);
    }
    Ok(reports)
}

/// One step of the transform chain, with what it needs.
pub enum Step<'a> {
    StripSshd(sshd::StripSshd<'a>),
    ScrubSecrets(secrets::ScrubSecrets<'a>),
    /// The slim rules (one report each).
    Slim {
        policy: &'a slim::SlimPolicy,
        findings: &'a HashMap<NodeId, scan::Finding>,
        /// Paths no slim rule removes (the site overlay's files).
        spare: &'a paths::PatternSet,
    },
    WorldReadable,
    /// The Apptainer layout (`/.singularity.d`), which SIF and CVMFS trees need.
    Apptainer(Box<apptainer::ApptainerMetadata>),
    /// Owner read/write for the CVMFS publisher, as DUCC does.
    Publishable,
}

impl Step<'_> {
    /// The step's place in every chain: the one definition of the order.
    pub fn rank(&self) -> u8 {
        match self {
            Step::StripSshd(_) => 0,
            Step::ScrubSecrets(_) => 1,
            Step::Slim { .. } => 2,
            Step::WorldReadable => 3,
            Step::Apptainer(_) => 4,
            Step::Publishable => 5,
        }
    }

    fn apply(&self, index: &mut FsIndex, config: &mut ImageConfig) -> Result<Vec<RuleReport>> {
        let one = |t: &dyn Transform, index: &mut FsIndex, config: &mut ImageConfig| {
            apply_all(&[t], index, config)
        };
        match self {
            Step::StripSshd(t) => one(t, index, config),
            Step::ScrubSecrets(t) => one(t, index, config),
            Step::Slim {
                policy,
                findings,
                spare,
            } => Ok(slim::apply(index, config, policy, findings, spare)),
            Step::WorldReadable => one(&readable::WorldReadable, index, config),
            Step::Apptainer(t) => one(t.as_ref(), index, config),
            Step::Publishable => one(&publishable::Publishable, index, config),
        }
    }
}

/// A tree going through the chain: the steps applied so far may only be
/// followed by later ones, so a pipeline that applies its own steps and
/// then a sink's cannot get the order wrong.
pub struct Chain {
    applied: Option<u8>,
    pub reports: Vec<RuleReport>,
}

impl Chain {
    pub fn new() -> Chain {
        Chain {
            applied: None,
            reports: Vec::new(),
        }
    }

    /// Apply `steps` in the chain's order, after those applied already.
    /// Returns the number of reports added.
    pub fn apply(
        &mut self,
        mut steps: Vec<Step>,
        index: &mut FsIndex,
        config: &mut ImageConfig,
    ) -> Result<usize> {
        steps.sort_by_key(Step::rank);
        let before = self.reports.len();
        for step in &steps {
            let rank = step.rank();
            if self.applied.is_some_and(|done| rank <= done) {
                return Err(crate::Error::Other(format!(
                    "transform step {rank} asked for after step {} was applied",
                    self.applied.unwrap_or_default()
                )));
            }
            self.reports.extend(step.apply(index, config)?);
            self.applied = Some(rank);
        }
        Ok(self.reports.len() - before)
    }

    /// A chain for a copy of the tree, going on from where this one is
    /// (its reports stay here).
    pub fn continued(&self) -> Chain {
        Chain {
            applied: self.applied,
            reports: Vec::new(),
        }
    }

    /// The report of rule `name`, if it ran.
    pub fn report(&self, name: &str) -> Option<&RuleReport> {
        self.reports.iter().find(|r| r.rule == name)
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
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
