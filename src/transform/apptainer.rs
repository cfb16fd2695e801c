//! The Apptainer metadata transform: the `/.singularity.d` layout that
//! `apptainer build IMAGE.sif docker://REF` puts into the root file system,
//! made on the merged index so that the SIF and CVMFS sinks share it.
//!
//! What Apptainer does (apptainer/apptainer, `internal/pkg/build/sources/`
//! `base_environment.go` and `conveyorPacker_oci.go`, `internal/pkg/build/`
//! `apps/apps.go` and `metadata.go`), in its order, and what is done here:
//! 1. `makeBaseEnv`: the root gets owner write; directories (0755) are made
//!    where nothing is; the `/singularity`, `/.run`, `/.exec`, `/.test`,
//!    `/.shell`, `/environment` symlinks; empty `/etc/hosts` and
//!    `/etc/resolv.conf`, and the action and environment scripts (gridship's
//!    own, in `apptainer/`, with the behaviour of Apptainer's), replacing
//!    what is there.
//! 2. `insertRunScript`: `/.singularity.d/runscript` from Entrypoint and Cmd.
//! 3. `insertEnv`: `/.singularity.d/env/10-docker2singularity.sh` from Env.
//! 4. the apps step writes an empty `env/94-appsbase.sh`.
//! 5. `insertLabelsJSON`: `labels.json`, the image's labels plus the build
//!    labels; `insertDefinition`: `.singularity.d/Singularity` (an existing
//!    one moves to `bootstrap_history/ApptainerN`).
//!
//! Files are written the way Go's calls write them: through a final symlink
//! (inside the image root), truncating an existing file in place (its owner,
//! and every hardlink of it, stay), `chmod` where Apptainer calls it. New
//! entries are root-owned; everything written gets the build time as mtime,
//! and so do directories whose entries changed (what `mksquashfs` clamps to
//! `SOURCE_DATE_EPOCH` in a reproducible Apptainer build).
//!
//! Also here, for the SIF writer: the Deffile, `inspect-metadata.json` and
//! `oci-config.json` objects, in the JSON encoding Apptainer's Go code uses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::sync::Arc;

use serde_json::Value;

use crate::clock::Civil;
use crate::image::{ContainerConfig, Image, ImageConfig};
use crate::index::{Data, FsIndex, Kind, Meta, Node, NodeId, display_path};
use crate::layers::{LayerReader, diagnose, layer_io};
use crate::transform::{Change, Edit, RuleReport, Transform};
use crate::{Error, Result};

/// The script Apptainer translates the image's Env into.
pub const ENV_SCRIPT: &str = "/.singularity.d/env/10-docker2singularity.sh";

// gridship's action and environment scripts (same behaviour as Apptainer's).
const EXEC_SH: &str = include_str!("apptainer/exec.sh");
const SHELL_SH: &str = include_str!("apptainer/shell.sh");
const START_SH: &str = include_str!("apptainer/start.sh");
/// The run and test actions: one script, handing over to a SCIF app's
/// script, the image's, or a fallback.
const HANDOVER_SH: &str = include_str!("apptainer/handover.sh");
const BASE_01_SH: &str = include_str!("apptainer/01-base.sh");
const ENVIRONMENT_90_SH: &str = include_str!("apptainer/90-environment.sh");
const APPS_95_SH: &str = include_str!("apptainer/95-apps.sh");
const BASE_99_SH: &str = include_str!("apptainer/99-base.sh");
const RUNTIMEVARS_99_SH: &str = include_str!("apptainer/99-runtimevars.sh");
const STARTSCRIPT_SH: &str = include_str!("apptainer/startscript.sh");

/// What the run and test actions hand over to ([`HANDOVER_SH`]).
struct Handover {
    action: &'static str,
    summary: &'static str,
    /// The script's name in a SCIF app and in /.singularity.d.
    script: &'static str,
    no_app: &'static str,
    none: &'static str,
    fallback: &'static str,
}

const RUN: Handover = Handover {
    action: "run",
    summary: "hand over to a SCIF app's runscript, the image's runscript, or /bin/sh.",
    script: "runscript",
    no_app: "No Apptainer runscript for contained app",
    none: "No Apptainer runscript found, executing /bin/sh",
    fallback: "/bin/sh \"$@\"",
};

const TEST: Handover = Handover {
    action: "test",
    summary: "run a SCIF app's test, the image's /.singularity.d/test, or succeed.",
    script: "test",
    no_app: "No tests for contained app",
    none: "No test found in container, executing /bin/sh -c true",
    fallback: "/bin/sh -c true",
};

impl Handover {
    fn script(&self) -> String {
        HANDOVER_SH
            .replace("@ACTION@", self.action)
            .replace("@SUMMARY@", self.summary)
            .replace("@SCIF@", self.script)
            .replace("@NO_APP@", self.no_app)
            .replace("@NONE@", self.none)
            .replace("@FALLBACK@", self.fallback)
    }
}

/// What an entry of the layout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    Dir,
    File,
    /// A symlink with this target.
    Symlink(&'static str),
}

/// One path of the layout: what Apptainer makes there and with which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutEntry {
    pub path: &'static str,
    pub kind: LayoutKind,
    /// Permission bits of a newly made entry (symlinks: 0o777).
    pub mode: u32,
}

const fn dir(path: &'static str) -> LayoutEntry {
    LayoutEntry {
        path,
        kind: LayoutKind::Dir,
        mode: 0o755,
    }
}
const fn file(path: &'static str, mode: u32) -> LayoutEntry {
    LayoutEntry {
        path,
        kind: LayoutKind::File,
        mode,
    }
}
const fn link(path: &'static str, target: &'static str) -> LayoutEntry {
    LayoutEntry {
        path,
        kind: LayoutKind::Symlink(target),
        mode: 0o777,
    }
}

/// Every path the transform makes in an image that has none of them, in
/// the order they are made. On a real image, directories and symlinks that
/// exist already are left as they are, files are rewritten in place; the
/// [`RuleReport`] tells which (see [`added_paths`]). An image that has its
/// own `/.singularity.d/Singularity` also gets
/// `/.singularity.d/bootstrap_history/ApptainerN` (0644 file, 0755 dir).
pub const LAYOUT: &[LayoutEntry] = &[
    dir("/.singularity.d"),
    dir("/.singularity.d/libs"),
    dir("/.singularity.d/actions"),
    dir("/.singularity.d/env"),
    dir("/dev"),
    dir("/proc"),
    dir("/root"),
    dir("/var"),
    dir("/var/tmp"),
    dir("/tmp"),
    dir("/etc"),
    dir("/sys"),
    dir("/home"),
    link("/singularity", ".singularity.d/runscript"),
    link("/.run", ".singularity.d/actions/run"),
    link("/.exec", ".singularity.d/actions/exec"),
    link("/.test", ".singularity.d/actions/test"),
    link("/.shell", ".singularity.d/actions/shell"),
    link("/environment", ".singularity.d/env/90-environment.sh"),
    file("/etc/hosts", 0o644),
    file("/etc/resolv.conf", 0o644),
    file("/.singularity.d/actions/exec", 0o755),
    file("/.singularity.d/actions/run", 0o755),
    file("/.singularity.d/actions/shell", 0o755),
    file("/.singularity.d/actions/start", 0o755),
    file("/.singularity.d/actions/test", 0o755),
    file("/.singularity.d/env/01-base.sh", 0o755),
    file("/.singularity.d/env/90-environment.sh", 0o755),
    file("/.singularity.d/env/95-apps.sh", 0o755),
    file("/.singularity.d/env/99-base.sh", 0o755),
    file("/.singularity.d/env/99-runtimevars.sh", 0o755),
    file("/.singularity.d/runscript", 0o755),
    file("/.singularity.d/startscript", 0o755),
    file(ENV_SCRIPT, 0o755),
    file("/.singularity.d/env/94-appsbase.sh", 0o755),
    file("/.singularity.d/labels.json", 0o644),
    file("/.singularity.d/Singularity", 0o644),
];

