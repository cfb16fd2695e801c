//! Static checks: read the merged index (and a few small files' content),
//! need no GPU and unpack nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::Status;
use super::cuda::{self, Compat, Verdict};
use crate::Result;
use crate::image::Image;
use crate::index::{FsIndex, Kind, NodeId, display_path};
use crate::site::GpuQueue;

pub struct StaticCheck {
    pub name: &'static str,
    pub description: &'static str,
}

/// The registry of static checks a suite can name.
pub const REGISTRY: &[StaticCheck] = &[
    StaticCheck {
        name: "no-driver-libs",
        description: "no NVIDIA driver user-space libraries (nvliblist) in the image's library directories or LD_LIBRARY_PATH",
    },
    StaticCheck {
        name: "glibc-version",
        description: "the image's glibc is new enough for the host driver libraries --nv binds",
    },
    StaticCheck {
        name: "cuda-driver-compat",
        description: "the image's CUDA runtime against the driver of the site's GPU queues",
    },
];

pub fn lookup(name: &str) -> Option<&'static StaticCheck> {
    REGISTRY.iter().find(|c| c.name == name)
}

/// The library set of Apptainer's `etc/nvliblist.conf` (apptainer/apptainer,
/// the "put libs here" section; names without `.so`), which `--nv` binds
/// from the host. `true`: part of the NVIDIA driver, must not be in an
/// image. `false`: vendor-neutral libglvnd / ICD loader libraries that the
/// list also binds but that distributions ship in ordinary packages
/// (libgl1, libegl1, ocl-icd): harmless in an image, not reported.
pub const NVLIBLIST: &[(&str, bool)] = &[
    ("libcuda", true),
    ("libcudadebugger", true),
    ("libEGL_installertest", true),
    ("libEGL_nvidia", true),
    ("libEGL", false),
    ("libGLdispatch", false),
    ("libGLESv1_CM_nvidia", true),
    ("libGLESv1_CM", false),
    ("libGLESv2_nvidia", true),
    ("libGLESv2", false),
    ("libGL", false),
    ("libGLX_installertest", true),
    ("libGLX_nvidia", true),
    ("libglx", true),
    ("libGLX", false),
    ("libnvcuvid", true),
    ("libnvidia-allocator", true),
    ("libnvidia-api", true),
    ("libnvidia-cbl", true),
    ("libnvidia-cfg", true),
    ("libnvidia-compiler", true),
    ("libnvidia-eglcore", true),
    ("libnvidia-egl-wayland", true),
    ("libnvidia-encode", true),
    ("libnvidia-fatbinaryloader", true),
    ("libnvidia-fbc", true),
    ("libnvidia-glcore", true),
    ("libnvidia-glsi", true),
    ("libnvidia-glvkspirv", true),
    ("libnvidia-gpucomp", true),
    ("libnvidia-gtk2", true),
    ("libnvidia-gtk3", true),
    ("libnvidia-ifr", true),
    ("libnvidia-ml", true),
    ("libnvidia-ngx", true),
    ("libnvidia-nvvm", true),
    ("libnvidia-opencl", true),
    ("libnvidia-opticalflow", true),
    ("libnvidia-pkcs11", true),
    ("libnvidia-pkcs11-openssl3", true),
    ("libnvidia-ptxjitcompiler", true),
    ("libnvidia-rtcore", true),
    ("libnvidia-tls", true),
    ("libnvidia-wfb", true),
    ("libnvoptix", true),
    ("libOpenCL", false),
    ("libOpenGL", false),
    ("libvdpau_nvidia", true),
    ("nvidia_drv", true),
    ("tls_test_", true),
    // Tegra (Jetson) driver libraries.
    ("libnvrm_gpu", true),
    ("libnvrm_mem", true),
    ("libnvrm_host1x", true),
    ("libnvos", true),
    ("libnvdla_runtime", true),
];

