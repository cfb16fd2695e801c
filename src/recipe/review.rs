//! The review gate: a recipe builds as "reviewed" only when every file of
//! its build context is exactly what the reviewed branch holds.
//!
//! Rules (see recipes/README.md):
//! - the recipe directory is inside a git repository (`Repository::discover`);
//! - the reviewed branch exists: the local branch, else `origin/BRANCH`;
//! - every context file is in the branch tip's tree with the same blob id
//!   and the same mode (executable bit, symlink), and every file the tip has
//!   under the recipe directory is present in the working tree;
//! - optionally the recipe's last change on the branch (the *recipe commit*,
//!   found along the branch's first-parent history, so that for a merge
//!   request it is the merge commit) carries a signature that verifies
//!   (OpenPGP through gpg, SSH through `ssh-keygen -Y verify` and git's
//!   `gpg.ssh.allowedSignersFile`);
//! - optionally it was reviewed by someone listed in the branch's
//!   `REVIEWERS` file who is not its author (a `Reviewed-by:` trailer, or
//!   the committer of a merge commit that merged someone else's changes).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{BranchType, Commit, ObjectType, Oid, Repository, Tree, TreeWalkMode, TreeWalkResult};
use serde::Serialize;

use super::Recipe;
use crate::error::{Error, IoContext, Result};

/// What the review gate requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewPolicy {
    /// The reviewed branch (local, else `origin/BRANCH`).
    pub branch: String,
    /// The recipe commit must carry a signature that verifies.
    pub require_signed: bool,
    /// The recipe commit must be reviewed by someone in `REVIEWERS`.
    pub reviewers: bool,
}

impl Default for ReviewPolicy {
    fn default() -> Self {
        ReviewPolicy {
            branch: "main".into(),
            require_signed: false,
            reviewers: false,
        }
    }
}

/// Where a reviewed recipe comes from: what the image's provenance labels say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    /// The recipe's name (directory under recipes/).
    pub recipe: String,
    /// The repository's working tree root.
    pub repo_root: PathBuf,
    /// The branch that was checked: `main`, or `origin/main` when there is no local one.
    pub branch: String,
    /// Full hex id of the branch tip.
    pub commit: String,
    /// Last commit on the branch (first-parent history) that changed the recipe directory.
    pub recipe_commit: String,
    /// The recipe directory relative to the repository root (`recipes/NAME`).
    pub recipe_path: String,
    /// OpenPGP: the primary key fingerprint; SSH: the allowed-signers principal.
    pub signed_by: Option<String>,
    /// Reviewers as `Name <email>` (with `reviewers` on).
    pub reviewed_by: Vec<String>,
    /// `origin`'s URL, credentials removed.
    pub origin_url: Option<String>,
}

impl Review {
    /// Provenance labels for the built image.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            l.insert(k.to_string(), v.to_string());
        };
        put("org.opencontainers.image.revision", &self.commit);
        if let Some(u) = &self.origin_url {
            put("org.opencontainers.image.source", u);
        }
        put("gridship.recipe", &self.recipe);
        if !self.recipe_path.is_empty() {
            put("gridship.recipe.path", &self.recipe_path);
        }
        put("gridship.recipe.commit", &self.recipe_commit);
        put("gridship.reviewed", "true");
        put("gridship.reviewed.branch", &self.branch);
        if !self.reviewed_by.is_empty() {
            put("gridship.reviewed.by", &self.reviewed_by.join(", "));
        }
        if let Some(s) = &self.signed_by {
            put("gridship.reviewed.signed-by", s);
        }
        l
    }
}

/// Labels for an image built with `--allow-unreviewed`.
pub fn unreviewed_labels(recipe: &Recipe) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("gridship.recipe".to_string(), recipe.name.clone()),
        ("gridship.reviewed".to_string(), "false".to_string()),
    ])
}

const UNREVIEWED: &str = "for a local experiment build with --allow-unreviewed (the image is labelled gridship.reviewed=false)";

