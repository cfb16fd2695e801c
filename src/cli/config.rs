//! `gridship sites|templates|suites [show NAME]`, `config`, `completions`,
//! `man`: what gridship finds where, and the shell habits.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Subcommand};
use serde::Serialize;

use super::{GlobalOpts, SiteOverlaysOpt, SuitesOpt, TemplatesOpt, defaults, print_json};
use crate::config::file::{Setting, config_files};
use crate::config::search::{Kind, Listed, SearchPath};
use crate::site::{SiteChain, SiteProfile};
use crate::transform::overlay::SiteOverlay;

#[derive(Debug, Args)]
pub struct SitesArgs {
    #[command(subcommand)]
    pub show: Option<ShowCommand>,
    #[command(flatten)]
    pub sites: SiteOverlaysOpt,
}

#[derive(Debug, Args)]
pub struct TemplatesArgs {
    #[command(subcommand)]
    pub show: Option<ShowCommand>,
    #[command(flatten)]
    pub templates: TemplatesOpt,
}

#[derive(Debug, Args)]
pub struct SuitesArgs {
    #[command(subcommand)]
    pub show: Option<ShowCommand>,
    #[command(flatten)]
    pub suites: SuitesOpt,
}

#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// Print one, as gridship resolves it.
    Show {
        /// The name, as listed.
        name: String,
    },
}

/// One listed item, for `--json`.
#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    origin: crate::config::Origin,
    /// A directory or file, or `built-in`.
    location: String,
    /// Places further down the search path with the same name.
    shadows: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queues: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extends: Option<Vec<String>>,
    /// Why an entry could not be read (it is listed anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn entry(l: &Listed) -> Entry {
    Entry {
        name: l.name.clone(),
        origin: l.found.place.origin.clone(),
        location: l.found.location(),
        shadows: l.shadows.clone(),
        queues: None,
        extends: None,
        error: None,
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn search_path_line(search: &SearchPath) {
    println!("\nsearched, first match wins: {}", search.describe());
}

pub fn sites(global: &GlobalOpts, a: &SitesArgs) -> anyhow::Result<()> {
    let search = a.sites.search();
    if let Some(ShowCommand::Show { name }) = &a.show {
        return show_site(global, &search, name);
    }
    let mut out = Vec::new();
    for l in search.list() {
        let mut e = entry(&l);
        match SiteProfile::load(&search, &l.name) {
            Ok(p) => {
                e.queues = Some(p.gpu_queues.keys().cloned().collect());
                e.extends = Some(
                    p.chain.docs[..p.chain.docs.len().saturating_sub(1)]
                        .iter()
                        .map(|d| d.found.name.clone())
                        .collect(),
                );
            }
            Err(err) => e.error = Some(err.to_string()),
        }
        out.push(e);
    }
    if global.json {
        return print_json(&out);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|e| {
            let queues = match (&e.queues, &e.error) {
                (Some(q), _) if q.is_empty() => "-".to_string(),
                (Some(q), _) => q.join(","),
                (None, _) => "(unreadable: see `gridship sites show`)".into(),
            };
            let mut from = e.location.clone();
            if !e.shadows.is_empty() {
                from.push_str(&format!(" (shadows {})", e.shadows.join(", ")));
            }
            let ext = e
                .extends
                .as_ref()
                .filter(|x| !x.is_empty())
                .map_or_else(|| "-".to_string(), |x| x.join(","));
            vec![e.name.clone(), queues, ext, from]
        })
        .collect();
    print_table(&["SITE", "GPU QUEUES", "EXTENDS", "FROM"], &rows);
    search_path_line(&search);
    Ok(())
}

/// The resolved profile, as `sites show` prints it.
#[derive(Debug, Serialize)]
struct ResolvedSite {
    name: String,
    /// The profiles merged, parents first; the site's own last.
    from: Vec<String>,
    ce: Option<crate::site::CeProfile>,
    gpu_queues: BTreeMap<String, crate::site::GpuQueue>,
    overlay: ResolvedOverlay,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    slim: BTreeMap<String, Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize)]
struct ResolvedOverlay {
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    /// The layer's entries (directories end in /).
    files: Vec<String>,
    diff_id: String,
}

/// The `slim:`/`secrets:` lists of a chain, added up parents first (as
/// the policy applies them).
fn merged_lists(chain: &SiteChain, section: &str) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for doc in &chain.docs {
        let Ok(v) = serde_saphyr::from_str::<serde_json::Value>(&doc.text) else {
            continue;
        };
        if let Some(serde_json::Value::Object(m)) = v.get(section) {
            for (k, v) in m {
                let slot = out.entry(k.clone()).or_default();
                match v {
                    serde_json::Value::Array(a) => slot.extend(a.iter().cloned()),
                    other => slot.push(other.clone()),
                }
            }
        }
    }
    out
}