/// Directories the dynamic loader searches by default (and the multiarch
/// ones of Debian/Ubuntu images); ld.so.conf and LD_LIBRARY_PATH are added.
pub const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/powerpc64le-linux-gnu",
    "/usr/lib/powerpc64le-linux-gnu",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// Oldest glibc the current NVIDIA Linux drivers' user-space libraries
/// support (the driver README's minimum software requirements list glibc
/// 2.17; the host's libraries are bound into the image by --nv and load
/// against the image's glibc, cf. apptainer/apptainer#2421).
pub const MIN_GLIBC: (u32, u32) = (2, 17);

#[derive(Debug, Clone, Serialize)]
pub struct LibDir {
    /// As configured (a default, an ld.so.conf line, an LD_LIBRARY_PATH entry).
    pub path: String,
    /// Where it came from.
    pub origin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriverLib {
    pub path: String,
    pub library: String,
    pub dir_origin: String,
    /// Under a CUDA `compat` directory: the forward-compatibility package.
    pub cuda_compat: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Found<T> {
    pub value: T,
    pub source: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageFacts {
    pub env: BTreeMap<String, String>,
    pub lib_dirs: Vec<LibDir>,
    pub driver_libs: Vec<DriverLib>,
    /// cuda-compat libraries present but not in any searched directory.
    pub compat_unwired: Vec<String>,
    pub glibc: Option<Found<(u32, u32)>>,
    pub musl: Option<String>,
    /// Every CUDA runtime version found, with where.
    pub cuda: Vec<Found<(u32, u32)>>,
}

impl ImageFacts {
    /// The highest CUDA runtime version in the image: what the driver must serve.
    pub fn cuda_version(&self) -> Option<(u32, u32)> {
        self.cuda.iter().map(|f| f.value).max()
    }
}

fn dir_key(index: &FsIndex, path: &str) -> Option<Vec<u8>> {
    let (key, id) = index.follow(path)?;
    index.node(id).kind.is_dir().then_some(key)
}

/// Names directly in the directory `key`, with their keys.
fn children(index: &FsIndex, key: &[u8]) -> Vec<(String, Vec<u8>)> {
    index
        .subtree(key)
        .into_iter()
        .filter_map(|k| {
            let rest = if key.is_empty() {
                &k[..]
            } else {
                k.get(key.len() + 1..)?
            };
            (!rest.contains(&b'/')).then(|| (String::from_utf8_lossy(rest).into_owned(), k.clone()))
        })
        .collect()
}

/// Which nvliblist library a file name is (`libcuda.so`, `libcuda.so.1`,
/// `libcuda.so.550.54.15`), driver-specific ones only.
pub fn driver_lib_name(file: &str) -> Option<&'static str> {
    NVLIBLIST
        .iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| *n)
        .find(|n| {
            file.strip_prefix(n)
                .and_then(|r| r.strip_prefix(".so"))
                .is_some_and(|r| r.is_empty() || r.starts_with('.'))
        })
}

/// Read the content of regular files (symlinks followed) by key.
fn read_files(
    index: &FsIndex,
    image: &Image,
    paths: &[String],
) -> Result<HashMap<String, Vec<u8>>> {
    let mut want: HashMap<NodeId, Vec<String>> = HashMap::new();
    for p in paths {
        if let Some((_, id)) = index.follow(p)
            && matches!(index.node(id).kind, Kind::File { .. })
        {
            want.entry(id).or_default().push(p.clone());
        }
    }
    let mut out = HashMap::new();
    if want.is_empty() {
        return Ok(out);
    }
    index.for_each_content_where(
        image,
        |id| want.contains_key(&id),
        |id, r| {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf)
                .map_err(|e| crate::Error::io("reading a file of the image", e))?;
            for p in &want[&id] {
                out.insert(p.clone(), buf.clone());
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let v = crate::site::parse_version(s)?;
    Some((v[0], *v.get(1)?))
}

/// "release version 2.36" (or "version 2.36") in libc.so.6's bytes.
pub fn glibc_version_in(content: &[u8]) -> Option<(u32, u32)> {
    let needle = b"GNU C Library";
    let start = content.windows(needle.len()).position(|w| w == needle)?;
    let tail = &content[start..content.len().min(start + 200)];
    let text = String::from_utf8_lossy(tail);
    let after = text.split("version ").nth(1)?;
    let v: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    parse_major_minor(v.trim_end_matches('.'))
}

fn libc_version_from_name(name: &str) -> Option<(u32, u32)> {
    parse_major_minor(name.strip_prefix("libc-")?.strip_suffix(".so")?)
}

/// Where a Python environment says which CUDA runtime it uses: the
/// dist-info directories [`cuda::cuda_of_dist_info`] reads, libcudart
/// files, and torch/version.py. Found by name in the index; the few files
/// whose content is needed are read with the other small files.
#[derive(Debug, Default)]
struct PipCuda {
    /// (dist-info path, what its name says, NVIDIA's runtime wheel).
    dists: Vec<(String, cuda::CudaHint, bool)>,
    /// libcudart.so.* regular files.
    cudart: Vec<String>,
    /// .../torch/version.py files.
    torch_version_py: Vec<String>,
}

/// "libcudart.so.13" → 13 (a soname with the major alone).
fn cudart_major_only(name: &str) -> Option<u32> {
    let v = name.strip_prefix("libcudart.so.")?;
    v.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| v.parse().ok())?
}

fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl PipCuda {
    fn scan(index: &FsIndex) -> PipCuda {
        let mut pip = PipCuda::default();
        for (key, _, node) in index.iter() {
            let name = String::from_utf8_lossy(key.rsplit(|&b| b == b'/').next().unwrap_or(key));
            match &node.kind {
                Kind::Dir => {
                    if let Some(hint) = cuda::cuda_of_dist_info(&name) {
                        let runtime = cuda::dist_info_parts(&name)
                            .is_some_and(|(n, _)| cuda::is_cuda_runtime_dist(&n));
                        pip.dists.push((display_path(key), hint, runtime));
                    }
                }
                Kind::File { .. } if name.starts_with("libcudart.so.") => {
                    pip.cudart.push(display_path(key));
                }
                Kind::File { .. } if key.ends_with(b"/torch/version.py") => {
                    pip.torch_version_py.push(display_path(key));
                }
                _ => {}
            }
        }
        pip
    }

    /// torch/version.py, and the RECORD of every CUDA runtime wheel when a
    /// libcudart.so.N (no minor) needs an owner.
    fn files_to_read(&self) -> Vec<String> {
        let mut files = self.torch_version_py.clone();
        if self
            .cudart
            .iter()
            .any(|p| cudart_major_only(p.rsplit('/').next().unwrap_or("")).is_some())
        {
            files.extend(
                self.dists
                    .iter()
                    .filter(|(_, _, runtime)| *runtime)
                    .map(|(d, _, _)| format!("{d}/RECORD")),
            );
        }
        files
    }

    /// The CUDA runtime of a libcudart.so.N: the runtime wheel whose RECORD
    /// lists it, else the one of the same major in the same site-packages,
    /// else the major alone.
    fn cudart_owner(
        &self,
        lib: &str,
        major: u32,
        content: &HashMap<String, Vec<u8>>,
    ) -> Found<(u32, u32)> {
        let here: Vec<(&str, (u32, u32), &str)> = self
            .dists
            .iter()
            .filter(|(d, _, runtime)| *runtime && lib.starts_with(&format!("{}/", parent_dir(d))))
            .map(|(d, h, _)| (d.as_str(), h.version(), &lib[parent_dir(d).len() + 1..]))
            .collect();
        let listed = here.iter().find(|(d, _, rel)| {
            content.get(&format!("{d}/RECORD")).is_some_and(|r| {
                String::from_utf8_lossy(r)
                    .lines()
                    .any(|l| l.split(',').next() == Some(*rel))
            })
        });
        if let Some((d, v, _)) = listed {
            return Found {
                value: *v,
                source: format!("{lib} (owned by {d}: its RECORD lists it)"),
            };
        }
        if let Some((d, v, _)) = here.iter().find(|(_, v, _)| v.0 == major) {
            return Found {
                value: *v,
                source: format!("{lib} ({d} in the same site-packages)"),
            };
        }
        Found {
            value: (major, 0),
            source: format!(
                "{lib} (CUDA {major}.x: no dist-info gives the minor; counted as {major}.0)"
            ),
        }
    }

    fn found(&self, content: &HashMap<String, Vec<u8>>) -> Vec<Found<(u32, u32)>> {
        let mut out = Vec::new();
        for (d, hint, _) in &self.dists {
            out.push(Found {
                value: hint.version(),
                source: match hint {
                    cuda::CudaHint::Exact(..) => d.clone(),
                    cuda::CudaHint::Major(m) => {
                        format!(
                            "{d} (CUDA {m}.x: the name gives the major alone; counted as {m}.0)"
                        )
                    }
                },
            });
        }
        for lib in &self.cudart {
            let name = lib.rsplit('/').next().unwrap_or("");
            if let Some(major) = cudart_major_only(name) {
                out.push(self.cudart_owner(lib, major, content));
            } else if let Some(v) = name
                .strip_prefix("libcudart.so.")
                .and_then(parse_major_minor)
            {
                out.push(Found {
                    value: v,
                    source: lib.clone(),
                });
            }
        }
        for p in &self.torch_version_py {
            if let Some((v, torch)) = content
                .get(p)
                .and_then(|b| cuda::torch_version_py(&String::from_utf8_lossy(b)))
            {
                out.push(Found {
                    value: v,
                    source: format!("{p} (torch {torch}, cuda '{}.{}')", v.0, v.1),
                });
            }
        }
        out
    }
}

/// Gather what the static checks look at.
pub fn gather(index: &FsIndex, image: &Image) -> Result<ImageFacts> {
    let mut facts = ImageFacts::default();
    for e in image.config.config.env.iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            facts.env.insert(k.to_string(), v.to_string());
        }
    }