fn refuse(recipe: &Recipe, reason: impl Into<String>, hint: impl Into<String>) -> Error {
    Error::BadInput {
        input: format!("recipe {} ({})", recipe.name, recipe.dir.display()),
        place: String::new(),
        reason: reason.into(),
        hint: Some(hint.into()),
    }
}

fn git_err(recipe: &Recipe, what: &str, e: git2::Error) -> Error {
    Error::Other(format!(
        "recipe {} ({}): {what}: {}",
        recipe.name,
        recipe.dir.display(),
        e.message()
    ))
}

fn short(id: Oid) -> String {
    id.to_string()[..8].to_string()
}

/// Check that `recipe` is reviewed under `policy`; the refusal names every
/// offending file, the commit and what to do.
pub fn check_review(recipe: &Recipe, policy: &ReviewPolicy) -> Result<Review> {
    let repo = Repository::discover(&recipe.dir).map_err(|_| {
        refuse(
            recipe,
            "is not inside a git repository, so its review cannot be checked",
            format!(
                "clone the recipes repository (or `git init` and commit the recipe through review); {UNREVIEWED}"
            ),
        )
    })?;
    let Some(workdir) = repo.workdir() else {
        return Err(refuse(
            recipe,
            "its repository is bare",
            "build from a checkout of the recipes repository",
        ));
    };
    let root = workdir.canonicalize().at("resolving", workdir)?;
    let dir = recipe.dir.canonicalize().at("resolving", &recipe.dir)?;
    let rel = dir.strip_prefix(&root).map_err(|_| {
        refuse(
            recipe,
            format!("is not below {}", root.display()),
            UNREVIEWED,
        )
    })?;
    let rel_parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let recipe_path = rel_parts.join("/");
    let in_repo = |f: &str| {
        if recipe_path.is_empty() {
            f.to_string()
        } else {
            format!("{recipe_path}/{f}")
        }
    };

    let (branch, tip) = find_branch(&repo, recipe, &policy.branch, &root)?;
    let tip_tree = tip.tree().map_err(|e| git_err(recipe, "reading tree", e))?;
    let b = &branch;
    let at = short(tip.id());

    // The context against the branch tip.
    let files = recipe.context_files()?;
    let head_tree = repo.head().ok().and_then(|h| h.peel_to_tree().ok());
    let head_name = repo
        .head()
        .ok()
        .and_then(|h| h.shorthand().ok().map(str::to_string))
        .unwrap_or_else(|| "HEAD".into());
    let mut problems: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let f_str = f.to_string_lossy().into_owned();
        let p = in_repo(&f_str);
        seen.insert(p.clone());
        let abs = recipe.dir.join(f);
        let (mode, id) = work_blob(&abs)?;
        let in_head = head_tree
            .as_ref()
            .and_then(|t| t.get_path(Path::new(&p)).ok())
            .is_some_and(|e| e.id() == id && e.filemode() == mode);
        match tip_tree.get_path(Path::new(&p)) {
            Ok(e) if e.kind() == Some(ObjectType::Blob) => {
                if e.id() != id {
                    problems.push(format!(
                        "{p}: differs from {b} at {at} ({})",
                        if in_head {
                            format!("committed on {head_name}, not merged into {b}")
                        } else {
                            "change not committed".to_string()
                        }
                    ));
                } else if e.filemode() != mode {
                    problems.push(format!(
                        "{p}: mode {mode:o} here, {:o} on {b} at {at} (executable bit or symlink differs)",
                        e.filemode()
                    ));
                }
            }
            Ok(_) => problems.push(format!("{p}: is not a file on {b} at {at}")),
            Err(_) if in_head => {
                problems.push(format!("{p}: not on {b} (committed on {head_name} only)"))
            }
            Err(_) => problems.push(format!("{p}: not committed (not on {b})")),
        }
    }
    // Files the branch has in the recipe directory that the working tree lacks.
    let sub_tree = if recipe_path.is_empty() {
        Some(tip_tree.clone())
    } else {
        tip_tree
            .get_path(rel)
            .ok()
            .and_then(|e| e.to_object(&repo).ok())
            .and_then(|o| o.into_tree().ok())
    };
    if let Some(t) = &sub_tree {
        t.walk(TreeWalkMode::PreOrder, |dir, e| {
            if e.kind() != Some(ObjectType::Tree) {
                let p = in_repo(&format!("{dir}{}", e.name().unwrap_or("?")));
                if !seen.contains(&p) {
                    problems.push(format!(
                        "{p}: on {b} at {at} but missing from the working tree (deleted)"
                    ));
                }
            }
            TreeWalkResult::Ok
        })
        .map_err(|e| git_err(recipe, "walking tree", e))?;
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(refuse(
            recipe,
            format!(
                "not reviewed: the build context does not match branch {b} (tip {at}) of {}:\n    {}",
                root.display(),
                problems.join("\n    ")
            ),
            format!(
                "commit the files, push them and have them merged into {b} through review (a merge request); {UNREVIEWED}"
            ),
        ));
    }

    let recipe_commit = last_change(&repo, &tip, rel, recipe)?;
    let signed_by = if policy.require_signed {
        Some(verify_signature(&repo, &recipe_commit, recipe, b)?)
    } else {
        None
    };
    let reviewed_by = if policy.reviewers {
        check_reviewers(&repo, &tip_tree, &recipe_commit, rel, recipe, b)?
    } else {
        Vec::new()
    };
    let origin_url = repo
        .find_remote("origin")
        .ok()
        .and_then(|r| r.url().ok().map(strip_credentials));
    Ok(Review {
        recipe: recipe.name.clone(),
        repo_root: root,
        branch,
        commit: tip.id().to_string(),
        recipe_commit: recipe_commit.id().to_string(),
        recipe_path,
        signed_by,
        reviewed_by,
        origin_url,
    })
}

