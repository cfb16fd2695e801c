//! The merged index: the one model of an image's filesystem.
//!
//! Layers are applied in order into a map from path to node, following the
//! semantics of the OCI image spec as umoci implements them:
//! - `.wh.NAME` removes NAME from lower layers, `.wh..wh..opq` removes every
//!   lower child of its directory; entries this layer added survive both.
//! - an entry replaces what was at its path, unless both are directories
//!   (then the metadata is updated and the children stay);
//! - parent directories are resolved through symlinks, scoped to the image
//!   root (like securejoin): nothing can land outside the tree;
//! - a hardlink shares the node of its target at the time it is read, so a
//!   later whiteout or overwrite of the target leaves the link's content.
//!
//! No bytes are copied: a regular file records which layer entry holds its
//! content, and sinks stream the layers when they need the bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

use crate::digest::Digest;
use crate::image::Image;
use crate::layers::tar::{EntryType, Header};
use crate::layers::{Compression, LayerReader, diagnose};
use crate::{Error, Result};

pub type NodeId = u32;

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// In layer `layer` (0-based), in the tar entry whose header starts at
    /// `header_pos` of the uncompressed stream.
    Layer { layer: u32, header_pos: u64 },
    /// Bytes added by a transform.
    Bytes(Arc<[u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, data: Data },
    Symlink { target: Vec<u8> },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

impl Kind {
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir)
    }
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File { .. } => "file",
            Kind::Symlink { .. } => "symlink",
            Kind::CharDevice { .. } => "char device",
            Kind::BlockDevice { .. } => "block device",
            Kind::Fifo => "fifo",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub meta: Meta,
}

#[derive(Debug, Clone)]
pub struct LayerInfo {
    /// Position in the image's manifest (0-based).
    pub index: usize,
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
    pub compression: Compression,
    pub entries: u64,
    /// Bytes of the uncompressed layer tar (0 where the index came from a
    /// saved merge state rather than the blob).
    pub diff_size: u64,
}

/// The merged tree. Keys are paths relative to the image root without a
/// leading `/`; the root itself is the empty key. A parent's key sorts
/// before its children's, so key order is a valid creation order.
#[derive(Debug, Clone, Default)]
pub struct FsIndex {
    entries: BTreeMap<Vec<u8>, NodeId>,
    nodes: Vec<Node>,
    pub layers: Vec<LayerInfo>,
    /// One layer as it is (`from_layer`): whiteouts stay plain files.
    raw: bool,
    /// What could not be kept exactly (raw layers only, so far).
    pub warnings: Vec<String>,
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";
/// The same symlink budget as Linux path resolution (and securejoin).
const MAX_SYMLINKS: u32 = 255;

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut k = Vec::with_capacity(parent.len() + 1 + name.len());
        k.extend_from_slice(parent);
        k.push(b'/');
        k.extend_from_slice(name);
        k
    }
}

fn parent_of(key: &[u8]) -> Option<&[u8]> {
    if key.is_empty() {
        return None;
    }
    Some(match key.iter().rposition(|&b| b == b'/') {
        Some(i) => &key[..i],
        None => b"",
    })
}

