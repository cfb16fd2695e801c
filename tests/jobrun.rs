//! What a job runs and moves (`--run`, `-- ARGV`, `--input`, `--output`,
//! `--gpus`, `--walltime`, `--memory`): the xRSL and ADL `gridship jobdesc`
//! writes, read back by ARC's own parser field by field, and the same
//! fields in `--format json`; and the input errors, exit 2.

mod common;

use common::arc::{Run, arc_parse, assert_same, gridship, key};
use gridship::jobdesc::JobSpec;
use serde_json::json;

const IMAGE: &str = "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/atlasml/ml-base:py-3.9.7";

fn jobdesc(extra: &[&str], format: &str) -> Run {
    let mut args = vec![
        "jobdesc", "--site", "qmul", "--queue", "gpu", "--image", IMAGE, "--format", format,
    ];
    args.extend_from_slice(extra);
    gridship(&args, &[])
}

/// All three formats of one request; the JSON as a JobSpec.
fn three(extra: &[&str]) -> (String, String, JobSpec) {
    let x = jobdesc(extra, "xrsl");
    let a = jobdesc(extra, "adl");
    let j = jobdesc(extra, "json");
    for r in [&x, &a, &j] {
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let spec: JobSpec = serde_json::from_str(&j.stdout).unwrap();
    (x.stdout, a.stdout, spec)
}

/// ARC reads xRSL and ADL as `spec` says; `uploads` are the local files
/// (file:// sources), which ARC's key leaves out and lists in input_urls.
fn same_in_arc(xrsl: String, adl: String, spec: &JobSpec) {
    let parsed = arc_parse(&[(xrsl, "nordugrid:xrsl"), (adl, "emies:adl")]);
    let mut ours = spec.clone();
    for f in &mut ours.input_files {
        if f.source
            .as_deref()
            .is_some_and(|s| s.starts_with("file://"))
        {
            f.source = None;
        }
    }
    let urls: Vec<serde_json::Value> = spec
        .input_files
        .iter()
        .map(|f| {
            // ARC prints a local file URL as file:/PATH.
            let arc_form = f
                .source
                .iter()
                .map(|s| match s.strip_prefix("file://") {
                    Some(p) => format!("file:{p}"),
                    None => s.clone(),
                })
                .collect::<Vec<_>>();
            json!([f.name, arc_form])
        })
        .collect();
    for (p, lang) in parsed.iter().zip(["xRSL", "ADL"]) {
        assert!(p.ok, "{lang}: ARC could not parse: {}", p.error);
        assert_same(lang, &key(&ours), &p.jobs[0]);
        assert_eq!(p.jobs[0]["input_urls"], json!(urls), "{lang}");
    }
}

#[test]
fn command_inputs_outputs_and_resources_reach_arc() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data.csv");
    std::fs::write(&data, "a,b\n1,2\n").unwrap();
    let data = data.to_str().unwrap();
    let run = "python3 train.py --out \"results\" --tag it's && echo done";
    let (x, a, spec) = three(&[
        "--run",
        run,
        "--input",
        data,
        "--input",
        "https://data.example.org:443/sets/mnist.npz?version=2",
        "--output",
        "results/",
        "--output",
        "model.pt",
        "--gpus",
        "2",
        "--walltime",
        "1h30m",
        "--memory",
        "6G",
    ]);
    assert_eq!(spec.executable, "/bin/sh");
    assert_eq!(spec.arguments, ["-c", run]);
    let inputs: Vec<(&str, Option<&str>)> = spec
        .input_files
        .iter()
        .map(|f| (f.name.as_str(), f.source.as_deref()))
        .collect();
    let local = format!("file://{data}");
    assert_eq!(
        inputs,
        [
            ("data.csv", Some(local.as_str())),
            (
                "mnist.npz",
                Some("https://data.example.org:443/sets/mnist.npz?version=2")
            )
        ]
    );
    let outputs: Vec<&str> = spec.output_files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        outputs,
        ["stdout.txt", "stderr.txt", "results/", "model.pt"]
    );
    assert!(spec.output_files.iter().all(|f| f.target.is_none()));
    assert_eq!(spec.walltime_s, Some(5400));
    assert_eq!(spec.memory_mb, Some(6144));
    // qmul: 8 cores per GPU, GPUs through its ENV/GPU RTE.
    assert_eq!(spec.count, Some(16));
    assert!(
        spec.runtime_environments
            .iter()
            .any(|r| r.name == "ENV/GPU" && r.options == ["2"]),
        "{:?}",
        spec.runtime_environments
    );
    same_in_arc(x, a, &spec);
}

