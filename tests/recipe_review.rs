//! The recipe review gate against real git repositories made with the git
//! CLI (independent of the git2 code under test), real gpg keys in a
//! throwaway GNUPGHOME and real ssh-keygen signatures.

use std::path::{Path, PathBuf};
use std::process::Command;

use gridship::config::{Kind, SearchPath};
use gridship::recipe::{Recipe, Review, ReviewPolicy, check_review, unreviewed_labels};

const DOCKERFILE: &str =
    "ARG BASE=docker.io/library/debian:bookworm\nFROM ${BASE}\nCOPY motd /etc/motd\n";
const YAML: &str =
    "description: test\nbase: {image: docker.io/library/debian:bookworm}\nsites: [glasgow]\n";

struct Repo {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    /// A repository on branch main with recipes/demo committed, then a
    /// later commit that touches only the top-level README.
    fn new() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap().join("recipes-repo");
        std::fs::create_dir(&root).unwrap();
        let r = Repo { _tmp: tmp, root };
        r.git(&["init", "-q", "-b", "main"]);
        r.write("recipes/demo/Dockerfile", DOCKERFILE);
        r.write("recipes/demo/recipe.yaml", YAML);
        r.write("recipes/demo/motd", "reviewed\n");
        r.write("recipes/other/recipe.yaml", YAML);
        r.write("recipes/other/Dockerfile", DOCKERFILE);
        r.commit_all("alice", "Add demo recipe");
        r.write("README.md", "recipes\n");
        r.commit_all("alice", "README");
        r
    }

    fn git(&self, args: &[&str]) -> String {
        self.git_as("alice", args)
    }

    fn git_as(&self, who: &str, args: &[&str]) -> String {
        let name = format!("{}{}", who[..1].to_uppercase(), &who[1..]);
        let email = format!("{who}@example.org");
        run(Command::new("git")
            .current_dir(&self.root)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", &name)
            .env("GIT_AUTHOR_EMAIL", &email)
            .env("GIT_COMMITTER_NAME", &name)
            .env("GIT_COMMITTER_EMAIL", &email)
            .args(args))
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn commit_all(&self, who: &str, msg: &str) {
        self.git_as(who, &["add", "-A"]);
        self.git_as(who, &["commit", "-q", "-m", msg]);
    }

    fn rev(&self, what: &str) -> String {
        self.git(&["rev-parse", what])
    }

    fn recipe(&self) -> Recipe {
        Recipe::load(&self.root.join("recipes"), "demo").unwrap()
    }

    fn check(&self, policy: &ReviewPolicy) -> Result<Review, String> {
        check_review(&self.recipe(), policy).map_err(|e| {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        })
    }

    fn refused(&self, policy: &ReviewPolicy) -> String {
        match self.check(policy) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(e) => e,
        }
    }
}

fn plain() -> ReviewPolicy {
    ReviewPolicy::default()
}

fn has(e: &str, parts: &[&str]) {
    eprintln!("----\n{e}");
    for p in parts {
        assert!(e.contains(p), "missing {p:?} in:\n{e}");
    }
}

#[test]
fn committed_recipe_passes_with_exact_fields() {
    let r = Repo::new();
    r.git(&[
        "remote",
        "add",
        "origin",
        "https://oauth2:glpat-secret@gitlab.example.org/grid/recipes.git",
    ]);
    let review = r.check(&plain()).unwrap();
    assert_eq!(
        review,
        Review {
            recipe: "demo".into(),
            repo_root: r.root.clone(),
            branch: "main".into(),
            commit: r.rev("main"),
            recipe_commit: r.rev("main~1"),
            recipe_path: "recipes/demo".into(),
            signed_by: None,
            reviewed_by: vec![],
            origin_url: Some("https://gitlab.example.org/grid/recipes.git".into()),
        }
    );
    let l = review.labels();
    assert_eq!(l["org.opencontainers.image.revision"], r.rev("main"));
    assert_eq!(
        l["org.opencontainers.image.source"],
        "https://gitlab.example.org/grid/recipes.git"
    );
    assert_eq!(l["gridship.recipe"], "demo");
    assert_eq!(l["gridship.recipe.commit"], r.rev("main~1"));
    assert_eq!(l["gridship.reviewed"], "true");
    assert_eq!(l["gridship.reviewed.branch"], "main");
    let u = unreviewed_labels(&r.recipe());
    assert_eq!(u["gridship.reviewed"], "false");
    assert_eq!(u["gridship.recipe"], "demo");

    // Checking out a feature branch does not matter while the files match main.
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.write("recipes/other/motd", "x\n");
    r.commit_all("alice", "other recipe only");
    assert_eq!(r.check(&plain()).unwrap().commit, r.rev("main"));
}

