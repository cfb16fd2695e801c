//! Parsing `nvidia-smi` output: the default table (header with Driver
//! Version and CUDA Version, one block per GPU), `nvidia-smi -L`, and
//! `nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader`.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmiGpu {
    pub index: u32,
    /// As nvidia-smi prints it; the table cuts long names ("Tesla V100-SXM2...").
    pub name: String,
    /// Total device memory in MiB, when the output gives it.
    pub memory_mib: Option<u64>,
    /// "GPU-..." (from `nvidia-smi -L`).
    pub uuid: Option<String>,
    /// MIG devices of this GPU (from `nvidia-smi -L`).
    pub mig: Vec<SmiMig>,
}

/// A MIG device line of `nvidia-smi -L`:
/// "  MIG 1g.20gb     Device  0: (UUID: MIG-...)".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmiMig {
    pub device: u32,
    /// The profile, e.g. "1g.20gb".
    pub profile: String,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmiInfo {
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports (not the image's runtime).
    pub cuda_version: Option<String>,
    pub gpus: Vec<SmiGpu>,
}

fn value_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)?;
    line[i + key.len()..].split_whitespace().next()
}

fn mib(s: &str) -> Option<u64> {
    s.trim().strip_suffix("MiB")?.trim().parse().ok()
}

/// The default `nvidia-smi` table. Only the GPU table is read for GPUs:
/// the "MIG devices:" and "Processes:" tables after it also start rows
/// with numbers and are not GPUs.
pub fn parse_table(text: &str) -> SmiInfo {
    let mut info = SmiInfo::default();
    let mut lines = text.lines().peekable();
    let mut gpu_table = true;
    while let Some(line) = lines.next() {
        if info.driver_version.is_none()
            && let Some(v) = value_after(line, "Driver Version:")
        {
            info.driver_version = Some(v.to_string());
        }
        if info.cuda_version.is_none()
            && let Some(v) = value_after(line, "CUDA Version:")
        {
            info.cuda_version = Some(v.to_string());
        }
        if line.contains("MIG devices:") || line.contains("Processes:") {
            gpu_table = false;
        }
        if !gpu_table {
            continue;
        }
        // A GPU block's first line: "|   0  NVIDIA A100-SXM4-40GB   On  | 0000...".
        let cells: Vec<&str> = line.split('|').collect();
        if cells.len() >= 4 {
            let first = cells[1].trim();
            let mut words = first.split_whitespace();
            if let Some(idx) = words.next().and_then(|w| w.parse::<u32>().ok()) {
                let rest: Vec<&str> = words.collect();
                // Drop the trailing persistence mode (On/Off; TCC/WDDM on
                // Windows) when present.
                let name_words = match rest.last() {
                    Some(&("On" | "Off" | "TCC" | "WDDM")) => &rest[..rest.len() - 1],
                    _ => &rest[..],
                };
                if name_words.is_empty()
                    || name_words
                        .iter()
                        .all(|w| w.bytes().all(|b| b.is_ascii_digit()))
                {
                    continue;
                }
                // The next line holds "  4MiB / 40960MiB" in its second cell.
                let memory_mib = lines.peek().and_then(|next| {
                    next.split('|')
                        .nth(2)
                        .and_then(|c| c.split('/').nth(1))
                        .and_then(mib)
                });
                info.gpus.push(SmiGpu {
                    index: idx,
                    name: name_words.join(" "),
                    memory_mib,
                    ..SmiGpu::default()
                });
            }
        }
    }
    info
}

/// "... (UUID: X)" → X.
fn uuid_in(s: &str) -> Option<String> {
    let rest = s.split("(UUID:").nth(1)?;
    let u = rest.trim().trim_end_matches(')').trim();
    (!u.is_empty()).then(|| u.to_string())
}