    // Small files: ld.so.conf (+ .d) and CUDA version files.
    let mut small = vec!["/etc/ld.so.conf".to_string()];
    if let Some(k) = dir_key(index, "/etc/ld.so.conf.d") {
        let mut confs: Vec<String> = children(index, &k)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".conf"))
            .map(|(n, _)| format!("/etc/ld.so.conf.d/{n}"))
            .collect();
        confs.sort();
        small.extend(confs);
    }
    if let Some(k) = dir_key(index, "/usr/local") {
        for (n, _) in children(index, &k) {
            if n.starts_with("cuda") {
                small.push(format!("/usr/local/{n}/version.json"));
                small.push(format!("/usr/local/{n}/version.txt"));
            }
        }
    }
    let pip = PipCuda::scan(index);
    small.extend(pip.files_to_read());
    let content = read_files(index, image, &small)?;

    // Library directories, in the loader's order.
    let mut dirs: Vec<LibDir> = Vec::new();
    if let Some(llp) = facts.env.get("LD_LIBRARY_PATH") {
        for d in llp.split(':').filter(|d| d.starts_with('/')) {
            dirs.push(LibDir {
                path: d.to_string(),
                origin: "LD_LIBRARY_PATH of the image config".into(),
            });
        }
    }
    for conf in &small {
        if !conf.starts_with("/etc/ld.so.conf") {
            continue;
        }
        if let Some(text) = content.get(conf) {
            for line in String::from_utf8_lossy(text).lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() || line.starts_with("include ") || line.starts_with("hwcap ") {
                    continue;
                }
                for d in line
                    .split([' ', '\t', ':', ','])
                    .filter(|d| d.starts_with('/'))
                {
                    dirs.push(LibDir {
                        path: d.to_string(),
                        origin: conf.clone(),
                    });
                }
            }
        }
    }
    for d in DEFAULT_LIB_DIRS {
        dirs.push(LibDir {
            path: d.to_string(),
            origin: "default library directory".into(),
        });
    }

    let mut seen_dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut seen_hits: HashSet<Vec<u8>> = HashSet::new();
    for d in dirs {
        let Some(key) = dir_key(index, &d.path) else {
            continue;
        };
        if !seen_dirs.insert(key.clone()) {
            continue;
        }
        let shown_dir = display_path(&key);
        let compat_dir = shown_dir.contains("cuda") && shown_dir.ends_with("/compat");
        for (name, k) in children(index, &key) {
            if let Some(lib) = driver_lib_name(&name)
                && seen_hits.insert(k.clone())
            {
                facts.driver_libs.push(DriverLib {
                    path: display_path(&k),
                    library: lib.to_string(),
                    dir_origin: if d.path == shown_dir {
                        d.origin.clone()
                    } else {
                        format!("{} ({} in {})", shown_dir, d.path, d.origin)
                    },
                    cuda_compat: compat_dir,
                });
            }
            // glibc, from any directory the loader searches.
            if facts.glibc.is_none() {
                if let Some(v) = libc_version_from_name(&name) {
                    facts.glibc = Some(Found {
                        value: v,
                        source: format!("file name {}", display_path(&k)),
                    });
                } else if name.starts_with("ld-musl-") && facts.musl.is_none() {
                    facts.musl = Some(display_path(&k));
                }
            }
        }
        facts.lib_dirs.push(LibDir {
            path: shown_dir,
            origin: d.origin,
        });
    }

    // glibc from libc.so.6 (symlink target name, else the version string).
    if facts.glibc.is_none() {
        let candidates: Vec<String> = facts
            .lib_dirs
            .iter()
            .map(|d| format!("{}/libc.so.6", d.path))
            .filter(|p| index.lookup(p).is_some())
            .collect();
        for c in &candidates {
            if let Some((key, _)) = index.follow(c) {
                let shown = display_path(&key);
                if let Some(v) = libc_version_from_name(shown.rsplit('/').next().unwrap_or("")) {
                    facts.glibc = Some(Found {
                        value: v,
                        source: format!("{c} -> {shown}"),
                    });
                    break;
                }
            }
        }
        if facts.glibc.is_none()
            && let Some(first) = candidates.first()
        {
            let got = read_files(index, image, std::slice::from_ref(first))?;
            if let Some(v) = got.get(first).and_then(|b| glibc_version_in(b)) {
                facts.glibc = Some(Found {
                    value: v,
                    source: format!("the GNU C Library version string in {first}"),
                });
            }
        }
    }

    // CUDA runtime: CUDA_VERSION, version.json/.txt, libcudart file names,
    // Python packages (PipCuda).
    if let Some(v) = facts.env.get("CUDA_VERSION")
        && let Some(mm) = parse_major_minor(v)
    {
        facts.cuda.push(Found {
            value: mm,
            source: format!("CUDA_VERSION={v} in the image config"),
        });
    }
    for (path, bytes) in &content {
        if path.ends_with("/version.json") {
            let v: Option<String> = serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|j| j["cuda"]["version"].as_str().map(String::from));
            if let Some(v) = v
                && let Some(mm) = parse_major_minor(&v)
            {
                facts.cuda.push(Found {
                    value: mm,
                    source: format!("{path} (cuda {v})"),
                });
            }
        } else if path.ends_with("/version.txt") {
            let t = String::from_utf8_lossy(bytes);
            if let Some(v) = t.trim().strip_prefix("CUDA Version ")
                && let Some(mm) = parse_major_minor(v)
            {
                facts.cuda.push(Found {
                    value: mm,
                    source: format!("{path} ({})", t.trim()),
                });
            }
        }
    }
    facts.cuda.extend(pip.found(&content));

    // Highest first: the one the driver must serve leads the list.
    facts
        .cuda
        .sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.source.cmp(&b.source)));
    facts.cuda.dedup_by(|a, b| a.source == b.source);

    // cuda-compat libraries that no searched directory reaches.
    for (key, _, _) in index.iter() {
        let shown = display_path(key);
        if shown.starts_with("/usr/local/cuda")
            && shown.contains("/compat/libcuda.so")
            && !facts.driver_libs.iter().any(|h| h.path == shown)
        {
            facts.compat_unwired.push(shown);
        }
    }
    Ok(facts)
}

