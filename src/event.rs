//! Pipeline events: one type for what every stage reports.
//!
//! A pipeline runs in named stages ([`stage`]). Each says when it starts,
//! how far it is (bytes read, paths written) and when it ends, with its
//! result, as an [`Event`]. Readers deep in the pipeline count what they
//! read with [`advance`] (or wrap their reader in [`Counted`]); the count
//! goes to the stage that is running, so no function needs a progress
//! parameter. Long transfers inside a stage (one blob pulled or pushed)
//! report as [`item`]s.
//!
//! Whoever wants the events listens ([`listen`]): the CLI's bars and lines
//! (crate::progress), `--events` (JSON lines for a supervising service), a
//! test. One pipeline runs per process at a time, so the listeners and the
//! running stage are the process's.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a stage or an item reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A stage began; `total` is the bytes it heads for, when known.
    Start { stage: String, total: Option<u64> },
    /// How far the running stage is: bytes read and paths written so far.
    /// Sent at most every [`PROGRESS_EVERY`], and when the total becomes
    /// known.
    Progress {
        stage: String,
        bytes: u64,
        paths: u64,
        total: Option<u64>,
    },
    /// One transfer inside a stage (or outside any: `gridship copy`), e.g.
    /// a blob pulled; `done` on its last report.
    Item {
        item: String,
        bytes: u64,
        total: u64,
        done: bool,
    },
    /// A log record (`--events` only: otherwise logs go to stderr as text).
    Log { level: String, message: String },
    /// A stage ended: `ok` false when it failed (its error is the
    /// pipeline's error); `result` is what it made, as the stage says it.
    End {
        stage: String,
        ok: bool,
        seconds: f64,
        bytes: u64,
        paths: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
    },
}

/// How often a running stage or item reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

static LISTENERS: RwLock<Vec<(u64, Listener)>> = RwLock::new(Vec::new());
static NEXT_LISTENER: AtomicU64 = AtomicU64::new(0);
/// The running stage, which [`advance`] counts for.
static CURRENT: Mutex<Option<Running>> = Mutex::new(None);
/// Stages started so far: each stage's number.
static STAGES: AtomicU64 = AtomicU64::new(0);

struct Running {
    id: u64,
    name: String,
    bytes: u64,
    paths: u64,
    total: Option<u64>,
    last_sent: Instant,
}

fn emit(event: &Event) {
    let listeners: Vec<Listener> = match LISTENERS.read() {
        Ok(l) => l.iter().map(|(_, f)| f.clone()).collect(),
        Err(_) => return,
    };
    for f in listeners {
        f(event);
    }
}

/// Receive every event until the returned guard is dropped.
pub fn listen(f: impl Fn(&Event) + Send + Sync + 'static) -> Listening {
    let id = NEXT_LISTENER.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut l) = LISTENERS.write() {
        l.push((id, Arc::new(f)));
    }
    Listening { id }
}

/// A listener's registration; dropping it stops the events.
#[must_use = "the listener stops when this is dropped"]
pub struct Listening {
    id: u64,
}

impl Listening {
    /// Listen for the rest of the process.
    pub fn forever(self) {
        std::mem::forget(self);
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Ok(mut l) = LISTENERS.write() {
            l.retain(|(id, _)| *id != self.id);
        }
    }
}

/// Pass on an event another process reported (a service's operation,
/// read from its stream) to this process's listeners: the bars show it as
/// if the stage ran here.
pub fn relay(event: &Event) {
    emit(event);
}

/// Send a log record (`line`: a formatted record, "LEVEL target: text").
pub fn log(line: &str) {
    let line = line.trim();
    let (level, message) = line.split_once(' ').unwrap_or(("INFO", line));
    emit(&Event::Log {
        level: level.to_string(),
        message: message.trim_start().to_string(),
    });
}

