//! Operations: promote, snapshot and new session, each with an id and a
//! state, run in turn within the node's and each user's limits.
//!
//! The record (`STATE/operations.json`) is rewritten atomically on every
//! change, so a restart finds every operation as it was; one that was
//! running when the service died is failed "service restarted", its child
//! killed and its staging directory removed. Each operation's events are
//! appended to `STATE/events/ID.jsonl`, numbered, so a stream can be
//! replayed and then followed live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Promote,
    Snapshot,
    NewSession,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Promote => "promote",
            OpKind::Snapshot => "snapshot",
            OpKind::NewSession => "new-session",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl OpState {
    pub fn finished(self) -> bool {
        matches!(self, OpState::Done | OpState::Failed | OpState::Cancelled)
    }
}

/// One file an operation made, as the owner may download it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Artifact {
    /// Relative to the operation's output directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub kind: OpKind,
    /// The identity key of whom it is for.
    pub owner: String,
    /// Session (container) name and id.
    pub session: String,
    pub container_id: String,
    /// The validated command-line options (promote) or the request (new session).
    pub args: Vec<String>,
    /// The artifact tag: `~/gridship/TAG/`, `OUTPUTS/OWNER/SESSION/TAG/`.
    pub tag: String,
    pub state: OpState,
    /// The running stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<i64>,
    /// The child process and its start time (so a restart never kills a
    /// process that merely reused the pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Where its artifacts are, relative to serve.outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    /// Place in the node's queue (queued operations only; not stored).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

/// The number a restart uses for an interrupted operation's error.
pub const RESTARTED: &str = "service restarted";

/// The record of operations and their live event channels.
pub struct Ops {
    state_dir: PathBuf,
    list: Mutex<Vec<Operation>>,
    channels: Mutex<HashMap<String, broadcast::Sender<String>>>,
    seq: Mutex<HashMap<String, u64>>,
}

fn now() -> i64 {
    crate::clock::now().unwrap_or(0)
}

