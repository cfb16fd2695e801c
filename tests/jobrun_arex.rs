//! Results come back, against the real A-REX that `ci/arex` starts (fork
//! batch system, jobs run as the mapped account): `submit` uploads local
//! inputs, `status --wait` says by its exit code whether every job
//! finished, `get` downloads outputs (directories recursively) through
//! temporary names, resumes after a SIGKILL, never overwrites a different
//! file, fetches stdout/stderr of failed jobs, and `--clean` removes the job.
//!
//! The descriptions here are plain xRSL run by /bin/sh: they must not
//! depend on a container RTE the CE may not define.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::arc::{Arex, arex, gridship, repo};

fn auth<'a>(a: &'a Arex, jobs: &'a str) -> Vec<&'a str> {
    vec![
        "--ca-dir",
        &a.ca_dir,
        "--proxy",
        &a.proxy,
        "--jobs-file",
        jobs,
    ]
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn submit(a: &Arex, jobs: &str, xrsl: &Path) -> String {
    let mut args = vec!["--json", "submit", xrsl.to_str().unwrap(), "--ce", &a.url];
    args.extend(auth(a, jobs));
    let r = gridship(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    json(&r.stdout)["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn run(a: &Arex, jobs: &str, args: &[&str]) -> common::arc::Run {
    let mut v = args.to_vec();
    v.extend(auth(a, jobs));
    gridship(&v, &[])
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn sha256(p: &Path) -> String {
    common::sha256_file(p)
}

#[test]
fn get_brings_outputs_back_resumes_after_sigkill_and_cleans() {
    let a = arex();
    let d = tempfile::tempdir().unwrap();
    let jobs = d.path().join("jobs.json").display().to_string();
    // One input beside the description, one local file elsewhere given
    // as file:// (what `jobdesc --input FILE` writes): submit uploads both.
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data.csv");
    std::fs::write(d.path().join("in.txt"), "payload-from-client\n").unwrap();
    std::fs::write(&data, "a,b\n1,2\n").unwrap();
    let script = "id -un; mkdir -p results/sub results/empty; cp in.txt results/copy.txt; cp data.csv results/sub/data.csv; \
                  head -c 400000000 /dev/urandom > results/sub/big.bin; sha256sum results/sub/big.bin > big.sha; \
                  echo to-stderr >&2";
    let x = d.path().join("job.xrsl");
    std::fs::write(
        &x,
        format!(
            "&(jobname=\"gs-get\")(executable=\"/bin/sh\")(arguments=\"-c\" {})\n\
             (inputfiles=(\"in.txt\" \"\")(\"data.csv\" \"file://{}\"))\n\
             (stdout=\"out.txt\")(stderr=\"err.txt\")\n\
             (outputfiles=(\"out.txt\" \"\")(\"err.txt\" \"\")(\"results/\" \"\")(\"big.sha\" \"\"))\n\
             (walltime=\"10m\")(queue=\"cpu\")",
            gridship::jobdesc::xrsl::quote(script),
            data.display()
        ),
    )
    .unwrap();
    let id = submit(&a, &jobs, &x);

    let r = run(
        &a,
        &jobs,
        &["--json", "status", &id, "--wait", "--timeout", "240"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(json(&r.stdout)["jobs"][0]["state"], "FINISHED");

    // Kill `get` while it writes the big file's part.
    let dl = d.path().join("dl");
    let job_dir = dl.join(&id);
    let part = job_dir.join("results/sub/.big.bin.gridship-part");
    let mut args: Vec<String> = ["get", &id, "--dir", dl.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(auth(&a, &jobs).iter().map(|s| s.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridship"))
        .args(&args)
        .current_dir(repo())
        .env_remove("X509_USER_PROXY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut caught = false;
    while start.elapsed() < Duration::from_secs(120) {
        if std::fs::metadata(&part).is_ok_and(|m| m.len() > 1_000_000) {
            rustix_kill(child.id());
            caught = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait().unwrap();
    assert!(
        caught,
        "get ended ({status}) before it could be killed mid-download"
    );
    let partial = std::fs::metadata(&part).unwrap().len();
    assert!(partial < 400_000_000, "killed before the end: {partial}");
    assert!(
        !job_dir.join("results/sub/big.bin").exists(),
        "no final name before the file is complete"
    );

    // Re-run: resumes, completes, renames, leaves no part behind.
    let r = run(
        &a,
        &jobs,
        &["--json", "get", &id, "--dir", dl.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let got = json(&r.stdout);
    let big = got["jobs"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "results/sub/big.bin")
        .cloned()
        .unwrap();
    assert_eq!(big["bytes"], 400_000_000u64);
    assert_eq!(big["action"], "resumed", "{got:#}");
    assert_eq!(
        files(&job_dir),
        [
            "big.sha",
            "err.txt",
            "out.txt",
            "results/copy.txt",
            "results/sub/big.bin",
            "results/sub/data.csv"
        ]
    );
    assert!(
        job_dir.join("results/empty").is_dir(),
        "empty directories come back"
    );
    // Byte for byte: the job's own checksum of what it wrote, and inputs.
    let sha_line = std::fs::read_to_string(job_dir.join("big.sha")).unwrap();
    assert_eq!(
        sha_line.split_whitespace().next().unwrap(),
        sha256(&job_dir.join("results/sub/big.bin"))
    );
    assert_eq!(
        std::fs::read(job_dir.join("results/copy.txt")).unwrap(),
        b"payload-from-client\n"
    );
    assert_eq!(
        std::fs::read(job_dir.join("results/sub/data.csv")).unwrap(),
        std::fs::read(&data).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(job_dir.join("out.txt")).unwrap(),
        "griduser\n"
    );
    assert_eq!(
        std::fs::read_to_string(job_dir.join("err.txt")).unwrap(),
        "to-stderr\n"
    );

    // A file changed here is never overwritten: exit 1, kept as it is.
    std::fs::write(job_dir.join("results/copy.txt"), "mine\n").unwrap();
    let r = run(&a, &jobs, &["get", &id, "--dir", dl.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("copy.txt differs"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(job_dir.join("results/copy.txt")).unwrap(),
        "mine\n"
    );
    assert!(files(&job_dir).iter().all(|f| !f.contains("gridship-part")));

    // --clean after a complete get (gmlog on request) removes the job.
    std::fs::write(job_dir.join("results/copy.txt"), "payload-from-client\n").unwrap();
    let r = run(
        &a,
        &jobs,
        &[
            "--json",
            "get",
            &id,
            "--dir",
            dl.to_str().unwrap(),
            "--gmlog",
            "--clean",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json(&r.stdout)["cleaned"], serde_json::json!([id]));
    let errors = std::fs::read_to_string(job_dir.join("gmlog/errors")).unwrap();
    assert!(!errors.is_empty());
    assert!(!std::fs::read_to_string(&jobs).unwrap().contains(&id));
    // A-REX removes a cleaned job's records moments later.
    let start = Instant::now();
    loop {
        let r = run(&a, &jobs, &["status", &id, "--ce", &a.url]);
        if r.code == 1 && r.stdout.contains("error 404") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the CE still knows the job: {} {}",
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn rustix_kill(pid: u32) {
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -KILL {pid}");
}

#[test]
fn a_failed_job_gives_its_stdout_and_stderr_and_exit_1() {
    let a = arex();
    let d = tempfile::tempdir().unwrap();
    let jobs = d.path().join("jobs.json").display().to_string();
    let x = d.path().join("fail.xrsl");
    std::fs::write(
        &x,
        "&(jobname=\"gs-fail\")(executable=\"/bin/sh\")(arguments=\"-c\" \"echo before-failing; echo why >&2; exit 3\")\
         (stdout=\"out.txt\")(stderr=\"err.txt\")(outputfiles=(\"out.txt\" \"\")(\"err.txt\" \"\")(\"results/\" \"\"))\
         (walltime=\"5m\")(queue=\"cpu\")",
    )
    .unwrap();
    let id = submit(&a, &jobs, &x);
    let r = run(
        &a,
        &jobs,
        &["--json", "status", &id, "--wait", "--timeout", "240"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(json(&r.stdout)["jobs"][0]["state"], "FAILED");
    assert!(
        r.stderr.contains("not every job finished successfully") && r.stderr.contains(&id),
        "{}",
        r.stderr
    );
    let dl = d.path().join("dl");
    let r = run(&a, &jobs, &["get", &id, "--dir", dl.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("FAILED"), "{}", r.stderr);
    let job_dir: PathBuf = dl.join(&id);
    assert_eq!(
        std::fs::read_to_string(job_dir.join("out.txt")).unwrap(),
        "before-failing\n"
    );
    assert_eq!(
        std::fs::read_to_string(job_dir.join("err.txt")).unwrap(),
        "why\n"
    );
    let r = run(&a, &jobs, &["clean", &id]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn status_wait_times_out_with_exit_1_and_get_refuses_a_running_job() {
    let a = arex();
    let d = tempfile::tempdir().unwrap();
    let jobs = d.path().join("jobs.json").display().to_string();
    let x = d.path().join("slow.xrsl");
    // Ends by itself soon after the test, so nothing is left running.
    std::fs::write(
        &x,
        "&(jobname=\"gs-slow\")(executable=\"/bin/sleep\")(arguments=\"40\")(walltime=\"5m\")(queue=\"cpu\")",
    )
    .unwrap();
    let id = submit(&a, &jobs, &x);
    let t = Instant::now();
    let r = run(&a, &jobs, &["status", &id, "--wait", "--timeout", "4"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("timed out after 4 s") && r.stderr.contains(&id),
        "{}",
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let dl = d.path().join("dl");
    let r = run(&a, &jobs, &["get", &id, "--dir", dl.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("status --wait"), "{}", r.stderr);
    assert!(!dl.join(&id).exists(), "nothing written for a running job");
    let r = run(&a, &jobs, &["status", &id, "--wait", "--timeout", "240"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(run(&a, &jobs, &["clean", &id]).code, 0);
}
