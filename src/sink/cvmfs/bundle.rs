//! OCI runtime bundles over published trees: a runtime-spec `config.json`
//! whose root is the image's `.flat` tree, read-only, so runc, crun or any
//! OCI runtime runs the tree CVMFS serves with nothing unpacked.
//!
//! The process comes from the image config (Entrypoint + Cmd, Env,
//! WorkingDir, User); the mounts, capabilities and masked paths are those
//! `runc spec` writes, with a tmpfs on /tmp because the root is read-only.
//! Not root: `runc spec --rootless`'s changes (a user namespace mapping the
//! caller to the process's user, /sys bound, no network namespace or cgroup
//! mount).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{PublicName, Repo};
use crate::digest::Digest;
use crate::fsutil::write_atomic;
use crate::image::ImageConfig;
use crate::store::Layout;
use crate::{Error, Result};

/// The published image behind `name`: its flat tree (absolute) and config.
pub struct Published {
    pub root: PathBuf,
    pub config_digest: Digest,
    pub config: ImageConfig,
}

/// Find `name`'s tree and its config: from the podman store's copy when the
/// image is there, else from `store` (where publish keeps the blobs).
pub fn find(repo: &Repo, name: &PublicName, store: Option<&Layout>) -> Result<Published> {
    let link = name.link_path();
    let flat = repo.flat_of_link(&link).ok_or_else(|| Error::NotFound {
        what: format!("published image {name} in {}", repo.root().display()),
        detail: "no public link by that name leads to a tree (see gridship cvmfs ls)".into(),
    })?;
    let hex = flat
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config_digest: Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|e| Error::Other(format!("{}: not a digest name: {e}", flat.display())))?;
    let in_podman = repo
        .abs(Path::new(super::podman::STORE))
        .join("overlay-images")
        .join(&hex)
        .join(format!(
            "={}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                config_digest.to_string()
            )
        ));
    let raw = match std::fs::read(&in_podman) {
        Ok(b) => b,
        Err(_) => match store {
            Some(s) if s.has_blob(&config_digest, None) => s.read_blob(&config_digest, None)?,
            _ => {
                return Err(Error::NotFound {
                    what: format!("the config {config_digest} of {name}"),
                    detail: "neither the repository's podmanStore nor the local store has it; publish with --podman, or pull the image into the store".into(),
                });
            }
        },
    };
    let actual = Digest::of_bytes(&raw);
    if actual != config_digest {
        return Err(Error::DigestMismatch {
            what: format!("config of {name}"),
            expected: config_digest.to_string(),
            actual: actual.to_string(),
        });
    }
    let config: ImageConfig = serde_json::from_slice(&raw).map_err(|e| {
        Error::bad_input(
            format!("config {config_digest}"),
            format!("not an image config: {e}"),
        )
    })?;
    Ok(Published {
        root: repo.abs(&flat),
        config_digest,
        config,
    })
}

/// Look a user or group name up in the tree's /etc/passwd or /etc/group.
fn lookup(root: &Path, file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(root.join("etc").join(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// `User` of the config as uid and gid: `uid`, `name`, `uid:gid`,
/// `name:group`, names looked up in the tree.
fn user(root: &Path, spec: &str) -> Result<(u32, u32)> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let bad = |what: &str| {
        Error::bad_input(
            format!("User {spec:?} of the image config"),
            format!(
                "{what} is not a number and not in the tree's /etc/{}",
                if what.starts_with("group") {
                    "group"
                } else {
                    "passwd"
                }
            ),
        )
    };
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => lookup(root, "passwd", u).ok_or_else(|| bad(&format!("user {u:?}")))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(root, "group", g).ok_or_else(|| bad(&format!("group {g:?}")))?,
        },
        // The user's primary group, as engines do.
        None => std::fs::read_to_string(root.join("etc/passwd"))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 3 && (f[0] == u || f[2] == uid.to_string()))
                        .then(|| f[3].parse().ok())
                        .flatten()
                })
            })
            .unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The runtime-spec document for `image`, its root at `root`.
pub fn spec(image: &Published, args: Option<&[String]>, rootless: bool) -> Result<Value> {
    let c = &image.config.config;
    let args: Vec<String> = match args {
        Some(a) if !a.is_empty() => c
            .entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(a.iter().cloned())
            .collect(),
        _ => c
            .entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(c.cmd.clone().unwrap_or_default())
            .collect(),
    };
    if args.is_empty() {
        return Err(Error::BadInput {
            input: format!("image {}", image.config_digest),
            place: String::new(),
            reason: "has no Entrypoint or Cmd, so the bundle would run nothing".into(),
            hint: Some("give the command after --: gridship cvmfs bundle NAME DIR -- CMD".into()),
        });
    }
    let mut env = c.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let (uid, gid) = user(&image.root, c.user.as_deref().unwrap_or(""))?;
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        if rootless {
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]})
        } else {
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]})
        },
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        if rootless {
            json!({"destination": "/sys", "type": "none", "source": "/sys",
                   "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
        } else {
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]})
        },
    ];
    if !rootless {
        mounts.push(
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        );
    }
    // The root is read-only (it is CVMFS): scratch space where programs expect it.
    mounts.push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777"]}),
    );
    let mut namespaces = vec![json!({"type": "pid"})];
    if !rootless {
        namespaces.push(json!({"type": "network"}));
    }
    namespaces.extend([
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ]);
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
        ],
    });
    if rootless {
        let (hu, hg) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        linux["namespaces"]
            .as_array_mut()
            .expect("array")
            .push(json!({"type": "user"}));
        linux["uidMappings"] = json!([{"containerID": uid, "hostID": hu, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": gid, "hostID": hg, "size": 1}]);
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": c.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": image.root, "readonly": true},
        "hostname": "gridship",
        "mounts": mounts,
        "linux": linux,
    }))
}

/// Write `DIR/config.json` (atomically) for `image`.
pub fn write(image: &Published, dir: &Path, args: Option<&[String]>) -> Result<PathBuf> {
    let rootless = !rustix::process::geteuid().is_root();
    let doc = spec(image, args, rootless)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io_path(dir, "creating", e))?;
    let path = dir.join("config.json");
    let mut data = serde_json::to_vec_pretty(&doc).expect("spec serializes");
    data.push(b'\n');
    write_atomic(&path, &data, 0o644)?;
    Ok(path)
}