/// The start time of a process (field 22 of /proc/PID/stat), to tell a
/// process from a later one with the same pid.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Ops {
    /// Read the record; operations a dead service was running are failed
    /// (their children killed) and returned so the caller removes what they
    /// left.
    pub fn open(state_dir: &Path) -> Result<(Ops, Vec<Operation>)> {
        std::fs::create_dir_all(state_dir.join("events"))
            .map_err(|e| Error::io_path(state_dir, "creating the service's state directory", e))?;
        let path = state_dir.join("operations.json");
        let mut list: Vec<Operation> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::BadInput {
                input: path.display().to_string(),
                place: String::new(),
                reason: format!("not the service's operations record: {e}"),
                hint: Some("move it away to start with an empty record".into()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io_path(&path, "reading the operations record", e)),
        };
        let mut interrupted = Vec::new();
        for op in list.iter_mut() {
            if op.state == OpState::Running {
                if let (Some(pid), Some(start)) = (op.pid, op.pid_start)
                    && process_start(pid) == Some(start)
                {
                    // A child that outlived its service: its work is abandoned.
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| {
                            Error::Other(format!("operation {}: pid {pid}", op.id))
                        })?,
                        rustix::process::Signal::KILL,
                    );
                }
                op.state = OpState::Failed;
                op.error = Some(RESTARTED.into());
                op.ended = Some(now());
                op.pid = None;
                op.pid_start = None;
                interrupted.push(op.clone());
            }
        }
        let ops = Ops {
            state_dir: state_dir.to_path_buf(),
            list: Mutex::new(list),
            channels: Mutex::new(HashMap::new()),
            seq: Mutex::new(HashMap::new()),
        };
        ops.save()?;
        for op in &interrupted {
            ops.event(
                &op.id,
                serde_json::json!({"event": "state", "state": "failed", "error": RESTARTED}),
            );
        }
        Ok((ops, interrupted))
    }

    fn save_list(&self, list: &[Operation]) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(list)
            .map_err(|e| Error::Other(format!("operations record: {e}")))?;
        crate::fsutil::write_atomic(&self.state_dir.join("operations.json"), &bytes, 0o600)
    }

    fn save(&self) -> Result<()> {
        let list = self.list.lock().map_err(poisoned)?;
        self.save_list(&list)
    }

    /// A copy of every operation, queued ones with their positions.
    pub fn all(&self) -> Vec<Operation> {
        let mut list = match self.list.lock() {
            Ok(l) => l.clone(),
            Err(_) => return Vec::new(),
        };
        let mut pos = 0;
        for op in list.iter_mut() {
            if op.state == OpState::Queued {
                pos += 1;
                op.position = Some(pos);
            }
        }
        list
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        self.all().into_iter().find(|o| o.id == id)
    }

    /// Add a queued operation; refused past the owner's queue limit.
    pub fn add(&self, op: Operation, queued_per_user: usize) -> Result<Operation> {
        let mut list = self.list.lock().map_err(poisoned)?;
        let waiting = list
            .iter()
            .filter(|o| o.owner == op.owner && o.state == OpState::Queued)
            .count();
        if waiting >= queued_per_user {
            return Err(Error::BadInput {
                input: format!("{} of {}", op.kind.name(), op.session),
                place: String::new(),
                reason: format!("you have {waiting} operations waiting, the most this node allows"),
                hint: Some("wait for one to finish, or cancel one".into()),
            });
        }
        list.push(op.clone());
        self.save_list(&list)?;
        drop(list);
        self.event(
            &op.id,
            serde_json::json!({"event": "state", "state": "queued"}),
        );
        Ok(op)
    }

    /// Change one operation and save the record.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Operation)) -> Result<Option<Operation>> {
        let mut list = self.list.lock().map_err(poisoned)?;
        let Some(op) = list.iter_mut().find(|o| o.id == id) else {
            return Ok(None);
        };
        f(op);
        let op = op.clone();
        self.save_list(&list)?;
        Ok(Some(op))
    }

    /// The queued operations that may start now, marked running: in order,
    /// within the node's and each owner's limits, one at a time per session.
    pub fn start_next(&self, node: usize, per_user: usize) -> Result<Vec<Operation>> {
        let mut list = self.list.lock().map_err(poisoned)?;
        // A new session has no container yet: its name stands for it.
        let key = |o: &Operation| {
            if o.container_id.is_empty() {
                format!("name:{}", o.session)
            } else {
                o.container_id.clone()
            }
        };
        let mut running: Vec<(String, String)> = list
            .iter()
            .filter(|o| o.state == OpState::Running)
            .map(|o| (o.owner.clone(), key(o)))
            .collect();
        let mut started = Vec::new();
        for op in list.iter_mut() {
            if running.len() >= node {
                break;
            }
            if op.state != OpState::Queued {
                continue;
            }
            let mine = running.iter().filter(|(o, _)| *o == op.owner).count();
            let busy = running.iter().any(|(_, c)| *c == key(op));
            if mine >= per_user || busy {
                continue;
            }
            op.state = OpState::Running;
            op.started = Some(now());
            running.push((op.owner.clone(), key(op)));
            started.push(op.clone());
        }
        if !started.is_empty() {
            self.save_list(&list)?;
        }
        drop(list);
        for op in &started {
            self.event(
                &op.id,
                serde_json::json!({"event": "state", "state": "running"}),
            );
        }
        Ok(started)
    }

    /// Where an operation's events are kept.
    pub fn events_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("events").join(format!("{id}.jsonl"))
    }

    /// Append one event (numbered) and send it to live listeners.
    pub fn event(&self, id: &str, mut value: serde_json::Value) {
        let seq = match self.seq.lock() {
            Ok(mut s) => {
                let n = s.entry(id.to_string()).or_insert_with(|| {
                    // After a restart, go on from the last number written.
                    std::fs::read_to_string(self.events_path(id))
                        .map(|t| t.lines().count() as u64)
                        .unwrap_or(0)
                });
                *n += 1;
                *n
            }
            Err(_) => return,
        };
        if let Some(o) = value.as_object_mut() {
            o.insert("seq".into(), seq.into());
            o.insert("time".into(), now().into());
        }
        let line = value.to_string();
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.events_path(id))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            tracing::warn!("operation {id}: writing its event log: {e}");
        }
        if let Ok(ch) = self.channels.lock()
            && let Some(tx) = ch.get(id)
        {
            let _ = tx.send(line);
        }
    }

    /// Live events of `id`, from now on.
    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<String> {
        match self.channels.lock() {
            Ok(mut ch) => ch
                .entry(id.to_string())
                .or_insert_with(|| broadcast::channel(1024).0)
                .subscribe(),
            Err(_) => broadcast::channel(1).1,
        }
    }

    /// Operations finished before `before` (unix seconds): retention.
    pub fn expired(&self, before: i64) -> Vec<Operation> {
        self.all()
            .into_iter()
            .filter(|o| o.state.finished() && o.ended.is_some_and(|e| e < before))
            .collect()
    }

    /// Forget operations (after their outputs are removed).
    pub fn forget(&self, ids: &[String]) -> Result<()> {
        let mut list = self.list.lock().map_err(poisoned)?;
        list.retain(|o| !ids.contains(&o.id));
        self.save_list(&list)?;
        for id in ids {
            let _ = std::fs::remove_file(self.events_path(id));
        }
        Ok(())
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Other("the operations record's lock is poisoned (an earlier panic)".into())
}