/// Split a tar entry name into components: `.` and empty ones dropped, a
/// leading `/` ignored; `..` or NUL make the entry unsafe.
fn components(name: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if name.contains(&0) {
        return Err("name contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` component: the entry would escape the image root"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Layers read and merged into an index by this process (the merge cache's
/// hits are not reads): what promote and publish report, so a test can see
/// a tree is merged once.
static LAYERS_MERGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn layers_merged() -> u64 {
    LAYERS_MERGED.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn display_path(key: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(key))
}

impl FsIndex {
    /// An index holding only the root directory (mode 0755, root-owned).
    pub fn new() -> FsIndex {
        let mut idx = FsIndex::default();
        let root = idx.push_node(Node {
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o755,
                ..Meta::default()
            },
        });
        idx.entries.insert(Vec::new(), root);
        idx
    }

    /// Read layer `i` of `image` (verifying its blob) and merge it on top.
    fn merge_layer(&mut self, image: &Image, i: usize) -> Result<()> {
        LAYERS_MERGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut layer = LayerReader::open(image, i)?;
        let entries = self
            .apply_layer(&mut layer)
            .map_err(|e| diagnose(image, i, e))?;
        let mut info = LayerInfo {
            index: i,
            digest: layer.desc.digest.clone(),
            diff_id: layer.diff_id.clone(),
            media_type: layer.desc.media_type.clone(),
            size: layer.desc.size,
            compression: layer.compression,
            entries,
            diff_size: 0,
        };
        info.diff_size = layer.finish().map_err(|e| diagnose(image, i, e))?;
        self.layers.push(info);
        Ok(())
    }

    /// Read and merge every layer of `image`, verifying each blob.
    pub fn from_image(image: &Image) -> Result<FsIndex> {
        let mut idx = FsIndex::new();
        let bar = crate::event::item(
            format!("merge {} layers", image.layers().len()),
            image.layers().iter().map(|l| l.size).sum(),
        );
        for i in 0..image.layers().len() {
            idx.merge_layer(image, i)?;
            bar.inc(image.layers()[i].size);
        }
        bar.finish();
        Ok(idx)
    }

    /// One layer's own tree, as DUCC stores it under `.layers/`: whiteout
    /// and opaque markers stay empty files (their consumer interprets them);
    /// a hardlink to a file of an earlier layer becomes an empty file, with a
    /// warning (the layer alone cannot hold its content).
    pub fn from_layer(image: &Image, i: usize) -> Result<FsIndex> {
        let mut idx = FsIndex::new();
        idx.raw = true;
        idx.merge_layer(image, i)?;
        Ok(idx)
    }

    fn push_node(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    pub fn get(&self, key: &[u8]) -> Option<(NodeId, &Node)> {
        self.entries.get(key).map(|&id| (id, self.node(id)))
    }

    /// Every path with its node, parents before children.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], NodeId, &Node)> {
        self.entries
            .iter()
            .map(|(k, &id)| (k.as_slice(), id, &self.nodes[id as usize]))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Set the mode of every directory and regular file to `new(node,
    /// is_dir, mode)`; returns `(path, old, new)` for each change. A hardlinked
    /// file is one node: changed and returned once, at its first path.
    pub fn remap_modes(
        &mut self,
        new: impl Fn(NodeId, bool, u32) -> u32,
    ) -> Vec<(String, u32, u32)> {
        let mut seen = std::collections::HashSet::new();
        let mut changes = Vec::new();
        for (key, id, node) in self.iter() {
            if !seen.insert(id) {
                continue;
            }
            let dir = match node.kind {
                Kind::Dir => true,
                Kind::File { .. } => false,
                _ => continue,
            };
            let (old, mode) = (node.meta.mode, new(id, dir, node.meta.mode));
            if mode != old {
                changes.push((id, display_path(key), old, mode));
            }
        }
        changes
            .into_iter()
            .map(|(id, path, old, mode)| {
                self.node_mut(id).meta.mode = mode;
                (path, old, mode)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Keys strictly below `key`.
    fn descendants(&self, key: &[u8]) -> Vec<Vec<u8>> {
        if key.is_empty() {
            return self
                .entries
                .keys()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect();
        }
        let mut lo = key.to_vec();
        lo.push(b'/');
        let mut hi = key.to_vec();
        hi.push(b'/' + 1);
        self.entries.range(lo..hi).map(|(k, _)| k.clone()).collect()
    }

    /// Remove a path and everything below it.
    pub fn remove_tree(&mut self, key: &[u8]) {
        for k in self.descendants(key) {
            self.entries.remove(&k);
        }
        if !key.is_empty() {
            self.entries.remove(key);
        }
    }

    /// Resolve directory components through symlinks in the index, scoped to
    /// the root: an absolute target restarts at the root and `..` stops there.
    fn resolve_dir(&self, comps: &[&[u8]]) -> std::result::Result<Vec<u8>, &'static str> {
        let mut todo: Vec<Vec<u8>> = comps.iter().rev().map(|c| c.to_vec()).collect();
        let mut current: Vec<Vec<u8>> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            let mut candidate = current.join(&b'/');
            if !candidate.is_empty() {
                candidate.push(b'/');
            }
            candidate.extend_from_slice(&c);
            if let Some((_, node)) = self.get(&candidate)
                && let Kind::Symlink { target } = &node.kind
            {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err("too many levels of symbolic links in its parent path");
                }
                if target.first() == Some(&b'/') {
                    current.clear();
                }
                for t in target.split(|&b| b == b'/').rev() {
                    todo.push(t.to_vec());
                }
                continue;
            }
            current.push(c);
        }
        Ok(current.join(&b'/'))
    }

    /// Make sure `key` exists as a directory, creating missing ancestors the
    /// way an extractor's mkdir -p does (0755, root-owned).
    fn ensure_dir(
        &mut self,
        key: &[u8],
        upper: &mut HashSet<Vec<u8>>,
    ) -> std::result::Result<(), String> {
        match self.get(key) {
            Some((_, n)) if n.kind.is_dir() => return Ok(()),
            Some((_, n)) => {
                return Err(format!(
                    "parent {} is a {}, not a directory",
                    display_path(key),
                    n.kind.name()
                ));
            }
            None => {}
        }
        if let Some(parent) = parent_of(key) {
            self.ensure_dir(parent, upper)?;
        }
        let id = self.push_node(Node {
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o755,
                ..Meta::default()
            },
        });
        self.entries.insert(key.to_vec(), id);
        mark_upper(upper, key);
        Ok(())
    }

    /// Apply a whiteout: remove `target` (or, when opaque, its children)
    /// except what this layer itself added.
    fn whiteout(&mut self, target: &[u8], opaque: bool, upper: &HashSet<Vec<u8>>) {
        if self.get(target).is_none() {
            return;
        }
        let mut removed: Vec<Vec<u8>> = Vec::new();
        let mut keys = vec![target.to_vec()];
        keys.extend(self.descendants(target));
        for k in keys {
            if removed.iter().any(|r| is_under(&k, r)) {
                continue;
            }
            if upper.contains(&k) || (opaque && k == target) {
                continue;
            }
            self.remove_tree(&k);
            removed.push(k);
        }
    }

    /// Apply one layer's entries. Returns the number of tar entries read.
    pub fn apply_layer(&mut self, layer: &mut LayerReader) -> Result<u64> {
        let what = layer.what().to_string();
        let digest = layer.desc.digest.to_string();
        let layer_no = layer.index as u32;
        let mut upper: HashSet<Vec<u8>> = HashSet::new();
        let mut count = 0;
        while let Some(entry) = layer.next_entry()? {
            count += 1;
            let h = &entry.header;
            let unsafe_entry = |name: &[u8], reason: String| Error::UnsafeEntry {
                layer: digest.clone(),
                entry: String::from_utf8_lossy(name).into_owned(),
                reason,
            };
            let kind = h.entry_type;
            let name = &h.path;
            let comps = components(name).map_err(|r| unsafe_entry(name, r.into()))?;
            let Some((&file, dir_comps)) = comps.split_last() else {
                // The root directory itself.
                if kind != EntryType::Directory {
                    return Err(unsafe_entry(
                        name,
                        "refusing to change the root directory into a non-directory".into(),
                    ));
                }
                let root = self.entries[&Vec::new()];
                self.node_mut(root).meta = meta(h);
                continue;
            };
            let parent = self
                .resolve_dir(dir_comps)
                .map_err(|r| unsafe_entry(name, r.into()))?;

            if let Some(rest) = file.strip_prefix(WHITEOUT).filter(|_| !self.raw) {
                if file == OPAQUE {
                    self.whiteout(&parent, true, &upper);
                } else if rest.starts_with(WHITEOUT) {
                    // Other `.wh..wh.` names are aufs bookkeeping, not whiteouts.
                    tracing::debug!(
                        "{what}: ignoring aufs metadata {}",
                        String::from_utf8_lossy(name)
                    );
                } else if rest.is_empty() {
                    return Err(unsafe_entry(name, "whiteout without a name".into()));
                } else {
                    self.whiteout(&join(&parent, rest), false, &upper);
                }
                continue;
            }

            self.ensure_dir(&parent, &mut upper)
                .map_err(|r| unsafe_entry(name, r))?;
            let key = join(&parent, file);

            let new_kind = match kind {
                // A sparse entry's size is its logical size, holes included.
                EntryType::Regular => Kind::File {
                    size: h.size,
                    data: Data::Layer {
                        layer: layer_no,
                        header_pos: h.header_pos,
                    },
                },
                EntryType::Directory => Kind::Dir,
                EntryType::Symlink => {
                    if h.link_name.contains(&0) {
                        return Err(unsafe_entry(
                            name,
                            "symlink target contains a NUL byte".into(),
                        ));
                    }
                    Kind::Symlink {
                        target: h.link_name.clone(),
                    }
                }
                EntryType::Link => {
                    let id = match self.hardlink_target(&h.link_name) {
                        Ok(id) => id,
                        // Only this layer is here: the target's content is in
                        // an earlier one.
                        Err(r) if self.raw && r.contains("does not exist") => {
                            self.warnings.push(format!(
                                "{}: hardlink to {} in an earlier layer, written as an empty file",
                                display_path(&key),
                                String::from_utf8_lossy(&h.link_name)
                            ));
                            self.place(
                                &key,
                                Node {
                                    kind: Kind::File {
                                        size: 0,
                                        data: Data::Bytes(Arc::from(&b""[..])),
                                    },
                                    meta: meta(h),
                                },
                            );
                            mark_upper(&mut upper, &key);
                            continue;
                        }
                        Err(r) => return Err(unsafe_entry(name, r)),
                    };
                    if self.entries.get(&key) == Some(&id) {
                        // A link to itself changes nothing.
                        mark_upper(&mut upper, &key);
                        continue;
                    }
                    self.remove_tree(&key);
                    self.entries.insert(key.clone(), id);
                    mark_upper(&mut upper, &key);
                    continue;
                }
                EntryType::Char => Kind::CharDevice {
                    major: h.dev_major,
                    minor: h.dev_minor,
                },
                EntryType::Block => Kind::BlockDevice {
                    major: h.dev_major,
                    minor: h.dev_minor,
                },
                EntryType::Fifo => Kind::Fifo,
                EntryType::Other(flag) => {
                    return Err(unsafe_entry(
                        name,
                        format!("unsupported tar entry type {:?}", flag as char),
                    ));
                }
            };

            self.place(
                &key,
                Node {
                    kind: new_kind,
                    meta: meta(h),
                },
            );
            mark_upper(&mut upper, &key);
        }
        Ok(count)
    }

    /// Put `node` at `key` the way an extractor does: a directory over a
    /// directory takes the new metadata and keeps the children; anything
    /// else replaces what was there, subtree included.
    fn place(&mut self, key: &[u8], node: Node) -> NodeId {
        match self.entries.get(key).copied() {
            Some(id) if node.kind.is_dir() && self.node(id).kind.is_dir() => {
                self.node_mut(id).meta = node.meta;
                id
            }
            existing => {
                if existing.is_some() {
                    self.remove_tree(key);
                }
                let id = self.push_node(node);
                self.entries.insert(key.to_vec(), id);
                id
            }
        }
    }

    /// Resolve an absolute image path to its key: parents through symlinks
    /// inside the root, the last component not followed.
    pub fn resolve(&self, path: &str) -> std::result::Result<Vec<u8>, String> {
        let comps = components(path.as_bytes()).map_err(|r| format!("{path}: {r}"))?;
        match comps.split_last() {
            None => Ok(Vec::new()),
            Some((&file, dir)) => Ok(join(
                &self.resolve_dir(dir).map_err(|r| format!("{path}: {r}"))?,
                file,
            )),
        }
    }

    /// The node at an absolute image path (see [`FsIndex::resolve`]).
    pub fn lookup(&self, path: &str) -> Option<(Vec<u8>, NodeId, &Node)> {
        let key = self.resolve(path).ok()?;
        let (id, node) = self.get(&key)?;
        Some((key, id, node))
    }

    /// Put a node at an absolute image path for a transform, exactly as a
    /// layer entry would land there: parents resolved and created (0755,
    /// root-owned) when missing. Returns the key.
    pub fn put(&mut self, path: &str, node: Node) -> std::result::Result<Vec<u8>, String> {
        let key = self.resolve(path)?;
        if key.is_empty() {
            if !node.kind.is_dir() {
                return Err("the root stays a directory".into());
            }
            let root = self.entries[&Vec::new()];
            self.node_mut(root).meta = node.meta;
            return Ok(key);
        }
        if let Some(parent) = parent_of(&key) {
            self.ensure_dir(parent, &mut HashSet::new())?;
        }
        self.place(&key, node);
        Ok(key)
    }

    /// Add a hardlink at the absolute image path `path` to the file at
    /// `target`, as a layer's hardlink entry lands (parents created).
    pub fn link(&mut self, path: &str, target: &str) -> std::result::Result<Vec<u8>, String> {
        let id = self.hardlink_target(target.as_bytes())?;
        let key = self.resolve(path)?;
        if key.is_empty() {
            return Err("the root stays a directory".into());
        }
        if let Some(parent) = parent_of(&key) {
            self.ensure_dir(parent, &mut HashSet::new())?;
        }
        self.remove_tree(&key);
        self.entries.insert(key.clone(), id);
        Ok(key)
    }

    /// Remove what an absolute image path names (a final symlink itself, not
    /// its target), with everything below it. Returns whether it existed.
    pub fn remove(&mut self, path: &str) -> bool {
        match self.resolve(path) {
            Ok(key) if !key.is_empty() && self.entries.contains_key(&key) => {
                self.remove_tree(&key);
                true
            }
            _ => false,
        }
    }

    /// What an absolute image path names at the end, symlinks followed
    /// inside the image (at most 40, as Linux's path walk): its key and node.
    pub fn follow(&self, path: &str) -> Option<(Vec<u8>, NodeId)> {
        let mut p = normalize(path);
        for _ in 0..40 {
            let (key, id, node) = self.lookup(&p)?;
            match &node.kind {
                Kind::Symlink { target } => {
                    let t = String::from_utf8_lossy(target);
                    let shown = display_path(&key);
                    let parent = shown.rsplit_once('/').map_or("/", |(a, _)| a);
                    p = if t.starts_with('/') {
                        normalize(&t)
                    } else {
                        normalize(&format!("{parent}/{t}"))
                    };
                }
                _ => return Some((key, id)),
            }
        }
        None
    }

    /// Keys directly or indirectly below `key`, in key order.
    pub fn subtree(&self, key: &[u8]) -> Vec<Vec<u8>> {
        self.descendants(key)
    }

    /// The node a hardlink names: its parent resolved inside the root, the
    /// last component not followed (a link to a symlink links the symlink).
    fn hardlink_target(&self, target: &[u8]) -> std::result::Result<NodeId, String> {
        let comps = components(target)
            .map_err(|r| format!("hardlink target {:?}: {r}", String::from_utf8_lossy(target)))?;
        let Some((&file, dir)) = comps.split_last() else {
            return Err("hardlink to the root directory".into());
        };
        let parent = self.resolve_dir(dir).map_err(String::from)?;
        let key = join(&parent, file);
        match self.get(&key) {
            None => Err(format!(
                "hardlink target {} does not exist in this or an earlier layer",
                display_path(&key)
            )),
            Some((_, n)) if n.kind.is_dir() => Err(format!(
                "hardlink target {} is a directory",
                display_path(&key)
            )),
            Some((id, _)) => Ok(id),
        }
    }

    /// Paths grouped by node, for nodes reachable by more than one path
    /// (hardlink groups), each group in key order.
    pub fn hardlink_groups(&self) -> Vec<Vec<&[u8]>> {
        let mut by_node: HashMap<NodeId, Vec<&[u8]>> = HashMap::new();
        for (k, &id) in &self.entries {
            by_node.entry(id).or_default().push(k);
        }
        let mut groups: Vec<Vec<&[u8]>> = by_node.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        groups
    }

    /// Which layer entries hold content that survives: per layer, a map from
    /// header position to node.
    pub fn content_plan(&self) -> BTreeMap<usize, HashMap<u64, NodeId>> {
        let mut plan: BTreeMap<usize, HashMap<u64, NodeId>> = self
            .layers
            .iter()
            .map(|l| (l.index, HashMap::new()))
            .collect();
        for &id in self.entries.values() {
            if let Kind::File {
                data: Data::Layer { layer, header_pos },
                ..
            } = &self.node(id).kind
            {
                plan.entry(*layer as usize)
                    .or_default()
                    .insert(*header_pos, id);
            }
        }
        plan
    }

    /// Stream the content of every surviving regular file, once per node:
    /// `f` gets the node and a reader over exactly its bytes. The order is
    /// deterministic: bytes added by transforms (in path order), then layer
    /// content in layer order. Layers with nothing left are still read in
    /// full, so every blob is verified.
    pub fn for_each_content(
        &self,
        image: &Image,
        f: impl FnMut(NodeId, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        self.stream_content(image, |_| true, true, f)
    }

    /// Like [`FsIndex::for_each_content`] for the nodes `want` selects only;
    /// layers holding none of them are not read at all (a sink that already
    /// has the other content, e.g. hardlinked from an earlier tree).
    pub fn for_each_content_where(
        &self,
        image: &Image,
        want: impl Fn(NodeId) -> bool,
        f: impl FnMut(NodeId, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        self.stream_content(image, want, false, f)
    }

    fn stream_content(
        &self,
        image: &Image,
        want: impl Fn(NodeId) -> bool,
        read_every_layer: bool,
        mut f: impl FnMut(NodeId, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let bar = crate::event::item("write content", self.content_bytes());
        let mut seen = HashSet::new();
        for &id in self.entries.values() {
            if let Kind::File {
                data: Data::Bytes(bytes),
                ..
            } = &self.node(id).kind
                && want(id)
                && seen.insert(id)
            {
                bar.inc(bytes.len() as u64);
                f(id, &mut &bytes[..])?;
            }
        }
        let mut plan = self.content_plan();
        for wanted in plan.values_mut() {
            wanted.retain(|_, id| want(*id));
        }
        if !read_every_layer {
            plan.retain(|_, wanted| !wanted.is_empty());
        }
        for (&i, wanted) in &plan {
            let mut layer = LayerReader::open(image, i)?;
            let mut stream = || -> Result<()> {
                if !wanted.is_empty() {
                    while let Some(mut entry) = layer.next_entry()? {
                        if let Some(&id) = wanted.get(&entry.header.header_pos) {
                            bar.inc(entry.header.size);
                            f(id, &mut entry)?;
                        }
                    }
                }
                Ok(())
            };
            stream().map_err(|e| diagnose(image, i, e))?;
            layer.finish().map_err(|e| diagnose(image, i, e))?;
        }
        bar.finish();
        Ok(())
    }

    /// The layer that turns `lower` into this tree: every entry that is new
    /// or differs (with its parent directories, as they are here), and a
    /// whiteout for each path `lower` has and this tree lacks (the topmost
    /// one only). Content still refers to this index's layers, so
    /// [`crate::encode::tar::write_tar`] with the same image writes the layer.
    pub fn diff_from(&self, lower: &FsIndex) -> FsIndex {
        let mut out = FsIndex::new();
        out.layers = self.layers.clone();
        let mut ids: HashMap<NodeId, NodeId> = HashMap::new();
        let root = out.entries[&Vec::new()];
        out.nodes[root as usize] = self.node(self.entries[&Vec::new()]).clone();
        let mut add = |out: &mut FsIndex, key: &[u8]| {
            if out.entries.contains_key(key) {
                return;
            }
            let id = self.entries[key];
            let new = *ids
                .entry(id)
                .or_insert_with(|| out.push_node(self.node(id).clone()));
            out.entries.insert(key.to_vec(), new);
        };
        for (key, &id) in &self.entries {
            if key.is_empty() {
                continue;
            }
            let same = lower.get(key).is_some_and(|(_, n)| n == self.node(id));
            if same {
                continue;
            }
            let mut parents = Vec::new();
            let mut k = parent_of(key);
            while let Some(p) = k.filter(|p| !p.is_empty()) {
                parents.push(p);
                k = parent_of(p);
            }
            for p in parents.into_iter().rev() {
                add(&mut out, p);
            }
            add(&mut out, key);
        }
        let mut gone: Option<Vec<u8>> = None;
        for key in lower.entries.keys() {
            if key.is_empty() || self.entries.contains_key(key) {
                continue;
            }
            if gone.as_deref().is_some_and(|g| is_under(key, g)) {
                continue;
            }
            let (parent, name) = match key.iter().rposition(|&b| b == b'/') {
                Some(i) => (&key[..i], &key[i + 1..]),
                None => (&key[..0], &key[..]),
            };
            // Under a path that is no longer a directory: replacing that
            // path removed it already.
            if !self.get(parent).is_some_and(|(_, n)| n.kind.is_dir()) {
                continue;
            }
            if !parent.is_empty() {
                let mut parents = vec![parent];
                let mut k = parent_of(parent);
                while let Some(p) = k.filter(|p| !p.is_empty()) {
                    parents.push(p);
                    k = parent_of(p);
                }
                for p in parents.into_iter().rev() {
                    add(&mut out, p);
                }
            }
            let mut wh = WHITEOUT.to_vec();
            wh.extend_from_slice(name);
            let id = out.push_node(Node {
                kind: Kind::File {
                    size: 0,
                    data: Data::Bytes(Arc::from(&[][..])),
                },
                meta: Meta::default(),
            });
            out.entries.insert(join(parent, &wh), id);
            gone = Some(key.clone());
        }
        out
    }

    /// Sum of the sizes of regular files (each hardlinked node once).
    pub fn content_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.entries
            .values()
            .filter(|id| seen.insert(**id))
            .map(|&id| match &self.node(id).kind {
                Kind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }
}

/// Normalize an absolute path: `.` and empty parts dropped, `..` pops
/// (stopping at the root).
pub(crate) fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// Whether `key` is strictly below `ancestor` (everything is below the root).
pub(crate) fn is_under(key: &[u8], ancestor: &[u8]) -> bool {
    ancestor.is_empty() && !key.is_empty()
        || key.len() > ancestor.len() && key.starts_with(ancestor) && key[ancestor.len()] == b'/'
}

/// Record `key` and its ancestors as touched by the current layer.
fn mark_upper(upper: &mut HashSet<Vec<u8>>, key: &[u8]) {
    let mut k = key;
    loop {
        if !upper.insert(k.to_vec()) {
            // Its ancestors are there already.
            return;
        }
        match parent_of(k) {
            Some(p) => k = p,
            None => return,
        }
    }
}

/// Metadata from a tar header, PAX records applied by the reader: mode
/// bits, owner, mtime (with PAX fractions), xattrs (SCHILY and LIBARCHIVE).
fn meta(h: &Header) -> Meta {
    Meta {
        mode: h.mode & 0o7777,
        uid: h.uid,
        gid: h.gid,
        mtime: h.mtime,
        mtime_nsec: h.mtime_nsec,
        xattrs: h.xattrs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_reject_unsafe() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(components(b"/etc/x").unwrap(), vec![&b"etc"[..], b"x"]);
        assert!(components(b"a/../b").is_err());
        assert!(components(b"a\0b").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }

    /// A 0644 regular file holding `b`, as a transform adds one.
    fn file(b: &[u8]) -> Node {
        Node {
            kind: Kind::File {
                size: b.len() as u64,
                data: Data::Bytes(b.into()),
            },
            meta: Meta {
                mode: 0o644,
                ..Meta::default()
            },
        }
    }

    #[test]
    fn diff_from_lists_changes_and_whiteouts() {
        let mut lower = FsIndex::new();
        for p in [
            "/etc/a",
            "/etc/ssh/host_key",
            "/etc/ssh/config",
            "/opt/d/x",
            "/same",
        ] {
            lower.put(p, file(p.as_bytes())).unwrap();
        }
        let mut upper = lower.clone();
        upper.put("/etc/a", file(b"changed")).unwrap();
        upper.put("/new/file", file(b"n")).unwrap();
        upper.remove("/etc/ssh/host_key");
        upper.remove("/opt/d");
        let diff = upper.diff_from(&lower);
        let keys: Vec<String> = diff.iter().map(|(k, _, _)| display_path(k)).collect();
        assert_eq!(
            keys,
            [
                "/",
                "/etc",
                "/etc/a",
                "/etc/ssh",
                "/etc/ssh/.wh.host_key",
                "/new",
                "/new/file",
                "/opt",
                "/opt/.wh.d"
            ]
        );
        // Applied to lower, the whiteouts and entries give upper.
        assert_eq!(
            diff.get(b"etc/a").unwrap().1,
            upper.get(b"etc/a").unwrap().1
        );
    }

    #[test]
    fn under() {
        assert!(is_under(b"a/b", b"a"));
        assert!(!is_under(b"ab", b"a"));
        assert!(!is_under(b"a", b"a"));
        assert!(is_under(b"a", b""));
    }

    #[test]
    fn transform_edits_land_like_layer_entries() {
        let mut idx = FsIndex::new();
        let dir = |mode| Node {
            kind: Kind::Dir,
            meta: Meta {
                mode,
                ..Meta::default()
            },
        };
        idx.put("/usr/lib", dir(0o755)).unwrap();
        idx.put(
            "/lib",
            Node {
                kind: Kind::Symlink {
                    target: b"usr/lib".to_vec(),
                },
                meta: Meta::default(),
            },
        )
        .unwrap();
        // Through the symlink, into usr/lib; missing parents are created.
        assert_eq!(
            idx.put("/lib/x/y.so", file(b"elf")).unwrap(),
            b"usr/lib/x/y.so"
        );
        assert_eq!(idx.lookup("/usr/lib/x").unwrap().2.meta.mode, 0o755);
        // A directory over a directory keeps the children.
        idx.put("/usr/lib", dir(0o700)).unwrap();
        assert!(idx.lookup("/usr/lib/x/y.so").is_some());
        assert_eq!(idx.lookup("/usr/lib").unwrap().2.meta.mode, 0o700);
        // remove() takes the symlink itself, not what it points at.
        assert!(idx.remove("/lib"));
        assert!(idx.lookup("/usr/lib/x/y.so").is_some());
        assert!(idx.remove("/usr"));
        assert_eq!(idx.len(), 1, "only the root is left");
        assert!(idx.put("/", file(b"x")).is_err());
    }

    #[test]
    fn resolve_dir_scoped() {
        let mut idx = FsIndex::new();
        let mut up = HashSet::new();
        idx.ensure_dir(b"usr/lib", &mut up).unwrap();
        let link = |t: &str| Node {
            kind: Kind::Symlink {
                target: t.as_bytes().to_vec(),
            },
            meta: Meta::default(),
        };
        let a = idx.push_node(link("usr/lib"));
        idx.entries.insert(b"lib".to_vec(), a);
        let b = idx.push_node(link("../../../../etc"));
        idx.entries.insert(b"evil".to_vec(), b);
        let c = idx.push_node(link("/loop"));
        idx.entries.insert(b"loop".to_vec(), c);
        assert_eq!(idx.resolve_dir(&[b"lib", b"x"]).unwrap(), b"usr/lib/x");
        assert_eq!(idx.resolve_dir(&[b"evil"]).unwrap(), b"etc");
        assert!(idx.resolve_dir(&[b"loop"]).is_err());
    }
}

/// Merge states after a run of lower layers, kept beside the store: a
/// later image that shares those layers (a nightly rebuild that changed its
/// top) starts from the state instead of reading them again. Keyed by the
/// layers' diff_ids and the merge format, so a state is reused only for
/// exactly the same layer contents.
pub mod cache {
    use std::path::{Path, PathBuf};

    use base64::Engine;
    use serde::{Deserialize, Serialize};

    use super::*;

    /// The state format (part of each state's name: see
    /// crate::store::merge_state_path).
    const FORMAT: u32 = crate::store::MERGE_STATE_FORMAT;

    #[derive(Serialize, Deserialize)]
    struct State {
        format: u32,
        layers: Vec<StateLayer>,
        /// (base64 path, node)
        entries: Vec<(String, NodeId)>,
        nodes: Vec<StateNode>,
    }

    #[derive(Serialize, Deserialize)]
    struct StateLayer {
        diff_id: Digest,
        entries: u64,
    }

    #[derive(Serialize, Deserialize)]
    struct StateNode {
        kind: char,
        #[serde(default)]
        size: u64,
        #[serde(default)]
        layer: u32,
        #[serde(default)]
        pos: u64,
        #[serde(default)]
        target: String,
        #[serde(default)]
        major: u32,
        #[serde(default)]
        minor: u32,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: i64,
        #[serde(default)]
        nsec: u32,
        #[serde(default)]
        xattrs: Vec<(String, String)>,
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn unb64(s: &str) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    }

    fn state_path(dir: &Path, diff_ids: &[Digest]) -> PathBuf {
        crate::store::merge_state_path(dir, diff_ids)
    }

    fn save(idx: &FsIndex, dir: &Path, diff_ids: &[Digest]) -> Result<()> {
        if state_path(dir, diff_ids).exists() {
            return Ok(());
        }
        // Only referenced nodes, renumbered densely.
        let mut renum: HashMap<NodeId, NodeId> = HashMap::new();
        let mut nodes = Vec::new();
        let mut entries = Vec::with_capacity(idx.entries.len());
        for (k, &id) in &idx.entries {
            let new = *renum.entry(id).or_insert_with(|| {
                let n = idx.node(id);
                let mut s = StateNode {
                    kind: 'd',
                    size: 0,
                    layer: 0,
                    pos: 0,
                    target: String::new(),
                    major: 0,
                    minor: 0,
                    mode: n.meta.mode,
                    uid: n.meta.uid,
                    gid: n.meta.gid,
                    mtime: n.meta.mtime,
                    nsec: n.meta.mtime_nsec,
                    xattrs: n
                        .meta
                        .xattrs
                        .iter()
                        .map(|(k, v)| (k.clone(), b64(v)))
                        .collect(),
                };
                match &n.kind {
                    Kind::Dir => {}
                    Kind::File {
                        size,
                        data: Data::Layer { layer, header_pos },
                    } => {
                        s.kind = 'f';
                        s.size = *size;
                        s.layer = *layer;
                        s.pos = *header_pos;
                    }
                    // Transform-added bytes never reach a merge state.
                    Kind::File { .. } => s.kind = '?',
                    Kind::Symlink { target } => {
                        s.kind = 'l';
                        s.target = b64(target);
                    }
                    Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                        s.kind = if matches!(n.kind, Kind::CharDevice { .. }) {
                            'c'
                        } else {
                            'b'
                        };
                        s.major = *major;
                        s.minor = *minor;
                    }
                    Kind::Fifo => s.kind = 'p',
                }
                nodes.push(s);
                (nodes.len() - 1) as NodeId
            });
            entries.push((b64(k), new));
        }
        if nodes.iter().any(|n| n.kind == '?') {
            return Ok(());
        }
        let state = State {
            format: FORMAT,
            layers: idx
                .layers
                .iter()
                .map(|l| StateLayer {
                    diff_id: l.diff_id.clone(),
                    entries: l.entries,
                })
                .collect(),
            entries,
            nodes,
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io_path(dir, "creating", e))?;
        let data = serde_json::to_vec(&state).expect("state serializes");
        crate::fsutil::write_atomic(&state_path(dir, diff_ids), &data, 0o644)
    }

    fn load(dir: &Path, image: &Image, upto: usize) -> Option<FsIndex> {
        let diff_ids = &image.config.rootfs.diff_ids[..upto];
        let path = state_path(dir, diff_ids);
        let data = std::fs::read(&path).ok()?;
        let idx = parse(&data, image, diff_ids);
        if idx.is_some() {
            // Used: the mtime is what pruning goes by.
            let _ = std::fs::File::open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        } else {
            // Damaged or foreign: gone, so that this run writes it anew.
            tracing::warn!("merge state {} is not usable; removed", path.display());
            let _ = std::fs::remove_file(&path);
        }
        idx
    }

    fn parse(data: &[u8], image: &Image, diff_ids: &[Digest]) -> Option<FsIndex> {
        let upto = diff_ids.len();
        let state: State = serde_json::from_slice(data).ok()?;
        if state.format != FORMAT
            || state.layers.len() != upto
            || state
                .layers
                .iter()
                .zip(diff_ids)
                .any(|(l, d)| &l.diff_id != d)
        {
            return None;
        }
        let mut idx = FsIndex::default();
        for s in &state.nodes {
            let kind = match s.kind {
                'd' => Kind::Dir,
                'f' => Kind::File {
                    size: s.size,
                    data: Data::Layer {
                        layer: s.layer,
                        header_pos: s.pos,
                    },
                },
                'l' => Kind::Symlink {
                    target: unb64(&s.target)?,
                },
                'c' => Kind::CharDevice {
                    major: s.major,
                    minor: s.minor,
                },
                'b' => Kind::BlockDevice {
                    major: s.major,
                    minor: s.minor,
                },
                'p' => Kind::Fifo,
                _ => return None,
            };
            let mut xattrs = BTreeMap::new();
            for (k, v) in &s.xattrs {
                xattrs.insert(k.clone(), unb64(v)?);
            }
            idx.push_node(Node {
                kind,
                meta: Meta {
                    mode: s.mode,
                    uid: s.uid,
                    gid: s.gid,
                    mtime: s.mtime,
                    mtime_nsec: s.nsec,
                    xattrs,
                },
            });
        }
        for (k, id) in &state.entries {
            if *id as usize >= idx.nodes.len() {
                return None;
            }
            idx.entries.insert(unb64(k)?, *id);
        }
        if !idx.entries.contains_key(&Vec::new()) {
            return None;
        }
        for (i, l) in state.layers.iter().enumerate() {
            let desc = &image.manifest.layers[i];
            idx.layers.push(LayerInfo {
                index: i,
                digest: desc.digest.clone(),
                diff_id: l.diff_id.clone(),
                media_type: desc.media_type.clone(),
                size: desc.size,
                // Sniffed from this image's blob: the same diff_id may be
                // compressed otherwise here than where the state was made.
                compression: crate::layers::LayerStream::open(image, i).ok()?.1,
                entries: l.entries,
                diff_size: 0,
            });
        }
        Some(idx)
    }

    /// Merge `image` starting from the longest cached state of its lower
    /// layers in `dir`, and cache the state after every layer merged here.
    /// The layers read are verified as always; layers covered by a state
    /// are not read.
    /// Returns the index and how many of its layers came from a state.
    pub fn from_image(image: &Image, dir: &Path) -> Result<(FsIndex, usize)> {
        from_image_upto(image, dir, image.layers().len())
    }

    /// The tree of the first `n` layers of `image`, like [`from_image`].
    pub fn from_image_upto(image: &Image, dir: &Path, n: usize) -> Result<(FsIndex, usize)> {
        let n = n.min(image.layers().len());
        let (mut idx, start) = (1..=n)
            .rev()
            .find_map(|upto| load(dir, image, upto).map(|idx| (idx, upto)))
            .unwrap_or_else(|| (FsIndex::new(), 0));
        if start > 0 {
            tracing::info!(
                "merge state of {start} of {n} layers reused from {}",
                dir.display()
            );
        }
        merge_saving(&mut idx, image, dir, start..n)?;
        if start < n {
            prune(dir, KEEP);
        }
        Ok((idx, start))
    }

    /// Merge layers `range` onto `idx`, keeping the state after each one.
    /// States are written by a second thread while the next layer merges
    /// (serializing a state takes about as long as merging a layer).
    fn merge_saving(
        idx: &mut FsIndex,
        image: &Image,
        dir: &Path,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<(FsIndex, usize)>();
        std::thread::scope(|s| {
            s.spawn(move || {
                for (state, i) in rx {
                    // A state that cannot be written only costs time later.
                    if let Err(e) = save(&state, dir, &image.config.rootfs.diff_ids[..=i]) {
                        tracing::warn!("could not keep the merge state: {e}");
                    }
                }
            });
            for i in range {
                idx.merge_layer(image, i)?;
                let _ = tx.send((idx.clone(), i));
            }
            drop(tx);
            Ok(())
        })
    }

    /// The tree of the first `lower` layers and the whole tree, for a
    /// change layer over kept base layers ([`FsIndex::diff_from`]).
    pub fn from_image_split(
        image: &Image,
        dir: &Path,
        lower: usize,
    ) -> Result<(FsIndex, FsIndex, usize)> {
        let (base, cached) = from_image_upto(image, dir, lower)?;
        let mut idx = base.clone();
        merge_saving(
            &mut idx,
            image,
            dir,
            lower.min(image.layers().len())..image.layers().len(),
        )?;
        Ok((base, idx, cached))
    }

    /// States kept: enough for the layer prefixes of a few dozen images.
    const KEEP: usize = 64;

    /// Remove all but the `keep` most recently used states (and temp files
    /// a killed run left).
    fn prune(dir: &Path, keep: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut states: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, e.path()))
            })
            .collect();
        states.sort_by_key(|s| std::cmp::Reverse(s.0));
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for (i, (mtime, path)) in states.iter().enumerate() {
            let is_state = path.extension().is_some_and(|e| e == "json");
            if (is_state && i >= keep) || (!is_state && *mtime < stale) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
