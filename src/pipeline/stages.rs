//! The stages every pipeline is made of, and the runner that names them.
//!
//! A pipeline is a list of named stages: source, merge, transforms, sinks,
//! smoke, job description. [`Run::stage`] runs one: it starts the stage's
//! events (crate::event: start, progress, end with its result), and keeps
//! its time and the layers it merged for the pipeline's report.
//! The sinks' side of the transforms is [`Merging`] (trees merged when a
//! sink asks) or [`Prepared`] (promote's tree, merged and transformed once).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::Result;
use crate::image::Image;
use crate::index::{FsIndex, cache};
use crate::sink::{Artifact, Sink, SinkInput, Tree, Trees};
use crate::transform::{Chain, Step};

/// The stages a pipeline ran, in order.
#[derive(Debug, Default)]
pub struct Run {
    /// Seconds per stage.
    pub stages: Vec<(String, f64)>,
    /// Layers read and merged per stage (the merge cache's hits are not
    /// reads).
    pub layers_merged: Vec<(String, u64)>,
    /// What the user should know, from any stage.
    pub warnings: Vec<String>,
}

impl Run {
    pub fn new() -> Run {
        Run::default()
    }

    /// Run stage `name`: its events, its time and the layers it merged.
    pub fn stage<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.stage_said(name, f, |_| None)
    }

    /// [`Run::stage`], whose end event says `summary` of its value.
    pub fn stage_said<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T>,
        summary: impl FnOnce(&T) -> Option<serde_json::Value>,
    ) -> Result<T> {
        let merged = crate::index::layers_merged();
        let stage = crate::event::stage(name, None);
        let value = f()?;
        let end = stage.finish(summary(&value));
        self.stages.push((end.stage.clone(), end.seconds));
        self.layers_merged
            .push((end.stage, crate::index::layers_merged() - merged));
        Ok(value)
    }

    /// Run `sinks` in order, one stage each, on `image`'s tree from
    /// `trees`. A sink named by digests takes the image an earlier sink
    /// wrote (see [`Sink::named_by_digests`]).
    pub fn sinks(
        &mut self,
        sinks: &mut [&mut dyn Sink],
        image: &Image,
        trees: &dyn Trees,
    ) -> Result<Vec<Artifact>> {
        let mut artifacts = Vec::new();
        let mut written: Option<Image> = None;
        for sink in sinks.iter_mut() {
            let input = SinkInput {
                image: match &written {
                    Some(w) if sink.named_by_digests() => w,
                    _ => image,
                },
                trees,
            };
            let stage = sink.stage_name();
            let (made, _) = self.stage_said(
                stage,
                || Ok((sink.write(&input)?, sink.report())),
                |(made, report)| {
                    serde_json::to_value(SinkEnd {
                        artifacts: made,
                        report: report.clone(),
                    })
                    .ok()
                },
            )?;
            artifacts.extend(made);
            self.warnings.extend(sink.warnings());
            if let Some(img) = sink.image() {
                written = Some(img.clone());
            }
        }
        Ok(artifacts)
    }
}

/// A sink stage's end: the artifacts and the sink's report.
#[derive(Serialize)]
struct SinkEnd<'a> {
    artifacts: &'a [Artifact],
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<serde_json::Value>,
}

/// Trees merged when a sink asks (from the merge cache when given), through
/// the pipeline's own steps and then the sink's.
pub struct Merging {
    /// Merge states of earlier runs (crate::index::cache).
    pub cache: Option<PathBuf>,
    /// The world-readable rule (the pipeline's one step here).
    pub world_readable: bool,
    /// Without the rule: warn of homes closed to pool accounts.
    pub warn_closed_homes: bool,
    warnings: Mutex<Vec<String>>,
}

impl Merging {
    pub fn new(cache: Option<PathBuf>, world_readable: bool) -> Merging {
        Merging {
            cache,
            world_readable,
            warn_closed_homes: false,
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// What the trees made so far gave to know.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

impl Trees for Merging {
    fn tree(&self, image: &Image, needs: Vec<Step<'static>>) -> Result<Tree> {
        let (mut index, cached) = match &self.cache {
            Some(dir) => cache::from_image(image, dir)?,
            None => (FsIndex::from_image(image)?, 0),
        };
        let mut config = image.config.clone();
        let mut steps = needs;
        if self.world_readable {
            steps.push(Step::WorldReadable);
        } else if self.warn_closed_homes
            && let Some(w) = crate::transform::readable::closed_homes_warning(&index, &config)
            && let Ok(mut all) = self.warnings.lock()
        {
            all.push(w);
        }
        let mut chain = Chain::new();
        chain.apply(steps, &mut index, &mut config)?;
        Ok(Tree {
            index,
            config,
            data: image.clone(),
            reports: chain.reports,
            merge_cached_layers: cached,
            kept_base: None,
        })
    }
}

/// Promote's tree, merged and put through its rules once: each sink gets
/// a copy with its own needs applied after them.
pub struct Prepared<'a> {
    pub index: &'a FsIndex,
    /// Where the rules are in the chain.
    pub chain: &'a Chain,
    /// The image whose layers the index's contents come from.
    pub data: &'a Image,
    pub kept_base: Option<(usize, Arc<FsIndex>)>,
}

impl Trees for Prepared<'_> {
    /// The prepared tree whatever `image` is: promote's sinks all write
    /// the one tree (under the names of the images they are given).
    fn tree(&self, image: &Image, needs: Vec<Step<'static>>) -> Result<Tree> {
        let mut index = self.index.clone();
        let mut config = image.config.clone();
        let mut chain = self.chain.continued();
        chain.apply(needs, &mut index, &mut config)?;
        Ok(Tree {
            index,
            config,
            data: self.data.clone(),
            // The rules are promote's report's; the sink's steps are new.
            reports: chain.reports,
            // Merged before: the sinks merge nothing.
            merge_cached_layers: 0,
            kept_base: self.kept_base.clone(),
        })
    }
}

/// A source stage's end: the image it opened.
pub fn image_summary(image: &Image) -> Option<serde_json::Value> {
    Some(serde_json::json!({
        "image": image.name,
        "manifest": image.manifest_desc.digest.to_string(),
        "layers": image.layers().len(),
    }))
}
