//! `gridship jobdesc` and the input errors every command reports: exit 2,
//! the file with line:column, and a fix.

mod common;

use common::arc::{arc_parse, gridship, repo};

const IMAGE: &str = "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/atlasml/ml-base:py-3.9.7";

#[test]
fn formats_and_output_file() {
    let x = gridship(
        &[
            "jobdesc",
            "--site",
            "qmul",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--gpus",
            "2",
        ],
        &[],
    );
    assert_eq!(x.code, 0, "{}", x.stderr);
    assert!(
        x.stdout.contains("(count = \"16\")")
            && x.stdout
                .contains("(runtimeenvironment = \"ENV/GPU\" \"2\")"),
        "{}",
        x.stdout
    );
    let a = gridship(
        &[
            "jobdesc",
            "--site",
            "qmul",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--gpus",
            "2",
            "--format",
            "adl",
        ],
        &[],
    );
    let j = gridship(
        &[
            "jobdesc",
            "--site",
            "qmul",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--gpus",
            "2",
            "--format",
            "json",
        ],
        &[],
    );
    let spec: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(spec["count"], 16);
    assert_eq!(spec["memory_mb"], 8000);
    let r = arc_parse(&[
        (x.stdout.clone(), "nordugrid:xrsl"),
        (a.stdout.clone(), "emies:adl"),
    ]);
    assert!(r[0].ok && r[1].ok, "{} {}", r[0].error, r[1].error);
    assert_eq!(r[0].jobs, r[1].jobs);
    assert_eq!(r[0].jobs[0]["count"], 16);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("job.xrsl");
    let w = gridship(
        &[
            "jobdesc",
            "--site",
            "qmul",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--gpus",
            "2",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(w.code, 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), x.stdout);
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

#[test]
fn gpu_requests_a_site_cannot_express() {
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "manchester",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--gpus",
            "2",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("exactly 1 GPU") && r.stderr.contains("hint"),
        "{}",
        r.stderr
    );
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "glasgow",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--gpus",
            "5",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("at most 2"), "{}", r.stderr);
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "glasgow",
            "--queue",
            "long",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no GPU queue 'long'") && r.stderr.contains("GPU queues here: gpu"),
        "{}",
        r.stderr
    );
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "atlantis",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("known: bonn, common, glasgow, manchester, qmul"),
        "{}",
        r.stderr
    );
    // The staged template wants a URL, not a CVMFS path.
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "bonn",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--template",
            "gpu-sif-staged",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("gpu-sif-staged.xrsl:7:") && r.stderr.contains("not a URL"),
        "{}",
        r.stderr
    );
}

#[test]
fn template_mistakes_point_at_line_and_column() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("bad.xrsl");
    std::fs::write(&t, "&(executable=\"/usr/bin/env\")\n (walltime=\"1:30:00\")\n (memory=\"4GB\")\n (gpus=\"1\")\n (countpernode=\"4\")").unwrap();
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "glasgow",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--template",
            t.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let e = &r.stderr;
    let f = t.display().to_string();
    assert!(
        e.contains(&format!("{f}:2:12")) && e.contains("HH:MM:SS"),
        "{e}"
    );
    assert!(
        e.contains(&format!("{f}:3:10")) && e.contains("write \"4096\""),
        "{e}"
    );
    assert!(
        e.contains(&format!("{f}:4:3")) && e.contains("ARC has no GPU attribute"),
        "{e}"
    );
    std::fs::write(
        &t,
        "&(executable=\"/usr/bin/env\")\n (arguments=\"a\" \"b\"",
    )
    .unwrap();
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "glasgow",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--template",
            t.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!("{f}:2:")) && r.stderr.contains("')' expected"),
        "{}",
        r.stderr
    );
}

#[test]
fn submit_refuses_bad_descriptions_before_any_network() {
    let d = tempfile::tempdir().unwrap();
    let adl = d.path().join("job.adl");
    std::fs::write(&adl, "<ActivityDescription xmlns=\"http://www.eu-emi.eu/es/2010/12/adl\"><Application><Executable><Path>/bin/true</Path></Executable></Application><Resources><Coprocessor>CUDA</Coprocessor></Resources></ActivityDescription>").unwrap();
    // Port 9 on loopback: nothing listens, so reaching it would be another error.
    let r = gridship(
        &[
            "submit",
            adl.to_str().unwrap(),
            "--ce",
            "https://127.0.0.1:9/arex",
        ],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("Coprocessor is not supported yet"),
        "{}",
        r.stderr
    );
    let x = d.path().join("job.xrsl");
    std::fs::write(
        &x,
        "&(executable=\"/bin/true\")(count=\"6\")(countpernode=\"4\")",
    )
    .unwrap();
    let r = gridship(
        &[
            "submit",
            x.to_str().unwrap(),
            "--ce",
            "https://127.0.0.1:9/arex",
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(":1:38") && r.stderr.contains("does not divide"),
        "{}",
        r.stderr
    );
}

#[test]
fn site_yaml_keys_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("x");
    std::fs::create_dir(&s).unwrap();
    let good = std::fs::read_to_string(repo().join("site-overlays/glasgow/site.yaml")).unwrap();
    std::fs::write(
        s.join("site.yaml"),
        good.replace("cores_per_gpu: 8", "cores_per_gpu: 8\n    gpus_per_node: 4"),
    )
    .unwrap();
    let r = gridship(
        &[
            "jobdesc",
            "--site",
            "x",
            "--queue",
            "gpu",
            "--image",
            IMAGE,
            "--run",
            "python3 train.py",
            "--site-overlays",
            d.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("gpus_per_node"), "{}", r.stderr);
}

#[test]
fn help_lists_only_working_commands() {
    let r = gridship(&["--help"], &[]);
    let cmds: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    // Every listed command exists for real: each one's --help works. The
    // list is exact so that a placeholder command cannot slip in.
    assert_eq!(
        cmds,
        [
            "copy",
            "inspect",
            "unpack",
            "export",
            "sif",
            "sif-info",
            "cvmfs",
            "build",
            "snapshot",
            "nightly",
            "promote",
            "serve",
            "session",
            "operation",
            "store",
            "smoke",
            "jobdesc",
            "submit",
            "status",
            "get",
            "kill",
            "clean",
            "pressure",
            "sites",
            "templates",
            "suites",
            "config",
            "completions",
            "man",
            "help"
        ]
    );
    for c in &cmds[..cmds.len() - 1] {
        let r = gridship(&[c, "--help"], &[]);
        assert_eq!(r.code, 0, "{c} --help: {}", r.stderr);
        assert!(r.stdout.contains("Usage: gridship"), "{c}: {}", r.stdout);
    }
}