/// The local branch, else the remote-tracking `origin/BRANCH`.
fn find_branch<'r>(
    repo: &'r Repository,
    recipe: &Recipe,
    name: &str,
    root: &Path,
) -> Result<(String, Commit<'r>)> {
    let candidates = [
        (name.to_string(), BranchType::Local),
        (format!("origin/{name}"), BranchType::Remote),
    ];
    for (n, kind) in candidates {
        if let Ok(br) = repo.find_branch(&n, kind) {
            let c = br
                .get()
                .peel_to_commit()
                .map_err(|e| git_err(recipe, &format!("reading branch {n}"), e))?;
            return Ok((n, c));
        }
    }
    let mut known: Vec<String> = repo
        .branches(None)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|(b, _)| b.name().ok().flatten().map(str::to_string))
        .collect();
    known.sort();
    Err(refuse(
        recipe,
        format!(
            "the reviewed branch '{name}' does not exist in {} (neither a local branch nor origin/{name}); branches there: {}",
            root.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
        format!(
            "fetch it (`git fetch origin {name}`) or name the branch your recipes are reviewed on; {UNREVIEWED}"
        ),
    ))
}

/// The git mode and blob id of a working-tree file (symlinks as links).
fn work_blob(abs: &Path) -> Result<(i32, Oid)> {
    let md = std::fs::symlink_metadata(abs).at("reading", abs)?;
    if md.file_type().is_symlink() {
        let t = std::fs::read_link(abs).at("reading link", abs)?;
        let id = Oid::hash_object(ObjectType::Blob, t.as_os_str().as_encoded_bytes())
            .map_err(|e| Error::Other(format!("hashing {}: {}", abs.display(), e.message())))?;
        return Ok((0o120000, id));
    }
    let id = Oid::hash_file(ObjectType::Blob, abs)
        .map_err(|e| Error::Other(format!("hashing {}: {}", abs.display(), e.message())))?;
    let mode = if md.permissions().mode() & 0o100 != 0 {
        0o100755
    } else {
        0o100644
    };
    Ok((mode, id))
}

fn subtree_id(c: &Commit<'_>, rel: &Path) -> Option<Oid> {
    let t = c.tree().ok()?;
    if rel.as_os_str().is_empty() {
        Some(t.id())
    } else {
        t.get_path(rel).ok().map(|e| e.id())
    }
}