/// Every path where the transformed tree may differ from the input tree:
/// what the report lists as added, changed or removed.
pub fn added_paths(report: &RuleReport) -> BTreeSet<String> {
    report
        .added
        .iter()
        .chain(&report.changed)
        .chain(&report.removed)
        .map(|c| c.path.clone())
        .collect()
}

/// `org.opencontainers.image.base.{name,digest}`: Apptainer sets them only
/// for registry (`docker://`) sources, from the normalized reference and the
/// digest the registry answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApptainerOptions {
    /// The Deffile's `bootstrap:`: the transport (`docker`, `docker-daemon`,
    /// `oci`, `oci-archive`, `docker-archive`).
    pub bootstrap: String,
    /// The Deffile's `from:`: the reference after the transport prefix.
    pub from: String,
    /// The build time in Unix seconds (SOURCE_DATE_EPOCH for reproducible
    /// builds): the date labels and the mtime of everything written.
    pub created: i64,
    pub base: Option<BaseImage>,
    /// GOARCH spelling (`amd64`, `arm64`), from the image config.
    pub architecture: String,
    pub variant: Option<String>,
    /// `org.label-schema.usage.apptainer.version`. Apptainer puts its own
    /// release there; gridship is not Apptainer, so it names itself.
    pub apptainer_version: String,
}

impl ApptainerOptions {
    /// Options for an image named by `uri` (`docker://alpine:3`,
    /// `oci-archive:/x.tar`): bootstrap and from split the way Apptainer's
    /// `NewDefinitionFromURI` does, architecture and variant from the config.
    pub fn for_image(uri: &str, created: i64, config: &ImageConfig) -> Result<ApptainerOptions> {
        let (bootstrap, from) = split_uri(uri)?;
        Ok(ApptainerOptions {
            bootstrap: bootstrap.into(),
            from: from.into(),
            created,
            base: None,
            architecture: config.architecture.clone(),
            variant: config.variant.clone().filter(|v| !v.is_empty()),
            apptainer_version: default_version(),
        })
    }
}

/// `gridship <crate version>`, the value of the Apptainer version label.
pub fn default_version() -> String {
    format!("gridship {}", env!("CARGO_PKG_VERSION"))
}

/// Split a build URI into (bootstrap, from): at `://`, else at the first `:`.
pub fn split_uri(uri: &str) -> Result<(&str, &str)> {
    uri.split_once("://")
        .or_else(|| uri.split_once(':'))
        .ok_or_else(|| Error::BadInput {
            input: uri.into(),
            place: String::new(),
            reason: "has no transport prefix".into(),
            hint: Some("write it like docker://REPO:TAG or oci-archive:FILE".into()),
        })
}

/// The Deffile Apptainer records for `apptainer build X.sif docker://FROM`.
pub fn deffile(from: &str) -> String {
    deffile_for("docker", from)
}

/// The Deffile for a build from `BOOTSTRAP:FROM` (`populateRaw` of a header
/// with only these two keys: `bootstrap` first, then a blank line).
pub fn deffile_for(bootstrap: &str, from: &str) -> String {
    format!("bootstrap: {bootstrap}\nfrom: {from}\n\n")
}

pub struct ApptainerMetadata {
    pub options: ApptainerOptions,
}

impl ApptainerMetadata {
    pub fn new(options: ApptainerOptions) -> Self {
        ApptainerMetadata { options }
    }
}

impl Transform for ApptainerMetadata {
    fn name(&self) -> &'static str {
        "apptainer-metadata"
    }

    fn description(&self) -> &'static str {
        "Apptainer's /.singularity.d layout: env and runscript from the config, labels, \
         deffile, action scripts, symlinks, mount points, empty /etc/hosts and /etc/resolv.conf"
    }

    fn apply(&self, edit: Edit<'_>) -> Result<()> {
        let Edit(index, config, report) = edit;
        let o = &self.options;
        let time = Civil::from_unix(o.created)?;
        let c = &config.config;
        let env = env_script(c.env.as_deref().unwrap_or_default())?;
        let runscript = runscript(
            c.entrypoint.as_deref().unwrap_or_default(),
            c.cmd.as_deref().unwrap_or_default(),
        )?;
        let labels = labels_json(&build_labels(o, &time, c.labels.as_ref()));

        let mut ed = Editor {
            idx: index,
            created: o.created,
            log: Vec::new(),
            seen: HashMap::new(),
            dirty_dirs: BTreeSet::new(),
            new_keys: BTreeSet::new(),
            rewritten: HashMap::new(),
            warnings: Vec::new(),
        };

        // makeBaseEnv: the root must be writable by its owner.
        let root = ed.idx.get(b"").expect("the index has a root").0;
        let mode = ed.idx.node(root).meta.mode;
        if mode & 0o200 == 0 {
            ed.idx.node_mut(root).meta.mode = mode | 0o200;
            ed.record(
                "/",
                Rec::Changed,
                0,
                "owner write added to the root (makeBaseEnv)",
            );
        }
        for e in LAYOUT.iter().filter(|e| e.kind == LayoutKind::Dir) {
            ed.make_dir(e.path)?;
        }
        for e in LAYOUT {
            if let LayoutKind::Symlink(target) = e.kind {
                ed.make_symlink(e.path, target)?;
            }
        }
        let (run_sh, test_sh) = (RUN.script(), TEST.script());
        let base_files: [(&str, u32, &str); 13] = [
            ("/etc/hosts", 0o644, ""),
            ("/etc/resolv.conf", 0o644, ""),
            ("/.singularity.d/actions/exec", 0o755, EXEC_SH),
            ("/.singularity.d/actions/run", 0o755, &run_sh),
            ("/.singularity.d/actions/shell", 0o755, SHELL_SH),
            ("/.singularity.d/actions/start", 0o755, START_SH),
            ("/.singularity.d/actions/test", 0o755, &test_sh),
            ("/.singularity.d/env/01-base.sh", 0o755, BASE_01_SH),
            (
                "/.singularity.d/env/90-environment.sh",
                0o755,
                ENVIRONMENT_90_SH,
            ),
            ("/.singularity.d/env/95-apps.sh", 0o755, APPS_95_SH),
            ("/.singularity.d/env/99-base.sh", 0o755, BASE_99_SH),
            (
                "/.singularity.d/env/99-runtimevars.sh",
                0o755,
                RUNTIMEVARS_99_SH,
            ),
            ("/.singularity.d/startscript", 0o755, STARTSCRIPT_SH),
        ];
        for (path, mode, content) in base_files {
            let reason = if content.is_empty() {
                "empty, as Apptainer leaves it for the runtime to bind over"
            } else {
                "Apptainer action/environment script"
            };
            ed.write_file(path, Perm::Chmod(mode), content.as_bytes(), reason)?;
        }
        // The runscript placeholder of makeBaseEnv is replaced right away by
        // insertRunScript; only the final bytes matter.
        ed.write_file(
            "/.singularity.d/runscript",
            Perm::Chmod(0o755),
            runscript.as_bytes(),
            "runscript from the config's Entrypoint and Cmd",
        )?;
        ed.write_file(
            ENV_SCRIPT,
            Perm::Chmod(0o755),
            env.script.as_bytes(),
            "the config's Env as shell exports",
        )?;
        for key in &env.skipped {
            ed.warnings.push(format!(
                "Env {key:?} is not a valid shell variable name: left out of {ENV_SCRIPT}, \
                 as Apptainer does"
            ));
        }
        ed.write_file(
            "/.singularity.d/env/94-appsbase.sh",
            Perm::KeepExisting(0o755),
            b"",
            "apps environment (the image defines no SCIF apps)",
        )?;
        ed.write_file(
            "/.singularity.d/labels.json",
            Perm::KeepExisting(0o644),
            labels.as_bytes(),
            "the image's labels and Apptainer's build labels",
        )?;
        ed.insert_definition(deffile_for(&o.bootstrap, &o.from).as_bytes())?;
        if ed.idx.lookup("/.build.labels").is_some() {
            ed.warnings.push(
                "/.build.labels exists: Apptainer would merge its labels into labels.json and \
                 delete it; gridship leaves it as it is"
                    .into(),
            );
        }
        ed.finish(report);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Added,
    Changed,
    Removed,
}

