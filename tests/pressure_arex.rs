//! `gridship pressure` against the real A-REX that `ci/arex` starts (fork
//! batch system), with jobs that sleep a few seconds. The CE is polled from
//! here, independently of the loop, for the loop's own jobs (by job name).
//!
//! The outage scenario stops the real A-REX (`ci/arex stop`) and starts it
//! again; the other scenarios of this binary hold the CE shared, so they
//! never run while it is down (test binaries run one after another).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use common::arc::{Arex, arex, rest};
use common::unique;
use gridship::ce::ComputeElement;
use serde_json::Value;

const FINAL: &[&str] = &["FINISHED", "FAILED", "KILLED", "WIPED"];

/// Scenarios hold the CE shared; the outage scenario, which stops it, alone.
static CE: RwLock<()> = RwLock::new(());

fn ce_shared() -> RwLockReadGuard<'static, ()> {
    CE.read().unwrap_or_else(|e| e.into_inner())
}

/// A pressure config and its job description in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
    prefix: String,
    ce: String,
}

impl Setup {
    fn new(a: &Arex, what: &str, sleep_s: u32, ce: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        // Short, unique, and [A-Za-z0-9._-]: the loop's jobs are told apart by it.
        let prefix = unique(&format!("pr-{what}")).replace('/', "-");
        std::fs::write(
            dir.path().join("pilot.xrsl"),
            format!(
                "&(jobname=\"template\")(executable=\"/bin/sleep\")(arguments=\"{sleep_s}\")(stdout=\"out.txt\")(outputfiles=(\"out.txt\" \"\"))(walltime=\"1m\")(queue=\"cpu\")"
            ),
        )
        .unwrap();
        Setup {
            dir,
            prefix,
            ce: ce.unwrap_or(&a.url).to_string(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("pressure.yaml")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("pressure.yaml.state.json")
    }

    /// Write the config: the fixed keys plus `extra` (YAML lines).
    fn write_config(&self, extra: &str) {
        let text = format!(
            "job: pilot.xrsl\nce: {}\njobname: {}\n{extra}",
            self.ce, self.prefix
        );
        // Atomically, as an editor that renames would: the loop never reads half a file.
        let tmp = self.dir.path().join(".pressure.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    fn command(&self, a: &Arex, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gridship"));
        c.args(["--json", "pressure"])
            .arg(self.config_path())
            .args(["--ca-dir", &a.ca_dir, "--proxy", &a.proxy])
            .args(extra)
            .env_remove("BEARER_TOKEN")
            .env_remove("BEARER_TOKEN_FILE")
            .env_remove("XDG_RUNTIME_DIR");
        c
    }

    /// One cycle (`--once`): its report, and the exit code.
    fn once(&self, a: &Arex) -> (Value, i32) {
        let out = self.command(a, &["--once"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_else(|| {
            panic!(
                "no report; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            serde_json::from_str(line).unwrap(),
            out.status.code().unwrap_or(-1),
        )
    }
}

/// The loop running in the background; its JSON lines are collected.
struct Loop {
    child: Child,
    reports: Arc<Mutex<Vec<Value>>>,
}

impl Loop {
    fn start(s: &Setup, a: &Arex) -> Loop {
        let mut child = s
            .command(a, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let r = reports.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON line per cycle ({e}): {line}"));
                r.lock().unwrap().push(v);
            }
        });
        Loop { child, reports }
    }

    fn reports(&self) -> Vec<Value> {
        self.reports.lock().unwrap().clone()
    }

    /// Wait until `done` holds for the reports so far, at most `secs`.
    fn wait_for(&self, secs: u64, what: &str, done: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if done(&self.reports()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{what}: not within {secs} s; reports: {:#?}",
            self.reports()
        );
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGTERM; the loop must end its cycle and exit 0, within a cycle's time.
    fn terminate(mut self, within: Duration) -> Vec<Value> {
        self.signal("-TERM");
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "exit after SIGTERM: {st}");
                break;
            }
            assert!(
                Instant::now() < end,
                "the loop did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.reports()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts the loop's jobs on the CE, by name, every ~second, from another
/// connection than the loop's.
struct Poller {
    stop: Arc<AtomicBool>,
    max_alive: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The CE's jobs whose name starts with `prefix`: (id, name, REST state).
fn ce_jobs(a: &Arex, prefix: &str) -> Vec<(String, String, Option<String>)> {
    try_ce_jobs(a, prefix).expect("listing the CE's jobs")
}

fn try_ce_jobs(a: &Arex, prefix: &str) -> gridship::Result<Vec<(String, String, Option<String>)>> {
    let (c, rt) = rest(a);
    let ids = rt.block_on(c.list_jobs())?;
    Ok(rt
        .block_on(c.job_infos(&ids))?
        .into_iter()
        .filter_map(|i| {
            let n = i.name?;
            n.starts_with(&format!("{prefix}-"))
                .then_some((i.id, n, i.state))
        })
        .collect())
}

fn is_final(state: &Option<String>) -> bool {
    state.as_deref().is_some_and(|s| FINAL.contains(&s))
}

/// Wait up to `secs` for `f` to hold.
fn eventually(secs: u64, what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn alive(jobs: &[(String, String, Option<String>)]) -> u32 {
    jobs.iter().filter(|(_, _, s)| !is_final(s)).count() as u32
}

impl Poller {
    fn start(a: &Arex, prefix: &str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let max_alive = Arc::new(AtomicU32::new(0));
        let (s, m, a, p) = (
            stop.clone(),
            max_alive.clone(),
            a.clone(),
            prefix.to_string(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let n = try_ce_jobs(&a, &p).map(|j| alive(&j)).unwrap_or(0);
                m.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        Poller {
            stop,
            max_alive,
            thread: Some(thread),
        }
    }

    /// The most jobs seen alive so far; restarts the count.
    fn take_max(&self) -> u32 {
        self.max_alive.swap(0, Ordering::SeqCst)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Remove what a scenario left on the CE (kill what still runs, clean all).
struct CeCleanup<'a> {
    a: &'a Arex,
    prefix: String,
}

impl Drop for CeCleanup<'_> {
    fn drop(&mut self) {
        let Ok(jobs) = try_ce_jobs(self.a, &self.prefix) else {
            return;
        };
        let ids: Vec<String> = jobs.iter().map(|j| j.0.clone()).collect();
        if ids.is_empty() {
            return;
        }
        let (c, rt) = rest(self.a);
        let _ = rt.block_on(c.action("kill", &ids));
        let _ = rt.block_on(c.action("clean", &ids));
    }
}

fn sum(reports: &[Value], key: &str) -> u64 {
    reports.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum()
}

fn cycle_of_change(reports: &[Value], needle: &str) -> Option<usize> {
    reports.iter().position(|r| {
        r["config_changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c.as_str().unwrap_or("").contains(needle)))
    })
}

/// max_running 3, max_idle 1: never more than 4 alive, the queue stays
/// supplied; raised limits grow the pool within two cycles; lowered ones
/// stop submission and kill nothing; SIGTERM ends the cycle and exits.
#[test]
fn limits_hold_and_follow_the_file() {
    let _ce = ce_shared();
    let a = arex();
    let s = Setup::new(&a, "limits", 5, None);
    let _cleanup = CeCleanup {
        a: &a,
        prefix: s.prefix.clone(),
    };
    s.write_config("max_running: 3\nmax_idle: 1\ncycle_seconds: 2\n");
    let poll = Poller::start(&a, &s.prefix);
    let l = Loop::start(&s, &a);

    // Jobs finish (~15-20 s each on this CE) and are replaced.
    l.wait_for(120, "finished jobs replaced", |r| {
        sum(r, "finished") >= 2 && sum(r, "submitted") >= 6
    });
    assert!(
        poll.take_max() <= 4,
        "more than max_running + max_idle of the loop's jobs alive"
    );
    let before = l.reports();
    assert!(
        before
            .iter()
            .all(|r| r["failed"] == 0 && r["errors"].is_null()),
        "{before:#?}"
    );
    // Supplied: every cycle found jobs alive on the CE or sent some.
    assert!(
        before.iter().all(|r| ["running", "idle", "submitted"]
            .iter()
            .map(|k| r[k].as_u64().unwrap())
            .sum::<u64>()
            > 0),
        "{before:#?}"
    );

    // Raised: the next cycle that reads the file submits up to the new cap.
    s.write_config("max_running: 6\nmax_idle: 3\ncycle_seconds: 2\n");
    l.wait_for(20, "raised limits read", |r| {
        cycle_of_change(r, "max_running: 3 -> 6").is_some_and(|i| r.len() > i + 1)
    });
    let r = l.reports();
    let i = cycle_of_change(&r, "max_running: 3 -> 6").unwrap();
    // Grown: the idle queue is filled to the new max_idle (3, was 1) at
    // once, or the new cap (9 alive) is reached.
    let grown = |c: &Value| {
        let n = |k: &str| c[k].as_u64().unwrap();
        n("idle") + n("submitted") >= 3 || n("running") + n("idle") + n("submitted") >= 9
    };
    assert!(
        grown(&r[i]) || grown(&r[i + 1]),
        "the pool did not grow within two cycles: {:#?}",
        &r[i..]
    );
    assert!(r[i]["submitted"].as_u64().unwrap() > 0, "{:#?}", &r[i]);
    std::thread::sleep(Duration::from_secs(4));
    let max = poll.take_max();
    assert!(max <= 9, "alive after raising: {max}");

    // Lowered: no more submissions; the running ones end on their own.
    s.write_config("max_running: 1\nmax_idle: 0\ncycle_seconds: 2\n");
    l.wait_for(20, "lowered limits read", |r| {
        cycle_of_change(r, "max_running: 6 -> 1").is_some()
    });
    let lowered_at = cycle_of_change(&l.reports(), "max_running: 6 -> 1").unwrap();
    l.wait_for(90, "the pool drained", |r| {
        let last = r.last().unwrap();
        r.len() > lowered_at + 2
            && ["running", "idle", "unknown"]
                .iter()
                .all(|k| last[k].as_u64().unwrap_or(1) == 0)
    });
    let r = l.terminate(Duration::from_secs(10));
    assert!(
        r[lowered_at..].iter().all(|c| c["submitted"] == 0),
        "submitted after lowering: {:#?}",
        &r[lowered_at..]
    );
    assert_eq!(sum(&r, "failed"), 0, "a job was killed or failed: {r:#?}");
    assert!(poll.take_max() <= 9);
    let st = s.state();
    assert_eq!(st["jobs"], serde_json::json!([]), "{st}");
    assert_eq!(st["pending"], serde_json::json!([]), "{st}");
    assert_eq!(st["submitted_total"].as_u64(), Some(sum(&r, "submitted")));
    assert_eq!(st["finished_total"].as_u64(), Some(sum(&r, "finished")));
    eventually(20, "finished jobs cleaned from the CE", || {
        ce_jobs(&a, &s.prefix).is_empty()
    });
}

/// SIGKILL mid-run, then a restart: every job on the CE is in the list,
/// none twice. A submission recorded but never answered (the kill came
/// between the two) is found on the CE by its name, or dropped when the CE
/// never made it.
#[test]
fn sigkill_and_restart_adopt_without_duplicates() {
    let _ce = ce_shared();
    let a = arex();
    let s = Setup::new(&a, "kill", 6, None);
    let _cleanup = CeCleanup {
        a: &a,
        prefix: s.prefix.clone(),
    };
    s.write_config("max_running: 2\nmax_idle: 2\ncycle_seconds: 1\n");
    let l = Loop::start(&s, &a);
    l.wait_for(30, "first jobs", |r| sum(r, "submitted") >= 4);
    let mut l = l;
    l.signal("-KILL");
    let _ = l.child.wait();
    drop(l);

    // The window a kill can hit, made on purpose: a job the CE holds whose
    // ID never reached the list, and a recorded name the CE never got.
    let mut st = s.state();
    let token = st["token"].as_str().unwrap().to_string();
    let seq = st["next_seq"].as_u64().unwrap();
    let made = format!("{}-{token}-{seq}", s.prefix);
    let lost = format!("{}-{token}-{}", s.prefix, seq + 1);
    let x = s.dir.path().join("made.xrsl");
    std::fs::write(
        &x,
        format!("&(jobname=\"{made}\")(executable=\"/bin/sleep\")(arguments=\"6\")(walltime=\"1m\")(queue=\"cpu\")"),
    )
    .unwrap();
    let (c, rt) = rest(&a);
    let specs = gridship::jobdesc::load(&x).unwrap();
    let made_id = rt
        .block_on(gridship::ce::submit_all(&c, &specs, s.dir.path()))
        .unwrap()[0]
        .id
        .clone();
    for name in [&made, &lost] {
        st["pending"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "name": name, "ce": a.url.trim_end_matches('/'), "cost_s": 60, "since": 1
            }));
    }
    st["next_seq"] = (seq + 2).into();
    st["budget_used_s"] = (st["budget_used_s"].as_u64().unwrap() + 120).into();
    std::fs::write(s.state_path(), serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    let before: Vec<String> = s.state()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();

    let (r, code) = s.once(&a);
    assert_eq!(code, 0, "{r}");
    let st = s.state();
    assert_eq!(st["pending"], serde_json::json!([]), "{st}");
    let ids: Vec<String> = st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains(&made_id),
        "the unanswered submission is adopted: {st}"
    );
    assert_eq!(
        st["budget_used_s"].as_u64().unwrap(),
        st["submitted_total"].as_u64().unwrap() * 60,
        "the name the CE never got is refunded: {st}"
    );
    // Every job is accounted for: listed, or finished and cleaned this cycle.
    let n = |k: &str| r[k].as_u64().unwrap() as usize;
    assert_eq!(
        ids.len() + n("finished") + n("failed"),
        before.len() + 1 + n("submitted"),
        "{r} / {st}"
    );
    for id in &before {
        assert!(
            ids.contains(id) || n("finished") + n("failed") > 0,
            "job {id} lost"
        );
    }
    // The CE holds each name once, and every live one is in the list.
    let check_ce = |ids: &[String]| {
        let on_ce = ce_jobs(&a, &s.prefix);
        let mut names: Vec<&str> = on_ce.iter().map(|j| j.1.as_str()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a name submitted twice: {on_ce:?}");
        assert!(!names.contains(&lost.as_str()));
        for (id, name, state) in &on_ce {
            assert!(
                ids.contains(id) || is_final(state),
                "{name} ({id}, {state:?}) is on the CE but not in the list"
            );
        }
    };
    check_ce(&ids);

    // Running on after the restart: still no duplicates.
    let l = Loop::start(&s, &a);
    l.wait_for(60, "jobs finished after the restart", |r| {
        sum(r, "finished") >= 2
    });
    let r = l.terminate(Duration::from_secs(10));
    assert_eq!(sum(&r, "failed"), 0, "{r:#?}");
    let ids: Vec<String> = s.state()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    check_ce(&ids);
}

/// `ci/arex stop|start` of this checkout: the real CE goes away and comes back.
fn arex_ctl(what: &str) {
    let out = Command::new(common::arc::repo().join("ci/arex"))
        .arg(what)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ci/arex {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts A-REX again whatever happens to the scenario that stopped it.
struct RestartArex;

impl Drop for RestartArex {
    fn drop(&mut self) {
        arex_ctl("start");
    }
}

/// The CE goes away mid-run: the loop backs off (doubling pauses, capped),
/// never counts the unreachable jobs as idle, and resumes when it is back.
#[test]
fn unreachable_ce_backs_off_and_resumes() {
    let _alone = CE.write().unwrap_or_else(|e| e.into_inner());
    let a = arex();
    let s = Setup::new(&a, "outage", 4, None);
    let _cleanup = CeCleanup {
        a: &a,
        prefix: s.prefix.clone(),
    };
    s.write_config("max_running: 2\nmax_idle: 1\ncycle_seconds: 1\nmax_backoff_seconds: 4\n");
    let l = Loop::start(&s, &a);
    l.wait_for(60, "first jobs", |r| sum(r, "submitted") >= 3);
    let at_outage = l.reports().len();
    let restart = RestartArex;
    arex_ctl("stop");
    l.wait_for(40, "backoff reaches its cap", |r| {
        r[at_outage..]
            .iter()
            .filter(|c| c["backing_off"] == true)
            .count()
            >= 4
    });
    drop(restart);
    let back_at = l.reports().len();
    l.wait_for(90, "resumed", |r| {
        r.len() > back_at + 1
            && r[back_at..]
                .iter()
                .any(|c| c["backing_off"] == false && c["errors"].is_null())
            && r[back_at..]
                .iter()
                .any(|c| c["finished"].as_u64().unwrap() > 0)
    });
    let r = l.terminate(Duration::from_secs(10));
    let out: Vec<&Value> = r[at_outage..back_at]
        .iter()
        .filter(|c| c["backing_off"] == true)
        .collect();
    let pauses: Vec<u64> = out
        .iter()
        .map(|c| c["next_cycle_s"].as_u64().unwrap())
        .collect();
    assert_eq!(
        &pauses[..3],
        &[2, 4, 4],
        "doubling from 1 s, capped at 4: {r:#?}"
    );
    for c in &out {
        assert_eq!(
            c["idle"], 0,
            "an unreachable CE's jobs counted as idle: {c}"
        );
        assert_eq!(c["running"], 0, "{c}");
        assert_eq!(c["submitted"], 0, "{c}");
        assert!(c["unknown"].as_u64().unwrap() > 0, "{c}");
    }
    assert_eq!(sum(&r, "failed"), 0, "{r:#?}");
    let st = s.state();
    assert_eq!(st["pending"], serde_json::json!([]), "{st}");
}

/// `--once` cycles: the budget (walltime × slots) stops submission at the
/// right job; a CE that refuses (an unknown queue: HTTP 500) stops
/// submission until it accepts, probing with one job; bad config edits.
#[test]
fn budget_refusal_and_bad_edits_once() {
    let _ce = ce_shared();
    let a = arex();
    let s = Setup::new(&a, "budget", 3, None);
    let _cleanup = CeCleanup {
        a: &a,
        prefix: s.prefix.clone(),
    };
    // Refused: nothing counted, nothing submitted, exit 1 for cron.
    s.write_config(
        "max_running: 5\nmax_idle: 5\nmax_submit_per_cycle: 2\ncycle_seconds: 1\nqueue: nosuchqueue\nbudget_hours: 0.05\nget: out\n",
    );
    let (r, code) = s.once(&a);
    assert_eq!(code, 1, "{r}");
    assert_eq!(
        (r["submitted"].as_u64(), r["idle"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert!(r["errors"][0].as_str().unwrap().contains("submit"), "{r}");
    // Accepting again: first one probe, then the rest.
    s.write_config(
        "max_running: 5\nmax_idle: 5\nmax_submit_per_cycle: 2\ncycle_seconds: 1\nbudget_hours: 0.05\nget: out\n",
    );
    let (r, code) = s.once(&a);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["submitted"], 1, "one probe after a refusal: {r}");
    assert_eq!(r["held_by"], "ce_refusing", "{r}");
    assert_eq!(s.state()["budget_used_s"], 60, "refused jobs are refunded");
    // 0.05 h = 180 s of 60 s jobs: the third job is the last.
    let (r, code) = s.once(&a);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["submitted"], 2, "{r}");
    assert_eq!(r["held_by"], "budget", "{r}");
    let (r, _) = s.once(&a);
    assert_eq!(r["submitted"], 0, "{r}");
    assert_eq!(r["held_by"], "budget", "{r}");
    let st = s.state();
    assert_eq!(st["submitted_total"], 3, "{st}");
    assert_eq!(st["budget_used_s"], 180, "{st}");
    assert_eq!(ce_jobs(&a, &s.prefix).len(), 3);

    // A bad edit: the last good config stays, the reason is logged.
    let good = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(s.config_path(), format!("{good}max_idel: 3\n")).unwrap();
    // --once starts from the file, so a bad file is a bad-input error (2).
    let out = s.command(&a, &["--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_idel") && err.contains("pressure.yaml"),
        "{err}"
    );
    std::fs::write(s.config_path(), &good).unwrap();
    let l = Loop::start(&s, &a);
    l.wait_for(20, "first cycle", |r| !r.is_empty());
    std::fs::write(
        s.config_path(),
        good.replace("cycle_seconds: 1", "cycle_seconds: 0"),
    )
    .unwrap();
    l.wait_for(20, "bad edit reported", |r| {
        r.iter().any(|c| {
            c["config_error"]
                .as_str()
                .is_some_and(|e| e.contains("cycle_seconds"))
        })
    });
    // The three jobs end, are fetched (get: out) and cleaned; the loop runs on
    // with the last good config meanwhile.
    l.wait_for(90, "the budget's jobs fetched and cleaned", |_| {
        s.state()["jobs"] == serde_json::json!([])
    });
    let r = l.terminate(Duration::from_secs(15));
    assert!(r.iter().all(|c| c["submitted"] == 0), "{r:#?}");
    let st = s.state();
    assert_eq!(st["finished_total"], 3, "{st}");
    let mut fetched: Vec<String> = std::fs::read_dir(s.dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fetched.sort();
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    for id in &fetched {
        let out = s.dir.path().join("out").join(id).join("out.txt");
        assert!(Path::new(&out).is_file(), "{} missing", out.display());
    }
    eventually(20, "cleaned from the CE", || {
        ce_jobs(&a, &s.prefix).is_empty()
    });
}

/// demand: sizes the pool (the limits still cap it); a failing demand
/// command submits nothing; stop_after ends the loop by itself.
#[test]
fn demand_and_stop_after() {
    let _ce = ce_shared();
    let a = arex();
    let s = Setup::new(&a, "demand", 5, None);
    let _cleanup = CeCleanup {
        a: &a,
        prefix: s.prefix.clone(),
    };
    s.write_config("max_running: 5\nmax_idle: 5\ncycle_seconds: 1\ndemand: echo 2\n");
    let (r, code) = s.once(&a);
    assert_eq!((code, r["submitted"].as_u64()), (0, Some(2)), "{r}");
    let (r, code) = s.once(&a);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["submitted"], 0, "{r}");
    assert_eq!(r["held_by"], "demand", "{r}");
    s.write_config("max_running: 5\nmax_idle: 5\ncycle_seconds: 1\ndemand: exit 3\n");
    let (r, code) = s.once(&a);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["submitted"], 0, "{r}");
    assert!(r["errors"][0].as_str().unwrap().contains("demand"), "{r}");
    // A large demand: max_running + max_idle (3) still caps it.
    s.write_config(
        "max_running: 2\nmax_idle: 1\ncycle_seconds: 1\ndemand: echo 50\nstop_after: 3s\n",
    );
    let started = Instant::now();
    let mut l = Loop::start(&s, &a);
    let status = loop {
        if let Some(st) = l.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stop_after did not end the loop"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(200));
    let r = l.reports();
    assert!(r.len() >= 3, "{r:#?}");
    assert_eq!(r.last().unwrap()["next_cycle_s"], 0, "{r:#?}");
    let st = s.state();
    let alive = st["jobs"].as_array().unwrap().len() + st["pending"].as_array().unwrap().len();
    assert!(alive <= 3, "{st}");
}
