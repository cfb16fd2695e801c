//! A sink added in the test tree, through the `Sink` trait alone: the
//! pipeline hands it the transformed tree (its own needs applied after the
//! pipeline's rules, in the chain's order), runs it as a stage with events,
//! and a failing sink fails its stage and the pipeline with its error.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::Gridship;
use gridship::event::Event;
use gridship::image::Image;
use gridship::pipeline::convert::{ConvertOptions, convert};
use gridship::reference::ImageRef;
use gridship::sink::{Artifact, Sink, SinkInput};
use gridship::transform::Step;
use gridship::transform::apptainer::{ApptainerMetadata, ApptainerOptions};

/// Writes the tree as a directory, with the Apptainer layout (as a SIF's).
struct TreeDir {
    dest: PathBuf,
    uri: String,
    created: i64,
    /// The rules the tree went through, in order.
    rules: Vec<String>,
    fail: bool,
}

impl Sink for TreeDir {
    fn kind(&self) -> &'static str {
        "tree-dir"
    }

    fn needs(&self, image: &Image) -> gridship::Result<Vec<Step<'static>>> {
        let options = ApptainerOptions::for_image(&self.uri, self.created, &image.config)?;
        Ok(vec![Step::Apptainer(Box::new(ApptainerMetadata::new(
            options,
        )))])
    }

    fn write(&mut self, input: &SinkInput) -> gridship::Result<Vec<Artifact>> {
        if self.fail {
            return Err(gridship::Error::Other("tree-dir: the disk is full".into()));
        }
        let tree = input.tree(self)?;
        self.rules = tree.reports.iter().map(|r| r.rule.clone()).collect();
        let opts = gridship::encode::dir::UnpackOptions::for_current_user();
        gridship::encode::dir::unpack(&tree.index, &tree.data, &self.dest, &opts)?;
        Ok(vec![Artifact {
            kind: "tree-dir".into(),
            path: self.dest.display().to_string(),
            digest: None,
            bytes: tree.index.content_bytes(),
            runs_as: None,
        }])
    }
}

/// The running stage and the listeners are the process's: these tests
/// take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// A pipeline's test ground: the busybox fixture, a store of its own,
/// and the events seen while `listening` lives.
struct Setup {
    work: tempfile::TempDir,
    source: ImageRef,
    ctx: gridship::transport::Context,
    events: Arc<Mutex<Vec<Event>>>,
    listening: gridship::event::Listening,
}

fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let fixture = common::fixtures().join("busybox-oci");
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    Setup {
        source: format!("oci:{}:1", fixture.display()).parse().unwrap(),
        ctx: gridship::transport::Context {
            store: work.path().join("store"),
            ..Default::default()
        },
        work,
        events,
        listening: gridship::event::listen(move |e| seen.lock().unwrap().push(e.clone())),
    }
}

/// path -> (type and mode, content digest or link target): what a job
/// sees of a tree, times aside.
fn tree_view(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = format!("/{}", e.path().strip_prefix(root).unwrap().display());
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_file() {
            common::sha256_file(e.path())
        } else {
            String::new()
        };
        out.insert(rel, format!("{:o} {what}", m.permissions().mode()));
    }
    out
}

