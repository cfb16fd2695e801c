//! Build script: embeds the shipped defaults (site profiles and overlays,
//! xRSL templates, smoke suites) so an installed binary works from any
//! directory, and records the git commit for `--version`.
//!
//! A generated table of `include_bytes!` keeps what crates like include_dir
//! drop: the executable bit and symlinks of overlay files (the overlay layer
//! is built from them).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (table name, directory in the repository)
const TREES: &[(&str, &str)] = &[
    ("SITES", "site-overlays"),
    ("TEMPLATES", "xrsl-templates"),
    ("SUITES", "smoke-suites"),
];

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());

    let mut code = String::new();
    for (table, dir) in TREES {
        let base = root.join(dir);
        println!("cargo:rerun-if-changed={}", base.display());
        let mut entries = Vec::new();
        walk(&base, Path::new(""), &mut entries);
        writeln!(code, "pub static {table}: &[BuiltinEntry] = &[").unwrap();
        for rel in entries {
            let abs = base.join(&rel);
            let meta = std::fs::symlink_metadata(&abs).unwrap();
            let name = rel.to_str().expect("built-in file names are UTF-8");
            if meta.is_dir() {
                writeln!(
                    code,
                    "    BuiltinEntry {{ path: {name:?}, kind: BuiltinKind::Dir }},"
                )
                .unwrap();
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&abs).unwrap();
                let target = target.to_str().expect("link targets are UTF-8");
                writeln!(
                    code,
                    "    BuiltinEntry {{ path: {name:?}, kind: BuiltinKind::Symlink({target:?}) }},"
                )
                .unwrap();
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                writeln!(
                    code,
                    "    BuiltinEntry {{ path: {name:?}, kind: BuiltinKind::File {{ data: include_bytes!({:?}), exec: {exec} }} }},",
                    abs.display().to_string()
                )
                .unwrap();
            }
        }
        writeln!(code, "];").unwrap();
    }
    std::fs::write(out.join("builtin.rs"), code).unwrap();

    // The commit this binary is built from; GRIDSHIP_GIT_COMMIT for builds
    // outside a git checkout (a release tarball).
    println!("cargo:rerun-if-env-changed=GRIDSHIP_GIT_COMMIT");
    let commit = std::env::var("GRIDSHIP_GIT_COMMIT")
        .ok()
        .or_else(|| git_commit(&root));
    println!(
        "cargo:rustc-env=GRIDSHIP_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}

/// Every path below `dir`, relative, parents first, sorted by name.
fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let dir = base.join(rel);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let is_dir = std::fs::symlink_metadata(base.join(&child)).is_ok_and(|m| m.is_dir());
        out.push(child.clone());
        if is_dir {
            walk(base, &child, out);
        }
    }
}

fn git_commit(root: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    // Rebuild when HEAD moves (a worktree's .git is a file, so ask git).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch(&Path::new(&dir).join("HEAD"));
        // Every commit and checkout appends here, also when the branch's
        // ref is only in packed-refs.
        watch(&Path::new(&dir).join("logs/HEAD"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&Path::new(&dir).join(r));
        }
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            let common = root.join(common);
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(&common.join(r));
            }
            watch(&common.join("packed-refs"));
        }
    }
    Some(commit)
}

/// Watch a git file for changes, if it exists: cargo reruns a build script
/// every build for a watched path that is missing (a fresh checkout without
/// packed-refs, a branch whose ref is only packed), recompiling the crate.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
