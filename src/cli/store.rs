//! `store ls | du | gc`: what the local store holds, and cleaning it.

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::image::human_bytes;
use super::{GlobalOpts, print_json};
use crate::store::{DiskUsage, GcOptions, GcReport, Inventory, Layout, StoredFile};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List the images (name, digest, size, bytes shared with other names,
    /// created, last used) and the blobs no name references.
    Ls,
    /// Show the store's disk use: named, shared, unreferenced, temporary
    /// files, merge cache (the total counts like `du -sb`).
    Du,
    /// Remove blobs no name references, temporary files of killed runs and
    /// merge states no image needs; with --older-than or --max-size, names
    /// too. Runs only while no other gridship process writes the store.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also remove the names not used for this long (used: written, or read
    /// by name), e.g. 30d, 12h, 2w, 1d12h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Also remove names, least recently used first, until the store takes at
    /// most SIZE, e.g. 20G, 500MiB, 1.5T (K, M, G, T and KiB... are powers of
    /// 1024; KB, MB, GB, TB of 1000).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// List what would be removed, with sizes; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait this long for running writers (promote, copy, build, nightly) to
    /// end; by default gc gives up at once when one runs.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub wait: Duration,
}

pub fn run(global: &GlobalOpts, cmd: &StoreCommand) -> anyhow::Result<()> {
    let root = global
        .store
        .clone()
        .unwrap_or_else(crate::store::default_store_path);
    // No store yet: nothing in it (and nothing created by looking).
    let layout = if root.exists() {
        Some(Layout::open(&root)?)
    } else {
        None
    };
    match cmd {
        StoreCommand::Ls => {
            let inv = match &layout {
                Some(l) => l.inventory()?,
                None => Inventory::empty(&root),
            };
            if global.json {
                print_json(&inv)
            } else {
                print_ls(&inv)
            }
        }
        StoreCommand::Du => {
            let inv = match &layout {
                Some(l) => l.inventory()?,
                None => Inventory::empty(&root),
            };
            #[derive(Serialize)]
            struct Du<'a> {
                store: &'a str,
                #[serde(flatten)]
                usage: &'a DiskUsage,
            }
            if global.json {
                print_json(&Du {
                    store: &inv.store,
                    usage: &inv.usage,
                })
            } else {
                print_du(&inv.usage, &root);
                Ok(())
            }
        }
        StoreCommand::Gc(args) => {
            let Some(layout) = layout else {
                let report = GcReport::empty(&root, args.dry_run);
                if global.json {
                    return print_json(&report);
                }
                print_gc(&report, args.max_size);
                return Ok(());
            };
            let alone = layout.lock_exclusive(args.wait)?;
            let mut report = layout.gc(
                &alone,
                &GcOptions {
                    older_than: args.older_than,
                    max_size: args.max_size,
                    dry_run: args.dry_run,
                    now: crate::clock::now()?,
                },
            )?;
            // The snapshots the engine kept for names gc just removed.
            if layout.has_engine_links() {
                match crate::transport::prune_snapshots(&layout, None, true, args.dry_run) {
                    Ok(tags) => report.engine_snapshots = tags,
                    Err(e) => {
                        tracing::warn!("container snapshots in the engine left as they are: {e}")
                    }
                }
            }
            drop(alone);
            if global.json {
                print_json(&report)
            } else {
                print_gc(&report, args.max_size);
                Ok(())
            }
        }
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`, or `-`.
fn time(t: Option<i64>) -> String {
    t.and_then(|t| crate::clock::rfc3339_utc(t).ok())
        .unwrap_or_else(|| "-".into())
}

/// An RFC 3339 time without its fraction of a second.
fn whole_seconds(t: &str) -> String {
    match t.split_once('.') {
        Some((secs, frac)) => format!(
            "{secs}{}",
            frac.trim_start_matches(|c: char| c.is_ascii_digit())
        ),
        None => t.to_string(),
    }
}

fn print_ls(inv: &Inventory) -> anyhow::Result<()> {
    let mut images: Vec<_> = inv.images.iter().collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    let width = images
        .iter()
        .map(|i| i.name.as_deref().map_or(9, str::len))
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:<width$}  {:<19}  {:>10}  {:>10}  {:<20}  LAST USED",
        "NAME", "DIGEST", "SIZE", "SHARED", "CREATED"
    );
    for i in images {
        println!(
            "{:<width$}  {:<19}  {:>10}  {:>10}  {:<20}  {}{}",
            i.name.as_deref().unwrap_or("(no name)"),
            i.digest.short(),
            human_bytes(i.bytes),
            human_bytes(i.shared_bytes),
            i.created.as_deref().map_or("-".into(), whole_seconds),
            time(i.last_used),
            if i.missing_blobs > 0 {
                format!("  ({} blobs missing)", i.missing_blobs)
            } else if i.in_engine > 0 {
                format!(
                    "  (+{} in the engine's layer store)",
                    human_bytes(i.in_engine)
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "unreferenced blobs: {} ({}); `gridship store gc` removes them",
        inv.unreferenced.len(),
        human_bytes(inv.usage.unreferenced)
    );
    Ok(())
}

fn print_du(u: &DiskUsage, root: &Path) {
    println!(
        "named          {:>10}  (shared by several names: {})",
        human_bytes(u.named),
        human_bytes(u.shared)
    );
    println!("unreferenced   {:>10}", human_bytes(u.unreferenced));
    println!("temporary      {:>10}", human_bytes(u.temp));
    println!(
        "merge cache    {:>10}  (needed by no image in the store: {})",
        human_bytes(u.merge_cache),
        human_bytes(u.merge_cache_unneeded)
    );
    println!("other          {:>10}", human_bytes(u.other));
    if u.in_engine > 0 {
        println!(
            "(container snapshots: {} of layers read from the engine's layer store, not counted above)",
            human_bytes(u.in_engine)
        );
    }
    println!(
        "total          {:>10}  {}",
        human_bytes(u.total),
        root.display()
    );
}

fn print_gc(r: &GcReport, max_size: Option<u64>) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for n in &r.names {
        println!(
            "{verb} name {} ({}, last used {}): {}",
            n.name,
            n.digest.short(),
            time(n.last_used),
            n.reason
        );
    }
    let sum = |f: &[StoredFile]| human_bytes(f.iter().map(|f| f.bytes).sum());
    println!(
        "{verb} {} unreferenced blobs ({}), {} temporary files ({}), {} merge states ({})",
        r.blobs.len(),
        sum(&r.blobs),
        r.temp.len(),
        sum(&r.temp),
        r.merge_states.len(),
        sum(&r.merge_states)
    );
    for t in &r.engine_snapshots {
        println!("{verb} the engine image {t} (a container snapshot no name needs)");
    }
    let now = r
        .after
        .as_ref()
        .map_or(r.before.total.saturating_sub(r.bytes_freed), |a| a.total);
    println!(
        "{} {}; the store {} {}",
        if r.dry_run { "would free" } else { "freed" },
        human_bytes(r.bytes_freed),
        if r.dry_run { "would take" } else { "takes" },
        human_bytes(now)
    );
    if let Some(max) = max_size.filter(|m| now > *m) {
        println!(
            "still over --max-size {}: what is left is in use (names kept) or other files",
            human_bytes(max)
        );
    }
}

/// `30d`, `12h`, `90m`, `45s`, `2w`, and sums such as `1d12h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty; write e.g. 30d, 12h, 90m".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (n, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let secs = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => {
                return Err(format!(
                    "{s:?}: write numbers with a unit s, m, h, d or w (e.g. 30d, 1d12h)"
                ));
            }
        };
        let n: u64 = n.parse().map_err(|_| {
            format!("{s:?}: write numbers with a unit s, m, h, d or w (e.g. 30d, 1d12h)")
        })?;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too long"))?;
        rest = &rest[digits + unit_len..];
    }
    Ok(Duration::from_secs(total))
}

/// Bytes, or a number with a unit: K, M, G, T (also KiB...: powers of 1024),
/// KB, MB, GB, TB (powers of 1000); decimals allowed (`1.5G`).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let bad = || format!("{s:?}: write bytes or a number with a unit, e.g. 20G, 500MiB, 1.5TB");
    let n: f64 = n.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    Ok((n * scale as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(parse_duration("1d12h").unwrap().as_secs(), 36 * 3600);
        assert_eq!(parse_duration("0s").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("90m").unwrap().as_secs(), 5400);
        for bad in ["", "30", "3x", "d", "1d12"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5TB").unwrap(), 1_500_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "10Q", "1.2.3G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