/// `nvidia-smi -L`: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)", each
/// GPU's MIG devices indented under it
/// ("  MIG 1g.20gb     Device  0: (UUID: MIG-...)").
pub fn parse_list(text: &str) -> Vec<SmiGpu> {
    let mut gpus: Vec<SmiGpu> = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("MIG ") {
            let Some(gpu) = gpus.last_mut() else { continue };
            let Some((head, _)) = rest.split_once(':') else {
                continue;
            };
            let mut w = head.split_whitespace();
            let profile = w.next().unwrap_or_default().to_string();
            let device = match (w.next(), w.next().and_then(|d| d.parse().ok())) {
                (Some("Device"), Some(d)) => d,
                _ => continue,
            };
            gpu.mig.push(SmiMig {
                device,
                profile,
                uuid: uuid_in(rest),
            });
            continue;
        }
        let Some(rest) = t.strip_prefix("GPU ") else {
            continue;
        };
        let Some((idx, rest)) = rest.split_once(':') else {
            continue;
        };
        let Ok(index) = idx.trim().parse() else {
            continue;
        };
        let name = rest.split(" (UUID").next().unwrap_or_default().trim();
        gpus.push(SmiGpu {
            index,
            name: name.to_string(),
            uuid: uuid_in(rest),
            ..SmiGpu::default()
        });
    }
    gpus
}