/// A running stage; see the module comment. Dropped without
/// [`Stage::finish`], it ends as failed.
pub struct Stage {
    id: u64,
    name: String,
    started: Instant,
    finished: bool,
}

/// What a stage did, as its end event said.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageEnd {
    pub stage: String,
    pub seconds: f64,
    pub bytes: u64,
    pub paths: u64,
}

/// Start stage `name`, heading for `total` bytes when known. It becomes
/// the stage [`advance`] counts for, until it ends.
pub fn stage(name: &str, total: Option<u64>) -> Stage {
    let id = STAGES.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut c) = CURRENT.lock() {
        *c = Some(Running {
            id,
            name: name.to_string(),
            bytes: 0,
            paths: 0,
            total,
            last_sent: Instant::now(),
        });
    }
    emit(&Event::Start {
        stage: name.to_string(),
        total,
    });
    Stage {
        id,
        name: name.to_string(),
        started: Instant::now(),
        finished: false,
    }
}

impl Stage {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// End the stage with what it made (`None`: nothing to say).
    pub fn finish(mut self, result: Option<serde_json::Value>) -> StageEnd {
        self.finished = true;
        self.end(true, result)
    }

    fn end(&self, ok: bool, result: Option<serde_json::Value>) -> StageEnd {
        let (bytes, paths) = match CURRENT.lock() {
            Ok(mut c) if c.as_ref().is_some_and(|r| r.id == self.id) => {
                let r = c.take().expect("checked");
                (r.bytes, r.paths)
            }
            _ => (0, 0),
        };
        let end = StageEnd {
            stage: self.name.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
            bytes,
            paths,
        };
        emit(&Event::End {
            stage: end.stage.clone(),
            ok,
            seconds: end.seconds,
            bytes,
            paths,
            result,
        });
        end
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.finished {
            self.end(false, None);
        }
    }
}

/// Whether a report is due: `PROGRESS_EVERY` since the last one, or
/// `force`d (then it is the last one from now).
fn due(last_sent: &mut Instant, force: bool) -> bool {
    if !force && last_sent.elapsed() < PROGRESS_EVERY {
        return false;
    }
    *last_sent = Instant::now();
    true
}

/// Update the running stage and send its progress when it is due (or
/// `force`d).
fn update(force: bool, f: impl FnOnce(&mut Running)) {
    let event = match CURRENT.lock() {
        Ok(mut c) => {
            let Some(r) = c.as_mut() else {
                return;
            };
            f(r);
            if !due(&mut r.last_sent, force) {
                return;
            }
            Event::Progress {
                stage: r.name.clone(),
                bytes: r.bytes,
                paths: r.paths,
                total: r.total,
            }
        }
        Err(_) => return,
    };
    emit(&event);
}

/// Count `n` bytes read for the running stage.
pub fn advance(n: u64) {
    update(false, |r| r.bytes += n);
}

/// Count `n` paths written for the running stage.
pub fn advance_paths(n: u64) {
    update(false, |r| r.paths += n);
}

/// Give the running stage the total it is heading for (bytes), once known.
pub fn set_total(total: u64) {
    update(true, |r| r.total = Some(total));
}

/// A reader that counts what passes through it with [`advance`].
pub struct Counted<R>(pub R);

impl<R> Counted<R> {
    pub fn into_inner(self) -> R {
        self.0
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        advance(n as u64);
        Ok(n)
    }
}

/// A transfer inside a stage; see [`Event::Item`]. Cheap to clone (the
/// clones share the count); the last report is sent by [`Item::finish`].
#[derive(Clone)]
pub struct Item {
    inner: Arc<Mutex<ItemState>>,
}

struct ItemState {
    name: String,
    bytes: u64,
    total: u64,
    last_sent: Instant,
    done: bool,
}

