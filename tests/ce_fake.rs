//! `ComputeElement` driven by a CE written here: submit, status, kill,
//! clean and `get` through the library paths the CLI takes
//! (`ce::submit_all`, `retrieve::get_jobs`), and a CE that fails half way
//! (a download that breaks off, a job whose status cannot be read). The
//! real CE is exercised by the A-REX tests; this one can fail on cue.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use gridship::Error;
use gridship::ce::retrieve::{Action, GetReport, get_jobs, part_path};
use gridship::ce::{
    self, CeFuture, ComputeElement, Fetch, JobInfo, JobList, JobRecord, JobReply, OutputEntry,
    Phase, Refusal, SubmitReply, Submitted,
};
use gridship::jobdesc::{JobSpec, retrievable_outputs};

const ENDPOINT: &str = "fake://ce.example.org";

struct FakeJob {
    name: Option<String>,
    /// The fake's own words, HTCondor's: IDLE RUNNING COMPLETED REMOVED.
    state: String,
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
}

#[derive(Default)]
struct Fake {
    jobs: Mutex<BTreeMap<String, FakeJob>>,
    /// The next fetch of this file writes this many bytes, then breaks off.
    break_fetch: Mutex<Option<(String, usize)>>,
    /// Jobs whose status the CE refuses to tell.
    status_refused: Mutex<Vec<String>>,
    /// Every fetch: (file, offset it started at).
    fetches: Mutex<Vec<(String, u64)>>,
}

fn fake_phase(state: &str) -> Phase {
    match state {
        "IDLE" => Phase::Idle,
        "RUNNING" => Phase::Running,
        "COMPLETED" => Phase::Finished,
        "REMOVED" => Phase::Failed,
        _ => Phase::Unknown,
    }
}

impl Fake {
    fn finish(&self, id: &str, files: &[(&str, &[u8])], dirs: &[&str]) {
        let mut jobs = self.jobs.lock().unwrap();
        let j = jobs.get_mut(id).expect("a job of the fake");
        j.state = "COMPLETED".into();
        j.files = files
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect();
        j.dirs = dirs.iter().map(|d| d.to_string()).collect();
    }

    fn set_state(&self, id: &str, state: &str) {
        self.jobs.lock().unwrap().get_mut(id).unwrap().state = state.into();
    }

    /// One reply per ID: `change` acts on a known job and says its reply.
    fn each(
        &self,
        ids: &[String],
        mut change: impl FnMut(&mut BTreeMap<String, FakeJob>, &str) -> Option<String>,
    ) -> Vec<JobReply> {
        let mut jobs = self.jobs.lock().unwrap();
        ids.iter()
            .map(|id| {
                if !jobs.contains_key(id) {
                    return reply(id, "404", "No such job", None);
                }
                let state = change(&mut jobs, id);
                reply(id, "200", "OK", state)
            })
            .collect()
    }
}

fn reply(id: &str, code: &str, reason: &str, state: Option<String>) -> JobReply {
    let phase = match &state {
        Some(s) if code.starts_with('2') => fake_phase(s),
        _ => Phase::Unknown,
    };
    JobReply {
        id: id.into(),
        status_code: code.into(),
        reason: reason.into(),
        state,
        phase,
    }
}

impl ComputeElement for Fake {
    fn endpoint(&self) -> &str {
        ENDPOINT
    }

    fn credential(&self) -> &str {
        "no credential"
    }

