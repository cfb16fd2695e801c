//! Sinks: where a merged, transformed image goes.
//!
//! A sink reads the transformed tree and writes one kind of artifact (a
//! SIF, a CVMFS tree, an OCI image, a directory, a tar) through an encoder
//! (crate::encode). It never transforms the tree: what its format needs
//! (the Apptainer layout, the publisher's widening) it names in
//! [`Sink::needs`], and the pipeline applies those steps, in the one order
//! of crate::transform, when the sink asks for the tree. The tree is made
//! when asked for, so a sink that finds its artifact present reads no
//! layer.
//!
//! Adding a sink: one file here, and one line in [`KINDS`].

pub mod cvmfs;
pub mod dir;
pub mod oci;
pub mod sif;
pub mod tar;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::Result;
use crate::image::{Image, ImageConfig};
use crate::index::FsIndex;
use crate::transform::{RuleReport, Step};

/// One artifact a sink made.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub kind: String,
    pub path: String,
    pub digest: Option<String>,
    pub bytes: u64,
    /// How a grid job runs it, when one can.
    #[serde(skip)]
    pub runs_as: Option<JobImage>,
}

/// What a job description can run, as the sink that made it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobImage {
    /// A tree in a repository worker nodes mount (/cvmfs/REPO/...).
    Cvmfs(PathBuf),
    /// A SIF file.
    Sif(PathBuf),
}

/// The transformed tree of an image, as a sink reads it.
pub struct Tree {
    pub index: FsIndex,
    /// The image config after the transforms.
    pub config: ImageConfig,
    /// The image whose layers the index's file contents come from.
    pub data: Image,
    /// What the steps applied in making this tree did, in order: the
    /// pipeline's own when the tree is merged on asking ([`Trees`] of
    /// convert and publish), then the sink's ([`Sink::needs`]).
    pub reports: Vec<RuleReport>,
    /// Layers whose merged state came from the merge cache.
    pub merge_cached_layers: usize,
    /// Base layers kept as they are (promote --keep-base) and their merged
    /// tree: an image sink writes only what changed above them.
    pub kept_base: Option<(usize, Arc<FsIndex>)>,
}

/// The pipeline's side of a sink: the tree of an image, through the
/// pipeline's transforms and then the sink's needs, in the chain's order.
pub trait Trees {
    /// `image` is the sink's input, or an earlier image the sink compares
    /// with (CVMFS reuses files of an earlier tree).
    fn tree(&self, image: &Image, needs: Vec<Step<'static>>) -> Result<Tree>;
}

/// What a sink is given.
pub struct SinkInput<'a> {
    /// The image the artifacts are named after: its name, digests and the
    /// transformed config.
    pub image: &'a Image,
    pub trees: &'a dyn Trees,
}

impl SinkInput<'_> {
    /// The input image's tree, with what `sink` needs.
    pub fn tree(&self, sink: &dyn Sink) -> Result<Tree> {
        self.trees.tree(self.image, sink.needs(self.image)?)
    }
}

pub trait Sink {
    /// The artifact kind: its name in `--to` and in reports.
    fn kind(&self) -> &'static str;
    /// The name of the pipeline stage that runs it.
    fn stage_name(&self) -> &'static str {
        self.kind()
    }
    /// The transform steps the format needs on the tree of `image`.
    fn needs(&self, _image: &Image) -> Result<Vec<Step<'static>>> {
        Ok(Vec::new())
    }
    /// Whether the artifact is named by the digests of the image as one
    /// flattened OCI image (the CVMFS layout is): the pipeline then makes
    /// those digests first and gives that image as the input.
    fn named_by_digests(&self) -> bool {
        false
    }
    /// Write the artifact under a temporary name and rename it into place.
    fn write(&mut self, input: &SinkInput) -> Result<Vec<Artifact>>;
    /// What it did, for the stage's end event and `--json` (after write).
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
    /// Reports of the sink's own steps that the pipeline's report lists
    /// with its rules (after write; the SIF's Apptainer layout).
    fn rules(&self) -> Vec<RuleReport> {
        Vec::new()
    }
    /// What the user should know about the artifact (after write).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The image it wrote, if it writes one: sinks named by digests take
    /// it as their input.
    fn image(&self) -> Option<&Image> {
        None
    }
}

/// What promote's sinks are made from (its options, as one value).
#[derive(Debug, Clone)]
pub struct Spec {
    /// The output directory.
    pub out: PathBuf,
    /// Artifact base name and tag.
    pub name: String,
    pub tag: String,
    /// Build time (SOURCE_DATE_EPOCH when reproducible).
    pub created: i64,
    pub reproducible: bool,
    pub squashfs: crate::encode::squashfs::SquashfsOptions,
    /// The CVMFS repository (default: a dir backend under OUT/cvmfs).
    pub cvmfs: Option<cvmfs::CvmfsTarget>,
    pub store: crate::store::Layout,
    /// The site, named in the warning about a local CVMFS tree.
    pub site: String,
    /// The history entry's created_by of an image sink (the command).
    pub created_by: String,
}

type MakeSink = fn(&Spec) -> Result<Box<dyn Sink>>;

/// Every kind promote's `--to` takes, in the order their sinks run (an
/// image sink first: the CVMFS tree is named by its digests).
pub const KINDS: &[(&str, MakeSink)] = &[
    ("oci", oci::OciSink::from_spec),
    ("sif", sif::SifSink::from_spec),
    ("cvmfs", cvmfs::CvmfsSink::from_spec),
    ("dir", dir::DirSink::from_spec),
    ("tar", tar::TarSink::from_spec),
];

/// The names in [`KINDS`], for messages.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|(k, _)| *k).collect()
}