/// One static check's outcome.
pub fn run_check(
    name: &str,
    facts: &ImageFacts,
    queues: &[(String, String, GpuQueue)],
) -> (Status, String) {
    match name {
        "no-driver-libs" => no_driver_libs(facts),
        "glibc-version" => glibc(facts),
        "cuda-driver-compat" => cuda_compat(facts, queues),
        other => (Status::Fail, format!("no static check named '{other}'")),
    }
}

fn no_driver_libs(f: &ImageFacts) -> (Status, String) {
    let unwired = if f.compat_unwired.is_empty() {
        String::new()
    } else {
        format!(
            "; the CUDA forward-compatibility package is present but not on the library path (fine): {}",
            f.compat_unwired.join(", ")
        )
    };
    if f.driver_libs.is_empty() {
        return (
            Status::Pass,
            format!(
                "no NVIDIA driver libraries in {} library directories{unwired}",
                f.lib_dirs.len()
            ),
        );
    }
    let mut lines = Vec::new();
    for h in &f.driver_libs {
        if h.cuda_compat {
            lines.push(format!(
                "{} ({}, via {}): the CUDA forward-compatibility package (cuda-compat); wired into the library path it shadows the host driver that --nv binds, and fails unless the host driver is older than it and the GPU is a data-center one",
                h.path, h.library, h.dir_origin
            ));
        } else {
            lines.push(format!("{} ({}, via {})", h.path, h.library, h.dir_origin));
        }
    }
    (
        Status::Fail,
        format!(
            "{} NVIDIA driver librar{} in the image: {}. Apptainer --nv binds the host's driver libraries into /.singularity.d/libs, but the image's own library directories and LD_LIBRARY_PATH come first (Apptainer >= 1.5), so these copies shadow them: driver/library version mismatch. Remove them from the image; they come with the host driver{unwired}",
            f.driver_libs.len(),
            if f.driver_libs.len() == 1 { "y" } else { "ies" },
            lines.join("; ")
        ),
    )
}

