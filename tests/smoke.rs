//! `gridship smoke`: static checks on small hand-written images and on the
//! Debian fixture, the no-GPU behaviour of the runtime checks, the reports
//! (JSON, JUnit XML read back by Python), the chroot backend as root, and
//! the apptainer backend through real Apptainer.

mod common;

use std::path::{Path, PathBuf};

use common::Gridship;
use common::layers::{Comp, Entry, dir, file, symlink, write_image, write_image_env};

const STATIC_SUITE: &str = "name: static-only
checks:
  - {name: no-driver-libs, kind: static}
  - {name: glibc-version, kind: static}
  - {name: cuda-driver-compat, kind: static}
";

const SITE: &str = r#"
gpu_queues:
  old:
    gpu_model: NVIDIA V100
    gpu_request: fixed
    gpus_per_job: 1
    cores_per_gpu: 4
    memory_per_gpu_mb: 16000
    driver_version: "470.82.01"
  a100:
    gpu_model: NVIDIA A100-SXM4-40GB
    gpu_request: fixed
    gpus_per_job: 1
    cores_per_gpu: 8
    memory_per_gpu_mb: 32000
    driver_version: "535.154.05"
  h100:
    gpu_model: NVIDIA H100 80GB HBM3
    gpu_request: fixed
    gpus_per_job: 1
    cores_per_gpu: 8
    memory_per_gpu_mb: 64000
    driver_version: "560.35.03"
"#;

fn base() -> Vec<Entry> {
    vec![
        dir("usr", 0o755),
        dir("usr/lib", 0o755),
        dir("usr/lib/x86_64-linux-gnu", 0o755),
        symlink("lib", "usr/lib"),
        file(
            "usr/lib/x86_64-linux-gnu/libc-2.31.so",
            0o755,
            b"\x7fELF fake",
        ),
        symlink("usr/lib/x86_64-linux-gnu/libc.so.6", "libc-2.31.so"),
        file("usr/lib/x86_64-linux-gnu/libGL.so.1", 0o644, b"glvnd"),
    ]
}

struct Fixture {
    _d: tempfile::TempDir,
    dir: PathBuf,
    suite: PathBuf,
    sites: PathBuf,
}

fn fixture(env: &[&str], extra: Vec<Entry>) -> Fixture {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("img");
    let mut entries = base();
    entries.extend(extra);
    if env.is_empty() {
        write_image(&layout, "1", &[(Comp::Gzip, entries)]);
    } else {
        write_image_env(&layout, "1", env, &[(Comp::Gzip, entries)]);
    }
    let suite = d.path().join("static.yaml");
    std::fs::write(&suite, STATIC_SUITE).unwrap();
    let sites = d.path().join("sites");
    std::fs::create_dir_all(sites.join("test")).unwrap();
    std::fs::write(sites.join("test/site.yaml"), SITE).unwrap();
    Fixture {
        dir: layout,
        suite,
        sites,
        _d: d,
    }
}

fn oci(f: &Fixture) -> String {
    format!("oci:{}:1", f.dir.display())
}

fn check<'a>(j: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {j:#}"))
}

fn suites_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("smoke-suites")
}

fn gpu_here() -> bool {
    Path::new("/dev/nvidia0").exists()
}

/// `smoke` of the fixture's image with its suite on the queue `queue` of
/// its site `test`, as JSON.
fn smoke_on_queue(g: &Gridship, f: &Fixture, queue: &str) -> common::Run {
    g.run(&[
        "smoke",
        &oci(f),
        "--suite",
        f.suite.to_str().unwrap(),
        "--site",
        "test",
        "--queue",
        queue,
        "--site-overlays",
        f.sites.to_str().unwrap(),
        "--json",
    ])
}