#[test]
fn modified_file_is_refused() {
    let r = Repo::new();
    r.write(
        "recipes/demo/Dockerfile",
        &format!("{DOCKERFILE}RUN true\n"),
    );
    let e = r.refused(&plain());
    let at = &r.rev("main")[..8];
    has(
        &e,
        &[
            &format!("recipes/demo/Dockerfile: differs from main at {at} (change not committed)"),
            "merge request",
            "--allow-unreviewed",
            "gridship.reviewed=false",
        ],
    );
    assert!(!e.contains("motd"), "{e}");
    // Committed on a branch but not merged: still differs from main.
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.commit_all("alice", "change");
    has(
        &r.refused(&plain()),
        &[
            "recipes/demo/Dockerfile: differs from main",
            "committed on feature, not merged into main",
        ],
    );
}

#[test]
fn executable_bit_counts() {
    let r = Repo::new();
    let p = r.root.join("recipes/demo/motd");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    has(
        &r.refused(&plain()),
        &["recipes/demo/motd: mode 100755 here, 100644 on main"],
    );
}

#[test]
fn untracked_file_is_refused() {
    let r = Repo::new();
    r.write("recipes/demo/extra.sh", "echo unreviewed\n");
    r.write("recipes/demo/.hidden/x", "y\n");
    let e = r.refused(&plain());
    has(
        &e,
        &[
            "recipes/demo/extra.sh: not committed (not on main)",
            "recipes/demo/.hidden/x: not committed",
        ],
    );
    // Ignored files enter the build context as well.
    r.write(".gitignore", "*.sh\n");
    r.commit_all("alice", "ignore scripts");
    has(
        &r.refused(&plain()),
        &["recipes/demo/extra.sh: not committed"],
    );
}

#[test]
fn file_only_on_another_branch_is_refused() {
    let r = Repo::new();
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.write("recipes/demo/setup.sh", "echo hi\n");
    r.commit_all("alice", "setup script");
    has(
        &r.refused(&plain()),
        &["recipes/demo/setup.sh: not on main (committed on feature only)"],
    );
}

#[test]
fn deleted_file_is_refused() {
    let r = Repo::new();
    std::fs::remove_file(r.root.join("recipes/demo/motd")).unwrap();
    has(
        &r.refused(&plain()),
        &[
            "recipes/demo/motd: on main at",
            "missing from the working tree",
        ],
    );
}

#[test]
fn missing_branch_and_remote_fallback() {
    let r = Repo::new();
    let policy = ReviewPolicy {
        branch: "production".into(),
        ..plain()
    };
    has(
        &r.refused(&policy),
        &[
            "reviewed branch 'production' does not exist",
            "origin/production",
            "branches there: main",
            "git fetch origin production",
        ],
    );

    // A clone whose local main is gone falls back to origin/main.
    let clone_parent = tempfile::tempdir().unwrap();
    let clone = clone_parent.path().canonicalize().unwrap().join("c");
    run(Command::new("git")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["clone", "-q"])
        .arg(&r.root)
        .arg(&clone));
    let c = Repo {
        _tmp: clone_parent,
        root: clone,
    };
    c.git(&["checkout", "-q", "--detach"]);
    c.git(&["branch", "-q", "-D", "main"]);
    let review = c.check(&plain()).unwrap();
    assert_eq!(review.branch, "origin/main");
    assert_eq!(review.commit, r.rev("main"));
    assert_eq!(review.origin_url.as_deref(), Some(r.root.to_str().unwrap()));
}