    fn submit<'a>(
        &'a self,
        jobs: &'a [JobSpec],
        _base_dir: &'a Path,
    ) -> CeFuture<'a, Vec<SubmitReply>> {
        Box::pin(async move {
            let mut held = self.jobs.lock().unwrap();
            let mut out = Vec::new();
            for j in jobs {
                if j.queue.as_deref() == Some("full") {
                    out.push(Err(Refusal {
                        code: "503".into(),
                        reason: "queue full is full".into(),
                    }));
                    continue;
                }
                let id = format!("job{}", held.len() + 1);
                held.insert(
                    id.clone(),
                    FakeJob {
                        name: j.job_name.clone(),
                        state: "IDLE".into(),
                        files: BTreeMap::new(),
                        dirs: Vec::new(),
                    },
                );
                out.push(Ok(Submitted {
                    url: format!("{ENDPOINT}/{id}"),
                    id,
                    state: Some("IDLE".into()),
                    name: j.job_name.clone(),
                    uploaded: Vec::new(),
                    delegation: None,
                    outputs: retrievable_outputs(j),
                }));
            }
            Ok(out)
        })
    }

    fn status<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>> {
        Box::pin(async move {
            let refused = self.status_refused.lock().unwrap().clone();
            let mut out = self.each(ids, |jobs, id| Some(jobs[id].state.clone()));
            for r in &mut out {
                if refused.contains(&r.id) {
                    *r = reply(&r.id, "500", "status is not readable now", None);
                }
            }
            Ok(out)
        })
    }

    fn kill<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>> {
        Box::pin(async move {
            Ok(self.each(ids, |jobs, id| {
                let j = jobs.get_mut(id).unwrap();
                j.state = "REMOVED".into();
                Some(j.state.clone())
            }))
        })
    }

    fn clean<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobReply>> {
        Box::pin(async move {
            Ok(self.each(ids, |jobs, id| {
                jobs.remove(id);
                None
            }))
        })
    }

    fn list_jobs(&self) -> CeFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.jobs.lock().unwrap().keys().cloned().collect()) })
    }

    fn job_infos<'a>(&'a self, ids: &'a [String]) -> CeFuture<'a, Vec<JobInfo>> {
        Box::pin(async move {
            let jobs = self.jobs.lock().unwrap();
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let j = jobs.get(id)?;
                    Some(JobInfo {
                        id: id.clone(),
                        name: j.name.clone(),
                        state: Some(j.state.clone()),
                    })
                })
                .collect())
        })
    }

    fn list_outputs<'a>(&'a self, id: &'a str) -> CeFuture<'a, Vec<OutputEntry>> {
        Box::pin(async move {
            let jobs = self.jobs.lock().unwrap();
            let j = jobs
                .get(id)
                .ok_or_else(|| Error::Other(format!("no job {id}")))?;
            let dirs = j.dirs.iter().map(|d| (d, true));
            Ok(dirs
                .chain(j.files.keys().map(|f| (f, false)))
                .map(|(p, is_dir)| OutputEntry {
                    path: p.clone(),
                    is_dir,
                })
                .collect())
        })
    }

    fn fetch<'a>(&'a self, id: &'a str, name: &'a str, part: &'a Path) -> CeFuture<'a, Fetch> {
        Box::pin(async move {
            let data = self.jobs.lock().unwrap()[id].files[name].clone();
            let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
            self.fetches.lock().unwrap().push((name.to_string(), have));
            let brk = {
                let mut b = self.break_fetch.lock().unwrap();
                match b.as_ref() {
                    Some((n, at)) if n == name => {
                        let at = *at;
                        *b = None;
                        Some(at)
                    }
                    _ => None,
                }
            };
            let end = brk.unwrap_or(data.len());
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(part)
                .unwrap();
            f.write_all(&data[have as usize..end]).unwrap();
            if brk.is_some() {
                return Err(Error::CeRequest {
                    ce: ENDPOINT.into(),
                    detail: format!(
                        "fetching {name} of job {id}: connection reset after {end} bytes"
                    ),
                });
            }
            Ok(Fetch {
                bytes: end as u64,
                resumed: have > 0,
            })
        })
    }

    fn diagnostic_names(&self) -> &'static [&'static str] {
        &["log"]
    }

    fn diagnostic<'a>(&'a self, id: &'a str, name: &'a str) -> CeFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(Some(format!("{name} of {id}\n").into_bytes())) })
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn spec(name: &str, queue: &str) -> JobSpec {
    let text = format!(
        "&(jobname=\"{name}\")(executable=\"/bin/true\")(stdout=\"stdout\")(outputfiles=(\"out/\" \"\"))(walltime=\"10m\")(queue=\"{queue}\")"
    );
    gridship::jobdesc::parse_any("fake.xrsl", &text)
        .unwrap()
        .remove(0)
}

/// Jobs of these names submitted to `fake`, and the local job list
/// `gridship submit` would have written.
fn submitted(fake: &Fake, names: &[&str]) -> JobList {
    let specs: Vec<JobSpec> = names.iter().map(|n| spec(n, "cpu")).collect();
    let done = rt()
        .block_on(ce::submit_all(fake, &specs, Path::new(".")))
        .unwrap();
    JobList {
        path: "unused.json".into(),
        jobs: done
            .iter()
            .map(|s| JobRecord {
                id: s.id.clone(),
                ce: ENDPOINT.into(),
                name: s.name.clone(),
                state: s.state.clone(),
                submitted: 0,
                description: None,
                outputs: s.outputs.clone(),
            })
            .collect(),
    }
}

