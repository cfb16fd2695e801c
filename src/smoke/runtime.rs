//! Runtime checks: run a command inside the image with a backend.
//!
//! - `chroot` (as root, for hosts with no container runtime): the image is
//!   unpacked into a temporary directory with the dir sink; `/proc`, `/sys`,
//!   `/dev/null|zero|random|urandom`, every `/dev/nvidia*`, the host's
//!   driver libraries (found like Apptainer's nvliblist: the host's
//!   `ldconfig -p`, names from [`super::statics::NVLIBLIST`]) and
//!   `nvidia-smi` are bind-mounted in (libraries on `/.singularity.d/libs`,
//!   prepended to LD_LIBRARY_PATH as `--nv` does); everything is unmounted
//!   when the runner is dropped, even after an error, and the tree is
//!   removed only when nothing is mounted below it any more.
//! - `apptainer`: `apptainer exec --nv DIR` on the same unpacked tree (`--nv`
//!   only when a GPU is visible). The program is `--apptainer PATH` /
//!   `GRIDSHIP_APPTAINER`, else `apptainer` on PATH.
//! - `docker`: the image is loaded into the Docker Engine (bollard) and each
//!   command runs in a new container with all GPUs requested from the
//!   engine's `nvidia` device driver (`--gpus all`), no network; the
//!   container and the loaded name are removed afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::encode::dir::{UnpackOptions, unpack};
use crate::image::Image;
use crate::index::FsIndex;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Docker,
    Apptainer,
    Chroot,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Docker => "docker",
            Backend::Apptainer => "apptainer",
            Backend::Chroot => "chroot",
        }
    }
}

fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}