#[test]
fn a_sink_from_the_test_tree_gets_the_transformed_tree_and_its_own_stage() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = Gridship::new();
    let Setup {
        work,
        source,
        ctx,
        events,
        listening,
    } = setup();
    let created = 1_767_225_600;
    let dest = work.path().join("tree");
    let (done, sink) = convert(
        &source,
        &ctx,
        &ConvertOptions {
            world_readable: true,
            ..Default::default()
        },
        |_| {
            Ok(TreeDir {
                dest: dest.clone(),
                uri: source.to_string(),
                created,
                rules: Vec::new(),
                fail: false,
            })
        },
    )
    .unwrap();
    drop(listening);

    // The pipeline's rule first, then the sink's need: the chain's order,
    // although the sink named only its own.
    assert_eq!(sink.rules, ["world-readable", "apptainer-metadata"]);
    assert_eq!(done.artifacts.len(), 1);
    assert_eq!(done.artifacts[0].kind, "tree-dir");
    assert_eq!(
        done.run
            .stages
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["source", "tree-dir"]
    );

    // What the sink wrote is what the SIF sink writes from the same tree
    // (gridship sif --world-readable, the same name and build time), file
    // by file.
    let sif = work.path().join("same.sif");
    g.cmd()
        .env("SOURCE_DATE_EPOCH", created.to_string())
        .env("GRIDSHIP_STORE", work.path().join("store"))
        .args(["sif", "--world-readable", &source.to_string()])
        .arg(&sif)
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("gridship sif");
    let unsquashed = work.path().join("unsquashed");
    common::unsquash_sif(&g, &sif, &unsquashed);
    let (ours, theirs) = (tree_view(&dest), tree_view(&unsquashed));
    assert!(
        ours.contains_key("/.singularity.d/runscript"),
        "the sink's need was applied"
    );
    let differ: Vec<_> = ours
        .iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} vs {:?}", theirs.get(k)))
        .chain(
            theirs
                .keys()
                .filter(|k| !ours.contains_key(*k))
                .map(|k| format!("only in the SIF: {k}")),
        )
        .collect();
    assert!(
        differ.is_empty(),
        "{} differences:\n{}",
        differ.len(),
        differ.join("\n")
    );

    // One start and one end per stage, in order; the sink's end names
    // what it made.
    let events = events.lock().unwrap();
    let ours: Vec<&Event> = events
        .iter()
        .filter(|e| match e {
            Event::Start { stage, .. } | Event::End { stage, .. } => {
                stage == "source" || stage == "tree-dir"
            }
            _ => false,
        })
        .collect();
    let kinds: Vec<String> = ours
        .iter()
        .map(|e| match e {
            Event::Start { stage, .. } => format!("start {stage}"),
            Event::End { stage, ok, .. } => format!("end {stage} {ok}"),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start source",
            "end source true",
            "start tree-dir",
            "end tree-dir true"
        ]
    );
    match ours[3] {
        Event::End {
            result: Some(r), ..
        } => {
            assert_eq!(r["artifacts"][0]["kind"], "tree-dir", "{r}");
            assert_eq!(r["artifacts"][0]["path"], dest.display().to_string(), "{r}");
        }
        other => panic!("the sink's end has no result: {other:?}"),
    }
    // The merge read the layers during the sink's stage (the tree is made
    // when the sink asks), and the encoder counted the paths it wrote: both
    // went to that stage.
    let entries = walkdir::WalkDir::new(&dest).into_iter().count() as u64;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::End { stage, bytes, paths, .. }
            if stage == "tree-dir" && *bytes > 0 && *paths + 1 == entries)),
        "{entries} entries: {events:?}"
    );
}

#[test]
fn a_failing_sink_fails_its_stage_and_the_pipeline() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Setup {
        work,
        source,
        ctx,
        events,
        listening,
    } = setup();
    let dest = work.path().join("tree");
    let err = convert(&source, &ctx, &ConvertOptions::default(), |_| {
        Ok(TreeDir {
            dest: dest.clone(),
            uri: source.to_string(),
            created: 0,
            rules: Vec::new(),
            fail: true,
        })
    })
    .err()
    .expect("the sink fails");
    drop(listening);
    assert_eq!(err.to_string(), "tree-dir: the disk is full");
    assert!(!dest.exists());
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::End { stage, ok: false, .. } if stage == "tree-dir")),
        "the stage ends as failed"
    );
}

/// `--events`: every stage's start, progress and end as JSON lines on
/// stderr, for a service that runs gridship; the sink's end carries the
/// artifact with its digest.
#[test]
fn events_reach_the_cli_as_json_lines() {
    // An error is an event as well, and exit code 2 stays.
    let g = Gridship::new();
    let bad = g
        .cmd()
        .args(["--events", "sif", "oci:/nonexistent:1", "/tmp/x.sif"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let last = String::from_utf8_lossy(&bad.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let last: serde_json::Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{last:?}: {e}"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("/nonexistent"),
        "{last}"
    );

    let work = tempfile::tempdir().unwrap();
    let fixture = common::fixtures().join("busybox-oci");
    let sif = work.path().join("bb.sif");
    let out = g
        .cmd()
        .args(["--events", "sif"])
        .arg(format!("oci:{}:1", fixture.display()))
        .arg(&sif)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let marks: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "start" || e["event"] == "end")
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["stage"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        marks,
        ["start source", "end source", "start sif", "end sif"]
    );
    // The log record (the busybox image's /root is 0700) is an event too.
    assert!(
        events.iter().any(|e| e["event"] == "log"
            && e["level"] == "WARN"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("/root (0700) closed to group and others")),
        "{events:?}"
    );
    let end = events.iter().rfind(|e| e["event"] == "end").unwrap();
    assert_eq!(end["ok"], true);
    assert_eq!(
        end["result"]["artifacts"][0]["digest"],
        format!("sha256:{}", common::sha256_file(&sif)),
        "{end}"
    );
    assert!(
        end["bytes"].as_u64().unwrap() > 0,
        "the merge's reads count for the sif stage: {end}"
    );
}
