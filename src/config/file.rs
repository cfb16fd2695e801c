//! `config.yaml`: defaults for the options users type every day.
//!
//! Read from `$XDG_CONFIG_HOME/gridship/config.yaml`, then
//! `/etc/gridship/config.yaml`; per key, the first file that sets it wins,
//! and an option on the command line always wins over both.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::search::{system_config_dir, user_config_dir};
use crate::error::{Error, Result};

const HINT: &str = "keys: site, queue, push, ce, auth (auto|x509|token), cvmfs: {repo, backend (dir|cvmfs-server|ingest), root}, serve: {...}";

/// One file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Default `--site`.
    site: Option<String>,
    /// Default `--queue`.
    queue: Option<String>,
    /// Push prefix: REG/PREFIX, images go to REG/PREFIX/NAME:TAG.
    push: Option<String>,
    /// Default `--ce`.
    ce: Option<String>,
    /// Default `--auth`.
    auth: Option<String>,
    cvmfs: Option<CvmfsSection>,
    /// `gridship serve`'s section, read by serve::config.
    #[allow(dead_code)]
    serve: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CvmfsSection {
    repo: Option<String>,
    backend: Option<String>,
    root: Option<PathBuf>,
}

/// Where and how a CVMFS repository is written (`--backend`,
/// `cvmfs.backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// A plain directory (tests, staging, a publisher's own sync).
    Dir,
    /// `cvmfs_server transaction` / write under the mount / `publish`.
    CvmfsServer,
    /// `cvmfs_server ingest` of tar streams; no FUSE mount needed to write.
    Ingest,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dir" => Ok(BackendKind::Dir),
            "cvmfs-server" => Ok(BackendKind::CvmfsServer),
            "ingest" => Ok(BackendKind::Ingest),
            _ => Err("dir, cvmfs-server or ingest".into()),
        }
    }
}

/// A value and the file it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Setting<T> {
    pub value: T,
    pub from: PathBuf,
}

/// The effective defaults of every config file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Defaults {
    pub site: Option<Setting<String>>,
    pub queue: Option<Setting<String>>,
    pub push: Option<Setting<String>>,
    pub ce: Option<Setting<String>>,
    pub auth: Option<Setting<String>>,
    pub cvmfs_repo: Option<Setting<String>>,
    pub cvmfs_backend: Option<Setting<String>>,
    pub cvmfs_root: Option<Setting<PathBuf>>,
    /// The files looked at, in order, and whether each exists.
    #[serde(skip)]
    pub searched: Vec<(PathBuf, bool)>,
}

impl Defaults {
    /// `--backend`/`--cvmfs-backend`, else cvmfs.backend, else dir.
    pub fn cvmfs_backend(&self, given: Option<&BackendKind>) -> Result<BackendKind> {
        match (given, &self.cvmfs_backend) {
            (Some(b), _) => Ok(b.clone()),
            (None, Some(s)) => s
                .value
                .parse()
                .map_err(|e: String| bad(&s.from, "cvmfs.backend: ", e)),
            (None, None) => Ok(BackendKind::Dir),
        }
    }

    /// `--root`/`--cvmfs-root`, else cvmfs.root.
    pub fn cvmfs_root(&self, given: Option<&Path>) -> Option<PathBuf> {
        given
            .map(Path::to_path_buf)
            .or_else(|| self.cvmfs_root.as_ref().map(|s| s.value.clone()))
    }
}

/// The config files, in order of precedence.
pub fn config_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = user_config_dir() {
        v.push(d.join("config.yaml"));
    }
    v.push(system_config_dir().join("config.yaml"));
    v
}

fn first<T: Clone>(slot: &mut Option<Setting<T>>, value: Option<T>, from: &Path) {
    if slot.is_none()
        && let Some(value) = value
    {
        *slot = Some(Setting {
            value,
            from: from.to_path_buf(),
        });
    }
}

impl Defaults {
    /// Read the config files of this user and machine.
    pub fn load() -> Result<Defaults> {
        Defaults::load_from(&config_files())
    }

