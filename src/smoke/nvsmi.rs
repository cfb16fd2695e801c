//! Parsing `nvidia-smi` output: the default table (header with Driver
//! Version and CUDA Version, one block per GPU), `nvidia-smi -L`, and
//! `nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader`.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmiGpu {
    pub index: u32,
    pub name: String,
    /// Total device memory in MiB, when the output gives it.
    pub memory_mib: Option<u64>,
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

/// The default `nvidia-smi` table.
pub fn parse_table(text: &str) -> SmiInfo {
    let mut info = SmiInfo::default();
    let mut lines = text.lines().peekable();
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
        // A GPU block's first line: "|   0  NVIDIA A100-SXM4-40GB   On  | 0000...".
        let cells: Vec<&str> = line.split('|').collect();
        if cells.len() >= 4 {
            let first = cells[1].trim();
            let mut words = first.split_whitespace();
            if let Some(idx) = words.next().and_then(|w| w.parse::<u32>().ok()) {
                let rest: Vec<&str> = words.collect();
                // Drop the trailing persistence mode (On/Off) when present.
                let name_words = match rest.last() {
                    Some(&"On") | Some(&"Off") => &rest[..rest.len() - 1],
                    _ => &rest[..],
                };
                if name_words.is_empty() {
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
                });
            }
        }
    }
    info
}

/// `nvidia-smi -L`: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)".
pub fn parse_list(text: &str) -> Vec<SmiGpu> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("GPU ")?;
            let (idx, rest) = rest.split_once(':')?;
            let name = rest.split(" (UUID").next()?.trim();
            Some(SmiGpu {
                index: idx.trim().parse().ok()?,
                name: name.to_string(),
                memory_mib: None,
            })
        })
        .collect()
}

/// `--query-gpu=name,driver_version,memory.total --format=csv,noheader`.
pub fn parse_query_csv(text: &str) -> SmiInfo {
    let mut info = SmiInfo::default();
    for (i, l) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        if f.len() < 3 {
            continue;
        }
        info.driver_version.get_or_insert_with(|| f[1].to_string());
        info.gpus.push(SmiGpu {
            index: i as u32,
            name: f[0].to_string(),
            memory_mib: mib(f[2]),
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

    #[test]
    fn smoke_nvidia_smi_a100_table() {
        let i = parse_table(&data("a100-535.154.05.txt"));
        assert_eq!(i.driver_version.as_deref(), Some("535.154.05"));
        assert_eq!(i.cuda_version.as_deref(), Some("12.2"));
        assert_eq!(i.gpus.len(), 1);
        assert_eq!(i.gpus[0].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(i.gpus[0].memory_mib, Some(40960));
    }

    #[test]
    fn smoke_nvidia_smi_h100_table_list_and_csv() {
        let i = parse_table(&data("h100-550.54.15.txt"));
        assert_eq!(i.driver_version.as_deref(), Some("550.54.15"));
        assert_eq!(i.cuda_version.as_deref(), Some("12.4"));
        assert_eq!(i.gpus.len(), 2);
        assert_eq!(
            (i.gpus[1].index, i.gpus[1].name.as_str()),
            (1, "NVIDIA H100 80GB HBM3")
        );
        assert_eq!(i.gpus[0].memory_mib, Some(81559));
        let l = parse_list(&data("h100-550.54.15-L.txt"));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "NVIDIA H100 80GB HBM3");
        let c = parse_query_csv(&data("h100-550.54.15-query.csv"));
        assert_eq!(c.driver_version.as_deref(), Some("550.54.15"));
        assert_eq!(c.gpus.len(), 2);
        assert_eq!(c.gpus[1].memory_mib, Some(81559));
        let c = parse_query_csv(&data("a100-535.154.05-query.csv"));
        assert_eq!(c.gpus[0].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(c.gpus[0].memory_mib, Some(40960));
    }

    #[test]
    fn smoke_nvidia_smi_no_gpu_output() {
        let i = parse_table(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        );
        assert!(i.driver_version.is_none() && i.gpus.is_empty());
    }
}