fn get(
    fake: &Fake,
    ids: &[&str],
    list: &JobList,
    dir: &Path,
    gmlog: bool,
    clean: bool,
) -> GetReport {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let mut report = GetReport::default();
    rt().block_on(get_jobs(fake, &ids, list, dir, gmlog, clean, &mut report))
        .unwrap();
    report
}

#[test]
fn submit_status_kill_clean_through_the_trait() {
    let fake = Fake::default();
    let rt = rt();
    let done = rt
        .block_on(ce::submit_all(
            &fake,
            &[spec("a", "cpu"), spec("b", "cpu")],
            Path::new("."),
        ))
        .unwrap();
    assert_eq!(
        done.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["job1", "job2"]
    );
    assert_eq!(done[0].name.as_deref(), Some("a"));
    assert_eq!(done[0].outputs, ["stdout", "out/"]);

    // A refused job makes submit_all an error naming it and what was accepted;
    // submit_each keeps the accepted one.
    let e = rt
        .block_on(ce::submit_all(
            &fake,
            &[spec("c", "cpu"), spec("d", "full")],
            Path::new("."),
        ))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "ARC CE {ENDPOINT}: the CE refused job 2 (d): 503 queue full is full (1 other job(s) were accepted: job3)"
        )
    );
    let (ok, refused) = rt
        .block_on(ce::submit_each(&fake, &[spec("e", "full")], Path::new(".")))
        .unwrap();
    assert!(ok.is_empty());
    assert_eq!(refused, ["job 1 (e): 503 queue full is full"]);

    let all: Vec<String> = vec!["job1".into(), "job2".into(), "job3".into()];
    fake.set_state("job2", "RUNNING");
    let st = rt.block_on(fake.status(&all)).unwrap();
    let phases: Vec<Phase> = st.iter().map(|r| r.phase).collect();
    assert_eq!(phases, [Phase::Idle, Phase::Running, Phase::Idle]);
    assert_eq!(st[1].state.as_deref(), Some("RUNNING"));

    let k = rt.block_on(fake.kill(&all[..1])).unwrap();
    assert!(k[0].ok() && k[0].phase == Phase::Failed && k[0].phase.is_final());
    let c = rt.block_on(fake.clean(&all[..1])).unwrap();
    assert!(c[0].ok());
    let st = rt.block_on(fake.status(&all[..1])).unwrap();
    assert!(!st[0].ok() && st[0].unknown_job() && st[0].phase == Phase::Unknown);
    assert_eq!(rt.block_on(fake.list_jobs()).unwrap(), ["job2", "job3"]);
    let infos = rt.block_on(fake.job_infos(&all[1..])).unwrap();
    assert_eq!(infos[1].name.as_deref(), Some("c"));
}

