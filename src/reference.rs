//! Image references, spelled like skopeo and apptainer spell them:
//! `docker://REG/REPO:TAG[@DIGEST]`, `docker-daemon:NAME:TAG`, `oci:DIR[:TAG]`,
//! `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:NAME:TAG]`, and
//! `store:NAME` for an image kept in gridship's local store.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::{Error, Result};

pub const DOCKER_HUB: &str = "docker.io";

/// One example per transport, shown when a reference does not parse.
const EXAMPLES: &str = "docker://registry.example.org/group/image:1.0, \
docker-daemon:group/image:1.0, oci:/path/to/layout:1.0, oci-archive:image.tar, \
docker-archive:saved.tar, store:NAME, container:NAME";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// Host[:port] of the registry.
    pub registry: String,
    /// Repository path, e.g. `group/image`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// The tag or digest the registry is asked for (`latest` when neither).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    pub fn with_tag(&self, tag: &str) -> RegistryRef {
        RegistryRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Registry(RegistryRef),
    /// An image in a Docker Engine, by `NAME:TAG` or image ID.
    DockerDaemon(String),
    Oci {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        file: PathBuf,
        /// `NAME:TAG` inside the archive (source) or to record (destination).
        name: Option<String>,
    },
    Store(String),
    /// A running or stopped container in the Docker Engine, by name or ID
    /// (a source only: committed, then read like `docker-daemon:`).
    Container(String),
}

impl ImageRef {
    pub fn transport(&self) -> &'static str {
        match self {
            ImageRef::Registry(_) => "docker",
            ImageRef::DockerDaemon(_) => "docker-daemon",
            ImageRef::Oci { .. } => "oci",
            ImageRef::OciArchive { .. } => "oci-archive",
            ImageRef::DockerArchive { .. } => "docker-archive",
            ImageRef::Store(_) => "store",
            ImageRef::Container(_) => "container",
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "docker://{r}"),
            ImageRef::DockerDaemon(n) => write!(f, "docker-daemon:{n}"),
            ImageRef::Oci { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                tag.iter().try_for_each(|t| write!(f, ":{t}"))
            }
            ImageRef::OciArchive { file, tag } => {
                write!(f, "oci-archive:{}", file.display())?;
                tag.iter().try_for_each(|t| write!(f, ":{t}"))
            }
            ImageRef::DockerArchive { file, name } => {
                write!(f, "docker-archive:{}", file.display())?;
                name.iter().try_for_each(|n| write!(f, ":{n}"))
            }
            ImageRef::Store(n) => write!(f, "store:{n}"),
            ImageRef::Container(n) => write!(f, "container:{n}"),
        }
    }
}

fn bad(input: &str, reason: impl Into<String>, example: &str) -> Error {
    Error::BadInput {
        input: input.to_string(),
        place: "image reference: ".into(),
        reason: reason.into(),
        hint: Some(format!("write it like {example}")),
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        if input.is_empty() {
            return Err(bad(input, "empty image reference", EXAMPLES));
        }
        if let Some(rest) = input.strip_prefix("docker://") {
            return parse_registry(rest)
                .map(ImageRef::Registry)
                .map_err(|reason| {
                    bad(
                        input,
                        reason,
                        "docker://registry.example.org/group/image:1.0 or docker://127.0.0.1:5000/image@sha256:<64 hex>",
                    )
                });
        }
        let Some((transport, rest)) = input.split_once(':') else {
            return Err(bad(input, "no transport: say where the image is", EXAMPLES));
        };
        match transport {
            "docker" => Err(bad(
                input,
                "the registry transport is written docker:// (two slashes)",
                "docker://registry.example.org/group/image:1.0",
            )),
            "docker-daemon" => parse_daemon(rest).map(ImageRef::DockerDaemon).map_err(|r| {
                bad(
                    input,
                    r,
                    "docker-daemon:group/image:1.0 or docker-daemon:sha256:<image id>",
                )
            }),
            "oci" => {
                let (dir, tag) =
                    split_path_tag(rest).map_err(|r| bad(input, r, "oci:/path/to/layout:1.0"))?;
                Ok(ImageRef::Oci { dir, tag })
            }
            "oci-archive" => {
                let (file, tag) = split_path_tag(rest)
                    .map_err(|r| bad(input, r, "oci-archive:/path/image.tar:1.0"))?;
                Ok(ImageRef::OciArchive { file, tag })
            }
            "docker-archive" => {
                let example = "docker-archive:/path/saved.tar or docker-archive:/path/saved.tar:group/image:1.0";
                let (file, name) = match rest.split_once(':') {
                    Some((f, n)) => {
                        let name = parse_daemon(n).map_err(|r| bad(input, r, example))?;
                        (f, Some(name))
                    }
                    None => (rest, None),
                };
                if file.is_empty() {
                    return Err(bad(input, "no archive file given", example));
                }
                Ok(ImageRef::DockerArchive {
                    file: PathBuf::from(file),
                    name,
                })
            }
            "store" => {
                if rest.is_empty() {
                    return Err(bad(input, "no image name given", "store:NAME"));
                }
                Ok(ImageRef::Store(rest.to_string()))
            }
            "container" => {
                // Engine container names: [a-zA-Z0-9][a-zA-Z0-9_.-]*; IDs are hex.
                let ok = rest
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !ok {
                    return Err(bad(
                        input,
                        "not a container name or ID",
                        "container:my-session or container:3f2a9c1b7e4d",
                    ));
                }
                Ok(ImageRef::Container(rest.to_string()))
            }
            other => Err(bad(input, format!("unknown transport {other:?}"), EXAMPLES)),
        }
    }
}