/// The host's NVIDIA device nodes.
pub fn nvidia_devices() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Ok(what was seen) when a GPU is visible on the host, else the reason
/// (the text after "no GPU visible: ").
pub fn gpu_visible() -> std::result::Result<String, String> {
    let dev0 = Path::new("/dev/nvidia0").exists();
    let smi = on_path("nvidia-smi");
    match (dev0, smi) {
        (true, Some(s)) => Ok(format!("/dev/nvidia0 and {}", s.display())),
        (true, None) => Ok("/dev/nvidia0 (no nvidia-smi on PATH)".into()),
        (false, Some(s)) => Ok(format!("{} (no /dev/nvidia0)", s.display())),
        (false, None) => Err("no /dev/nvidia0 and no nvidia-smi on the host's PATH".into()),
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Output {
    /// None: killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Host driver libraries as `ldconfig -p` lists them (path per nvliblist name).
pub fn host_driver_libs() -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldconfig").arg("-p").output() else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (left, path) = l.trim().split_once(" => ")?;
            let name = left.split_whitespace().next()?;
            // The host's own ELF machine only, as nvliblist resolves them.
            if cfg!(target_arch = "x86_64") && !left.contains("x86-64") {
                return None;
            }
            super::statics::driver_lib_name(name)?;
            Some(PathBuf::from(path))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The apptainer program: the one given, else `apptainer` on PATH.
pub fn apptainer_program(given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => Err(Error::BadInput {
            input: p.display().to_string(),
            place: String::new(),
            reason: "no such program (given by --apptainer or GRIDSHIP_APPTAINER)".into(),
            hint: Some("name the apptainer executable, e.g. /usr/bin/apptainer".into()),
        }),
        None => on_path("apptainer").ok_or_else(|| {
            Error::Other(
                "apptainer is not on PATH: install Apptainer, name it with --apptainer PATH (or GRIDSHIP_APPTAINER), or use --backend chroot (as root)"
                    .into(),
            )
        }),
    }
}

/// An unpacked image with the mounts a backend needs.
pub struct Runner {
    backend: Backend,
    /// The apptainer program (apptainer backend).
    apptainer: PathBuf,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    mounts: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// The engine's name for the image (docker backend).
    engine_tag: Option<String>,
}

fn run_tool(prog: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {prog}"), e))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "{prog} {}: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Runner {
    /// Unpack the image and set the backend up; `apptainer` is the program
    /// for the apptainer backend (default: on PATH).
    pub fn prepare(
        backend: Backend,
        apptainer: Option<&Path>,
        index: &FsIndex,
        image: &Image,
    ) -> Result<Runner> {
        let apptainer = match backend {
            Backend::Apptainer => apptainer_program(apptainer)?,
            _ => PathBuf::new(),
        };
        match backend {
            Backend::Chroot if !rustix::process::geteuid().is_root() => {
                return Err(Error::Other(
                    "the chroot backend needs root (it bind-mounts devices and driver libraries); run as root or use --backend apptainer".into(),
                ));
            }
            _ => {}
        }
        if backend == Backend::Docker {
            return Self::prepare_docker(image);
        }
        let dir = tempfile::Builder::new()
            .prefix("gridship-smoke-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory for the smoke test", e))?;
        let root = dir.path().join("rootfs");
        unpack(index, image, &root, &UnpackOptions::for_current_user())?;
        let mut env: Vec<(String, String)> = image
            .config
            .config
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        let mut r = Runner {
            backend,
            apptainer,
            dir: Some(dir),
            root,
            mounts: Vec::new(),
            env,
            engine_tag: None,
        };
        if backend == Backend::Chroot {
            r.mount_for_chroot()?;
        }
        Ok(r)
    }

    /// Load the image into the engine under a name of its own.
    fn prepare_docker(image: &Image) -> Result<Runner> {
        let tag = format!(
            "gridship-smoke/{}:{}",
            &image.manifest.config.digest.hex()[..12],
            std::process::id()
        );
        let tmp = tempfile::Builder::new()
            .prefix("gridship-smoke-")
            .suffix(".tar")
            .tempfile()
            .map_err(|e| Error::io("creating a temporary docker-archive", e))?;
        crate::archive::write_docker_archive(image, tmp.path(), Some(&tag))?;
        crate::engine::load(tmp.path())?;
        Ok(Runner {
            backend: Backend::Docker,
            apptainer: PathBuf::new(),
            dir: None,
            root: PathBuf::new(),
            mounts: Vec::new(),
            // The engine applies the image's own Env.
            env: Vec::new(),
            engine_tag: Some(tag),
        })
    }

    fn target(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// Bind `host` onto `inside` (created as an empty file or directory).
    fn bind(&mut self, host: &Path, inside: &Path, read_only: bool) -> Result<()> {
        let t = self.target(inside);
        // Never follow a symlink of the image out of the tree.
        if std::fs::symlink_metadata(&t).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&t).map_err(|e| Error::io_path(&t, "removing", e))?;
        }
        if let Some(p) = t.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io_path(p, "creating", e))?;
        }
        if host.is_dir() {
            std::fs::create_dir_all(&t).map_err(|e| Error::io_path(&t, "creating", e))?;
        } else if !t.exists() {
            std::fs::File::create(&t).map_err(|e| Error::io_path(&t, "creating", e))?;
        }
        run_tool(
            "mount",
            &["--bind".as_ref(), host.as_os_str(), t.as_os_str()],
        )?;
        self.mounts.push(t.clone());
        if read_only {
            run_tool(
                "mount",
                &["-o".as_ref(), "remount,bind,ro".as_ref(), t.as_os_str()],
            )?;
        }
        Ok(())
    }

    fn mount_for_chroot(&mut self) -> Result<()> {
        let proc_t = self.target(Path::new("/proc"));
        std::fs::create_dir_all(&proc_t).map_err(|e| Error::io_path(&proc_t, "creating", e))?;
        run_tool(
            "mount",
            &[
                "-t".as_ref(),
                "proc".as_ref(),
                "proc".as_ref(),
                proc_t.as_os_str(),
            ],
        )?;
        self.mounts.push(proc_t);
        self.bind(Path::new("/sys"), Path::new("/sys"), true)?;
        for d in ["null", "zero", "random", "urandom"] {
            let p = Path::new("/dev").join(d);
            self.bind(&p, &p, false)?;
        }
        for d in nvidia_devices() {
            if d.is_dir() {
                continue; // /dev/nvidia-caps: its nodes are bound one by one below
            }
            self.bind(&d.clone(), &d, false)?;
        }
        let libs = host_driver_libs();
        for l in &libs {
            let name = l.file_name().unwrap_or_default();
            let inside = Path::new("/.singularity.d/libs").join(name);
            self.bind(l, &inside, true)?;
        }
        if let Some(smi) = on_path("nvidia-smi") {
            self.bind(&smi, Path::new("/usr/bin/nvidia-smi"), true)?;
        }
        let llp = self
            .env
            .iter()
            .find(|(k, _)| k == "LD_LIBRARY_PATH")
            .map(|(_, v)| v.clone());
        self.env.retain(|(k, _)| k != "LD_LIBRARY_PATH");
        self.env.push((
            "LD_LIBRARY_PATH".into(),
            match llp {
                Some(v) if !v.is_empty() => format!("/.singularity.d/libs:{v}"),
                _ => "/.singularity.d/libs".into(),
            },
        ));
        Ok(())
    }

    /// Run `argv` inside the image with a time limit.
    pub fn run(&self, argv: &[String], timeout: Duration) -> Result<Output> {
        let secs = timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &secs]);
        match self.backend {
            Backend::Chroot => {
                cmd.arg("chroot")
                    .arg(&self.root)
                    .arg("/usr/bin/env")
                    .arg("-i");
                for (k, v) in &self.env {
                    cmd.arg(format!("{k}={v}"));
                }
                cmd.args(argv);
            }
            Backend::Apptainer => {
                cmd.arg(&self.apptainer).arg("exec");
                if gpu_visible().is_ok() {
                    cmd.arg("--nv");
                }
                cmd.arg("--cleanenv");
                for (k, v) in &self.env {
                    cmd.arg("--env").arg(format!("{k}={v}"));
                }
                cmd.arg(&self.root).args(argv);
            }
            Backend::Docker => {
                let tag = self.engine_tag.as_deref().unwrap_or_default();
                let r = crate::engine::run_container(
                    tag,
                    argv,
                    &self.env,
                    gpu_visible().is_ok(),
                    timeout,
                )?;
                return Ok(Output {
                    code: r.code.map(|c| c as i32),
                    stdout: r.stdout,
                    stderr: r.stderr,
                    timed_out: r.timed_out,
                });
            }
        }
        let out = cmd
            .output()
            .map_err(|e| Error::io("running the smoke-test command", e))?;
        let code = out.status.code();
        Ok(Output {
            timed_out: matches!(code, Some(124) | Some(137)),
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Unmount everything, then remove the tree if nothing is left mounted
    /// below it (removing through a bind mount would delete host files).
    pub fn cleanup(&mut self) -> Result<()> {
        if let Some(tag) = self.engine_tag.take() {
            crate::engine::remove_image(&tag)?;
        }
        if self.dir.is_none() && self.mounts.is_empty() {
            return Ok(());
        }
        let mut failed = Vec::new();
        while let Some(m) = self.mounts.pop() {
            if let Err(e) = run_tool("umount", &[m.as_os_str()]) {
                tracing::warn!("{e}; trying a lazy unmount");
                if let Err(e) = run_tool("umount", &["-l".as_ref(), m.as_os_str()]) {
                    failed.push(e.to_string());
                }
            }
        }
        let root = self.root.to_string_lossy().into_owned();
        let still = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|p| p.starts_with(&root))
            });
        if failed.is_empty() && !still {
            if let Some(d) = self.dir.take() {
                d.close()
                    .map_err(|e| Error::io("removing the smoke-test tree", e))?;
            }
            Ok(())
        } else {
            // Keep the tree: it still has host paths mounted in it.
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                failed.push(format!(
                    "left {} in place because something is still mounted below it",
                    kept.display()
                ));
            }
            Err(Error::Other(failed.join("; ")))
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if (!self.mounts.is_empty() || self.dir.is_some() || self.engine_tag.is_some())
            && let Err(e) = self.cleanup()
        {
            tracing::error!("smoke-test cleanup: {e}");
        }
    }
}