#[test]
fn get_resumes_a_fetch_that_broke_off_and_reports_the_job() {
    let fake = Fake::default();
    let rt = rt();
    let list = submitted(&fake, &["a", "b", "c"]);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fake.finish(
        "job1",
        &[
            ("stdout", b"hello\n"),
            ("out/z.bin", &big),
            ("out/sub/b.txt", b"b\n"),
        ],
        &["out", "out/sub", "out/empty"],
    );
    fake.set_state("job2", "RUNNING");
    fake.finish("job3", &[("stdout", b"three\n")], &["out"]);
    fake.status_refused.lock().unwrap().push("job3".into());
    *fake.break_fetch.lock().unwrap() = Some(("out/z.bin".into(), 40_000));
    let dir = tempfile::tempdir().unwrap();

    let r = get(
        &fake,
        &["job1", "job2", "job3"],
        &list,
        dir.path(),
        false,
        true,
    );
    // job1's second file broke off: the job is reported with the file, its
    // part stays for the next run, the third is not fetched, nothing is
    // cleaned, and the other jobs are still seen to.
    assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
    assert_eq!(
        r.problems[0],
        format!(
            "job1: ARC CE {ENDPOINT}: fetching out/z.bin of job job1: connection reset after 40000 bytes"
        )
    );
    assert_eq!(
        r.problems[1],
        "job2: still RUNNING; wait for it with `gridship status --wait job2`"
    );
    assert_eq!(r.problems[2], "job3: 500 status is not readable now");
    assert!(r.fetched.is_empty() && r.cleaned.is_empty());
    let job1 = dir.path().join("job1");
    assert_eq!(std::fs::read(job1.join("out/sub/b.txt")).unwrap(), b"b\n");
    assert!(!job1.join("out/z.bin").exists());
    assert!(!job1.join("stdout").exists());
    let part = part_path(&job1.join("out/z.bin"));
    assert!(part.ends_with("out/.z.bin.gridship-part"));
    assert_eq!(std::fs::read(&part).unwrap(), &big[..40_000]);
    assert!(
        job1.join("out/empty").is_dir(),
        "empty directories come back"
    );

    // Again: the part is continued from where it stopped, the whole file
    // compared, what was there already is kept, and the job cleaned.
    fake.status_refused.lock().unwrap().clear();
    fake.fetches.lock().unwrap().clear();
    let r = get(&fake, &["job1", "job3"], &list, dir.path(), true, true);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.cleaned, ["job1", "job3"]);
    assert!(
        fake.fetches
            .lock()
            .unwrap()
            .contains(&("out/z.bin".to_string(), 40_000))
    );
    assert_eq!(std::fs::read(job1.join("out/z.bin")).unwrap(), big);
    assert!(!part.exists());
    assert_eq!(std::fs::read(job1.join("stdout")).unwrap(), b"hello\n");
    let f = &r.fetched[0];
    let action = |n: &str| {
        f.files
            .iter()
            .find(|x| x.name == n)
            .map(|x| (x.action.clone(), x.bytes))
    };
    assert_eq!(action("out/z.bin"), Some((Action::Resumed, 100_000)));
    assert_eq!(action("out/sub/b.txt"), Some((Action::Unchanged, 2)));
    assert_eq!(action("stdout"), Some((Action::Downloaded, 6)));
    assert_eq!(action("gmlog/log"), Some((Action::Downloaded, 12)));
    assert_eq!(
        std::fs::read_to_string(job1.join("gmlog/log")).unwrap(),
        "log of job1\n"
    );
    assert_eq!(
        std::fs::read(dir.path().join("job3/stdout")).unwrap(),
        b"three\n"
    );
    assert_eq!(rt.block_on(fake.list_jobs()).unwrap(), ["job2"]);
}

#[test]
fn get_keeps_a_local_file_that_differs_and_reports_what_is_missing() {
    let fake = Fake::default();
    let rt = rt();
    let list = submitted(&fake, &["a"]);
    // The job made no out/ and was removed before it finished.
    fake.finish("job1", &[("stdout", b"new\n")], &[]);
    fake.set_state("job1", "REMOVED");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("job1")).unwrap();
    std::fs::write(dir.path().join("job1/stdout"), b"old\n").unwrap();

    let r = get(&fake, &["job1"], &list, dir.path(), false, true);
    let d = dir.path().join("job1");
    assert_eq!(
        r.problems,
        [
            format!(
                "job1: the job ended REMOVED; what it left is in {}",
                d.display()
            ),
            "job1: the CE has no out/".to_string(),
            format!(
                "job1: {} differs from the CE's copy and was kept; move it away and run get again",
                d.join("stdout").display()
            ),
        ]
    );
    assert_eq!(std::fs::read(d.join("stdout")).unwrap(), b"old\n");
    assert!(!part_path(&d.join("stdout")).exists());
    assert!(r.cleaned.is_empty(), "not cleaned while something is amiss");
    assert_eq!(rt.block_on(fake.list_jobs()).unwrap(), ["job1"]);
}

/// A CE that lists a path outside the job's directory is refused before
/// anything is written.
#[test]
fn get_refuses_output_paths_that_leave_the_job_directory() {
    let fake = Fake::default();
    let list = submitted(&fake, &["a"]);
    fake.finish("job1", &[("../escape", b"x")], &[]);
    let dir = tempfile::tempdir().unwrap();
    let r = get(&fake, &["job1"], &list, dir.path(), false, false);
    assert_eq!(
        r.problems,
        [format!(
            "job1: ARC CE {ENDPOINT}: listing the outputs of job job1: unusable name \"../escape\""
        )]
    );
    assert!(!dir.path().join("escape").exists());
    assert!(!dir.path().join("job1").exists());
}