/// `--query-gpu=name,driver_version,memory.total --format=csv,noheader`
/// (a header line, as `--format=csv` prints, is skipped).
pub fn parse_query_csv(text: &str) -> SmiInfo {
    let mut info = SmiInfo::default();
    let rows = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("name,"));
    for (i, l) in rows.enumerate() {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        if f.len() < 3 {
            continue;
        }
        info.driver_version.get_or_insert_with(|| f[1].to_string());
        info.gpus.push(SmiGpu {
            index: i as u32,
            name: f[0].to_string(),
            memory_mib: mib(f[2]),
            ..SmiGpu::default()
        });
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/nvidia-smi")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// (index, name, MiB) of each GPU.
    type Gpus = Vec<(u32, String, Option<u64>)>;

    /// (driver, CUDA, GPUs) of a table.
    fn table(name: &str) -> (String, String, Gpus) {
        let i = parse_table(&data(name));
        (
            i.driver_version.unwrap_or_default(),
            i.cuda_version.unwrap_or_default(),
            i.gpus
                .into_iter()
                .map(|g| (g.index, g.name, g.memory_mib))
                .collect(),
        )
    }

    fn gpus(v: &[(u32, &str, u64)]) -> Gpus {
        v.iter()
            .map(|(i, n, m)| (*i, n.to_string(), Some(*m)))
            .collect()
    }

    #[test]
    fn smoke_nvidia_smi_real_h100_tables() {
        let h100 = "NVIDIA H100 80GB HBM3";
        assert_eq!(
            table("h100-550.90.07.txt"),
            (
                "550.90.07".into(),
                "12.4".into(),
                gpus(&[(0, h100, 81559), (1, h100, 81559)])
            )
        );
        assert_eq!(
            table("h100-535.129.03.txt"),
            (
                "535.129.03".into(),
                "12.2".into(),
                gpus(&[(0, h100, 81559)])
            )
        );
        // Persistence mode Off; the card reports 40768 MiB, not the
        // 80 GB of its name: memory comes from the memory cell.
        assert_eq!(
            table("h100-550.127.05.txt"),
            (
                "550.127.05".into(),
                "12.4".into(),
                gpus(&[(0, h100, 40768)])
            )
        );
    }

    #[test]
    fn smoke_nvidia_smi_real_a100_v100_and_older_tables() {
        let a100 = "NVIDIA A100-SXM4-40GB";
        // The 580 layout: "+---" under the version line, CUDA 13.0.
        assert_eq!(
            table("a100-580.126.09.txt"),
            (
                "580.126.09".into(),
                "13.0".into(),
                gpus(&[(0, a100, 40960), (1, a100, 40960)])
            )
        );
        // The narrow pre-530 layout, names cut by nvidia-smi.
        assert_eq!(
            table("v100-525.105.17.txt"),
            (
                "525.105.17".into(),
                "12.0".into(),
                gpus(&[(0, "Tesla V100-SXM2...", 32768)])
            )
        );
        assert_eq!(
            table("v100-470.182.03.txt"),
            (
                "470.182.03".into(),
                "11.4".into(),
                gpus(&[(0, "Tesla V100-SXM2...", 16160)])
            )
        );
        assert_eq!(
            table("titanxp-450.57.txt"),
            (
                "450.57".into(),
                "11.0".into(),
                gpus(&[(0, "TITAN Xp", 12196)])
            )
        );
    }

    #[test]
    fn smoke_nvidia_smi_real_mig_table_rows_are_not_gpus() {
        let a100 = "NVIDIA A100-SXM...";
        let want = (
            "510.47.03".to_string(),
            "11.6".to_string(),
            gpus(&[(0, a100, 81920), (1, a100, 81920)]),
        );
        assert_eq!(table("a100-mig-510.47.03.txt"), want);
        // The "MIG devices:" table starts its rows with the GPU index too
        // ("|  1    3   0   0  |  14366MiB / 19968MiB |"): no GPUs from it.
        let mig = parse_table(&data("a100-mig-510.47.03-mig-devices.txt"));
        assert!(mig.gpus.is_empty(), "{mig:?}");
        let both = format!(
            "{}{}",
            data("a100-mig-510.47.03.txt"),
            data("a100-mig-510.47.03-mig-devices.txt")
        );
        let i = parse_table(&both);
        assert_eq!(i.gpus.len(), 2, "{i:?}");
        assert_eq!(i.gpus[1].memory_mib, Some(81920));
    }

    #[test]
    fn smoke_nvidia_smi_real_list_with_uuids_and_mig() {
        let l = parse_list(&data("a100-mig-L.txt"));
        assert_eq!(l.len(), 4);
        assert!(l.iter().all(|g| g.name == "NVIDIA A100-SXM4-80GB"), "{l:?}");
        assert_eq!(l.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(
            l[0].uuid.as_deref(),
            Some("GPU-513536b6-7d19-9063-b049-1e69664bb298")
        );
        assert_eq!(
            l[3].uuid.as_deref(),
            Some("GPU-69ec2344-ebac-b028-f88f-452abb3d7f11")
        );
        assert_eq!(l[0].mig.len(), 4);
        assert!(l[1..].iter().all(|g| g.mig.is_empty()));
        assert_eq!(
            l[0].mig[2],
            SmiMig {
                device: 2,
                profile: "1g.20gb".into(),
                uuid: Some("MIG-f00d722c-f4e1-52c9-aa31-750441ae1bfe".into()),
            }
        );
    }

    #[test]
    fn smoke_nvidia_smi_handmade_query_csv() {
        let c = parse_query_csv(&data("handmade-h100-550.54.15-query.csv"));
        assert_eq!(c.driver_version.as_deref(), Some("550.54.15"));
        assert_eq!(c.gpus.len(), 2);
        assert_eq!(c.gpus[1].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(c.gpus[1].memory_mib, Some(81559));
        let c = parse_query_csv(&data("handmade-a100-535.154.05-query.csv"));
        assert_eq!(c.gpus[0].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(c.gpus[0].memory_mib, Some(40960));
        // With --format=csv (a header line).
        let c = parse_query_csv(
            "name, driver_version, memory.total [MiB]\nNVIDIA A100-SXM4-40GB, 535.154.05, 40960 MiB\n",
        );
        assert_eq!(c.gpus.len(), 1);
        assert_eq!(c.driver_version.as_deref(), Some("535.154.05"));
    }

    #[test]
    fn smoke_nvidia_smi_no_gpu_output() {
        let i = parse_table(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        );
        assert!(i.driver_version.is_none() && i.gpus.is_empty());
    }
}