/// `DIR[:TAG]`: the tag is what follows the last colon when it holds no `/`.
fn split_path_tag(rest: &str) -> std::result::Result<(PathBuf, Option<String>), String> {
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t.to_string())),
        _ => (rest, None),
    };
    if path.is_empty() {
        return Err("no path given".into());
    }
    if let Some(t) = &tag {
        check_tag(t)?;
    }
    Ok((PathBuf::from(path), tag))
}

fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: up to 128 of [A-Za-z0-9_.-], not starting with . or -"
        ))
    }
}

fn check_repository(repo: &str) -> std::result::Result<(), String> {
    if repo.is_empty() {
        return Err("no repository given".into());
    }
    for comp in repo.split('/') {
        let valid = !comp.is_empty()
            && comp
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && comp.as_bytes()[0].is_ascii_alphanumeric()
            && comp.as_bytes()[comp.len() - 1].is_ascii_alphanumeric();
        if !valid {
            return Err(format!(
                "invalid repository component {comp:?}: lowercase letters, digits and . _ - between them"
            ));
        }
    }
    Ok(())
}

/// `NAME:TAG`, `NAME@DIGEST` or an image ID `sha256:<hex>` for the engine.
fn parse_daemon(rest: &str) -> std::result::Result<String, String> {
    if rest.starts_with("sha256:") {
        Digest::from_str(rest).map_err(|e| e.to_string())?;
        return Ok(rest.to_string());
    }
    let r = parse_registry(rest)?;
    if r.tag.is_none() && r.digest.is_none() {
        return Err("the engine needs NAME:TAG (or NAME@sha256:...); no tag given".into());
    }
    Ok(rest.to_string())
}

/// Docker's reference grammar: `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`.
pub fn parse_registry(s: &str) -> std::result::Result<RegistryRef, String> {
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(Digest::from_str(d).map_err(|e| e.to_string())?)),
        None => (s, None),
    };
    // The tag follows the last ':' after the last '/' (a port colon precedes a '/').
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => {
            let tag = &name[last_slash + i + 1..];
            check_tag(tag)?;
            (&name[..last_slash + i], Some(tag.to_string()))
        }
        None => (name, None),
    };
    if name.is_empty() {
        return Err("no image name given".into());
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => {
            let repo = if name.contains('/') {
                name.to_string()
            } else {
                format!("library/{name}")
            };
            (DOCKER_HUB.to_string(), repo)
        }
    };
    check_repository(&repository)?;
    if let Some((host, port)) = registry.rsplit_once(':')
        && (host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!("invalid registry address {registry:?}"));
    }
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn registry_refs() {
        let ImageRef::Registry(r) = p("docker://127.0.0.1:5000/fixtures/debian:1") else {
            panic!()
        };
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "fixtures/debian");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.reference(), "1");

        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let ImageRef::Registry(r) = p(&format!("docker://reg.example.org/a/b:t@{d}")) else {
            panic!()
        };
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.reference(), d);

        let ImageRef::Registry(r) = p("docker://busybox") else {
            panic!()
        };
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.reference(), "latest");

        let ImageRef::Registry(r) = p("docker://localhost/x") else {
            panic!()
        };
        assert_eq!(r.registry, "localhost");
        assert_eq!(
            p("docker://localhost:5000/x:y").to_string(),
            "docker://localhost:5000/x:y"
        );
    }

    #[test]
    fn file_refs() {
        assert_eq!(
            p("oci:/tmp/lay:1.0"),
            ImageRef::Oci {
                dir: "/tmp/lay".into(),
                tag: Some("1.0".into())
            }
        );
        assert_eq!(
            p("oci:/tmp/lay"),
            ImageRef::Oci {
                dir: "/tmp/lay".into(),
                tag: None
            }
        );
        assert_eq!(
            p("oci:rel/dir"),
            ImageRef::Oci {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            p("docker-archive:/x/s.tar:grp/img:2"),
            ImageRef::DockerArchive {
                file: "/x/s.tar".into(),
                name: Some("grp/img:2".into())
            }
        );
        assert_eq!(
            p("docker-daemon:grp/img:2"),
            ImageRef::DockerDaemon("grp/img:2".into())
        );
        assert_eq!(p("store:abc"), ImageRef::Store("abc".into()));
    }

    #[test]
    fn bad_refs_explain_and_show_example() {
        for (input, needle) in [
            ("debian:12", "unknown transport"),
            ("nothing", "no transport"),
            ("docker:reg/x:1", "docker://"),
            (
                "docker://Reg.example.org/UPPER:1",
                "invalid repository component",
            ),
            ("docker://reg.example.org/x:bad tag", "invalid tag"),
            ("docker://reg.example.org/x@md5:00", "not supported"),
            ("docker-daemon:img", "no tag given"),
            ("docker://reg:port/x", "invalid registry address"),
            ("oci:", "no path"),
        ] {
            let e = input.parse::<ImageRef>().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(needle), "{input}: {msg}");
            assert!(msg.contains(input), "{input}: names the input: {msg}");
            assert!(
                msg.contains("write it like"),
                "{input}: shows an example: {msg}"
            );
            assert_eq!(e.exit_code(), 2);
        }
    }
}
