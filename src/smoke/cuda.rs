//! CUDA runtime versions against NVIDIA driver versions.
//!
//! The rule (CUDA Compatibility, "Minor Version Compatibility"): a CUDA
//! runtime X.Y is fully supported by a driver at least as new as the one
//! of toolkit X.Y ([`TOOLKIT_DRIVER`]). From CUDA 11 on, an older driver
//! of the same major family still runs it with a limited feature set
//! (minor version compatibility) when it is at least that family's
//! minimum ([`MINOR_COMPAT_DRIVER`]); a driver of an older family cannot.
//! NVIDIA also gives a maximum per family (12.x: < 580, 11.x: < 525):
//! above it the driver belongs to a newer family and is newer than every
//! toolkit of the older one, so full support applies anyway.

use serde::Serialize;

use crate::site::parse_version;

// Checked against NVIDIA's tables (CUDA 13.1 edition of the release notes):
// https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html#cuda-driver
//   "CUDA Toolkit and Corresponding Driver Versions" (Linux x86_64 column,
//   the GA row of each major.minor; updates may need a slightly newer driver)
//   and "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor
//   Version Compatibility" (13.x >= 580; 12.x >= 525, < 580; 11.x >= 450,
//   < 525, with the footnote that 11.x minor version compatibility needs
//   450.80.02, the Tesla recommended driver after CUDA 11.0);
// https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html
//   (Table 1, the same minimum and maximum per family).
// There was no CUDA 12.7. CUDA 11.0's GA is 11.0.2 (450.51.05); 450.36.06
// is the 11.0.1 RC's driver.

/// CUDA major.minor → minimum Linux x86_64 driver for full support (the
/// toolkit's GA release).
pub const TOOLKIT_DRIVER: &[((u32, u32), &str)] = &[
    ((11, 0), "450.51.05"),
    ((11, 1), "455.23"),
    ((11, 2), "460.27.03"),
    ((11, 3), "465.19.01"),
    ((11, 4), "470.42.01"),
    ((11, 5), "495.29.05"),
    ((11, 6), "510.39.01"),
    ((11, 7), "515.43.04"),
    ((11, 8), "520.61.05"),
    ((12, 0), "525.60.13"),
    ((12, 1), "530.30.02"),
    ((12, 2), "535.54.03"),
    ((12, 3), "545.23.06"),
    ((12, 4), "550.54.14"),
    ((12, 5), "555.42.02"),
    ((12, 6), "560.28.03"),
    ((12, 8), "570.26"),
    ((12, 9), "575.51.03"),
    ((13, 0), "580.65.06"),
    ((13, 1), "590.44.01"),
];

/// CUDA major → minimum Linux driver for minor version compatibility (a
/// newer 11.x/12.x/13.x runtime on an older driver of the same family).
pub const MINOR_COMPAT_DRIVER: &[(u32, &str)] = &[(11, "450.80.02"), (12, "525"), (13, "580")];

/// Compare dotted versions numerically, missing parts as 0.
pub fn cmp_versions(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .cmp(&b.get(i).copied().unwrap_or(0))
        })
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