fn show_site(global: &GlobalOpts, search: &SearchPath, name: &str) -> anyhow::Result<()> {
    let p = SiteProfile::load(search, name)?;
    let o = SiteOverlay::from_profile(&p)?;
    // Policy errors (a bad slim: section) are errors here too.
    crate::transform::slim::Policy::new()?.apply_site(&p.chain)?;
    let mut files = Vec::new();
    let mut ar = tar::Archive::new(&o.layer[..]);
    for e in ar.entries()? {
        let e = e?;
        let mut path = format!("/{}", e.path()?.display());
        if e.header().entry_type().is_dir() {
            path.push('/');
        }
        files.push(path);
    }
    let r = ResolvedSite {
        name: p.name.clone(),
        from: p
            .chain
            .docs
            .iter()
            .map(|d| d.input.display().to_string())
            .collect(),
        ce: p.ce.clone(),
        gpu_queues: p.gpu_queues.clone(),
        overlay: ResolvedOverlay {
            env: o.env.clone(),
            labels: o.labels.clone(),
            files,
            diff_id: o.diff_id.to_string(),
        },
        slim: merged_lists(&p.chain, "slim"),
        secrets: merged_lists(&p.chain, "secrets"),
    };
    if global.json {
        return print_json(&r);
    }
    println!("# site {name}, resolved; merged from (parents first):");
    for f in &r.from {
        println!("#   {f}");
    }
    print!("{}", serde_saphyr::to_string(&r)?);
    Ok(())
}

pub fn templates(global: &GlobalOpts, a: &TemplatesArgs) -> anyhow::Result<()> {
    let search = a.templates.search();
    if let Some(ShowCommand::Show { name }) = &a.show {
        let found = search.require(name, &format!("templates show {name}"))?;
        let text = found.text()?;
        // Checked as `jobdesc` would load it.
        crate::jobdesc::template::Template::load(&search, name)?;
        print!("{text}");
        return Ok(());
    }
    list_plain(global, &search, "TEMPLATE")
}

pub fn suites(global: &GlobalOpts, a: &SuitesArgs) -> anyhow::Result<()> {
    let search = a.suites.search();
    if let Some(ShowCommand::Show { name }) = &a.show {
        let s = crate::smoke::suite::Suite::find(name, &search)?;
        if global.json {
            return print_json(&s);
        }
        println!(
            "# suite {name}, includes resolved, from {}",
            s.path.display()
        );
        print!("{}", serde_saphyr::to_string(&s)?);
        return Ok(());
    }
    list_plain(global, &search, "SUITE")
}

fn list_plain(global: &GlobalOpts, search: &SearchPath, what: &str) -> anyhow::Result<()> {
    let out: Vec<Entry> = search.list().iter().map(entry).collect();
    if global.json {
        return print_json(&out);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|e| {
            let mut from = e.location.clone();
            if !e.shadows.is_empty() {
                from.push_str(&format!(" (shadows {})", e.shadows.join(", ")));
            }
            vec![e.name.clone(), from]
        })
        .collect();
    print_table(&[what, "FROM"], &rows);
    search_path_line(search);
    Ok(())
}

/// `gridship config --json`.
#[derive(Debug, Serialize)]
struct ConfigReport {
    /// Each key: its value and the file it came from (absent: unset).
    values: BTreeMap<&'static str, Option<Setting<String>>>,
    /// Config files in order of precedence, and whether each exists.
    files: Vec<(PathBuf, bool)>,
    /// The search paths, first match wins.
    search_paths: BTreeMap<&'static str, Vec<String>>,
}

pub fn show_config(global: &GlobalOpts) -> anyhow::Result<()> {
    let d = defaults()?;
    let root = d.cvmfs_root.as_ref().map(|s| Setting {
        value: s.value.display().to_string(),
        from: s.from.clone(),
    });
    let values: BTreeMap<&'static str, Option<Setting<String>>> = [
        ("site", d.site.clone()),
        ("queue", d.queue.clone()),
        ("push", d.push.clone()),
        ("ce", d.ce.clone()),
        ("auth", d.auth.clone()),
        ("cvmfs.repo", d.cvmfs_repo.clone()),
        ("cvmfs.backend", d.cvmfs_backend.clone()),
        ("cvmfs.root", root),
    ]
    .into_iter()
    .collect();
    let files: Vec<(PathBuf, bool)> = if d.searched.is_empty() {
        config_files().into_iter().map(|p| (p, false)).collect()
    } else {
        d.searched.clone()
    };
    let search_paths: BTreeMap<&'static str, Vec<String>> =
        [Kind::Sites, Kind::Templates, Kind::Suites]
            .into_iter()
            .map(|k| {
                (
                    k.subdir(),
                    SearchPath::new(k, None)
                        .places
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                )
            })
            .collect();
    let r = ConfigReport {
        values,
        files,
        search_paths,
    };
    if global.json {
        return print_json(&r);
    }
    let rows: Vec<Vec<String>> = r
        .values
        .iter()
        .map(|(k, v)| match v {
            Some(s) => vec![k.to_string(), s.value.clone(), s.from.display().to_string()],
            None => vec![k.to_string(), "-".into(), "unset".into()],
        })
        .collect();
    print_table(&["KEY", "VALUE", "FROM"], &rows);
    println!("\nconfig files, first wins per key; options on the command line win over both:");
    for (p, exists) in &r.files {
        println!(
            "  {} ({})",
            p.display(),
            if *exists { "read" } else { "absent" }
        );
    }
    println!("\nsearch paths, first match by name wins:");
    for (k, places) in &r.search_paths {
        println!("  {k}: {}", places.join(", "));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn completions(a: &CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "gridship", &mut out);
    out.flush()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (gridship.1, gridship-promote.1, ...)
    /// into DIR instead of gridship.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn man(a: &ManArgs) -> anyhow::Result<()> {
    let cmd = super::Cli::command();
    match &a.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)?;
        }
    }
    Ok(())
}