fn glibc(f: &ImageFacts) -> (Status, String) {
    let (maj, min) = MIN_GLIBC;
    match (&f.glibc, &f.musl) {
        (Some(g), _) => {
            let (a, b) = g.value;
            if (a, b) >= MIN_GLIBC {
                (
                    Status::Pass,
                    format!("glibc {a}.{b} (from {}) >= {maj}.{min}", g.source),
                )
            } else {
                (
                    Status::Fail,
                    format!(
                        "glibc {a}.{b} (from {}) is older than {maj}.{min}, the oldest the NVIDIA driver libraries bound by --nv load with",
                        g.source
                    ),
                )
            }
        }
        (None, Some(m)) => (
            Status::Fail,
            format!("the image uses musl ({m}), not glibc: NVIDIA's driver libraries need glibc"),
        ),
        (None, None) => (
            Status::Skip,
            "no libc.so.6 in the library directories: cannot tell the glibc version".into(),
        ),
    }
}

fn cuda_compat(f: &ImageFacts, queues: &[(String, String, GpuQueue)]) -> (Status, String) {
    let Some((maj, min)) = f.cuda_version() else {
        return (
            Status::Skip,
            "no CUDA runtime found in the image (CUDA_VERSION, /usr/local/cuda*/version.json, libcudart.so.*, the dist-info of nvidia-cuda-runtime, cuda-toolkit, torch, cupy, jax, and torch/version.py)".into(),
        );
    };
    let found = match &f.cuda[..] {
        [one] => format!("CUDA {maj}.{min} (from {})", one.source),
        all => {
            let each: Vec<String> = all
                .iter()
                .map(|s| format!("{}.{} from {}", s.value.0, s.value.1, s.source))
                .collect();
            format!(
                "CUDA {maj}.{min}, the highest of {} found: {}",
                all.len(),
                each.join(", ")
            )
        }
    };
    if queues.is_empty() {
        let need = cuda::TOOLKIT_DRIVER
            .iter()
            .find(|(v, _)| *v == (maj, min))
            .map_or(String::new(), |(_, d)| {
                format!("; it needs driver >= {d} for full support")
            });
        return (
            Status::Skip,
            format!(
                "{found}{need}; give --site (and --queue) to check it against a site's GPU queue driver"
            ),
        );
    }
    let mut lines = Vec::new();
    let mut worst = Verdict::Compatible;
    let mut judged = 0;
    for (site, qn, q) in queues {
        let c: Option<Compat> = match (&q.driver_version, &q.cuda_driver_version) {
            (Some(d), _) => Some(cuda::verdict_for_driver((maj, min), d)),
            (None, Some(cv)) => Some(cuda::verdict_for_driver_cuda((maj, min), cv)),
            (None, None) => None,
        };
        match c {
            Some(c) => {
                judged += 1;
                let rank = |v: Verdict| match v {
                    Verdict::Compatible => 0,
                    Verdict::CompatibleWithMinorVersionCompatibility => 1,
                    Verdict::Unknown => 2,
                    Verdict::Incompatible => 3,
                };
                if rank(c.verdict) > rank(worst) {
                    worst = c.verdict;
                }
                lines.push(format!("{site}/{qn}: {}: {}", c.verdict.name(), c.why));
            }
            None => lines.push(format!(
                "{site}/{qn}: site.yaml gives no driver_version or cuda_driver_version"
            )),
        }
    }
    let status = if judged == 0 {
        Status::Skip
    } else if worst == Verdict::Incompatible {
        Status::Fail
    } else {
        Status::Pass
    };
    (status, format!("{found}; {}", lines.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_driver_lib_names() {
        assert_eq!(driver_lib_name("libcuda.so.1"), Some("libcuda"));
        assert_eq!(driver_lib_name("libcuda.so"), Some("libcuda"));
        assert_eq!(driver_lib_name("libcuda.so.550.54.15"), Some("libcuda"));
        assert_eq!(driver_lib_name("libnvidia-ml.so.1"), Some("libnvidia-ml"));
        assert_eq!(driver_lib_name("libcudart.so.12"), None);
        assert_eq!(
            driver_lib_name("libcudadebugger.so.1"),
            Some("libcudadebugger")
        );
        // glvnd, shipped by distributions: not reported.
        assert_eq!(driver_lib_name("libGL.so.1"), None);
        assert_eq!(driver_lib_name("libEGL.so.1"), None);
        assert_eq!(driver_lib_name("libGLX_nvidia.so.0"), Some("libGLX_nvidia"));
    }

    #[test]
    fn smoke_glibc_version_string() {
        let b = b"\0\0GNU C Library (Debian GLIBC 2.36-9+deb12u7) stable release version 2.36.\nCopyright";
        assert_eq!(glibc_version_in(b), Some((2, 36)));
        assert_eq!(libc_version_from_name("libc-2.31.so"), Some((2, 31)));
        assert_eq!(libc_version_from_name("libc.so.6"), None);
        assert_eq!(
            crate::index::normalize("/usr/lib/../lib64/./x"),
            "/usr/lib64/x"
        );
    }
}