#[test]
fn smoke_planted_libcuda_fails_naming_the_path() {
    let f = fixture(
        &[],
        vec![
            file("usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", 0o755, b"x"),
            symlink(
                "usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "libcuda.so.550.54.15",
            ),
        ],
    );
    let g = Gridship::new();
    let r = g.run(&[
        "smoke",
        &oci(&f),
        "--suite",
        f.suite.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let c = check(&j, "no-driver-libs");
    assert_eq!(c["status"], "fail");
    let d = c["detail"].as_str().unwrap();
    assert!(d.contains("/usr/lib/x86_64-linux-gnu/libcuda.so.1"), "{d}");
    assert!(
        d.contains("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"),
        "{d}"
    );
    assert!(
        !d.contains("libGL.so.1"),
        "glvnd is not a driver library: {d}"
    );
    let c = check(&j, "glibc-version");
    assert_eq!(c["status"], "pass");
    assert!(c["detail"].as_str().unwrap().contains("glibc 2.31"), "{c}");
    // No CUDA in the image: nothing to compare, skipped.
    assert_eq!(check(&j, "cuda-driver-compat")["status"], "skip");
    assert_eq!(
        (j["failed"].as_u64(), j["skipped"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn smoke_wired_cuda_compat_is_reported_as_forward_compat() {
    let f = fixture(
        &["PATH=/usr/bin:/bin", "CUDA_VERSION=12.4.1"],
        vec![
            dir("etc", 0o755),
            dir("etc/ld.so.conf.d", 0o755),
            file(
                "etc/ld.so.conf.d/000_cuda.conf",
                0o644,
                b"# cuda\n/usr/local/cuda-12.4/compat\n",
            ),
            dir("usr/local", 0o755),
            dir("usr/local/cuda-12.4", 0o755),
            dir("usr/local/cuda-12.4/compat", 0o755),
            file(
                "usr/local/cuda-12.4/compat/libcuda.so.550.54.15",
                0o755,
                b"x",
            ),
            symlink(
                "usr/local/cuda-12.4/compat/libcuda.so.1",
                "libcuda.so.550.54.15",
            ),
        ],
    );
    let r = Gridship::new().run(&[
        "smoke",
        &oci(&f),
        "--suite",
        f.suite.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    let d = check(&j, "no-driver-libs")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains("/usr/local/cuda-12.4/compat/libcuda.so.1"),
        "{d}"
    );
    assert!(
        d.contains("forward-compatibility") && d.contains("000_cuda.conf"),
        "{d}"
    );

    // The same package not wired into the library path is fine.
    let f = fixture(
        &["PATH=/usr/bin:/bin"],
        vec![
            dir("usr/local", 0o755),
            dir("usr/local/cuda-12.4", 0o755),
            dir("usr/local/cuda-12.4/compat", 0o755),
            file(
                "usr/local/cuda-12.4/compat/libcuda.so.550.54.15",
                0o755,
                b"x",
            ),
        ],
    );
    let r = Gridship::new().run(&[
        "smoke",
        &oci(&f),
        "--suite",
        f.suite.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let c = check(&r.json(), "no-driver-libs").clone();
    assert_eq!(c["status"], "pass");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("not on the library path"),
        "{c}"
    );
}

#[test]
fn smoke_ld_library_path_dirs_are_searched() {
    let f = fixture(
        &[
            "PATH=/usr/bin:/bin",
            "LD_LIBRARY_PATH=/opt/drv/lib:/usr/local/nvidia/lib64",
        ],
        vec![
            dir("opt", 0o755),
            dir("opt/drv", 0o755),
            dir("opt/drv/lib", 0o755),
            file("opt/drv/lib/libnvidia-ml.so.1", 0o755, b"x"),
        ],
    );
    let r = Gridship::new().run(&[
        "smoke",
        &oci(&f),
        "--suite",
        f.suite.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 1);
    let d = check(&r.json(), "no-driver-libs")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains("/opt/drv/lib/libnvidia-ml.so.1") && d.contains("LD_LIBRARY_PATH"),
        "{d}"
    );
}

#[test]
fn smoke_cuda_runtime_against_site_queue_drivers() {
    let f = fixture(&["PATH=/usr/bin:/bin", "CUDA_VERSION=12.6.3"], vec![]);
    let g = Gridship::new();
    let sites = f.sites.to_str().unwrap();
    let run = |queue: &str| smoke_on_queue(&g, &f, queue);
    // 470.x is an 11.x driver: the 12.6 runtime cannot run.
    let r = run("old");
    assert_eq!(r.code, 1, "{}", r.stderr);
    let c = check(&r.json(), "cuda-driver-compat").clone();
    assert_eq!(c["status"], "fail");
    let d = c["detail"].as_str().unwrap();
    assert!(
        d.contains("CUDA 12.6") && d.contains("CUDA_VERSION=12.6.3"),
        "{d}"
    );
    assert!(
        d.contains("incompatible") && d.contains("470.82.01") && d.contains("below 525,"),
        "{d}"
    );
    // 535 is below 12.6's 560.28.03 but a 12.x driver: minor version compatibility.
    let r = run("a100");
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let c = check(&r.json(), "cuda-driver-compat").clone();
    assert_eq!(c["status"], "pass");
    let d = c["detail"].as_str().unwrap();
    assert!(
        d.contains("compatible-with-minor-version-compatibility") && d.contains("PTX"),
        "{d}"
    );
    let r = run("h100");
    assert_eq!(r.code, 0);
    let d = check(&r.json(), "cuda-driver-compat")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(d.contains("test/h100: compatible:"), "{d}");
    // All queues of the site: one incompatible queue fails the check.
    let r = g.run(&[
        "smoke",
        &oci(&f),
        "--suite",
        f.suite.to_str().unwrap(),
        "--site",
        "test",
        "--site-overlays",
        sites,
        "--json",
    ]);
    assert_eq!(r.code, 1);
    let j = r.json();
    assert_eq!(j["queues"].as_array().unwrap().len(), 3);
    // An unknown queue is bad input, naming the queues there are.
    let r = run("nope");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("a100"), "{}", r.stderr);
}

#[test]
fn smoke_cuda_from_libcudart_file_names() {
    let f = fixture(
        &[],
        vec![
            dir("usr/local", 0o755),
            dir("usr/local/cuda-11.8", 0o755),
            dir("usr/local/cuda-11.8/lib64", 0o755),
            file(
                "usr/local/cuda-11.8/lib64/libcudart.so.11.8.89",
                0o755,
                b"x",
            ),
            symlink(
                "usr/local/cuda-11.8/lib64/libcudart.so.11.0",
                "libcudart.so.11.8.89",
            ),
        ],
    );
    let r = smoke_on_queue(&Gridship::new(), &f, "old");
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let d = check(&r.json(), "cuda-driver-compat")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains("CUDA 11.8") && d.contains("libcudart.so.11.8.89"),
        "{d}"
    );
    assert!(
        d.contains("compatible-with-minor-version-compatibility"),
        "{d}"
    );
}

#[test]
fn smoke_clean_image_passes() {
    let f = fixture(&[], vec![]);
    let r = Gridship::new().run(&["smoke", &oci(&f), "--suite", f.suite.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("PASS  no-driver-libs"), "{}", r.stdout);
    assert!(
        r.stdout.contains("1 passed") || r.stdout.contains("2 passed"),
        "{}",
        r.stdout
    );
}

fn junit_counts(path: &Path) -> String {
    let py = r#"
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
assert s.tag == "testsuite", s.tag
cases = s.findall("testcase")
assert int(s.get("tests")) == len(cases)
assert int(s.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
assert int(s.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
for c in cases:
    st = "fail" if c.find("failure") is not None else "skip" if c.find("skipped") is not None else "pass"
    msg = (c.find("failure") if st == "fail" else c.find("skipped") if st == "skip" else c)
    print(c.get("name"), st, (msg.get("message") or "")[:60])
print("totals", s.get("tests"), s.get("failures"), s.get("skipped"))
"#;
    common::tool("/usr/bin/python3", &["-c", py, path.to_str().unwrap()])
}

#[test]
fn smoke_no_gpu_fails_honestly_or_skips_with_allow_no_gpu() {
    if gpu_here() {
        eprintln!("a GPU is visible here: the no-GPU behaviour cannot be tested");
        return;
    }
    let f = fixture(&[], vec![]);
    let g = Gridship::new();
    let junit = f.dir.parent().unwrap().join("report.xml");
    let mut c = g.cmd();
    c.env("GRIDSHIP_SMOKE_SUITES", suites_dir()).args([
        "smoke",
        &oci(&f),
        "--suite",
        "gpu-basic",
        "--json",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let r = common::to_run(c.output().unwrap());
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    for name in ["gpu-visible", "driver-serves-image-cuda", "gpu-compute"] {
        let c = check(&j, name);
        assert_eq!(c["status"], "fail", "{c}");
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .starts_with("no GPU visible: "),
            "{c}"
        );
    }
    assert_eq!(j["failed"], 3);
    let got = junit_counts(&junit);
    assert!(got.contains("totals 6 3 1"), "{got}");
    assert!(got.contains("gpu-visible fail no GPU visible"), "{got}");
    assert!(got.contains("no-driver-libs pass"), "{got}");

    let mut c = g.cmd();
    c.env("GRIDSHIP_SMOKE_SUITES", suites_dir()).args([
        "smoke",
        &oci(&f),
        "--suite",
        "gpu-basic",
        "--allow-no-gpu",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let r = common::to_run(c.output().unwrap());
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("SKIP  gpu-compute"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("PASS  gpu-"),
        "never passed without a GPU: {}",
        r.stdout
    );
    assert!(r.stdout.contains("0 failed, 4 skipped"), "{}", r.stdout);
    let got = junit_counts(&junit);
    assert!(got.contains("totals 6 0 4"), "{got}");
    assert!(got.contains("gpu-compute skip no GPU visible"), "{got}");
}

#[test]
fn smoke_backends_without_runtime_fail_clearly() {
    let f = fixture(&[], vec![]);
    let d = f.dir.parent().unwrap().join("run.yaml");
    std::fs::write(
        &d,
        "name: run\nchecks:\n  - {name: hello, kind: run, command: [/bin/true]}\n",
    )
    .unwrap();
    let g = Gridship::new();
    let mut c = g.cmd();
    c.env("PATH", "/usr/bin:/bin").args([
        "smoke",
        &oci(&f),
        "--suite",
        d.to_str().unwrap(),
        "--backend",
        "apptainer",
    ]);
    c.env_remove("GRIDSHIP_APPTAINER");
    let r = common::to_run(c.output().unwrap());
    if !Path::new("/usr/bin/apptainer").exists() {
        assert_eq!(r.code, 1);
        assert!(
            r.stdout
                .contains("apptainer is not on PATH: install Apptainer, name it with --apptainer PATH (or GRIDSHIP_APPTAINER)"),
            "{}",
            r.stdout
        );
    }
    // A program named that does not exist is bad input, before any work.
    let r = g.run(&[
        "smoke",
        &oci(&f),
        "--suite",
        d.to_str().unwrap(),
        "--backend",
        "apptainer",
        "--apptainer",
        "/nonexistent/apptainer",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("/nonexistent/apptainer") && r.stderr.contains("--apptainer"),
        "{}",
        r.stderr
    );
}

/// The apptainer backend through real Apptainer (GRIDSHIP_APPTAINER names
/// the program): commands run in the unpacked image with its Env, exit codes
/// and time limits are reported; with no GPU only the checks that need none
/// run (--allow-no-gpu: the GPU check is skipped, never passed).
#[test]
fn smoke_apptainer_backend_runs_in_real_apptainer() {
    let fx = common::fixtures();
    let image = format!("oci:{}:1", fx.join("debian-oci").display());
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        r#"name: apptainer
checks:
  - name: inside
    kind: run
    command: "cat /etc/debian_version; echo fixture=$GRIDSHIP_FIXTURE; echo in=${APPTAINER_CONTAINER:+apptainer}"
    expect: {exit: 0, stdout_regex: "^12\\.", stdout_contains: "fixture=debian\nin=apptainer"}
    timeout_s: 60
  - name: exit-code
    kind: run
    command: [/bin/sh, -c, "exit 3"]
    expect: {exit: 0}
    timeout_s: 60
  - name: slow
    kind: run
    command: [sleep, "20"]
    timeout_s: 2
  - name: gpu
    kind: run
    command: [nvidia-smi, -L]
    needs_gpu: true
    timeout_s: 60
"#,
    )
    .unwrap();
    let g = Gridship::new();
    let mut c = g.cmd();
    c.env("GRIDSHIP_APPTAINER", common::apptainer_program())
        .env("PATH", "/usr/bin:/bin")
        .args([
            "smoke",
            &image,
            "--suite",
            suite.to_str().unwrap(),
            "--backend",
            "apptainer",
            "--allow-no-gpu",
            "--json",
        ]);
    let r = common::to_run(c.output().unwrap());
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["backend"], "apptainer");
    let c = check(&j, "inside");
    assert_eq!(c["status"], "pass", "{j:#}");
    let c = check(&j, "exit-code");
    assert_eq!(c["status"], "fail");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .starts_with("exit status 3 (expected 0)"),
        "{c}"
    );
    let c = check(&j, "slow");
    assert_eq!(c["status"], "fail");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 2s"),
        "{c}"
    );
    let c = check(&j, "gpu");
    if !gpu_here() {
        assert_eq!(c["status"], "skip", "{c}");
        assert!(
            c["detail"].as_str().unwrap().contains("no GPU visible"),
            "{c}"
        );
    }
}

/// The chroot backend for real (as root): the Debian fixture unpacked,
/// /proc and devices mounted, a command run inside, all unmounted after.
#[test]
fn smoke_debian_fixture_glibc_and_chroot_run() {
    let fx = common::fixtures();
    let image = format!("oci:{}:1", fx.join("debian-oci").display());
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        r#"name: debian
checks:
  - {name: no-driver-libs, kind: static}
  - {name: glibc-version, kind: static}
  - name: inside
    kind: run
    command: "cat /etc/debian_version; test -c /dev/null && echo devnull; test -r /proc/self/status && echo proc"
    expect: {exit: 0, stdout_regex: "^12\\.", stdout_contains: "devnull\nproc"}
    timeout_s: 60
  - name: exit-code
    kind: run
    command: [/bin/sh, -c, "exit 3"]
    expect: {exit: 0}
    timeout_s: 10
  - name: slow
    kind: run
    command: [sleep, "30"]
    timeout_s: 1
"#,
    )
    .unwrap();
    let r = Gridship::new().run(&[
        "smoke",
        &image,
        "--suite",
        suite.to_str().unwrap(),
        "--json",
    ]);
    let j = r.json();
    let c = check(&j, "glibc-version");
    assert_eq!(c["status"], "pass", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("glibc 2.36"), "{c}");
    assert_eq!(check(&j, "no-driver-libs")["status"], "pass");
    if !rustix_is_root() {
        return;
    }
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(check(&j, "inside")["status"], "pass", "{j:#}");
    let c = check(&j, "exit-code");
    assert_eq!(c["status"], "fail");
    assert!(
        c["detail"].as_str().unwrap().contains("exit status 3"),
        "{c}"
    );
    let c = check(&j, "slow");
    assert_eq!(c["status"], "fail");
    assert!(c["detail"].as_str().unwrap().contains("timed out"), "{c}");
    assert!(
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "cleanup"),
        "{j:#}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains("gridship-smoke-"),
        "left mounted: {mounts}"
    );
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The docker backend on the real engine: commands run in containers of
/// the image (its Env applied), exit codes and time limits are reported,
/// a GPU check fails honestly here (no GPU) or is skipped with
/// --allow-no-gpu; no container or engine image is left behind.
#[test]
fn smoke_docker_backend_runs_in_the_engine() {
    let fx = common::fixtures();
    let image = format!("oci:{}:1", fx.join("debian-oci").display());
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        r#"name: docker
checks:
  - name: inside
    kind: run
    command: "cat /etc/debian_version; echo fixture=$GRIDSHIP_FIXTURE"
    expect: {exit: 0, stdout_regex: "^12\\.", stdout_contains: "fixture=debian"}
    timeout_s: 60
  - name: exit-code
    kind: run
    command: [/bin/sh, -c, "exit 3"]
    expect: {exit: 0}
    timeout_s: 60
  - name: slow
    kind: run
    command: [sleep, "30"]
    timeout_s: 2
  - name: gpu
    kind: run
    command: [nvidia-smi, -L]
    needs_gpu: true
    timeout_s: 60
"#,
    )
    .unwrap();
    let docker = common::env("GRIDSHIP_DOCKER");
    let g = Gridship::new();
    for allow in [false, true] {
        let mut args = vec![
            "smoke",
            image.as_str(),
            "--suite",
            suite.to_str().unwrap(),
            "--backend",
            "docker",
            "--json",
        ];
        if allow {
            args.push("--allow-no-gpu");
        }
        let r = g.run(&args);
        assert_eq!(r.code, 1, "{}", r.stderr);
        let j = r.json();
        assert_eq!(check(&j, "inside")["status"], "pass", "{j:#}");
        let c = check(&j, "exit-code");
        assert_eq!(c["status"], "fail");
        assert!(
            c["detail"].as_str().unwrap().contains("exit status 3"),
            "{c}"
        );
        let c = check(&j, "slow");
        assert_eq!(c["status"], "fail");
        assert!(c["detail"].as_str().unwrap().contains("timed out"), "{c}");
        let c = check(&j, "gpu");
        if std::path::Path::new("/dev/nvidia0").exists() {
            continue;
        }
        assert_eq!(c["status"], if allow { "skip" } else { "fail" }, "{c}");
        assert!(
            c["detail"].as_str().unwrap().contains("no GPU visible"),
            "{c}"
        );
    }
    let left = common::tool(
        &docker,
        &[
            "ps",
            "-a",
            "--filter",
            "name=gridship-smoke-",
            "--format",
            "{{.Names}}",
        ],
    );
    assert!(left.trim().is_empty(), "containers left: {left}");
    let images = common::tool(
        &docker,
        &["images", "--format", "{{.Repository}}", "gridship-smoke/*"],
    );
    assert!(images.trim().is_empty(), "images left: {images}");
}

// ---- which suite: --suite, --recipe, the image's gridship.recipe label ----

/// Give the image at `layout` (tag "1", as [`fixture`] writes it) config
/// labels: the config, manifest and index are rewritten by hand.
fn set_labels(layout: &Path, labels: &[(&str, &str)]) {
    use sha2::{Digest, Sha256};
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| {
        let d = hex::encode(Sha256::digest(bytes));
        std::fs::write(layout.join("blobs/sha256").join(&d), bytes).unwrap();
        (format!("sha256:{d}"), bytes.len())
    };
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut index = read(layout.join("index.json"));
    let mut manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut config = read(blob(manifest["config"]["digest"].as_str().unwrap()));
    for (k, v) in labels {
        config["config"]["Labels"][*k] = (*v).into();
    }
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A recipes directory with recipe `myrec` (its own suite smoke.yaml,
/// which includes `two-static` by name and adds a check) and a suites
/// directory with `two-static` and the shipped gpu-basic.
struct Recipes {
    recipes: PathBuf,
    suites: PathBuf,
    smoke: PathBuf,
}

fn recipes_fixture(f: &Fixture) -> Recipes {
    let root = f.dir.parent().unwrap();
    let recipes = root.join("recipes");
    let r = recipes.join("myrec");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(
        r.join("recipe.yaml"),
        "base: {image: docker.io/library/debian:bookworm}\nsmoke_suite: smoke.yaml\n",
    )
    .unwrap();
    std::fs::write(r.join("Dockerfile"), "ARG BASE=debian\nFROM ${BASE}\n").unwrap();
    let smoke = r.join("smoke.yaml");
    std::fs::write(
        &smoke,
        "name: myrec\ninclude: [two-static]\nchecks:\n  - {name: cuda-driver-compat, kind: static}\n",
    )
    .unwrap();
    let suites = root.join("suites");
    std::fs::create_dir_all(&suites).unwrap();
    std::fs::write(
        suites.join("two-static.yaml"),
        "name: two-static\nchecks:\n  - {name: no-driver-libs, kind: static}\n  - {name: glibc-version, kind: static}\n",
    )
    .unwrap();
    std::fs::copy(
        suites_dir().join("gpu-basic.yaml"),
        suites.join("gpu-basic.yaml"),
    )
    .unwrap();
    Recipes {
        recipes,
        suites,
        smoke,
    }
}

fn smoke_with(g: &Gridship, rc: &Recipes, args: &[&str]) -> common::Run {
    let mut c = g.cmd();
    c.env("GRIDSHIP_SMOKE_SUITES", &rc.suites)
        .env_remove("GRIDSHIP_RECIPES")
        .arg("smoke")
        .args(args);
    common::to_run(c.output().unwrap())
}

fn check_names(j: &serde_json::Value) -> Vec<String> {
    j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn smoke_recipe_suite_found_by_recipe_option() {
    let f = fixture(&[], vec![]);
    let rc = recipes_fixture(&f);
    let g = Gridship::new();
    let r = smoke_with(
        &g,
        &rc,
        &[
            &oci(&f),
            "--recipe",
            "myrec",
            "--recipes",
            rc.recipes.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["suite"], "myrec");
    assert_eq!(j["suite_path"], rc.smoke.to_str().unwrap());
    assert_eq!(j["suite_chosen_by"], "recipe myrec (--recipe)");
    // The included suite's checks first, then the recipe's own.
    assert_eq!(
        check_names(&j),
        ["no-driver-libs", "glibc-version", "cuda-driver-compat"]
    );
    // The human report says where the suite came from.
    let r = smoke_with(
        &g,
        &rc,
        &[
            &oci(&f),
            "--recipe",
            "myrec",
            "--recipes",
            rc.recipes.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("suite myrec from ") && r.stdout.contains("recipe myrec (--recipe)"),
        "{}",
        r.stdout
    );
    // An unknown recipe is bad input, naming the known ones.
    let r = smoke_with(
        &g,
        &rc,
        &[
            &oci(&f),
            "--recipe",
            "nope",
            "--recipes",
            rc.recipes.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no recipe 'nope'") && r.stderr.contains("myrec"),
        "{}",
        r.stderr
    );
}

#[test]
fn smoke_recipe_suite_found_by_image_label() {
    let f = fixture(&[], vec![]);
    let rc = recipes_fixture(&f);
    set_labels(&f.dir, &[("gridship.recipe", "myrec")]);
    let g = Gridship::new();
    let r = smoke_with(
        &g,
        &rc,
        &[
            &oci(&f),
            "--recipes",
            rc.recipes.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["suite"], "myrec");
    assert_eq!(j["suite_chosen_by"], "recipe myrec (label gridship.recipe)");
    assert_eq!(check_names(&j).len(), 3);
    // The recipes directory from the environment, as `gridship build` reads it.
    let mut c = g.cmd();
    c.env("GRIDSHIP_SMOKE_SUITES", &rc.suites)
        .env("GRIDSHIP_RECIPES", &rc.recipes)
        .args(["smoke", &oci(&f), "--json"]);
    let r = common::to_run(c.output().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["suite"], "myrec");
    // A recipe the recipes directory lacks: the shipped default.
    set_labels(&f.dir, &[("gridship.recipe", "elsewhere")]);
    let r = smoke_with(
        &g,
        &rc,
        &[
            &oci(&f),
            "--recipes",
            rc.recipes.to_str().unwrap(),
            "--allow-no-gpu",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["suite"], "gpu-basic");
    let why = j["suite_chosen_by"].as_str().unwrap();
    assert!(
        why.starts_with("default") && why.contains("elsewhere"),
        "{why}"
    );
}

#[test]
fn smoke_suite_option_wins_over_recipe_and_label() {
    let f = fixture(&[], vec![]);
    let rc = recipes_fixture(&f);
    set_labels(&f.dir, &[("gridship.recipe", "myrec")]);
    let r = smoke_with(
        &Gridship::new(),
        &rc,
        &[
            &oci(&f),
            "--suite",
            f.suite.to_str().unwrap(),
            "--recipe",
            "myrec",
            "--recipes",
            rc.recipes.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["suite"], "static-only");
    assert_eq!(j["suite_chosen_by"], "--suite");
}

#[test]
fn smoke_bad_include_is_bad_input_naming_file_and_key() {
    let f = fixture(&[], vec![]);
    let rc = recipes_fixture(&f);
    let g = Gridship::new();
    std::fs::write(
        &rc.smoke,
        "name: myrec\ninclude: [two-static, no-such-suite]\n",
    )
    .unwrap();
    let recipes = rc.recipes.to_str().unwrap();
    let r = smoke_with(
        &g,
        &rc,
        &[&oci(&f), "--recipe", "myrec", "--recipes", recipes],
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let want = format!(
        "{}: include[1]: no smoke-test suite 'no-such-suite'",
        rc.smoke.display()
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert!(
        r.stderr.contains("two-static"),
        "hint names the suites: {}",
        r.stderr
    );
    // The same through the image's label.
    set_labels(&f.dir, &[("gridship.recipe", "myrec")]);
    let r = smoke_with(&g, &rc, &[&oci(&f), "--recipes", recipes]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    // A cycle: the recipe's suite includes a suite that includes it back.
    std::fs::write(&rc.smoke, "name: myrec\ninclude: [loop.yaml]\n").unwrap();
    std::fs::write(
        rc.smoke.with_file_name("loop.yaml"),
        "name: loop\ninclude: [smoke.yaml]\n",
    )
    .unwrap();
    let r = smoke_with(
        &g,
        &rc,
        &[&oci(&f), "--recipe", "myrec", "--recipes", recipes],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("loop.yaml: include[0]: include cycle: ")
            && r.stderr.contains("smoke.yaml -> "),
        "{}",
        r.stderr
    );
    // recipe.yaml naming a suite file that is not there.
    std::fs::remove_file(&rc.smoke).unwrap();
    let r = smoke_with(
        &g,
        &rc,
        &[&oci(&f), "--recipe", "myrec", "--recipes", recipes],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("myrec/recipe.yaml: smoke_suite: "),
        "{}",
        r.stderr
    );
}

// ---- CUDA of pip wheels: the PyTorch/CUDA 13 venv at small scale ----

/// The image ci/fixtures makes (GRIDSHIP_TEST_PIP_CUDA_IMAGE): the Debian
/// fixture plus /opt/venv as `pip install torch` (2.15.0, CUDA 13.2) leaves
/// it, from real PyPI wheels: nvidia-cuda-runtime 13.2.86 (CUDA 13 naming,
/// no -cu suffix: nvidia/cu13/lib/libcudart.so.13, no minor in the name),
/// nvidia-cuda-runtime-cu12 12.9.79, cuda-toolkit 13.2.2, and the real
/// nvidia-cublas 13.4.1.3 wheel's dist-info (read by HTTP range: the wheel
/// is 405 MB). torch itself (GBs) is stood in for by a package named torch
/// 2.15.0 whose torch/version.py has PyTorch's shape (`__version__ =
/// '2.15.0+cu132'`, `cuda: Optional[str] = '13.2'`); see
/// ci/fixtures.d/pip-cuda-venv.
fn pip_cuda_image() -> Option<String> {
    let v = std::env::var("GRIDSHIP_TEST_PIP_CUDA_IMAGE").ok();
    if v.is_none() {
        eprintln!(
            "skipped: GRIDSHIP_TEST_PIP_CUDA_IMAGE is not set (ci/setup exports it; ci/fixtures builds the image)"
        );
    }
    v
}

const CUDA_SUITE: &str = "name: cuda\nchecks:\n  - {name: cuda-driver-compat, kind: static}\n";
const SITE_PACKAGES: &str = "/opt/venv/lib/python3.11/site-packages";

/// `smoke IMAGE --suite (cuda-driver-compat) --site SITE [--queue gpu]`
/// with `dir` as --site-overlays.
fn smoke_cuda(image: &str, dir: &Path, site: &str, queue: Option<&str>) -> common::Run {
    let suite = dir.join("cuda.yaml");
    std::fs::write(&suite, CUDA_SUITE).unwrap();
    let mut args = vec![
        "smoke",
        image,
        "--suite",
        suite.to_str().unwrap(),
        "--site",
        site,
        "--site-overlays",
        dir.to_str().unwrap(),
        "--json",
    ];
    if let Some(q) = queue {
        args.extend(["--queue", q]);
    }
    Gridship::new().run(&args)
}

/// A site profile in `dir` that extends the shipped glasgow and gives its
/// `gpu` queue only a driver.
fn glasgow_with_driver(dir: &Path, site: &str, driver: &str) {
    std::fs::create_dir_all(dir.join(site)).unwrap();
    std::fs::write(
        dir.join(site).join("site.yaml"),
        format!("extends: glasgow\ngpu_queues:\n  gpu:\n    driver_version: \"{driver}\"\n"),
    )
    .unwrap();
}

#[test]
fn smoke_pip_cuda_13_on_a_550_driver_fails() {
    let Some(image) = pip_cuda_image() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    glasgow_with_driver(d.path(), "glasgow-550", "550.54.15");
    let r = smoke_cuda(&image, d.path(), "glasgow-550", Some("gpu"));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let j = r.json();
    let c = check(&j, "cuda-driver-compat");
    assert_eq!(c["status"], "fail", "{c}");
    let d = c["detail"].as_str().unwrap();
    // The highest runtime, the dist-info it comes from, the driver.
    assert!(d.starts_with("CUDA 13.2, the highest of 6 found: "), "{d}");
    assert!(
        d.contains(&format!(
            "13.2 from {SITE_PACKAGES}/nvidia_cuda_runtime-13.2.86.dist-info"
        )),
        "{d}"
    );
    assert!(
        d.contains("glasgow-550/gpu: incompatible: ")
            && d.contains("driver 550.54.15 is below 580")
            && d.contains("cudaErrorInsufficientDriver"),
        "{d}"
    );
    // libcudart.so.13 has no minor: its owner's RECORD gives 13.2.
    assert!(
        d.contains(&format!(
            "13.2 from {SITE_PACKAGES}/nvidia/cu13/lib/libcudart.so.13 (owned by {SITE_PACKAGES}/nvidia_cuda_runtime-13.2.86.dist-info: its RECORD lists it)"
        )),
        "{d}"
    );
    // Every source is listed: the -cu12 naming, the toolkit meta-package, torch.
    for want in [
        format!("12.9 from {SITE_PACKAGES}/nvidia_cuda_runtime_cu12-12.9.79.dist-info"),
        format!(
            "12.9 from {SITE_PACKAGES}/nvidia/cuda_runtime/lib/libcudart.so.12 (owned by {SITE_PACKAGES}/nvidia_cuda_runtime_cu12-12.9.79.dist-info"
        ),
        format!("13.2 from {SITE_PACKAGES}/cuda_toolkit-13.2.2.dist-info"),
        format!("13.2 from {SITE_PACKAGES}/torch/version.py (torch 2.15.0+cu132, cuda '13.2')"),
    ] {
        assert!(d.contains(&want), "{want} missing: {d}");
    }
    // cuBLAS 13.4.1.3 is a library version, not the CUDA runtime's.
    assert!(!d.contains("cublas") && !d.contains("13.4"), "{d}");
    let facts = &j["facts"]["cuda"];
    assert_eq!(facts[0]["value"], serde_json::json!([13, 2]), "{facts}");
    assert_eq!(facts.as_array().unwrap().len(), 6, "{facts}");

    // The same image on a 13.1-family driver: minor version compatibility.
    let dir = tempfile::tempdir().unwrap();
    glasgow_with_driver(dir.path(), "glasgow-590", "590.48.01");
    let r = smoke_cuda(&image, dir.path(), "glasgow-590", Some("gpu"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let c = check(&r.json(), "cuda-driver-compat").clone();
    assert_eq!(c["status"], "pass", "{c}");
    let d = c["detail"].as_str().unwrap();
    assert!(
        d.contains("glasgow-590/gpu: compatible-with-minor-version-compatibility: ")
            && d.contains("driver 590.48.01 is >= 580"),
        "{d}"
    );
}

/// Every shipped site gives its GPU queues a driver: the check judges
/// instead of skipping (the drivers are the sites' examples: manchester's
/// R570 is too old for CUDA 13).
#[test]
fn smoke_pip_cuda_against_every_shipped_site() {
    let Some(image) = pip_cuda_image() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    for (site, driver, status) in [
        ("bonn", "595.58.03", "pass"),
        ("glasgow", "580.95.05", "pass"),
        ("manchester", "570.172.08", "fail"),
        ("qmul", "580.126.09", "pass"),
    ] {
        let r = smoke_cuda(&image, d.path(), site, None);
        let j = r.json();
        let c = check(&j, "cuda-driver-compat");
        assert_eq!(c["status"], status, "{site}: {c}");
        assert_eq!(r.code, if status == "pass" { 0 } else { 1 }, "{site}");
        let detail = c["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("{site}/gpu: ")) && detail.contains(driver),
            "{site}: {detail}"
        );
    }
}

/// A libcudart.so.N that no dist-info owns gives the major alone, counted
/// as N.0: CUDA 13 on an 11.x-family driver fails all the same.
#[test]
fn smoke_cudart_soname_without_dist_info_gives_the_major() {
    let f = fixture(
        &[],
        vec![
            dir("opt", 0o755),
            dir("opt/app", 0o755),
            file("opt/app/libcudart.so.13", 0o755, b"x"),
        ],
    );
    let r = smoke_on_queue(&Gridship::new(), &f, "h100");
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let c = check(&r.json(), "cuda-driver-compat").clone();
    assert_eq!(c["status"], "fail");
    let d = c["detail"].as_str().unwrap();
    assert!(
        d.contains("CUDA 13.0 (from /opt/app/libcudart.so.13 (CUDA 13.x: no dist-info gives the minor; counted as 13.0))")
            && d.contains("driver 560.35.03 is below 580"),
        "{d}"
    );
}