#[test]
fn argv_after_double_dash_runs_without_a_shell() {
    let (x, a, spec) = three(&["--", "python3", "-c", "print('a b')", "--lr", "0.1"]);
    assert_eq!(spec.executable, "/usr/bin/env");
    assert_eq!(
        spec.arguments,
        ["python3", "-c", "print('a b')", "--lr", "0.1"]
    );
    same_in_arc(x, a, &spec);
    let (x, a, spec) = three(&["--", "/opt/app/run", "--fast"]);
    assert_eq!(
        (spec.executable.as_str(), spec.arguments.as_slice()),
        ("/opt/app/run", &["--fast".to_string()][..])
    );
    // Defaults: 6h walltime, the queue's memory per core.
    assert_eq!(
        (spec.walltime_s, spec.memory_mb),
        (Some(6 * 3600), Some(8000))
    );
    same_in_arc(x, a, &spec);
}

/// A template for local image directories (IMAGE of type image).
fn local_template(dir: &std::path::Path) -> String {
    let t = dir.join("local.xrsl");
    std::fs::write(
        &t,
        "(* @placeholder IMAGE image  the image\n   @placeholder EXECUTABLE text  program\n   @placeholder WALLTIME text  limit *)\n\
         &(executable = $(EXECUTABLE))(walltime = $(WALLTIME))(runtimeenvironment = \"ENV/SINGULARITY\" $(IMAGE))",
    )
    .unwrap();
    t.display().to_string()
}

fn image_dir(dir: &std::path::Path, entrypoint: &str, cmd: &str) -> String {
    let img = dir.join("img");
    std::fs::create_dir_all(img.join(".singularity.d")).unwrap();
    std::fs::write(
        img.join(".singularity.d/runscript"),
        format!("#!/bin/sh\nOCI_ENTRYPOINT='{entrypoint}'\nOCI_CMD='{cmd}'\nexec \"$@\"\n"),
    )
    .unwrap();
    img.display().to_string()
}

#[test]
fn without_a_command_the_image_runs_its_own_or_the_error_names_run() {
    let d = tempfile::tempdir().unwrap();
    let t = local_template(d.path());
    let run = |image: &str, extra: &[&str]| {
        let mut args = vec![
            "jobdesc",
            "--site",
            "qmul",
            "--queue",
            "gpu",
            "--image",
            image,
            "--template",
            &t,
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        gridship(&args, &[])
    };
    // An image with no Entrypoint or Cmd.
    let empty = image_dir(d.path(), "", "");
    let r = run(&empty, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--run") && r.stderr.contains("no Entrypoint or Cmd"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "nothing written: {}", r.stdout);
    // What strip-sshd leaves (Cmd ["/bin/bash"]) does nothing in a job either.
    let shell = image_dir(&d.path().join("s"), "", "\"/bin/bash\"");
    let r = run(&shell, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--run") && r.stderr.contains("shell"),
        "{}",
        r.stderr
    );
    // With a command given, the same image is fine.
    let r = run(&empty, &["--run", "echo hi"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // An image that runs something: its runscript, as `apptainer run`.
    let app = image_dir(&d.path().join("a"), "\"/app/serve\"", "\"--port\" \"80\"");
    let r = run(&app, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let spec: JobSpec = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(spec.executable, "/.singularity.d/runscript");
    assert!(spec.arguments.is_empty());
    // A CVMFS path not mounted here: gridship cannot know, so it asks.
    let r = jobdesc(&[], "xrsl");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--run"), "{}", r.stderr);
}

#[test]
fn bad_work_options_are_refused_with_the_input_named() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--run", "x", "--input", "/no/such/data.csv"],
            "--input /no/such/data.csv",
        ),
        (&["--run", "x", "--input", "/tmp"], "not a regular file"),
        (
            &["--run", "x", "--input", "https://h/dir/"],
            "names no file",
        ),
        (&["--run", "x", "--output", "../up"], "--output ../up"),
        (&["--run", "x", "--memory", "9G"], "--memory 9216 MB"),
        (&["--run", "x", "--walltime", "100h"], "queue 'gpu' allows"),
        (&["--run", "x", "--walltime", "1:30:00"], "HH:MM:SS"),
        (&["--run", "x", "--memory", "4 GB x"], "unknown unit"),
        (&["--run", "x", "--", "y"], "cannot be used with"),
    ];
    for (extra, want) in cases {
        let r = jobdesc(extra, "xrsl");
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{extra:?}: want {want:?} in {}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
    // Two inputs with one name would overwrite each other in the job.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("b")).unwrap();
    for p in ["x.csv", "b/x.csv"] {
        std::fs::write(d.path().join(p), "1").unwrap();
    }
    let (p1, p2) = (d.path().join("x.csv"), d.path().join("b/x.csv"));
    let r = jobdesc(
        &[
            "--run",
            "x",
            "--input",
            p1.to_str().unwrap(),
            "--input",
            p2.to_str().unwrap(),
        ],
        "xrsl",
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("both be 'x.csv'"), "{}", r.stderr);
    // A template with a command of its own has nowhere to put --run.
    let t = d.path().join("own.xrsl");
    std::fs::write(&t, "&(executable=\"/bin/true\")(walltime=\"1h\")").unwrap();
    let r = jobdesc(&["--run", "x", "--template", t.to_str().unwrap()], "xrsl");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("$(EXECUTABLE)"), "{}", r.stderr);
}