#[test]
fn outside_a_repository_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = tmp.path().join("recipes");
    std::fs::create_dir_all(recipes.join("demo")).unwrap();
    std::fs::write(recipes.join("demo/Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(recipes.join("demo/recipe.yaml"), YAML).unwrap();
    let recipe = Recipe::load(&recipes, "demo").unwrap();
    // tempdirs live under /tmp, which is no repository here.
    let e = check_review(&recipe, &plain()).unwrap_err().to_string();
    has(
        &e,
        &[
            "recipe demo",
            "not inside a git repository",
            "git init",
            "--allow-unreviewed",
        ],
    );
}

// ---- signatures ----

/// A throwaway GNUPGHOME with one ed25519 key; `gpg.program` in the repo
/// points at a wrapper that uses it (the process environment stays alone).
struct Gpg {
    home: tempfile::TempDir,
    fpr: String,
}

impl Gpg {
    fn new(uid: &str) -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        let gpg = |args: &[&str]| {
            run(Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args(["--batch", "--quiet"])
                .args(args))
        };
        gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            "never",
        ]);
        let out = gpg(&["--with-colons", "--list-secret-keys"]);
        let fpr = out
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .unwrap()
            .to_string();
        Gpg { home, fpr }
    }

    fn empty() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        Gpg {
            home,
            fpr: String::new(),
        }
    }

    /// A wrapper script (in the GNUPGHOME itself) that runs gpg with it.
    fn wrapper(&self) -> PathBuf {
        let w = self.home.path().join("gpg-wrapper");
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\nGNUPGHOME='{}' exec gpg \"$@\"\n",
                self.home.path().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        w
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

fn signed() -> ReviewPolicy {
    ReviewPolicy {
        require_signed: true,
        ..plain()
    }
}

#[test]
fn gpg_signed_commit_passes_unsigned_and_unknown_key_refused() {
    let r = Repo::new();
    // The recipe commit (main~1) is unsigned.
    let e = r.refused(&signed());
    let rc = &r.rev("main~1")[..8];
    has(
        &e,
        &[
            "recipe demo",
            &format!(
                "commit {rc} (last change of the recipe on main, \"Add demo recipe\") is not signed"
            ),
        ],
    );

    let key = Gpg::new("Alice <alice@example.org>");
    let w = key.wrapper();
    r.git(&["config", "gpg.program", w.to_str().unwrap()]);
    r.write("recipes/demo/motd", "signed change\n");
    r.git(&["add", "-A"]);
    r.git(&[
        "-c",
        &format!("user.signingkey={}", key.fpr),
        "commit",
        "-q",
        "-S",
        "-m",
        "signed",
    ]);
    let review = r.check(&signed()).unwrap();
    assert_eq!(review.signed_by.as_deref(), Some(key.fpr.as_str()));
    assert_eq!(review.recipe_commit, r.rev("main"));
    assert_eq!(review.labels()["gridship.reviewed.signed-by"], key.fpr);

    // The same commit verified against a keyring without the key.
    let other = Gpg::empty();
    r.git(&["config", "gpg.program", other.wrapper().to_str().unwrap()]);
    let e = r.refused(&signed());
    has(
        &e,
        &[
            &format!("commit {}", &r.rev("main")[..8]),
            "the signature does not verify",
            "not in the keyring",
            "recipe demo",
        ],
    );
    // A later unrelated commit does not change which commit is checked.
    r.git(&["config", "gpg.program", w.to_str().unwrap()]);
    r.write("README.md", "more\n");
    r.commit_all("alice", "unsigned README");
    assert_eq!(
        r.check(&signed()).unwrap().signed_by.as_deref(),
        Some(key.fpr.as_str())
    );
}

fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

#[test]
fn ssh_signed_commit_passes_with_allowed_signers() {
    let r = Repo::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path(), "alice");
    let (stranger, _) = ssh_key(keys.path(), "mallory");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("alice@example.org namespaces=\"git\" {public}\n"),
    )
    .unwrap();
    r.git(&["config", "gpg.format", "ssh"]);
    r.write("recipes/demo/motd", "ssh signed\n");
    r.git(&["add", "-A"]);
    let pubkey = format!("user.signingkey={}", key.with_extension("pub").display());
    r.git(&["-c", &pubkey, "commit", "-q", "-S", "-m", "ssh signed"]);

    // Without an allowed signers file there is nothing to verify against.
    has(
        &r.refused(&signed()),
        &["has an SSH signature", "gpg.ssh.allowedSignersFile"],
    );
    r.git(&[
        "config",
        "gpg.ssh.allowedSignersFile",
        allowed.to_str().unwrap(),
    ]);
    let review = r.check(&signed()).unwrap();
    assert_eq!(review.signed_by.as_deref(), Some("alice@example.org"));

    // A key not in the allowed signers file.
    r.write("recipes/demo/motd", "mallory\n");
    r.git(&["add", "-A"]);
    let pubkey = format!(
        "user.signingkey={}",
        stranger.with_extension("pub").display()
    );
    r.git(&["-c", &pubkey, "commit", "-q", "-S", "-m", "mallory"]);
    has(
        &r.refused(&signed()),
        &[
            "the signature does not verify",
            "not in the allowed signers file",
        ],
    );
}