/// Start item `name` of `total` bytes.
pub fn item(name: impl Into<String>, total: u64) -> Item {
    let name = name.into();
    emit(&Event::Item {
        item: name.clone(),
        bytes: 0,
        total,
        done: false,
    });
    Item {
        inner: Arc::new(Mutex::new(ItemState {
            name,
            bytes: 0,
            total,
            last_sent: Instant::now(),
            done: false,
        })),
    }
}

/// An item given up (an error on the way) still ends for the listeners.
impl Drop for ItemState {
    fn drop(&mut self) {
        if !self.done {
            emit(&Event::Item {
                item: self.name.clone(),
                bytes: self.bytes,
                total: self.total,
                done: true,
            });
        }
    }
}

impl Item {
    fn update(&self, f: impl FnOnce(&mut ItemState)) {
        let event = match self.inner.lock() {
            Ok(mut s) => {
                let was_done = s.done;
                f(&mut s);
                let last = s.done;
                if was_done || !due(&mut s.last_sent, last) {
                    return;
                }
                Event::Item {
                    item: s.name.clone(),
                    bytes: s.bytes,
                    total: s.total,
                    done: s.done,
                }
            }
            Err(_) => return,
        };
        emit(&event);
    }

    pub fn inc(&self, n: u64) {
        self.update(|s| s.bytes += n);
    }

    /// Start counting again (a transfer that is tried again).
    pub fn restart(&self) {
        self.update(|s| s.bytes = 0);
    }

    pub fn finish(&self) {
        self.update(|s| s.done = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running stage is the process's: these tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Events of this test's stages and items only (tests run in
    /// parallel threads of one process).
    fn collect(prefix: &'static str) -> (Listening, Arc<Mutex<Vec<Event>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let guard = listen(move |e| {
            let name = match e {
                Event::Start { stage, .. }
                | Event::Progress { stage, .. }
                | Event::End { stage, .. } => stage,
                Event::Item { item, .. } => item,
                Event::Log { message, .. } => message,
            };
            if name.starts_with(prefix) {
                s.lock().unwrap().push(e.clone());
            }
        });
        (guard, seen)
    }

    #[test]
    fn a_stage_reports_start_progress_and_end() {
        let _turn = SERIAL.lock().unwrap();
        let (guard, seen) = collect("event-test-stage");
        let s = stage("event-test-stage", None);
        let mut r = Counted(&b"0123456789"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        set_total(10);
        advance_paths(3);
        let end = s.finish(Some(serde_json::json!({"made": 1})));
        drop(guard);
        assert_eq!(end.stage, "event-test-stage");
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.first(),
            Some(&Event::Start {
                stage: "event-test-stage".into(),
                total: None
            })
        );
        // set_total reports at once, with what was counted before it.
        assert!(seen.iter().any(|e| matches!(
            e,
            Event::Progress {
                total: Some(10),
                ..
            }
        )));
        match seen.last() {
            Some(Event::End {
                ok, result, paths, ..
            }) => {
                assert!(*ok);
                assert_eq!(*paths, 3);
                assert_eq!(result.as_ref().unwrap()["made"], 1);
            }
            other => panic!("last event {other:?}"),
        }
    }

    #[test]
    fn a_stage_dropped_unfinished_ends_as_failed() {
        let _turn = SERIAL.lock().unwrap();
        let (guard, seen) = collect("event-test-failed");
        drop(stage("event-test-failed", Some(5)));
        drop(guard);
        let seen = seen.lock().unwrap();
        assert!(matches!(seen.last(), Some(Event::End { ok: false, .. })));
    }

    #[test]
    fn an_item_reports_its_last_count_once() {
        let (guard, seen) = collect("event-test-item");
        let i = item("event-test-item", 4);
        i.inc(4);
        i.finish();
        i.finish();
        drop(guard);
        let done: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::Item { done: true, .. }))
            .cloned()
            .collect();
        assert_eq!(
            done,
            vec![Event::Item {
                item: "event-test-item".into(),
                bytes: 4,
                total: 4,
                done: true
            }]
        );
    }
}