/// How a write treats the mode of a file that exists: Go's `os.Chmod`
/// after the write (makeFile, Create+Chmod), or none (os.WriteFile). New
/// files get the mode either way (Apptainer's build umask 002 changes none
/// of these modes).
#[derive(Debug, Clone, Copy)]
enum Perm {
    Chmod(u32),
    KeepExisting(u32),
}

struct Editor<'a> {
    idx: &'a mut FsIndex,
    created: i64,
    /// Report lines in the order paths were first touched.
    log: Vec<(String, Rec, u64, String)>,
    seen: HashMap<String, usize>,
    /// Existing directories whose entries changed.
    dirty_dirs: BTreeSet<Vec<u8>>,
    /// Keys this transform created (their mtime is already the build time).
    new_keys: BTreeSet<Vec<u8>>,
    /// Files rewritten in place: their other hardlinks changed too.
    rewritten: HashMap<NodeId, Vec<u8>>,
    warnings: Vec<String>,
}

fn parent_key(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|&b| b == b'/') {
        Some(i) => &key[..i],
        None => b"",
    }
}

/// Resolve `path` as the kernel does in a chroot at the image root:
/// symlinks in every component (the last one too when `follow_last`), `..`
/// stopping at the root. Returns the key and whether a symlink was followed.
fn walk(
    index: &FsIndex,
    path: &[u8],
    follow_last: bool,
) -> std::result::Result<(Vec<u8>, bool), &'static str> {
    let mut todo: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut followed = false;
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        cur.push(c);
        if todo.is_empty() && !follow_last {
            break;
        }
        if let Some((
            _,
            Node {
                kind: Kind::Symlink { target },
                ..
            },
        )) = index.get(&cur.join(&b'/'))
        {
            // The kernel's limit on symlinks in one lookup.
            hops += 1;
            if hops > 40 {
                return Err("too many levels of symbolic links");
            }
            cur.pop();
            if target.first() == Some(&b'/') {
                cur.clear();
            }
            todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
            followed = true;
        }
    }
    Ok((cur.join(&b'/'), followed))
}

fn key_path(key: &[u8]) -> Result<String> {
    std::str::from_utf8(key)
        .map(|s| format!("/{s}"))
        .map_err(|_| {
            Error::bad_input(
                display_path(key),
                "a path Apptainer's layout goes through is not UTF-8",
            )
        })
}

fn refuse(path: &str, reason: impl Into<String>) -> Error {
    Error::BadInput {
        input: "image".into(),
        place: format!("{path}: "),
        reason: reason.into(),
        hint: Some(
            "Apptainer's build fails on this image too; fix the path in the image \
             (a layer or a site overlay)"
                .into(),
        ),
    }
}