/// A fresh operation id: time and randomness, safe in paths and URLs.
pub fn new_id() -> String {
    let mut r = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
    let stamp = crate::clock::compact_stamp(now()).unwrap_or_default();
    format!("op-{}-{}", stamp.to_lowercase(), hex::encode(r))
}

/// Shared handle.
pub type SharedOps = Arc<Ops>;

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, owner: &str, container: &str) -> Operation {
        Operation {
            id: id.into(),
            kind: OpKind::Promote,
            owner: owner.into(),
            session: container.into(),
            container_id: container.into(),
            args: vec![],
            tag: "t".into(),
            state: OpState::Queued,
            stage: None,
            error: None,
            created: 0,
            started: None,
            ended: None,
            pid: None,
            pid_start: None,
            artifacts: vec![],
            output_dir: None,
            position: None,
        }
    }

    #[test]
    fn queue_order_limits_and_one_per_session() {
        let d = tempfile::tempdir().unwrap();
        let (ops, _) = Ops::open(d.path()).unwrap();
        for (id, owner, c) in [
            ("1", "a", "s1"),
            ("2", "a", "s1"),
            ("3", "b", "s2"),
            ("4", "a", "s3"),
        ] {
            ops.add(op(id, owner, c), 10).unwrap();
        }
        let pos: Vec<_> = ops.all().iter().map(|o| o.position).collect();
        assert_eq!(pos, [Some(1), Some(2), Some(3), Some(4)]);
        // Node 2, user 1: a's first and b's start; a's others wait.
        let s: Vec<_> = ops
            .start_next(2, 1)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(s, ["1", "3"]);
        assert!(ops.start_next(2, 1).unwrap().is_empty());
        ops.update("1", |o| o.state = OpState::Done).unwrap();
        // Session s1's second waits no longer; it is a's turn again.
        let s: Vec<_> = ops
            .start_next(3, 2)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(s, ["2", "4"]);
        // One session never runs two at once, whatever the limits.
        ops.add(op("5", "b", "s2"), 10).unwrap();
        assert!(ops.start_next(9, 9).unwrap().is_empty());
        // The queue limit per user.
        let e = ops.add(op("6", "b", "s9"), 1).unwrap_err().to_string();
        assert!(e.contains("waiting"), "{e}");
    }

    #[test]
    fn a_restart_fails_what_was_running_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        {
            let (ops, _) = Ops::open(d.path()).unwrap();
            ops.add(op("1", "a", "s1"), 10).unwrap();
            ops.add(op("2", "a", "s2"), 10).unwrap();
            ops.start_next(1, 1).unwrap();
            // A pid that is surely not our child's start time.
            ops.update("1", |o| {
                o.pid = Some(std::process::id());
                o.pid_start = Some(1);
            })
            .unwrap();
        }
        let (ops, interrupted) = Ops::open(d.path()).unwrap();
        assert_eq!(interrupted.len(), 1);
        let one = ops.get("1").unwrap();
        assert_eq!(one.state, OpState::Failed);
        assert_eq!(one.error.as_deref(), Some(RESTARTED));
        assert_eq!(ops.get("2").unwrap().state, OpState::Queued);
        let events = std::fs::read_to_string(ops.events_path("1")).unwrap();
        let seqs: Vec<u64> = events
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3], "{events}");
        assert!(events.contains(RESTARTED));
    }
}