// ---- REVIEWERS ----

fn reviewed() -> ReviewPolicy {
    ReviewPolicy {
        reviewers: true,
        ..plain()
    }
}

fn with_reviewers() -> Repo {
    let r = Repo::new();
    r.write(
        "REVIEWERS",
        "# people who review recipes\nAlice Admin <alice@example.org>\nbob@example.org  # grid ops\n",
    );
    r.commit_all("alice", "REVIEWERS");
    r
}

#[test]
fn reviewers_trailer_passes() {
    let r = with_reviewers();
    r.write("recipes/demo/motd", "reviewed by bob\n");
    r.commit_all(
        "alice",
        "Change motd\n\nReviewed-by: Carol <carol@example.org>\nReviewed-by: Bob <bob@example.org>",
    );
    let review = r.check(&reviewed()).unwrap();
    assert_eq!(review.reviewed_by, ["Bob <bob@example.org>"]);
    assert_eq!(
        review.labels()["gridship.reviewed.by"],
        "Bob <bob@example.org>"
    );
}

#[test]
fn self_review_and_missing_trailer_refused() {
    let r = with_reviewers();
    r.write("recipes/demo/motd", "self reviewed\n");
    r.commit_all(
        "alice",
        "Change motd\n\nReviewed-by: Alice <alice@example.org>",
    );
    let at = &r.rev("main")[..8];
    has(
        &r.refused(&reviewed()),
        &[
            &format!("commit {at} (last change of the recipe on main, \"Change motd\")"),
            "reviewed only by its own author <alice@example.org>",
            "Alice Admin <alice@example.org>, bob@example.org",
        ],
    );
    r.write("recipes/demo/motd", "no trailer\n");
    r.commit_all("alice", "Change motd again");
    has(
        &r.refused(&reviewed()),
        &[
            "has no Reviewed-by trailer naming a reviewer from REVIEWERS",
            "get a review from one of",
        ],
    );
}

#[test]
fn reviewers_file_missing_refused() {
    let r = Repo::new();
    has(
        &r.refused(&reviewed()),
        &["main has no REVIEWERS file at the repository root"],
    );
}

#[test]
fn merge_by_a_reviewer_passes_self_merge_refused() {
    let r = with_reviewers();
    r.git(&["checkout", "-q", "-b", "carol-change"]);
    r.write("recipes/demo/motd", "from carol\n");
    r.commit_all("carol", "Carol's change");
    r.git(&["checkout", "-q", "main"]);
    r.git_as(
        "bob",
        &[
            "merge",
            "-q",
            "--no-ff",
            "-m",
            "Merge carol-change",
            "carol-change",
        ],
    );
    let review = r.check(&reviewed()).unwrap();
    assert_eq!(review.recipe_commit, r.rev("main"));
    assert_eq!(review.reviewed_by, ["Bob <bob@example.org>"]);

    // Alice merges her own change.
    r.git(&["checkout", "-q", "-b", "alice-change"]);
    r.write("recipes/demo/motd", "from alice\n");
    r.commit_all("alice", "Alice's change");
    r.git(&["checkout", "-q", "main"]);
    r.git(&[
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "Merge alice-change",
        "alice-change",
    ]);
    has(
        &r.refused(&reviewed()),
        &["reviewed only by its own author"],
    );
}