impl Editor<'_> {
    fn record(&mut self, path: &str, what: Rec, bytes: u64, reason: &str) {
        match self.seen.get(path) {
            // A second write to a path keeps its first kind (a file added
            // and rewritten is added), with the final size and reason.
            Some(&i) => {
                let line = &mut self.log[i];
                line.1 = match (line.1, what) {
                    (Rec::Removed, Rec::Added) => Rec::Changed,
                    (_, Rec::Removed) => Rec::Removed,
                    (first, _) => first,
                };
                line.2 = bytes;
                line.3 = reason.into();
            }
            None => {
                self.seen.insert(path.into(), self.log.len());
                self.log.push((path.into(), what, bytes, reason.into()));
            }
        }
    }

    fn meta(&self, mode: u32) -> Meta {
        Meta {
            mode,
            mtime: self.created,
            ..Meta::default()
        }
    }

    /// Insert a new node at a key whose parent is an existing directory.
    fn create(&mut self, key: &[u8], node: Node) -> Result<()> {
        let path = key_path(key)?;
        let got = self.idx.put(&path, node).map_err(|r| refuse(&path, r))?;
        debug_assert_eq!(got, key);
        self.new_keys.insert(key.to_vec());
        self.dirty_dirs.insert(parent_key(key).to_vec());
        Ok(())
    }

    /// Follow symlinks in the last component too (inside the root, as
    /// Go's os.Root does), to the key a write lands on. The bool tells
    /// whether a symlink was followed.
    fn resolve_final(&self, path: &str) -> Result<(Vec<u8>, bool)> {
        walk(self.idx, path.as_bytes(), true).map_err(|r| refuse(path, r))
    }

    /// `mkdirAllInRootfs`: nothing happens when the path exists (whatever
    /// it is); else it and its missing parents become 0755 directories.
    fn make_dir(&mut self, path: &str) -> Result<()> {
        if self.idx.lookup(path).is_some() {
            return Ok(());
        }
        let key = self.idx.resolve(path).map_err(|r| refuse(path, r))?;
        // Parents are resolved, so each existing prefix is a real entry.
        let ends: Vec<usize> = (1..key.len())
            .filter(|&i| key[i] == b'/')
            .chain([key.len()])
            .collect();
        for end in ends {
            let prefix = &key[..end];
            match self.idx.get(prefix) {
                Some((_, n)) if n.kind.is_dir() => {}
                Some((_, n)) => {
                    return Err(refuse(
                        path,
                        format!(
                            "{} is a {}, where Apptainer makes a directory",
                            display_path(prefix),
                            n.kind.name()
                        ),
                    ));
                }
                None => {
                    let prefix = prefix.to_vec();
                    let node = Node {
                        kind: Kind::Dir,
                        meta: self.meta(0o755),
                    };
                    self.create(&prefix, node)?;
                    let p = key_path(&prefix)?;
                    self.record(&p, Rec::Added, 0, "directory of Apptainer's layout");
                }
            }
        }
        Ok(())
    }

    /// `makeSymlink`: made when absent, remade when it points elsewhere,
    /// left alone when something else is there.
    fn make_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let node = Node {
            kind: Kind::Symlink {
                target: target.as_bytes().to_vec(),
            },
            meta: self.meta(0o777),
        };
        match self.idx.lookup(path) {
            None => {
                let key = self.idx.resolve(path).map_err(|r| refuse(path, r))?;
                self.create(&key, node)?;
                self.record(path, Rec::Added, 0, &format!("symlink to {target}"));
            }
            Some((_, _, n)) => match &n.kind {
                Kind::Symlink { target: t } if t == target.as_bytes() => {}
                Kind::Symlink { .. } => {
                    let key = self.idx.resolve(path).map_err(|r| refuse(path, r))?;
                    self.idx.put(path, node).map_err(|r| refuse(path, r))?;
                    self.new_keys.insert(key.clone());
                    self.dirty_dirs.insert(parent_key(&key).to_vec());
                    self.record(
                        path,
                        Rec::Changed,
                        0,
                        &format!("symlink remade to {target}"),
                    );
                }
                other => self.warnings.push(format!(
                    "{path} is a {} in the image: left as it is (Apptainer leaves it too), \
                     so it does not point to {target}",
                    other.name()
                )),
            },
        }
        Ok(())
    }

    /// Write `content` at `path` as Go's `OpenFile(O_CREATE|O_TRUNC)` does:
    /// through a final symlink, in place over an existing regular file.
    fn write_file(&mut self, path: &str, perm: Perm, content: &[u8], reason: &str) -> Result<()> {
        let (key, via_link) = self.resolve_final(path)?;
        let data = Data::Bytes(Arc::from(content));
        let size = content.len() as u64;
        let reason = if via_link {
            format!("{reason} (written through the symlink {path})")
        } else {
            reason.to_string()
        };
        let existing = self.idx.get(&key).map(|(id, n)| (id, n.kind.clone()));
        match existing {
            Some((id, Kind::File { .. })) => {
                let created = self.created;
                let node = self.idx.node_mut(id);
                node.kind = Kind::File { size, data };
                if let Perm::Chmod(mode) = perm {
                    node.meta.mode = mode;
                }
                node.meta.mtime = created;
                node.meta.mtime_nsec = 0;
                // A write drops file capabilities, as the kernel does.
                node.meta.xattrs.remove("security.capability");
                self.rewritten.insert(id, key.clone());
                let p = key_path(&key)?;
                let what = if self.new_keys.contains(&key) {
                    Rec::Added
                } else {
                    Rec::Changed
                };
                self.record(&p, what, size, &reason);
            }
            Some((_, kind)) => {
                return Err(refuse(
                    path,
                    format!(
                        "{} is a {}, where Apptainer writes a file",
                        display_path(&key),
                        kind.name()
                    ),
                ));
            }
            None => {
                let mode = match perm {
                    Perm::Chmod(m) | Perm::KeepExisting(m) => m,
                };
                let node = Node {
                    kind: Kind::File { size, data },
                    meta: self.meta(mode),
                };
                let parent_is_dir = self
                    .idx
                    .get(parent_key(&key))
                    .is_some_and(|(_, n)| n.kind.is_dir());
                if parent_is_dir {
                    self.create(&key, node)?;
                    let p = key_path(&key)?;
                    self.record(&p, Rec::Added, size, &reason);
                } else if via_link {
                    // Go would fail (ENOENT) on a symlink into a missing
                    // directory; the runtime needs a file here to bind
                    // onto, so the link itself is replaced.
                    let own = self.idx.resolve(path).map_err(|r| refuse(path, r))?;
                    self.idx.put(path, node).map_err(|r| refuse(path, r))?;
                    self.new_keys.insert(own.clone());
                    self.dirty_dirs.insert(parent_key(&own).to_vec());
                    self.warnings.push(format!(
                        "{path} was a symlink to {}, whose directory is missing: \
                         replaced by the file",
                        display_path(&key)
                    ));
                    self.record(path, Rec::Changed, size, &reason);
                } else {
                    return Err(refuse(
                        path,
                        format!("{} is not a directory", display_path(parent_key(&key))),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `insertDefinition`: an existing `Singularity` moves to
    /// `bootstrap_history/ApptainerN` (N = entries there), then the new
    /// Deffile is written.
    fn insert_definition(&mut self, deffile: &[u8]) -> Result<()> {
        const DEF: &str = "/.singularity.d/Singularity";
        const HISTORY: &str = "/.singularity.d/bootstrap_history";
        let (target, _) = self.resolve_final(DEF)?;
        if self.idx.get(&target).is_some() {
            let (hist, _) = self.resolve_final(HISTORY)?;
            if self.idx.get(&hist).is_none() {
                self.make_dir(&key_path(&hist)?)?;
            }
            let n = self
                .idx
                .subtree(&hist)
                .iter()
                .filter(|k| parent_key(k) == hist.as_slice())
                .count();
            let to = format!("{}/Apptainer{n}", key_path(&hist)?);
            // os.Rename moves the entry itself, a symlink included.
            let from = self.idx.resolve(DEF).map_err(|r| refuse(DEF, r))?;
            self.move_tree(&from, &to)?;
        }
        self.write_file(
            DEF,
            Perm::KeepExisting(0o644),
            deffile,
            "the Deffile of the build",
        )
    }

    fn move_tree(&mut self, from: &[u8], to: &str) -> Result<()> {
        let from_path = key_path(from)?;
        let mut nodes = vec![(
            Vec::new(),
            self.idx.get(from).expect("moved entry exists").1.clone(),
        )];
        for k in self.idx.subtree(from) {
            let node = self.idx.get(&k).expect("listed key exists").1.clone();
            nodes.push((k[from.len()..].to_vec(), node));
        }
        self.idx.remove(&from_path);
        self.dirty_dirs.insert(parent_key(from).to_vec());
        self.record(&from_path, Rec::Removed, 0, &format!("moved to {to}"));
        for (suffix, node) in nodes {
            let path = format!("{to}{}", String::from_utf8_lossy(&suffix));
            let bytes = match &node.kind {
                Kind::File { size, .. } => *size,
                _ => 0,
            };
            let key = self.idx.resolve(&path).map_err(|r| refuse(&path, r))?;
            if suffix.is_empty() {
                self.dirty_dirs.insert(parent_key(&key).to_vec());
            }
            self.idx.put(&path, node).map_err(|r| refuse(&path, r))?;
            self.record(
                &path,
                Rec::Added,
                bytes,
                &format!("the image's own {from_path}, kept as Apptainer keeps it"),
            );
        }
        Ok(())
    }

    fn finish(mut self, report: &mut RuleReport) {
        // One pass finds the other names of rewritten files (hardlinks).
        if !self.rewritten.is_empty() {
            let mut others = Vec::new();
            for (key, id, node) in self.idx.iter() {
                if let Some(first) = self.rewritten.get(&id)
                    && first.as_slice() != key
                {
                    let size = match &node.kind {
                        Kind::File { size, .. } => *size,
                        _ => 0,
                    };
                    let reason = format!("hardlink of {}, rewritten", display_path(first));
                    others.push((display_path(key), size, reason));
                }
            }
            for (path, size, reason) in others {
                self.record(&path, Rec::Changed, size, &reason);
            }
        }
        for key in std::mem::take(&mut self.dirty_dirs) {
            if self.new_keys.contains(&key) {
                continue;
            }
            let Some((id, n)) = self.idx.get(&key) else {
                continue;
            };
            if !n.kind.is_dir() || (n.meta.mtime == self.created && n.meta.mtime_nsec == 0) {
                continue;
            }
            let meta = &mut self.idx.node_mut(id).meta;
            meta.mtime = self.created;
            meta.mtime_nsec = 0;
            let path = if key.is_empty() {
                "/".to_string()
            } else {
                display_path(&key)
            };
            self.record(
                &path,
                Rec::Changed,
                0,
                "directory mtime set to the build time",
            );
        }
        for (path, what, bytes, reason) in self.log {
            let c = Change {
                path,
                bytes,
                reason,
            };
            match what {
                Rec::Added => report.added.push(c),
                Rec::Changed => report.changed.push(c),
                Rec::Removed => report.removed.push(c),
            }
        }
        report.warnings.extend(self.warnings);
    }
}

// ---------------------------------------------------------------------------
// The generated files.

/// Apptainer's `shell.Escape`: a backslash before `\`, `"`, `` ` `` and `$`,
/// so the value can sit inside double quotes.
pub fn shell_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '`' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `shell.EscapeSingleQuotes`: `'` becomes `'"'"'`.
fn escape_single_quotes(s: &str) -> String {
    s.replace('\'', r#"'"'"'"#)
}

/// `shell.ArgsQuoted`: each argument escaped in double quotes, joined by a
/// space (Go trims trailing spaces of the whole, so an empty list is "").
fn args_quoted(args: &[String]) -> String {
    let mut out = String::new();
    for a in args {
        out.push('"');
        out.push_str(&shell_escape(a));
        out.push_str("\" ");
    }
    out.trim_end_matches(' ').to_string()
}

/// The key rule of `insertEnv`: `^[a-zA-Z_]{1,}[a-zA-Z0-9_]{0,}$`.
fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The env script and the keys it left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvScript {
    pub script: String,
    pub skipped: Vec<String>,
}

/// `10-docker2singularity.sh` for an image's Env: `PATH` is set outright,
/// other variables only when the host did not set them (`${K:-"v"}`), a bare
/// `K` exports what the host has. Keys that are no shell name are skipped, as
/// Apptainer skips them; a NUL byte cannot be carried by any shell and is
/// refused.
pub fn env_script(env: &[String]) -> Result<EnvScript> {
    let mut script = String::from("#!/bin/sh\n");
    let mut skipped = Vec::new();
    for (i, element) in env.iter().enumerate() {
        let (key, value) = match element.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (element.as_str(), None),
        };
        if !valid_env_key(key) {
            skipped.push(key.to_string());
            continue;
        }
        match value {
            None => {
                let _ = writeln!(script, "export {key}=\"${{{key}:-}}\"");
            }
            Some(v) if v.contains('\0') => {
                return Err(Error::BadInput {
                    input: "image config".into(),
                    place: format!("Env[{i}] ({key}): "),
                    reason: "the value holds a NUL byte, which no environment variable can carry"
                        .into(),
                    hint: Some("remove the NUL from the image's ENV".into()),
                });
            }
            Some(v) if key == "PATH" => {
                let _ = writeln!(script, "export PATH=\"{}\"", shell_escape(v));
            }
            Some(v) => {
                let _ = writeln!(
                    script,
                    "export {key}=\"${{{key}:-\"{}\"}}\"",
                    shell_escape(v)
                );
            }
        }
    }
    Ok(EnvScript { script, skipped })
}

fn check_args(what: &str, args: &[String]) -> Result<()> {
    match args.iter().position(|a| a.contains('\0')) {
        Some(i) => Err(Error::BadInput {
            input: "image config".into(),
            place: format!("{what}[{i}]: "),
            reason: "holds a NUL byte, which no program argument can carry".into(),
            hint: Some(format!("remove the NUL from the image's {what}")),
        }),
        None => Ok(()),
    }
}

/// `set -- 'ARG' "$@"` lines that put `args` in front of `$@` (last first).
fn prepend(args: &[String]) -> String {
    let mut out = String::new();
    for a in args.iter().rev() {
        let _ = writeln!(out, "set -- '{}' \"$@\"", escape_single_quotes(a));
    }
    out
}

/// `/.singularity.d/runscript` for an Entrypoint and Cmd, with the
/// semantics of the runscript Apptainer builds from an OCI image:
/// - by default the command line (Entrypoint, then the arguments given or
///   else Cmd) goes through the shell once, so `$VAR` in Entrypoint/Cmd
///   expands as with Apptainer; its runtime recognises the exact line
///   `eval "set ${SINGULARITY_OCI_RUN}"` and runs the image without /bin/sh;
/// - with `SINGULARITY_NO_EVAL` set, the arguments are passed untouched,
///   as an OCI runtime would.
///
/// Entrypoint and Cmd are stored as Apptainer stores them (each argument
/// double-quoted and escaped, the whole single-quoted), so tools that read
/// `OCI_ENTRYPOINT`/`OCI_CMD` from the script see what they expect.
pub fn runscript(entrypoint: &[String], cmd: &[String]) -> Result<String> {
    check_args("Entrypoint", entrypoint)?;
    check_args("Cmd", cmd)?;
    let quoted = |args: &[String]| {
        if args.is_empty() {
            String::new()
        } else {
            escape_single_quotes(&args_quoted(args))
        }
    };
    // The `set --` lines are not indented: an argument may hold newlines,
    // and indentation would become part of it.
    let mut s = String::new();
    s.push_str("#!/bin/sh\n# Written by gridship from the image's Entrypoint and Cmd.\n");
    let _ = writeln!(s, "OCI_ENTRYPOINT='{}'", quoted(entrypoint));
    let _ = writeln!(s, "OCI_CMD='{}'", quoted(cmd));
    s.push_str(concat!(
        "\n",
        "# SINGULARITY_NO_EVAL: run Entrypoint + (arguments, else Cmd) exactly,\n",
        "# without a pass through the shell, as an OCI runtime does.\n",
        "if [ -n \"${SINGULARITY_NO_EVAL:-}\" ]; then\n",
    ));
    if !cmd.is_empty() {
        s.push_str("    if [ $# -eq 0 ]; then\n");
        s.push_str(&prepend(cmd));
        s.push_str("    fi\n");
    }
    s.push_str(&prepend(entrypoint));
    s.push_str(concat!(
        "    exec \"$@\"\n",
        "fi\n",
        "\n",
        "# Default: the command line goes through the shell once, as Apptainer\n",
        "# does; each given argument is double-quoted for that pass.\n",
        "CMDLINE_ARGS=\"\"\n",
        "for arg in \"$@\"; do\n",
        "    CMDLINE_ARGS=\"${CMDLINE_ARGS} \\\"$arg\\\"\"\n",
        "done\n",
        "if [ $# -gt 0 ]; then\n",
        "    SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${CMDLINE_ARGS}\"\n",
        "else\n",
        "    SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${OCI_CMD}\"\n",
        "fi\n",
        "if [ -z \"${OCI_ENTRYPOINT}${OCI_CMD}\" ] && [ $# -eq 0 ]; then\n",
        "    echo \"The image defines no Entrypoint or Cmd: give a command to run.\" 1>&2\n",
        "    exit 1\n",
        "fi\n",
        "eval \"set ${SINGULARITY_OCI_RUN}\"\n",
        "exec \"$@\"\n",
    ));
    Ok(s)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// `org.label-schema.build-date`: `Weekday_D_Month_YYYY_H:M:S_UTC`,
/// numbers unpadded, as Apptainer's strconv.Itoa pieces.
fn build_date(t: &Civil) -> String {
    format!(
        "{}_{}_{}_{}_{}:{}:{}_UTC",
        WEEKDAYS[t.weekday as usize],
        t.day,
        MONTHS[t.month as usize - 1],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

/// The labels Apptainer's build leaves in labels.json: the image's own,
/// overridden by its build labels (`addBuildLabels`).
fn build_labels(
    o: &ApptainerOptions,
    time: &Civil,
    image_labels: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut l = image_labels.cloned().unwrap_or_default();
    let mut set = |k: &str, v: &str| {
        l.insert(k.to_string(), v.to_string());
    };
    set("org.label-schema.schema-version", "1.0");
    set("org.opencontainers.image.created", &time.rfc3339());
    set("org.label-schema.build-date", &build_date(time));
    set(
        "org.label-schema.usage.apptainer.version",
        &o.apptainer_version,
    );
    set(
        "org.label-schema.usage.singularity.deffile.bootstrap",
        &o.bootstrap,
    );
    set("org.label-schema.usage.singularity.deffile.from", &o.from);
    if let Some(b) = &o.base {
        set("org.opencontainers.image.base.name", &b.name);
        set("org.opencontainers.image.base.digest", &b.digest);
    }
    set("org.opencontainers.image.architecture", &o.architecture);
    if let Some(v) = o.variant.as_deref().filter(|v| !v.is_empty()) {
        set("org.opencontainers.image.variant", v);
    }
    set("org.label-schema.build-arch", &o.architecture);
    l
}

/// `json.MarshalIndent(labels, "", "\t")` of a Go `map[string]string`.
pub fn labels_json(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "{}".into();
    }
    let mut s = String::from("{\n");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push_str(",\n");
        }
        s.push('\t');
        go_string(&mut s, k);
        s.push_str(": ");
        go_string(&mut s, v);
    }
    s.push_str("\n}");
    s
}

// ---------------------------------------------------------------------------
// Go's encoding/json, for the objects whose bytes must match.

/// A string as Go's `json.Marshal` writes it: HTML-safe (`<`, `>`, `&` as
/// `\u003c`...), U+2028/U+2029 escaped, `\b` and `\f` short (Go 1.22+),
/// other control characters as `\u00XX`.
fn go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Bytes as a Go string converts them for JSON: each byte of an invalid
/// UTF-8 sequence becomes U+FFFD.
fn go_lossy(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        for _ in chunk.invalid() {
            s.push('\u{fffd}');
        }
    }
    s
}

/// A value of a Go struct being marshalled; `None` members are the ones
/// `omitempty` leaves out.
enum GoValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Strings(Vec<String>),
    /// A map (keys sorted on output) of strings.
    StrMap(BTreeMap<String, String>),
    /// A `map[string]struct{}`.
    Set(BTreeSet<String>),
    Object(Vec<(&'static str, GoValue)>),
}

impl GoValue {
    fn write(&self, out: &mut String) {
        match self {
            GoValue::Str(s) => go_string(out, s),
            GoValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            GoValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            GoValue::Strings(v) => {
                out.push('[');
                for (i, s) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go_string(out, s);
                }
                out.push(']');
            }
            GoValue::StrMap(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go_string(out, k);
                    out.push(':');
                    go_string(out, v);
                }
                out.push('}');
            }
            GoValue::Set(s) => {
                out.push('{');
                for (i, k) in s.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go_string(out, k);
                    out.push_str(":{}");
                }
                out.push('}');
            }
            GoValue::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// A member of a JSON object the way Go's decoder finds a struct field: the
/// exact name first, else a case-insensitive match.
fn go_field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

// Each `go_*` decodes one Go type from JSON as `json.Unmarshal` does and
// answers None for what omitempty drops (or what Go could not decode: a
// build of that config fails in Apptainer, here the field is left out).
fn go_str(v: Option<&Value>) -> Option<GoValue> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(GoValue::Str(s.clone())),
        _ => None,
    }
}
fn go_bool(v: Option<&Value>) -> Option<GoValue> {
    match v? {
        Value::Bool(true) => Some(GoValue::Bool(true)),
        _ => None,
    }
}
fn go_int(v: Option<&Value>) -> Option<GoValue> {
    match v?.as_i64()? {
        0 => None,
        i => Some(GoValue::Int(i)),
    }
}
fn go_strings(v: Option<&Value>) -> Option<GoValue> {
    let items = v?.as_array()?;
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        match i {
            Value::String(s) => out.push(s.clone()),
            Value::Null => out.push(String::new()),
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(GoValue::Strings(out))
}
fn go_str_map(v: Option<&Value>) -> Option<GoValue> {
    let obj = v?.as_object()?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        match v {
            Value::String(s) => out.insert(k.clone(), s.clone()),
            Value::Null => out.insert(k.clone(), String::new()),
            _ => return None,
        };
    }
    (!out.is_empty()).then_some(GoValue::StrMap(out))
}
fn go_set(v: Option<&Value>) -> Option<GoValue> {
    let obj = v?.as_object()?;
    if obj.values().any(|v| !(v.is_object() || v.is_null())) {
        return None;
    }
    let out: BTreeSet<String> = obj.keys().cloned().collect();
    (!out.is_empty()).then_some(GoValue::Set(out))
}
fn go_health(v: Option<&Value>) -> Option<GoValue> {
    let obj = v?.as_object()?;
    let mut fields = Vec::new();
    if let Some(t) = go_strings(go_field(obj, "Test")) {
        fields.push(("Test", t));
    }
    for name in ["Interval", "Timeout", "StartPeriod", "Retries"] {
        if let Some(i) = go_int(go_field(obj, name)) {
            fields.push((name, i));
        }
    }
    // A present object is a non-nil pointer: never omitted.
    Some(GoValue::Object(fields))
}

/// `oci-config.json`: the config's `config` object as go-containerregistry's
/// `v1.Config` decodes it and `json.Marshal` writes it (Go field names in
/// struct order, omitempty, map keys sorted, unknown members dropped).
pub fn oci_config_json(config: &ContainerConfig) -> Vec<u8> {
    // Back to JSON, so typed and untyped members are read alike.
    let obj = match serde_json::to_value(config) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let f = |name| go_field(&obj, name);
    let fields: Vec<(&'static str, Option<GoValue>)> = vec![
        ("AttachStderr", go_bool(f("AttachStderr"))),
        ("AttachStdin", go_bool(f("AttachStdin"))),
        ("AttachStdout", go_bool(f("AttachStdout"))),
        ("Cmd", go_strings(f("Cmd"))),
        ("Healthcheck", go_health(f("Healthcheck"))),
        ("Domainname", go_str(f("Domainname"))),
        ("Entrypoint", go_strings(f("Entrypoint"))),
        ("Env", go_strings(f("Env"))),
        ("Hostname", go_str(f("Hostname"))),
        ("Image", go_str(f("Image"))),
        ("Labels", go_str_map(f("Labels"))),
        ("OnBuild", go_strings(f("OnBuild"))),
        ("OpenStdin", go_bool(f("OpenStdin"))),
        ("StdinOnce", go_bool(f("StdinOnce"))),
        ("Tty", go_bool(f("Tty"))),
        ("User", go_str(f("User"))),
        ("Volumes", go_set(f("Volumes"))),
        ("WorkingDir", go_str(f("WorkingDir"))),
        ("ExposedPorts", go_set(f("ExposedPorts"))),
        ("ArgsEscaped", go_bool(f("ArgsEscaped"))),
        ("NetworkDisabled", go_bool(f("NetworkDisabled"))),
        ("MacAddress", go_str(f("MacAddress"))),
        ("StopSignal", go_str(f("StopSignal"))),
        ("Shell", go_strings(f("Shell"))),
    ];
    let present = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let mut out = String::new();
    GoValue::Object(present).write(&mut out);
    out.into_bytes()
}

// ---------------------------------------------------------------------------
// inspect-metadata.json

/// What `apptainer inspect --all` reads from a built root file system
/// (`pkg/inspect/metadata.go` Attributes; SCIF apps are not supported).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InspectMetadata {
    /// Env script path in the image → its text.
    pub environment: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub runscript: String,
    pub test: String,
    pub helpfile: String,
    pub deffile: String,
    pub startscript: String,
}

/// `inspect-metadata.json` as Apptainer stores it in a SIF:
/// `{"data":{"attributes":{...}},"type":"container"}`, empty members left
/// out (omitempty), in the struct's field order.
pub fn inspect_metadata_json(m: &InspectMetadata) -> Vec<u8> {
    let mut attrs: Vec<(&'static str, GoValue)> = Vec::new();
    if !m.environment.is_empty() {
        attrs.push(("environment", GoValue::StrMap(m.environment.clone())));
    }
    if !m.labels.is_empty() {
        attrs.push(("labels", GoValue::StrMap(m.labels.clone())));
    }
    for (k, v) in [
        ("runscript", &m.runscript),
        ("test", &m.test),
        ("helpfile", &m.helpfile),
        ("deffile", &m.deffile),
        ("startscript", &m.startscript),
    ] {
        if !v.is_empty() {
            attrs.push((k, GoValue::Str(v.clone())));
        }
    }
    let doc = GoValue::Object(vec![
        (
            "data",
            GoValue::Object(vec![("attributes", GoValue::Object(attrs))]),
        ),
        ("type", GoValue::Str("container".into())),
    ]);
    let mut out = String::new();
    doc.write(&mut out);
    out.into_bytes()
}

/// Gather what `apptainer inspect --all` reports for the transformed tree
/// (it runs on the build's root file system before the SIF is made):
/// `env/10-docker*.sh` and `env/9*-environment.sh`, `labels.json`,
/// `runscript`, `test`, `runscript.help`, `Singularity`, `startscript`, each
/// followed through symlinks, trailing newlines trimmed. Files the image
/// brought itself are read from its layers.
pub fn inspect_metadata(index: &FsIndex, image: &Image) -> Result<InspectMetadata> {
    if dir_key(index, "/.singularity.d").is_none() {
        return Ok(InspectMetadata::default());
    }
    let mut wanted: Vec<(String, String)> = Vec::new(); // (section, path)
    if let Some(env_key) = dir_key(index, "/.singularity.d/env") {
        let mut names: Vec<Vec<u8>> = index
            .subtree(&env_key)
            .into_iter()
            .filter(|k| parent_key(k) == env_key.as_slice())
            .map(|k| k[env_key.len() + 1..].to_vec())
            .collect();
        names.sort();
        let glob = |prefix: &[u8], suffix: &[u8]| {
            names
                .iter()
                .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
                .filter(|n| n.len() >= prefix.len() + suffix.len())
                .filter_map(|n| std::str::from_utf8(n).ok())
                .map(|n| format!("/.singularity.d/env/{n}"))
                .collect::<Vec<_>>()
        };
        for p in glob(b"10-docker", b".sh")
            .into_iter()
            .chain(glob(b"9", b"-environment.sh"))
        {
            wanted.push(("environment".into(), p));
        }
    }
    for (section, name) in [
        ("labels", "labels.json"),
        ("deffile", "Singularity"),
        ("helpfile", "runscript.help"),
        ("runscript", "runscript"),
        ("startscript", "startscript"),
        ("test", "test"),
    ] {
        wanted.push((section.into(), format!("/.singularity.d/{name}")));
    }

    // Which node holds each regular file (`[ -f FILE ]` follows symlinks).
    let mut found: Vec<(String, String, NodeId)> = Vec::new();
    for (section, path) in wanted {
        if let Some(id) = regular_file(index, &path) {
            found.push((section, path, id));
        }
    }
    let contents = read_contents(index, image, found.iter().map(|f| f.2).collect())?;
    let mut m = InspectMetadata::default();
    for (section, path, id) in found {
        let text = go_lossy(&contents[&id]);
        let text = text.trim_end_matches('\n').to_string();
        match section.as_str() {
            "environment" => {
                m.environment.insert(path, text);
            }
            "labels" => m.labels = go_labels(&text),
            "deffile" => m.deffile = text,
            "helpfile" => m.helpfile = text,
            "runscript" => m.runscript = text,
            "startscript" => m.startscript = text,
            _ => m.test = text,
        }
    }
    Ok(m)
}

/// The key of the directory at `path`, through symlinks, if it is one.
fn dir_key(index: &FsIndex, path: &str) -> Option<Vec<u8>> {
    let (key, _) = walk(index, path.as_bytes(), true).ok()?;
    index
        .get(&key)
        .is_some_and(|(_, n)| n.kind.is_dir())
        .then_some(key)
}

/// `json.Unmarshal` into a `map[string]string` as inspect does: strings and
/// nulls (as "") kept, members of other types skipped, junk gives nothing.
fn go_labels(text: &str) -> BTreeMap<String, String> {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return BTreeMap::new();
    };
    obj.into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Null => Some((k, String::new())),
            _ => None,
        })
        .collect()
}