/// Walk the first-parent history from the tip to the first commit whose
/// recipe directory differs from its first parent's.
fn last_change<'r>(
    _repo: &'r Repository,
    tip: &Commit<'r>,
    rel: &Path,
    recipe: &Recipe,
) -> Result<Commit<'r>> {
    let mut c = tip.clone();
    let mut id = subtree_id(&c, rel);
    loop {
        let Ok(p) = c.parent(0) else { return Ok(c) };
        let pid = subtree_id(&p, rel);
        if pid != id {
            return Ok(c);
        }
        c = p;
        id = pid;
        if id.is_none() {
            return Err(Error::Other(format!(
                "recipe {}: no commit on the branch adds {}",
                recipe.name,
                rel.display()
            )));
        }
    }
}

fn git_config_str(repo: &Repository, key: &str) -> Option<String> {
    repo.config().ok()?.get_string(key).ok()
}

/// Verify the commit's signature; returns who signed.
fn verify_signature(
    repo: &Repository,
    commit: &Commit<'_>,
    recipe: &Recipe,
    branch: &str,
) -> Result<String> {
    let at = short(commit.id());
    let what = format!(
        "commit {at} (last change of the recipe on {branch}, \"{}\")",
        commit.summary().ok().flatten().unwrap_or("")
    );
    let (sig, data) = match repo.extract_signature(&commit.id(), None) {
        Ok(x) => x,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(refuse(
                recipe,
                format!("{what} is not signed, and signed commits are required"),
                format!(
                    "have the change merged into {branch} as a signed commit (git commit -S / a signed merge); {UNREVIEWED}"
                ),
            ));
        }
        Err(e) => return Err(git_err(recipe, "reading the commit signature", e)),
    };
    let sig_text = String::from_utf8_lossy(&sig).into_owned();
    let tmp = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let sig_path = tmp.path().join("commit.sig");
    let data_path = tmp.path().join("commit.data");
    std::fs::write(&sig_path, &*sig).at("writing", &sig_path)?;
    std::fs::write(&data_path, &*data).at("writing", &data_path)?;
    let bad_sig = |why: String| {
        refuse(
            recipe,
            format!("{what}: the signature does not verify: {why}"),
            format!(
                "sign with a key the verifier trusts (import the signer's public key, or add it to the allowed signers file) and have the change merged into {branch} again; {UNREVIEWED}"
            ),
        )
    };
    if sig_text.contains("-----BEGIN PGP SIGNATURE-----") {
        let program = git_config_str(repo, "gpg.openpgp.program")
            .or_else(|| git_config_str(repo, "gpg.program"))
            .unwrap_or_else(|| "gpg".into());
        let out = Command::new(&program)
            .args(["--batch", "--no-tty", "--status-fd", "1", "--verify"])
            .arg(&sig_path)
            .arg(&data_path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {program} to verify {what}"), e))?;
        let status = String::from_utf8_lossy(&out.stdout);
        let mut good = false;
        let mut fpr = None;
        for line in status.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("[GNUPG:]") {
                continue;
            }
            match w.next() {
                Some("GOODSIG") => good = true,
                Some("VALIDSIG") => {
                    let f: Vec<&str> = w.collect();
                    // VALIDSIG FPR date ts expire ver reserved algo hash class [PRIMARY-FPR]
                    fpr = f.get(9).or(f.first()).map(|s| s.to_string());
                }
                Some(k @ ("BADSIG" | "ERRSIG" | "EXPSIG" | "EXPKEYSIG" | "REVKEYSIG")) => {
                    return Err(bad_sig(format!(
                        "gpg reports {k}{}",
                        if k == "ERRSIG" {
                            " (the signing key is not in the keyring)"
                        } else {
                            ""
                        }
                    )));
                }
                _ => {}
            }
        }
        return match (good, fpr, out.status.success()) {
            (true, Some(f), true) => Ok(f),
            _ => Err(bad_sig(format!(
                "gpg --verify failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        };
    }
    if sig_text.contains("-----BEGIN SSH SIGNATURE-----") {
        let Some(allowed) = repo
            .config()
            .ok()
            .and_then(|c| c.get_path("gpg.ssh.allowedSignersFile").ok())
        else {
            return Err(refuse(
                recipe,
                format!(
                    "{what} has an SSH signature, but git config gpg.ssh.allowedSignersFile is not set"
                ),
                "point it at the allowed signers file of the reviewers: git config gpg.ssh.allowedSignersFile FILE",
            ));
        };
        let program =
            git_config_str(repo, "gpg.ssh.program").unwrap_or_else(|| "ssh-keygen".into());
        let out = Command::new(&program)
            .args(["-Y", "find-principals", "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&sig_path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("running {program} to verify {what}"), e))?;
        let principals: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if !out.status.success() || principals.is_empty() {
            return Err(bad_sig(format!(
                "the SSH key is not in the allowed signers file {}",
                allowed.display()
            )));
        }
        let mut errors = Vec::new();
        for p in principals {
            let data_file = std::fs::File::open(&data_path).at("reading", &data_path)?;
            let out = Command::new(&program)
                .args(["-Y", "verify", "-f"])
                .arg(&allowed)
                .args(["-I", &p, "-n", "git", "-s"])
                .arg(&sig_path)
                .stdin(data_file)
                .output()
                .map_err(|e| Error::io(format!("running {program} to verify {what}"), e))?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("Good") {
                return Ok(p);
            }
            errors.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        return Err(bad_sig(format!(
            "ssh-keygen -Y verify failed: {}",
            errors.join("; ")
        )));
    }
    Err(bad_sig(
        "unsupported signature type (only OpenPGP and SSH signatures are checked)".into(),
    ))
}

/// Parse `REVIEWERS`: one `email` or `Name <email>` per line, `#` comments.
/// Returns lower-case email → the line as written.
fn parse_reviewers(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| (email_of(l).to_lowercase(), l.to_string()))
        .collect()
}

/// `Name <email>` → `email`; a bare address stays as it is.
fn email_of(s: &str) -> &str {
    match (s.rfind('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].trim(),
        _ => s.trim(),
    }
}

fn check_reviewers(
    repo: &Repository,
    tip_tree: &Tree<'_>,
    commit: &Commit<'_>,
    rel: &Path,
    recipe: &Recipe,
    branch: &str,
) -> Result<Vec<String>> {
    let at = short(commit.id());
    let reviewers = match tip_tree.get_path(Path::new("REVIEWERS")) {
        Ok(e) => {
            let blob = e
                .to_object(repo)
                .and_then(|o| o.peel_to_blob())
                .map_err(|e| git_err(recipe, "reading REVIEWERS", e))?;
            parse_reviewers(&String::from_utf8_lossy(blob.content()))
        }
        Err(_) => {
            return Err(refuse(
                recipe,
                format!(
                    "reviewers are required, but {branch} has no REVIEWERS file at the repository root"
                ),
                format!("add REVIEWERS (one `Name <email>` per line) to {branch} through review"),
            ));
        }
    };
    let list: Vec<&str> = reviewers.values().map(String::as_str).collect();
    let hint = format!(
        "get a review from one of {} and add a `Reviewed-by: Name <email>` trailer (or have the reviewer merge it into {branch}); {UNREVIEWED}",
        if list.is_empty() {
            "the reviewers (REVIEWERS lists none)".to_string()
        } else {
            list.join(", ")
        }
    );
    let author = commit.author().email().unwrap_or("").to_lowercase();
    let mut found = Vec::new();
    let mut self_reviewed = false;
    let message = commit.message().unwrap_or("");
    if let Ok(trailers) = git2::message_trailers_strs(message) {
        for (k, v) in trailers.iter() {
            if !k.eq_ignore_ascii_case("Reviewed-by") {
                continue;
            }
            let email = email_of(v).to_lowercase();
            if !reviewers.contains_key(&email) {
                continue;
            }
            if email == author {
                self_reviewed = true;
            } else if !found.contains(&v.trim().to_string()) {
                found.push(v.trim().to_string());
            }
        }
    }
    if found.is_empty() && commit.parent_count() > 1 {
        // A merge: its committer reviewed what it brings in, unless they wrote it.
        let committer = commit.committer();
        let c_email = committer.email().unwrap_or("").to_lowercase();
        if reviewers.contains_key(&c_email) {
            let authors = merged_authors(repo, commit, rel)
                .map_err(|e| git_err(recipe, "walking merged commits", e))?;
            if authors.contains(&c_email) {
                self_reviewed = true;
            } else {
                found.push(format!(
                    "{} <{}>",
                    committer.name().unwrap_or(""),
                    committer.email().unwrap_or("")
                ));
            }
        }
    }
    if found.is_empty() {
        let why = if self_reviewed {
            format!("is reviewed only by its own author <{author}>")
        } else {
            format!(
                "has no Reviewed-by trailer naming a reviewer from REVIEWERS (author <{author}>)"
            )
        };
        return Err(refuse(
            recipe,
            format!(
                "commit {at} (last change of the recipe on {branch}, \"{}\") {why}",
                commit.summary().ok().flatten().unwrap_or("")
            ),
            hint,
        ));
    }
    Ok(found)
}

/// Lower-case author emails of the commits a merge brings in (reachable from
/// its other parents, not from the first) that change the recipe directory.
fn merged_authors(
    repo: &Repository,
    merge: &Commit<'_>,
    rel: &Path,
) -> std::result::Result<BTreeSet<String>, git2::Error> {
    let mut walk = repo.revwalk()?;
    for p in merge.parent_ids().skip(1) {
        walk.push(p)?;
    }
    walk.hide(merge.parent_id(0)?)?;
    let mut out = BTreeSet::new();
    for id in walk {
        let c = repo.find_commit(id?)?;
        let changed = if c.parent_count() == 0 {
            true
        } else {
            c.parents()
                .all(|p| subtree_id(&p, rel) != subtree_id(&c, rel))
        };
        if changed {
            out.insert(c.author().email().unwrap_or("").to_lowercase());
        }
    }
    Ok(out)
}

/// `https://user:token@host/x` → `https://host/x` (scp-like `git@host:x` stays).
fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((_, host)) = auth.rsplit_once('@') {
            return format!("{scheme}://{host}{path}");
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviewers_file() {
        let r = parse_reviewers(
            "# recipe reviewers\nAlice Admin <Alice@Example.org>\n\nbob@example.org  # grid ops\n",
        );
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            ["alice@example.org", "bob@example.org"]
        );
        assert_eq!(r["alice@example.org"], "Alice Admin <Alice@Example.org>");
        assert_eq!(email_of("Bob <bob@x>"), "bob@x");
        assert_eq!(email_of(" bob@x "), "bob@x");
    }

    #[test]
    fn credentials_leave_urls() {
        assert_eq!(
            strip_credentials("https://oauth2:glpat-x@gitlab.cern.ch/g/recipes.git"),
            "https://gitlab.cern.ch/g/recipes.git"
        );
        assert_eq!(
            strip_credentials("https://gitlab.cern.ch/a@b/r.git"),
            "https://gitlab.cern.ch/a@b/r.git"
        );
        assert_eq!(
            strip_credentials("git@github.com:org/recipes.git"),
            "git@github.com:org/recipes.git"
        );
    }

    #[test]
    fn labels() {
        let r = Review {
            recipe: "debian12-dev".into(),
            repo_root: "/r".into(),
            branch: "main".into(),
            commit: "a".repeat(40),
            recipe_commit: "b".repeat(40),
            recipe_path: "recipes/debian12-dev".into(),
            signed_by: None,
            reviewed_by: vec!["A <a@x>".into(), "B <b@x>".into()],
            origin_url: None,
        };
        let l = r.labels();
        assert_eq!(l["org.opencontainers.image.revision"], "a".repeat(40));
        assert_eq!(l["gridship.recipe.commit"], "b".repeat(40));
        assert_eq!(l["gridship.reviewed"], "true");
        assert_eq!(l["gridship.reviewed.by"], "A <a@x>, B <b@x>");
        assert!(!l.contains_key("org.opencontainers.image.source"));
    }
}