// ---- the shipped recipes ----

#[test]
fn shipped_recipes_load_and_target_known_sites() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipes = root.join("recipes");
    assert_eq!(Recipe::list(&recipes), ["debian12-dev", "gpu-dev"]);
    for name in Recipe::list(&recipes) {
        let r = Recipe::load(&recipes, &name).unwrap();
        r.check_sites(&SearchPath::new(
            Kind::Sites,
            Some(&root.join("site-overlays")),
        ))
        .unwrap();
        assert_eq!(r.spec.base.arg, "BASE");
        assert!(
            r.spec.protected_paths.iter().any(|p| p == "/work"),
            "{name}"
        );
        let df = std::fs::read_to_string(r.dir.join("Dockerfile")).unwrap();
        assert!(df.contains("FROM ${BASE}"), "{name}");
        assert!(
            df.contains("install ok installed"),
            "{name}: installs only what is missing"
        );
        let apt = df
            .split("ARG APT_PACKAGES=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            !apt.contains("cuda") && !apt.contains("nvidia"),
            "{name}: {apt}"
        );
        assert!(
            r.context_files()
                .unwrap()
                .contains(&PathBuf::from("Dockerfile"))
        );
    }
    let gpu = Recipe::load(&recipes, "gpu-dev").unwrap();
    assert_eq!(gpu.spec.smoke_suite.as_deref(), Some("smoke.yaml"));
    let mut bad = Recipe::load(&recipes, "debian12-dev").unwrap();
    bad.spec.sites.push("atlantis".into());
    let e = bad
        .check_sites(&SearchPath::new(
            Kind::Sites,
            Some(&root.join("site-overlays")),
        ))
        .unwrap_err()
        .to_string();
    has(
        &e,
        &[
            "debian12-dev/recipe.yaml",
            "sites: ",
            "no site profile 'atlantis'",
            "known sites: bonn, common, glasgow",
        ],
    );
}

/// Removes the test image (and its intermediate images) however the test ends.
struct ImageGuard<'a>(&'a str, String);

impl Drop for ImageGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .args(["rmi", "--force", &self.1])
            .output();
    }
}

/// Both shipped Dockerfiles build offline from the fixture base, the way the
/// engine tests build them (needs the engine ci/setup starts).
#[test]
fn shipped_recipes_build_offline() {
    let docker = std::env::var("GRIDSHIP_DOCKER").unwrap_or_else(|_| {
        panic!(
            "GRIDSHIP_DOCKER is not set: this test needs the engine ci/setup starts \
             (run ci/test, or `. /var/lib/gridship-ci/env` after ci/setup)"
        )
    });
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    for (name, extra) in [("debian12-dev", None), ("gpu-dev", Some("PIP_PACKAGES="))] {
        let tag = format!("gridship-test/recipe-{name}:{}", std::process::id());
        let _guard = ImageGuard(&docker, tag.clone());
        let mut cmd = Command::new(&docker);
        cmd.env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "--force-rm", "--network", "none"])
            .args(["--build-arg", "BASE=gridship-fixture/debian:bookworm"])
            .args(["--build-arg", "APT_PACKAGES=python3"]);
        if let Some(a) = extra {
            cmd.args(["--build-arg", a]);
        }
        run(cmd.args(["-t", &tag]).arg(recipes.join(name)));
        let out = run(Command::new(&docker).args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            &tag,
            "-c",
            "echo $LANG; pwd; stat -c %a /work; python3 -c 'print(1+1)'; echo $NVIDIA_DRIVER_CAPABILITIES",
        ]));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[..4],
            ["C.UTF-8", "/work", "1777", "2"],
            "{name}: {out}"
        );
        let caps = if name == "gpu-dev" {
            "compute,utility"
        } else {
            ""
        };
        assert_eq!(lines.get(4).copied().unwrap_or(""), caps, "{name}");
    }
}