    /// Read `files` in order; earlier files win per key.
    pub fn load_from(files: &[PathBuf]) -> Result<Defaults> {
        let mut d = Defaults::default();
        for path in files {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    d.searched.push((path.clone(), false));
                    continue;
                }
                Err(e) => return Err(Error::io_path(path, "reading config file", e)),
            };
            d.searched.push((path.clone(), true));
            let f = parse(path, &text)?;
            first(&mut d.site, f.site, path);
            first(&mut d.queue, f.queue, path);
            first(&mut d.push, f.push, path);
            first(&mut d.ce, f.ce, path);
            first(&mut d.auth, f.auth, path);
            let c = f.cvmfs.unwrap_or_default();
            first(&mut d.cvmfs_repo, c.repo, path);
            first(&mut d.cvmfs_backend, c.backend, path);
            first(&mut d.cvmfs_root, c.root, path);
        }
        Ok(d)
    }
}

fn bad(path: &Path, place: &str, reason: String) -> Error {
    Error::BadInput {
        input: path.display().to_string(),
        place: place.into(),
        reason,
        hint: Some(HINT.into()),
    }
}

fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    let f: ConfigFile = serde_saphyr::from_str(text).map_err(|e| bad(path, "", e.to_string()))?;
    if let Some(a) = &f.auth
        && !["auto", "x509", "token"].contains(&a.as_str())
    {
        return Err(bad(
            path,
            "auth: ",
            format!("'{a}' is not auto, x509 or token"),
        ));
    }
    if let Some(b) = f.cvmfs.as_ref().and_then(|c| c.backend.as_ref())
        && b.parse::<BackendKind>().is_err()
    {
        return Err(bad(
            path,
            "cvmfs.backend: ",
            format!("'{b}' is not dir, cvmfs-server or ingest"),
        ));
    }
    if let Some(r) = f.cvmfs.as_ref().and_then(|c| c.root.as_ref())
        && !r.is_absolute()
    {
        return Err(bad(
            path,
            "cvmfs.root: ",
            format!("'{}' is not an absolute path", r.display()),
        ));
    }
    for (key, v) in [("site", &f.site), ("queue", &f.queue)] {
        if let Some(v) = v
            && (v.is_empty() || v.contains('/') || v.chars().any(char::is_whitespace))
        {
            return Err(bad(
                path,
                &format!("{key}: "),
                format!("'{v}' is not a {key} name"),
            ));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_files_win_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.yaml");
        let system = dir.path().join("system.yaml");
        std::fs::write(&user, "site: glasgow\ncvmfs:\n  repo: user.example.org\n").unwrap();
        std::fs::write(
            &system,
            "site: bonn\nqueue: gpu\ncvmfs:\n  repo: sys.example.org\n  backend: cvmfs-server\n",
        )
        .unwrap();
        let d = Defaults::load_from(&[user.clone(), dir.path().join("none.yaml"), system.clone()])
            .unwrap();
        assert_eq!(d.site.as_ref().unwrap().value, "glasgow");
        assert_eq!(d.site.unwrap().from, user);
        assert_eq!(d.queue.unwrap().from, system);
        assert_eq!(d.cvmfs_repo.unwrap().value, "user.example.org");
        assert_eq!(d.cvmfs_backend.unwrap().value, "cvmfs-server");
        assert_eq!(
            d.searched.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
            vec![true, false, true]
        );
    }

    #[test]
    fn a_misspelt_key_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "site: glasgow\n\nqeue: gpu\n").unwrap();
        let e = Defaults::load_from(std::slice::from_ref(&f))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&f.display().to_string()), "{e}");
        assert!(e.contains("qeue") && e.contains("line 3"), "{e}");
        std::fs::write(&f, "cvmfs:\n  backend: nfs\n").unwrap();
        let e = Defaults::load_from(std::slice::from_ref(&f))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cvmfs.backend") && e.contains("nfs"), "{e}");
    }
}