fn at_least(have: &str, need: &str) -> bool {
    match (parse_version(have), parse_version(need)) {
        (Some(h), Some(n)) => cmp_versions(&h, &n).is_ge(),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Compatible,
    CompatibleWithMinorVersionCompatibility,
    Incompatible,
    /// Nothing to decide on (unknown versions).
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Compatible => "compatible",
            Verdict::CompatibleWithMinorVersionCompatibility => {
                "compatible-with-minor-version-compatibility"
            }
            Verdict::Incompatible => "incompatible",
            Verdict::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Compat {
    pub verdict: Verdict,
    pub why: String,
}

const PTX_CAVEAT: &str = "minor version compatibility: kernels built as SASS for the GPU run, but PTX that needs JIT compilation by a newer driver fails (CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and APIs added after the driver's CUDA version return cudaErrorCallRequiresNewerDriver";

/// The verdict for a CUDA runtime `cuda` (major, minor) on a driver
/// `driver` ("550.54.15").
pub fn verdict_for_driver(cuda: (u32, u32), driver: &str) -> Compat {
    let (maj, min) = cuda;
    if parse_version(driver).is_none() {
        return Compat {
            verdict: Verdict::Unknown,
            why: format!("driver version '{driver}' is not a dotted number"),
        };
    }
    let full = TOOLKIT_DRIVER
        .iter()
        .find(|(v, _)| *v == cuda)
        .map(|(_, d)| *d);
    let minor = MINOR_COMPAT_DRIVER
        .iter()
        .find(|(m, _)| *m == maj)
        .map(|(_, d)| *d);
    if let Some(full) = full
        && at_least(driver, full)
    {
        return Compat {
            verdict: Verdict::Compatible,
            why: format!(
                "CUDA {maj}.{min} needs driver >= {full} for full support; the driver is {driver}"
            ),
        };
    }
    let full_text = full.map_or_else(
        || format!("CUDA {maj}.{min} is not in gridship's table of toolkit drivers"),
        |f| format!("CUDA {maj}.{min} needs driver >= {f} for full support"),
    );
    match minor {
        Some(m) if at_least(driver, m) => Compat {
            verdict: Verdict::CompatibleWithMinorVersionCompatibility,
            why: format!(
                "{full_text}; driver {driver} is >= {m}, the minimum for CUDA {maj}.x {PTX_CAVEAT}"
            ),
        },
        Some(m) => Compat {
            verdict: Verdict::Incompatible,
            why: format!(
                "{full_text}, and driver {driver} is below {m}, the minimum for CUDA {maj}.x minor version compatibility: the runtime fails with cudaErrorInsufficientDriver (\"CUDA driver version is insufficient for CUDA runtime version\")"
            ),
        },
        None => Compat {
            verdict: Verdict::Unknown,
            why: format!("{full_text}, and CUDA {maj}.x has no minor version compatibility row"),
        },
    }
}

/// The verdict when the site gives only the CUDA version the driver
/// supports (nvidia-smi's "CUDA Version", e.g. "12.4").
pub fn verdict_for_driver_cuda(cuda: (u32, u32), driver_cuda: &str) -> Compat {
    let (maj, min) = cuda;
    let Some(d) = parse_version(driver_cuda) else {
        return Compat {
            verdict: Verdict::Unknown,
            why: format!("driver CUDA version '{driver_cuda}' is not a dotted number"),
        };
    };
    let (dmaj, dmin) = (d[0], d.get(1).copied().unwrap_or(0));
    if (dmaj, dmin) >= (maj, min) {
        Compat {
            verdict: Verdict::Compatible,
            why: format!("the driver supports CUDA {dmaj}.{dmin}, the image needs {maj}.{min}"),
        }
    } else if dmaj == maj && maj >= 11 {
        Compat {
            verdict: Verdict::CompatibleWithMinorVersionCompatibility,
            why: format!(
                "the driver supports CUDA {dmaj}.{dmin}, older than the image's {maj}.{min} within the same major release: {PTX_CAVEAT}"
            ),
        }
    } else {
        Compat {
            verdict: Verdict::Incompatible,
            why: format!(
                "the driver supports CUDA {dmaj}.{dmin}; the image's CUDA {maj}.{min} runtime needs a driver of the {maj}.x family or newer"
            ),
        }
    }
}

/// A CUDA version as a package or a file gives it: major.minor, or the
/// major alone (cupy-cuda12x, jax-cuda12-plugin, libcudart.so.12 with no
/// dist-info beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaHint {
    Exact(u32, u32),
    Major(u32),
}

impl CudaHint {
    /// What the driver check compares: the major alone counts as M.0, the
    /// oldest runtime of the family (its driver floor is the family's).
    pub fn version(self) -> (u32, u32) {
        match self {
            CudaHint::Exact(a, b) => (a, b),
            CudaHint::Major(a) => (a, 0),
        }
    }
}

/// "132" → 13.2, "118" → 11.8, "92" → 9.2: CUDA's packed major+minor
/// (PyTorch's +cuXYZ, cupy-cudaXYZ, old jaxlib +cudaXYZ).
fn packed_cuda(digits: &str) -> Option<CudaHint> {
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(CudaHint::Exact(major.parse().ok()?, minor.parse().ok()?))
}

/// `NAME-VERSION.dist-info` → (NAME normalized: lower case, `_` for `-`
/// and `.`; VERSION).
pub fn dist_info_parts(dir: &str) -> Option<(String, &str)> {
    let (name, version) = dir.strip_suffix(".dist-info")?.split_once('-')?;
    let name = name.to_ascii_lowercase().replace(['-', '.'], "_");
    Some((name, version))
}

/// Whether a dist-info is NVIDIA's CUDA runtime wheel, of any naming:
/// `nvidia_cuda_runtime_cu11`, `_cu12`, and from CUDA 13 on no suffix.
pub fn is_cuda_runtime_dist(name: &str) -> bool {
    name.strip_prefix("nvidia_cuda_runtime")
        .is_some_and(|rest| rest.is_empty() || packed_major(rest.strip_prefix("_cu")).is_some())
}

fn packed_major(digits: Option<&str>) -> Option<u32> {
    digits
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// What a Python package's dist-info directory name says about the CUDA
/// runtime it needs:
/// - `nvidia_cuda_runtime[_cuNN]-X.Y.Z` and `cuda_toolkit-X.Y.Z` (the
///   meta-package PyTorch 2.9+ requires): X.Y;
/// - `torch-V+cuXYZ` (download.pytorch.org wheels): X.Y (PyPI's torch has
///   no local version here; torch/version.py says it, [`torch_version_py`]);
/// - `cupy_cudaNNx`: NN.x, `cupy_cudaXYZ`: X.Y;
/// - `jax_cudaNN_plugin`, `jax_cudaNN_pjrt`: NN.x; `jaxlib-V+cudaNN…`:
///   NN.x, `jaxlib-V+cudaXYZ`: X.Y.
///
/// Library wheels (nvidia_cublas 13.4.1.3, nvidia_cufft 12.x of CUDA 13)
/// carry their own versions, not CUDA's: not read.
pub fn cuda_of_dist_info(dir: &str) -> Option<CudaHint> {
    let (name, version) = dist_info_parts(dir)?;
    // The release part: "13.2.86" of "13.4.46rc1" or "2.5.1+cu121".
    let exact = |v: &str| {
        let release: String = v
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let v = parse_version(release.trim_end_matches('.'))?;
        Some(CudaHint::Exact(v[0], *v.get(1)?))
    };
    let local = version.split_once('+').map(|(_, l)| l);
    if is_cuda_runtime_dist(&name) || name == "cuda_toolkit" {
        return exact(version);
    }
    if name == "torch" {
        return packed_cuda(local?.strip_prefix("cu")?.split('.').next()?);
    }
    if let Some(rest) = name.strip_prefix("cupy_cuda") {
        return match rest.strip_suffix('x') {
            Some(major) => packed_major(Some(major)).map(CudaHint::Major),
            None => packed_cuda(rest),
        };
    }
    if let Some(rest) = name.strip_prefix("jax_cuda") {
        let major = rest
            .strip_suffix("_plugin")
            .or_else(|| rest.strip_suffix("_pjrt"));
        return packed_major(major).map(CudaHint::Major);
    }
    if name == "jaxlib" {
        let digits: String = local?
            .strip_prefix("cuda")?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        return if digits.len() <= 2 {
            packed_major(Some(&digits)).map(CudaHint::Major)
        } else {
            packed_cuda(&digits)
        };
    }
    None
}

/// torch/version.py as PyTorch writes it: `cuda: Optional[str] = '13.2'`
/// (older: `cuda = '11.8'`; CPU and ROCm builds: None) and `__version__ =
/// '2.15.0+cu132'`. Gives the CUDA major.minor and torch's version.
pub fn torch_version_py(text: &str) -> Option<((u32, u32), String)> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(key)?;
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix(':') {
                Some(typed) => typed.split_once('=')?.1,
                None => rest.strip_prefix('=')?,
            };
            let v = rest.trim();
            let q = v.chars().next().filter(|c| *c == '\'' || *c == '"')?;
            Some(v[1..].split(q).next()?.to_string())
        })
    };
    let cuda = value("cuda")?;
    let v = parse_version(&cuda)?;
    let torch = value("__version__").unwrap_or_else(|| "?".into());
    Some(((v[0], *v.get(1)?), torch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_cuda_verdicts() {
        assert_eq!(
            verdict_for_driver((12, 4), "550.54.15").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver((12, 4), "550.54.14").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver((12, 2), "535.154.05").verdict,
            Verdict::Compatible
        );
        let c = verdict_for_driver((12, 6), "535.154.05");
        assert_eq!(c.verdict, Verdict::CompatibleWithMinorVersionCompatibility);
        assert!(
            c.why.contains("560.28.03") && c.why.contains(">= 525,") && c.why.contains("PTX"),
            "{}",
            c.why
        );
        let c = verdict_for_driver((12, 6), "470.82.01");
        assert_eq!(c.verdict, Verdict::Incompatible);
        assert!(c.why.contains("below 525,"), "{}", c.why);
        // The 12.x family minimum is the 525 branch, not one release of it.
        assert_eq!(
            verdict_for_driver((12, 8), "525.53").verdict,
            Verdict::CompatibleWithMinorVersionCompatibility
        );
        assert_eq!(
            verdict_for_driver((12, 9), "575.51.03").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver((12, 9), "575.51.02").verdict,
            Verdict::CompatibleWithMinorVersionCompatibility
        );
        assert_eq!(
            verdict_for_driver((13, 0), "550.54.15").verdict,
            Verdict::Incompatible
        );
        assert_eq!(
            verdict_for_driver((13, 0), "575.57.08").verdict,
            Verdict::Incompatible
        );
        assert_eq!(
            verdict_for_driver((13, 0), "580.65.06").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver((13, 1), "580.126.09").verdict,
            Verdict::CompatibleWithMinorVersionCompatibility
        );
        assert_eq!(
            verdict_for_driver((13, 1), "590.44.01").verdict,
            Verdict::Compatible
        );
        // A 12.x runtime on a 13.x-family driver: full support.
        assert_eq!(
            verdict_for_driver((12, 9), "580.65.06").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver((11, 8), "450.80.02").verdict,
            Verdict::CompatibleWithMinorVersionCompatibility
        );
        assert_eq!(
            verdict_for_driver((11, 8), "450.57").verdict,
            Verdict::Incompatible
        );
        // CUDA 11.0 GA (11.0.2) needs 450.51.05; 450.36.06 was the RC's.
        assert_eq!(
            verdict_for_driver((11, 0), "450.51.05").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver((11, 0), "450.36.06").verdict,
            Verdict::Incompatible
        );
        assert_eq!(verdict_for_driver((12, 4), "55x").verdict, Verdict::Unknown);
        assert_eq!(
            verdict_for_driver_cuda((12, 6), "12.6").verdict,
            Verdict::Compatible
        );
        assert_eq!(
            verdict_for_driver_cuda((12, 6), "12.2").verdict,
            Verdict::CompatibleWithMinorVersionCompatibility
        );
        assert_eq!(
            verdict_for_driver_cuda((12, 6), "11.4").verdict,
            Verdict::Incompatible
        );
        assert_eq!(
            verdict_for_driver_cuda((13, 0), "12.9").verdict,
            Verdict::Incompatible
        );
        assert_eq!(
            verdict_for_driver_cuda((12, 4), "13.0").verdict,
            Verdict::Compatible
        );
    }

    #[test]
    fn smoke_versions_compare_numerically() {
        let v = |s| parse_version(s).unwrap();
        assert!(cmp_versions(&v("550.54.15"), &v("550.54.14")).is_gt());
        assert!(cmp_versions(&v("570.26"), &v("570.26.0")).is_eq());
        assert!(cmp_versions(&v("535.154.05"), &v("535.54.03")).is_gt());
        assert!(parse_version("").is_none() && parse_version("12.x").is_none());
    }

    #[test]
    fn smoke_cuda_from_pip_metadata_names() {
        use CudaHint::{Exact, Major};
        let of = cuda_of_dist_info;
        assert_eq!(
            of("nvidia_cuda_runtime-13.2.86.dist-info"),
            Some(Exact(13, 2))
        );
        assert_eq!(
            of("nvidia_cuda_runtime_cu12-12.9.79.dist-info"),
            Some(Exact(12, 9))
        );
        assert_eq!(
            of("nvidia_cuda_runtime_cu11-11.8.89.dist-info"),
            Some(Exact(11, 8))
        );
        assert_eq!(
            of("nvidia-cuda-runtime-cu12-12.1.105.dist-info"),
            None,
            "not a dist-info name"
        );
        assert_eq!(of("cuda_toolkit-13.2.2.dist-info"), Some(Exact(13, 2)));
        // cuBLAS and the other library wheels have versions of their own.
        assert_eq!(of("nvidia_cublas-13.4.1.3.dist-info"), None);
        assert_eq!(of("nvidia_cublas_cu12-12.9.1.4.dist-info"), None);
        assert_eq!(of("nvidia_cuda_runtime_cux-1.0.dist-info"), None);
        assert_eq!(of("torch-2.5.1+cu121.dist-info"), Some(Exact(12, 1)));
        assert_eq!(of("torch-2.15.0+cu132.dist-info"), Some(Exact(13, 2)));
        assert_eq!(of("torch-1.13.1+cu117.dist-info"), Some(Exact(11, 7)));
        assert_eq!(
            of("torch-2.15.0.dist-info"),
            None,
            "PyPI's: version.py says it"
        );
        assert_eq!(of("torch-2.5.1+cpu.dist-info"), None);
        assert_eq!(of("torch-2.5.1+rocm6.2.dist-info"), None);
        assert_eq!(of("cupy_cuda12x-13.3.0.dist-info"), Some(Major(12)));
        assert_eq!(of("cupy_cuda13x-14.0.0.dist-info"), Some(Major(13)));
        assert_eq!(of("cupy_cuda114-10.6.0.dist-info"), Some(Exact(11, 4)));
        assert_eq!(of("cupy_cuda102-9.6.0.dist-info"), Some(Exact(10, 2)));
        assert_eq!(of("jax_cuda12_plugin-0.4.35.dist-info"), Some(Major(12)));
        assert_eq!(of("jax_cuda12_pjrt-0.4.35.dist-info"), Some(Major(12)));
        assert_eq!(of("jax_cuda13_plugin-0.8.0.dist-info"), Some(Major(13)));
        assert_eq!(of("jax-0.4.35.dist-info"), None);
        assert_eq!(
            of("jaxlib-0.4.23+cuda12.cudnn89.dist-info"),
            Some(Major(12))
        );
        assert_eq!(
            of("jaxlib-0.4.13+cuda11.cudnn86.dist-info"),
            Some(Major(11))
        );
        assert_eq!(of("jaxlib-0.1.69+cuda111.dist-info"), Some(Exact(11, 1)));
        assert_eq!(of("jaxlib-0.4.35.dist-info"), None);
        assert_eq!(of("numpy-2.1.0.dist-info"), None);
        assert_eq!(Major(12).version(), (12, 0));
        assert!(is_cuda_runtime_dist("nvidia_cuda_runtime"));
        assert!(!is_cuda_runtime_dist("nvidia_cuda_runtime_static"));
    }

    #[test]
    fn smoke_cuda_from_torch_version_py() {
        let pypi = "from typing import Optional\n\n__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip', 'xpu']\n__version__ = '2.15.0+cu132'\ndebug = False\ncuda: Optional[str] = '13.2'\ngit_version = 'abc'\nhip: Optional[str] = None\n";
        assert_eq!(
            torch_version_py(pypi),
            Some(((13, 2), "2.15.0+cu132".to_string()))
        );
        let old = "__version__ = '1.13.1+cu117'\ndebug = False\ncuda = '11.7'\ngit_version = 'x'\nhip = None\n";
        assert_eq!(
            torch_version_py(old),
            Some(((11, 7), "1.13.1+cu117".to_string()))
        );
        let rocm = "__version__ = '2.5.1+rocm6.2'\ncuda: Optional[str] = None\nhip: Optional[str] = '6.2.41133'\n";
        assert_eq!(torch_version_py(rocm), None);
        // cuda_version (a different name) is not cuda.
        assert_eq!(torch_version_py("cuda_version = '12.1'\n"), None);
    }
}