/// The node of the regular file at `path`, through symlinks (inside the
/// root), or None.
fn regular_file(index: &FsIndex, path: &str) -> Option<NodeId> {
    let (key, _) = walk(index, path.as_bytes(), true).ok()?;
    match index.get(&key)? {
        (id, n) if matches!(n.kind, Kind::File { .. }) => Some(id),
        _ => None,
    }
}

/// The bytes of regular-file nodes: transform-added bytes directly, layer
/// content by reading only the layers that hold some of it.
fn read_contents(
    index: &FsIndex,
    image: &Image,
    ids: Vec<NodeId>,
) -> Result<HashMap<NodeId, Vec<u8>>> {
    let mut out = HashMap::new();
    let mut by_layer: BTreeMap<u32, HashMap<u64, NodeId>> = BTreeMap::new();
    for id in ids {
        match &index.node(id).kind {
            Kind::File {
                data: Data::Bytes(b),
                ..
            } => {
                out.insert(id, b.to_vec());
            }
            Kind::File {
                data: Data::Layer { layer, header_pos },
                ..
            } => {
                by_layer.entry(*layer).or_default().insert(*header_pos, id);
            }
            _ => {}
        }
    }
    for (layer, wanted) in by_layer {
        let i = layer as usize;
        let mut reader = LayerReader::open(image, i)?;
        let mut read = || -> Result<()> {
            let what = reader.what().to_string();
            while let Some(mut entry) = reader.next_entry()? {
                if let Some(&id) = wanted.get(&entry.header.header_pos) {
                    let mut buf = Vec::new();
                    entry
                        .read_to_end(&mut buf)
                        .map_err(|e| layer_io(&what, e))?;
                    out.insert(id, buf);
                }
            }
            Ok(())
        };
        read().map_err(|e| diagnose(image, i, e))?;
        // Read to the end, so the blob's digest is checked.
        reader.finish().map_err(|e| diagnose(image, i, e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run and test actions are the scripts they were as two files.
    #[test]
    fn handover_scripts_are_the_run_and_test_actions() {
        let sha = |s: &str| crate::digest::Digest::of_bytes(s.as_bytes()).to_string();
        assert_eq!(
            sha(&RUN.script()),
            "sha256:37bfd83e91b70f935b23bf037696a0d7f5383db0ece1c38b8524d015fa172abe"
        );
        assert_eq!(
            sha(&TEST.script()),
            "sha256:36f58ec71336e0d6cced59401dbf04bedd87c914aec9e3b316b1c790430103f1"
        );
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn env_script_pinned() {
        let env = s(&[
            "PATH=/usr/bin:/bin",
            "LANG=C.UTF-8",
            "Q=a \"b\" $c `d` \\e",
            "EMPTY=",
            "BARE",
            "bad-key=1",
        ]);
        let e = env_script(&env).unwrap();
        assert_eq!(
            e.script,
            concat!(
                "#!/bin/sh\n",
                "export PATH=\"/usr/bin:/bin\"\n",
                "export LANG=\"${LANG:-\"C.UTF-8\"}\"\n",
                "export Q=\"${Q:-\"a \\\"b\\\" \\$c \\`d\\` \\\\e\"}\"\n",
                "export EMPTY=\"${EMPTY:-\"\"}\"\n",
                "export BARE=\"${BARE:-}\"\n",
            )
        );
        assert_eq!(e.skipped, ["bad-key"]);
        assert!(env_script(&s(&["X=a\0b"])).is_err());
    }

    #[test]
    fn runscript_head_and_tail_pinned() {
        let r = runscript(
            &s(&["/bin/tini", "--"]),
            &s(&["python3", "-c", "print('hi')"]),
        )
        .unwrap();
        assert!(r.starts_with(concat!(
            "#!/bin/sh\n",
            "# Written by gridship from the image's Entrypoint and Cmd.\n",
            "OCI_ENTRYPOINT='\"/bin/tini\" \"--\"'\n",
            "OCI_CMD='\"python3\" \"-c\" \"print('\"'\"'hi'\"'\"')\"'\n",
        )));
        assert!(r.contains(concat!(
            "if [ -n \"${SINGULARITY_NO_EVAL:-}\" ]; then\n",
            "    if [ $# -eq 0 ]; then\n",
            "set -- 'print('\"'\"'hi'\"'\"')' \"$@\"\n",
            "set -- '-c' \"$@\"\n",
            "set -- 'python3' \"$@\"\n",
            "    fi\n",
            "set -- '--' \"$@\"\n",
            "set -- '/bin/tini' \"$@\"\n",
            "    exec \"$@\"\n",
            "fi\n",
        )));
        assert!(r.ends_with("eval \"set ${SINGULARITY_OCI_RUN}\"\nexec \"$@\"\n"));
        assert!(runscript(&[], &s(&["a\0"])).is_err());
    }

    #[test]
    fn oci_config_pinned() {
        let c: ContainerConfig = serde_json::from_str(
            r#"{"User":"1000","Env":["PATH=/bin","A=<&>"],"Cmd":["sh"],"Entrypoint":[],
                "WorkingDir":"","Labels":{"b":"2","a":"1"},"ExposedPorts":{"22/tcp":{}},
                "tty":true,"Healthcheck":{"test":["NONE"],"Interval":0},"Unknown":1,
                "Volumes":null,"ArgsEscaped":false}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(oci_config_json(&c)).unwrap(),
            concat!(
                r#"{"Cmd":["sh"],"Healthcheck":{"Test":["NONE"]},"Env":["PATH=/bin","A=\u003c\u0026\u003e"],"#,
                r#""Labels":{"a":"1","b":"2"},"Tty":true,"User":"1000","ExposedPorts":{"22/tcp":{}}}"#
            )
        );
        assert_eq!(oci_config_json(&ContainerConfig::default()), b"{}");
    }

    #[test]
    fn labels_and_json_strings_like_go() {
        let l = BTreeMap::from([
            ("b".to_string(), "\u{8}\u{c}\u{1}\u{7f}\u{2029}".to_string()),
            ("a".to_string(), "<x> & \"y\" \\".to_string()),
        ]);
        assert_eq!(
            labels_json(&l),
            "{\n\t\"a\": \"\\u003cx\\u003e \\u0026 \\\"y\\\" \\\\\",\n\t\"b\": \"\\b\\f\\u0001\u{7f}\\u2029\"\n}"
        );
        assert_eq!(labels_json(&BTreeMap::new()), "{}");
        assert_eq!(go_lossy(b"a\xe2\x82z\xff"), "a\u{fffd}\u{fffd}z\u{fffd}");
    }

    #[test]
    fn deffile_and_inspect_pinned() {
        assert_eq!(deffile("alpine:3"), "bootstrap: docker\nfrom: alpine:3\n\n");
        assert_eq!(
            split_uri("docker://alpine:3").unwrap(),
            ("docker", "alpine:3")
        );
        assert_eq!(
            split_uri("oci-archive:/x/y.tar:1").unwrap(),
            ("oci-archive", "/x/y.tar:1")
        );
        assert!(split_uri("alpine").is_err());
        let m = InspectMetadata {
            environment: BTreeMap::from([(ENV_SCRIPT.into(), "#!/bin/sh".into())]),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            runscript: "#!/bin/sh\nexec \"$@\"".into(),
            deffile: "bootstrap: docker\nfrom: alpine".into(),
            startscript: "#!/bin/sh".into(),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(inspect_metadata_json(&m)).unwrap(),
            concat!(
                r##"{"data":{"attributes":{"environment":{"/.singularity.d/env/10-docker2singularity.sh":"#!/bin/sh"},"##,
                r##""labels":{"k":"v"},"runscript":"#!/bin/sh\nexec \"$@\"","deffile":"bootstrap: docker\nfrom: alpine","##,
                r##""startscript":"#!/bin/sh"}},"type":"container"}"##
            )
        );
        assert_eq!(
            inspect_metadata_json(&InspectMetadata::default()),
            br##"{"data":{"attributes":{}},"type":"container"}"##
        );
    }

    #[test]
    fn walk_stays_inside_the_root() {
        let mut idx = FsIndex::new();
        let link = |t: &str| Node {
            kind: Kind::Symlink {
                target: t.as_bytes().to_vec(),
            },
            meta: Meta::default(),
        };
        idx.put("/etc/x", link("../../../../run/y")).unwrap();
        idx.put("/etc/abs", link("/usr/z")).unwrap();
        idx.put("/loop", link("/loop")).unwrap();
        assert_eq!(
            walk(&idx, b"/etc/x", true).unwrap(),
            (b"run/y".to_vec(), true)
        );
        assert_eq!(
            walk(&idx, b"/etc/x", false).unwrap(),
            (b"etc/x".to_vec(), false)
        );
        assert_eq!(walk(&idx, b"/etc/abs", true).unwrap().0, b"usr/z");
        assert!(walk(&idx, b"/loop", true).is_err());
    }

    #[test]
    fn build_dates_like_go() {
        let date = |t| build_date(&Civil::from_unix(t).unwrap());
        assert_eq!(date(0), "Thursday_1_January_1970_0:0:0_UTC");
        assert_eq!(
            date(1_709_210_096),
            "Thursday_29_February_2024_12:34:56_UTC"
        );
        assert_eq!(date(-1), "Wednesday_31_December_1969_23:59:59_UTC");
        // Go's zero time.
        assert_eq!(date(-62_135_596_800), "Monday_1_January_1_0:0:0_UTC");
        assert_eq!(date(951_782_400), "Tuesday_29_February_2000_0:0:0_UTC");
    }
}
