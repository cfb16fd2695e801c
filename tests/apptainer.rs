//! The Apptainer metadata transform: the layout it adds, its bytes against
//! what Apptainer's Go code writes (goldens in tests/data/apptainer, made by
//! running Apptainer's functions), and the env script and runscript run the
//! way the image runs them: `chroot` into the written tree with the image's
//! own busybox `/bin/sh`, then with the host's dash and bash.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::layers::{self, Comp};
use common::*;
use gridship::Error;
use gridship::encode::squashfs::{Compression, SquashfsOptions, write_squashfs};
use gridship::image::{ContainerConfig, Image, ImageConfig, PlatformWanted};
use gridship::index::{Data, FsIndex, Kind, Meta, Node};
use gridship::store::Layout;
use gridship::transform::apptainer::{
    self, ApptainerMetadata, ApptainerOptions, BaseImage, InspectMetadata, LAYOUT, LayoutKind,
};
use gridship::transform::{RuleReport, Transform};

/// 2024-02-29T12:34:56Z, a Thursday in a leap year.
const CREATED: i64 = 1_709_210_096;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/apptainer")
}

fn config_case(name: &str) -> ContainerConfig {
    let p = data_dir().join(format!("{name}.config.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// What Apptainer's functions wrote for a case (see the module comment).
fn go_case(name: &str) -> BTreeMap<String, String> {
    let p = data_dir().join(format!("{name}.go.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn open_layout(dir: &Path, tag: &str) -> Image {
    let layout = Layout::open(dir).unwrap();
    let desc = layout.resolve(Some(tag)).unwrap();
    Image::load(
        layout,
        desc,
        &dir.display().to_string(),
        &PlatformWanted::host(),
    )
    .unwrap()
}

fn busybox() -> Image {
    open_layout(&fixtures().join("busybox-oci"), "1")
}

fn options() -> ApptainerOptions {
    ApptainerOptions {
        bootstrap: "docker".into(),
        from: "127.0.0.1:5000/fixtures/busybox:1".into(),
        created: CREATED,
        base: Some(BaseImage {
            name: "127.0.0.1:5000/fixtures/busybox:1".into(),
            digest: "sha256:a6c0c13841b2533339c6246b7cfc4d8c33ecd06dde0d3f9f9df8ddfc5451487e"
                .into(),
        }),
        architecture: "amd64".into(),
        variant: None,
        apptainer_version: "gridship 0.1.0".into(),
    }
}

fn transform(index: &mut FsIndex, config: ContainerConfig) -> gridship::Result<RuleReport> {
    let mut image_config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config,
        ..Default::default()
    };
    let t = ApptainerMetadata::new(options());
    let mut report = RuleReport::new(t.name(), t.description());
    t.apply(gridship::transform::Edit(
        index,
        &mut image_config,
        &mut report,
    ))?;
    Ok(report)
}

/// The transformed tree as the SIF partition holds it: written by the
/// squashfs sink and extracted with unsquashfs, so the shells run exactly
/// what a SIF or CVMFS image would give them. (The directory sink writes
/// the same tree; tests/unpack.rs and tests/squashfs.rs pin both to umoci.)
fn written(index: &FsIndex, image: &Image) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let sqfs = tmp.path().join("partition.sqfs");
    let mut f = std::fs::File::create(&sqfs).unwrap();
    let opts = SquashfsOptions::new(Compression::Gzip { level: 6 });
    write_squashfs(index, image, &mut f, &opts).unwrap();
    drop(f);
    let root = tmp.path().join("rootfs");
    let out = Command::new("unsquashfs")
        .args([
            "-no-progress",
            "-d",
            root.to_str().unwrap(),
            sqfs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tmp, root)
}

/// A script as gridship ships it: its source, or (the run and test
/// actions, made from one template) the expected bytes kept in tests/data.
fn script(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = match name {
        "run.sh" | "test.sh" => root.join("tests/data/apptainer-actions").join(name),
        _ => root.join("src/transform/apptainer").join(name),
    };
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn split_nul(out: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = out
        .split(|&b| b == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    assert_eq!(v.pop().as_deref(), Some(""), "output ends with a NUL");
    v
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn bytes_match_apptainer_for_every_case() {
    for name in [
        "busybox",
        "hostile",
        "cmd-only",
        "entrypoint-only",
        "empty",
        "empty-lists",
    ] {
        let c = config_case(name);
        let go = go_case(name);
        let env = apptainer::env_script(c.env.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(env.script, go["env"], "{name}: env script");
        // The runscript is gridship's own text; what it does is checked by
        // running it (runscript_argv_is_exact). What Apptainer reads from it
        // must be there byte for byte: the stored Entrypoint/Cmd lines and
        // the eval line its runtime recognises.
        let rs = apptainer::runscript(
            c.entrypoint.as_deref().unwrap_or_default(),
            c.cmd.as_deref().unwrap_or_default(),
        )
        .unwrap();
        let go_rs: &str = &go["runscript"];
        for line in go_rs
            .lines()
            .filter(|l| l.starts_with("OCI_ENTRYPOINT=") || l.starts_with("OCI_CMD="))
        {
            assert!(
                rs.lines().any(|l| l == line),
                "{name}: runscript keeps {line:?}"
            );
        }
        assert!(
            rs.lines()
                .any(|l| l == r#"eval "set ${SINGULARITY_OCI_RUN}""#),
            "{name}"
        );
        assert_eq!(
            String::from_utf8(apptainer::oci_config_json(&c)).unwrap(),
            go["oci_config"],
            "{name}: oci-config.json"
        );
        if let Some(labels) = &c.labels {
            assert_eq!(
                apptainer::labels_json(labels),
                go["labels_oci"],
                "{name}: labels"
            );
        }
    }
    let hostile = config_case("hostile");
    let skipped = apptainer::env_script(hostile.env.as_deref().unwrap())
        .unwrap()
        .skipped;
    assert_eq!(
        skipped,
        [
            "1BAD", "BAD-KEY", "", "BAD KEY", "ÜMLAUT", "", "BAD.KEY", "BAD\nKEY", "KEY\n"
        ]
    );

    let attrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("inspect.attributes.json")).unwrap())
            .unwrap();
    let map =
        |k: &str| -> BTreeMap<String, String> { serde_json::from_value(attrs[k].clone()).unwrap() };
    let text = |k: &str| attrs[k].as_str().unwrap().to_string();
    let m = InspectMetadata {
        environment: map("environment"),
        labels: map("labels"),
        runscript: text("runscript"),
        test: text("test"),
        helpfile: String::new(),
        deffile: text("deffile"),
        startscript: text("startscript"),
    };
    assert_eq!(
        String::from_utf8(apptainer::inspect_metadata_json(&m)).unwrap(),
        go_case("hostile")["inspect"]
    );
}

fn entry_paths(report: &RuleReport) -> [Vec<&str>; 3] {
    [&report.added, &report.changed, &report.removed]
        .map(|v| v.iter().map(|c| c.path.as_str()).collect())
}

#[test]
fn busybox_gets_the_layout_and_nothing_else() {
    let image = busybox();
    let mut index = FsIndex::from_image(&image).unwrap();
    let report = transform(&mut index, image.config.config.clone()).unwrap();

    // busybox has dev etc home proc root sys tmp var/tmp, no /etc/hosts.
    let [mut added, changed, removed] = entry_paths(&report);
    added.sort();
    assert_eq!(
        added,
        [
            "/.exec",
            "/.run",
            "/.shell",
            "/.singularity.d",
            "/.singularity.d/Singularity",
            "/.singularity.d/actions",
            "/.singularity.d/actions/exec",
            "/.singularity.d/actions/run",
            "/.singularity.d/actions/shell",
            "/.singularity.d/actions/start",
            "/.singularity.d/actions/test",
            "/.singularity.d/env",
            "/.singularity.d/env/01-base.sh",
            "/.singularity.d/env/10-docker2singularity.sh",
            "/.singularity.d/env/90-environment.sh",
            "/.singularity.d/env/94-appsbase.sh",
            "/.singularity.d/env/95-apps.sh",
            "/.singularity.d/env/99-base.sh",
            "/.singularity.d/env/99-runtimevars.sh",
            "/.singularity.d/labels.json",
            "/.singularity.d/libs",
            "/.singularity.d/runscript",
            "/.singularity.d/startscript",
            "/.test",
            "/environment",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/singularity",
        ]
    );
    assert_eq!(changed, ["/", "/etc"], "directory mtimes");
    assert!(removed.is_empty() && report.warnings.is_empty());
    let bytes: u64 = report.bytes_added();
    // Each file's exact content is compared below; this guards the report.
    assert!(bytes > 5_000, "{bytes} bytes of scripts and metadata");

    // Written out, every path of the layout is there as Apptainer makes it.
    let (_tmp, root) = written(&index, &image);
    let go = go_case("busybox");
    let labels = concat!(
        "{\n",
        "\t\"org.gridship.fixture.key\": \"f98a69db01a3951f75b00208f110d9064844ec50795ae022f7dc45d755100c01\",\n",
        "\t\"org.label-schema.build-arch\": \"amd64\",\n",
        "\t\"org.label-schema.build-date\": \"Thursday_29_February_2024_12:34:56_UTC\",\n",
        "\t\"org.label-schema.schema-version\": \"1.0\",\n",
        "\t\"org.label-schema.usage.apptainer.version\": \"gridship 0.1.0\",\n",
        "\t\"org.label-schema.usage.singularity.deffile.bootstrap\": \"docker\",\n",
        "\t\"org.label-schema.usage.singularity.deffile.from\": \"127.0.0.1:5000/fixtures/busybox:1\",\n",
        "\t\"org.opencontainers.image.architecture\": \"amd64\",\n",
        "\t\"org.opencontainers.image.base.digest\": \"sha256:a6c0c13841b2533339c6246b7cfc4d8c33ecd06dde0d3f9f9df8ddfc5451487e\",\n",
        "\t\"org.opencontainers.image.base.name\": \"127.0.0.1:5000/fixtures/busybox:1\",\n",
        "\t\"org.opencontainers.image.created\": \"2024-02-29T12:34:56Z\"\n",
        "}"
    );
    let expected_content = |path: &str| -> Vec<u8> {
        let name = path.rsplit('/').next().unwrap();
        match path {
            "/.singularity.d/startscript" => script("startscript.sh"),
            "/etc/hosts" | "/etc/resolv.conf" | "/.singularity.d/env/94-appsbase.sh" => Vec::new(),
            "/.singularity.d/runscript" => busybox_runscript().into_bytes(),
            "/.singularity.d/env/10-docker2singularity.sh" => go["env"].clone().into_bytes(),
            "/.singularity.d/labels.json" => labels.as_bytes().to_vec(),
            "/.singularity.d/Singularity" => {
                b"bootstrap: docker\nfrom: 127.0.0.1:5000/fixtures/busybox:1\n\n".to_vec()
            }
            p if p.contains("/actions/") => script(&format!("{name}.sh")),
            _ => script(name),
        }
    };
    let pre_existing = [
        "/dev", "/proc", "/root", "/var", "/var/tmp", "/tmp", "/etc", "/sys", "/home",
    ];
    for e in LAYOUT {
        let p = root.join(&e.path[1..]);
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|_| panic!("{} missing", e.path));
        if pre_existing.contains(&e.path) {
            assert!(m.is_dir());
            continue;
        }
        assert_eq!((m.uid(), m.gid(), m.mtime()), (0, 0, CREATED), "{}", e.path);
        match e.kind {
            LayoutKind::Dir => assert!(m.is_dir() && m.mode() & 0o7777 == e.mode, "{}", e.path),
            LayoutKind::Symlink(t) => {
                assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(t), "{}", e.path)
            }
            LayoutKind::File => {
                assert!(m.is_file(), "{}", e.path);
                assert_eq!(m.permissions().mode() & 0o7777, e.mode, "{}", e.path);
                assert_eq!(
                    String::from_utf8(std::fs::read(&p).unwrap()).unwrap(),
                    String::from_utf8(expected_content(e.path)).unwrap(),
                    "{}",
                    e.path
                );
            }
        }
    }

    // umoci's unpack of the same image differs exactly at the reported paths.
    let tmp = tempfile::tempdir().unwrap();
    let theirs = umoci_unpack(&fixtures().join("busybox-oci"), "1", &tmp.path().join("b"));
    let (ours, theirs) = (snapshot(&root), snapshot(&theirs));
    let touched = apptainer::added_paths(&report);
    let mut differing = BTreeSet::new();
    for (k, a) in &ours.entries {
        if theirs.entries.get(k) != Some(a) {
            differing.insert(k.clone());
        }
    }
    differing.extend(
        theirs
            .entries
            .keys()
            .filter(|k| !ours.entries.contains_key(*k))
            .cloned(),
    );
    assert_eq!(ours.hardlinks, theirs.hardlinks);
    // Directory mtimes are not compared by snapshot(): / and /etc look equal.
    let expected: BTreeSet<String> = touched
        .into_iter()
        .filter(|p| p != "/" && p != "/etc")
        .collect();
    assert_eq!(differing, expected);
}

/// Apptainer's semantics of the env script, for the expected values: PATH
/// is set, any other key only while it is unset or empty.
fn expected_env(env: &[String]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let valid = |k: &str| {
        let mut c = k.chars();
        c.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for e in env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        if !valid(k) {
            continue;
        }
        let cur = out.get(k).map(String::as_str).unwrap_or("");
        if k == "PATH" || cur.is_empty() {
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// Prints `KEY=VALUE\0` for each key given (set ones), `KEY\0` for unset.
const PRINT_ENV: &str = r#"for k do
  eval "s=\${$k+set}; v=\${$k-}"
  if [ "$s" = set ]; then printf '%s=%s\000' "$k" "$v"; else printf '%s\000' "$k"; fi
done"#;

fn parse_env(out: &[u8]) -> BTreeMap<String, String> {
    split_nul(out)
        .into_iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("{kv} is unset"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn chroot(root: &Path) -> Command {
    let mut c = Command::new("/usr/sbin/chroot");
    c.env_clear().arg(root);
    c
}

#[test]
fn hostile_env_is_exact_in_the_image_shells() {
    let image = busybox();
    let mut index = FsIndex::from_image(&image).unwrap();
    let config = config_case("hostile");
    let report = transform(&mut index, config.clone()).unwrap();
    assert_eq!(report.warnings.len(), 9, "{:?}", report.warnings);
    let (_tmp, root) = written(&index, &image);

    let env = config.env.clone().unwrap();
    let mut expected = expected_env(&env);
    // 99-base.sh appends the libs directory (and sets PS1 unless the shell
    // has one: shells set their own at start, so it is not compared).
    expected.insert(
        "LD_LIBRARY_PATH".into(),
        "/opt/lib:/.singularity.d/libs".into(),
    );
    // Unique keys carry the config's value exactly.
    for e in &env {
        if let Some((k, v)) = e.split_once('=')
            && expected.contains_key(k)
            && !["DUP", "LD_LIBRARY_PATH"].contains(&k)
        {
            assert_eq!(expected[k], v);
        }
    }
    assert_eq!(expected["DUP"], "first", "the first non-empty value wins");
    let keys: Vec<String> = expected.keys().cloned().collect();

    // As Apptainer's exec action does: source env/*.sh, then exec.
    let out = run(chroot(&root)
        .arg("/.singularity.d/actions/exec")
        .args(["/bin/sh", "-c", PRINT_ENV, "sh"])
        .args(&keys));
    assert_eq!(parse_env(&out), expected, "busybox sh in the image");

    // The host's dash and bash read the same script the same way.
    let sourced = format!(
        "for s in {}/.singularity.d/env/*.sh; do . \"$s\"; done\n{PRINT_ENV}",
        root.display()
    );
    for sh in ["/bin/dash", "/bin/bash"] {
        let out = run(Command::new(sh)
            .env_clear()
            .args(["-c", &sourced, "sh"])
            .args(&keys));
        assert_eq!(parse_env(&out), expected, "{sh}");
    }

    // A value the host sets wins over the image's (`${K:-"v"}`); PATH not.
    let out = run(chroot(&root)
        .envs([("SQ", "from host"), ("PATH", "/host")])
        .arg("/.singularity.d/actions/exec")
        .args(["/bin/sh", "-c", PRINT_ENV, "sh", "SQ", "PATH"]));
    let got = parse_env(&out);
    assert_eq!(got["SQ"], "from host");
    assert_eq!(got["PATH"], expected["PATH"]);
}

/// Arguments the default (eval) path passes through unchanged: it puts
/// them in double quotes for `eval`, as Apptainer does, so `"`, `$`, `` ` ``
/// and `\` in run-time arguments are the shell's to expand.
fn eval_safe_args() -> Vec<String> {
    [
        "run arg",
        "it's",
        "tab\tx",
        "nl\nx",
        "ü 日本 🚀",
        "",
        "a=b",
        "*",
        "-n",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn runscript_argv_is_exact() {
    let image = busybox();
    let base = FsIndex::from_image(&image).unwrap();
    let hostile = config_case("hostile");
    let hostile_args = hostile.cmd.clone().unwrap();
    let run_args = eval_safe_args();
    let printer = hostile.entrypoint.clone().unwrap()[..3].to_vec();

    let mut failures = Vec::new();
    for case in ["hostile", "cmd-only", "entrypoint-only"] {
        let config = config_case(case);
        let ep = config.entrypoint.clone().unwrap_or_default();
        let cmd = config.cmd.clone().unwrap_or_default();
        let mut index = base.clone();
        // Run-time args go through eval: their program must be a plain path.
        index
            .put(
                "/printargs",
                file_node(b"#!/bin/sh\nprintf '%s\\000' \"$@\"\n", 0o755, 0),
            )
            .unwrap();
        transform(&mut index, config.clone()).unwrap();
        let (_tmp, root) = written(&index, &image);

        // What the program prints: sh -c's $0 and $@ (everything after the
        // script), or /printargs's arguments.
        let printed = |argv: &[String]| {
            if argv[0] == "/printargs" {
                argv[1..].to_vec()
            } else {
                assert_eq!(argv[..3], printer[..]);
                argv[3..].to_vec()
            }
        };
        // Run-time args replace Cmd; a Cmd-only image needs a program in them.
        let program = |args: &[String]| -> Vec<String> {
            let prefix = if ep.is_empty() {
                vec!["/printargs".to_string()]
            } else {
                vec![]
            };
            prefix.into_iter().chain(args.iter().cloned()).collect()
        };
        let given = program(&run_args);
        // In SINGULARITY_NO_EVAL mode even hostile run-time args stay as given.
        let hostile_given = program(&hostile_args);
        let with = |args: &[String]| -> Vec<String> { ep.iter().chain(args).cloned().collect() };
        let without: Vec<String> = ep.iter().chain(&cmd).cloned().collect();

        let runs: [(&str, bool, &[String], Vec<String>); 4] = [
            ("eval, no args", false, &[], printed(&without)),
            ("eval, args", false, &given, printed(&with(&given))),
            ("no-eval, no args", true, &[], printed(&without)),
            (
                "no-eval, args",
                true,
                &hostile_given,
                printed(&with(&hostile_given)),
            ),
        ];
        for (what, no_eval, args, want) in runs {
            // Apptainer's run action: source env/*.sh, exec the runscript.
            let mut c = chroot(&root);
            if no_eval {
                c.env("SINGULARITY_NO_EVAL", "1");
            }
            c.arg("/.singularity.d/actions/run").args(args);
            let got = split_nul(&run(&mut c));
            if got != want {
                failures.push(format!("{case}, {what}:\n  got  {got:?}\n  want {want:?}"));
            }
            // The runscript alone under the host's dash and bash (the
            // image's printer then by its path on the host).
            let host_printer = root.join("printargs").display().to_string();
            let host_args = args.iter().map(|a| {
                if a == "/printargs" {
                    host_printer.clone()
                } else {
                    a.clone()
                }
            });
            for sh in ["/bin/dash", "/bin/bash"] {
                let mut c = Command::new(sh);
                c.env_clear()
                    .arg(root.join(".singularity.d/runscript"))
                    .args(host_args.clone());
                if no_eval {
                    c.env("SINGULARITY_NO_EVAL", "1");
                }
                let got = split_nul(&run(&mut c));
                if got != want {
                    failures.push(format!("{case}, {what}, {sh}:\n  got {got:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn same_inputs_give_identical_trees() {
    let image = busybox();
    let config = config_case("hostile");
    let mut a = FsIndex::from_image(&image).unwrap();
    let mut b = FsIndex::from_image(&image).unwrap();
    let ra = transform(&mut a, config.clone()).unwrap();
    let rb = transform(&mut b, config).unwrap();
    assert_eq!(
        serde_json::to_string(&ra).unwrap(),
        serde_json::to_string(&rb).unwrap()
    );
    let nodes = |i: &FsIndex| -> Vec<(Vec<u8>, Node)> {
        i.iter().map(|(k, _, n)| (k.to_vec(), n.clone())).collect()
    };
    assert!(nodes(&a) == nodes(&b), "indexes differ");
    let (_ta, ra) = written(&a, &image);
    let (_tb, rb) = written(&b, &image);
    let (sa, sb) = (snapshot(&ra), snapshot(&rb));
    assert!(diff(&sa, &sb).is_empty(), "{:?}", diff(&sa, &sb));
    for (k, info) in &sa.entries {
        if k.starts_with("/.singularity.d") && info.kind != "dir" {
            assert_eq!(info.mtime, Some(CREATED), "{k}");
        }
    }
}

fn file_node(content: &[u8], mode: u32, owner: u64) -> Node {
    Node {
        kind: Kind::File {
            size: content.len() as u64,
            data: Data::Bytes(content.into()),
        },
        meta: Meta {
            mode,
            uid: owner,
            gid: owner,
            mtime: 1_000,
            ..Meta::default()
        },
    }
}

fn symlink_node(target: &str) -> Node {
    Node {
        kind: Kind::Symlink {
            target: target.as_bytes().to_vec(),
        },
        meta: Meta {
            mode: 0o777,
            ..Meta::default()
        },
    }
}

fn content(index: &FsIndex, path: &str) -> (Vec<u8>, Meta) {
    let (_, _, n) = index
        .lookup(path)
        .unwrap_or_else(|| panic!("{path} missing"));
    match &n.kind {
        Kind::File {
            data: Data::Bytes(b),
            ..
        } => (b.to_vec(), n.meta.clone()),
        k => panic!("{path} is {k:?}"),
    }
}

#[test]
fn an_image_with_its_own_apptainer_files() {
    let image = busybox();
    let mut index = FsIndex::from_image(&image).unwrap();
    let put = |i: &mut FsIndex, p: &str, n: Node| {
        i.put(p, n).unwrap();
    };
    put(
        &mut index,
        "/etc/hosts",
        file_node(b"127.0.0.1 x\n", 0o600, 7),
    );
    put(
        &mut index,
        "/etc/resolv.conf",
        symlink_node("../run/systemd/resolve/stub-resolv.conf"),
    );
    put(
        &mut index,
        "/environment",
        Node {
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o700,
                ..Meta::default()
            },
        },
    );
    put(&mut index, "/singularity", symlink_node("elsewhere"));
    put(
        &mut index,
        "/.exec",
        symlink_node(".singularity.d/actions/exec"),
    );
    put(
        &mut index,
        "/usr/local/bin/app",
        file_node(b"app", 0o4755, 0),
    );
    put(
        &mut index,
        "/.singularity.d/runscript",
        symlink_node("/usr/local/bin/app"),
    );
    put(
        &mut index,
        "/.singularity.d/labels.json",
        file_node(b"{}", 0o600, 0),
    );
    put(
        &mut index,
        "/.singularity.d/Singularity",
        file_node(b"old def\n", 0o644, 0),
    );
    put(
        &mut index,
        "/.singularity.d/bootstrap_history/Apptainer0",
        file_node(b"older def\n", 0o644, 0),
    );
    put(&mut index, "/.build.labels", file_node(b"a b\n", 0o644, 0));
    let root_id = index.get(b"").unwrap().0;
    index.node_mut(root_id).meta.mode = 0o555;

    let report = transform(&mut index, config_case("busybox")).unwrap();

    // Truncated in place: owner stays, makeFile's chmod gives 0644.
    let (bytes, meta) = content(&index, "/etc/hosts");
    assert_eq!(
        (bytes.len(), meta.mode, meta.uid, meta.mtime),
        (0, 0o644, 7, CREATED)
    );
    // A symlink into a missing directory is replaced by the file.
    let (bytes, meta) = content(&index, "/etc/resolv.conf");
    assert_eq!((bytes.len(), meta.mode, meta.uid), (0, 0o644, 0));
    assert!(index.lookup("/run").is_none());
    // A directory where a symlink belongs is left; a wrong symlink remade.
    assert!(index.lookup("/environment").unwrap().2.kind.is_dir());
    assert_eq!(
        index.lookup("/singularity").unwrap().2.kind,
        symlink_node(".singularity.d/runscript").kind
    );
    // The runscript goes through the image's symlink, as Go's write does.
    let (bytes, meta) = content(&index, "/usr/local/bin/app");
    assert!(bytes.starts_with(b"#!/bin/sh\n"));
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains("\nOCI_ENTRYPOINT=''\nOCI_CMD='\"/bin/sh\"'\n"),
        "{text}"
    );
    assert_eq!(meta.mode, 0o755);
    // os.WriteFile keeps the mode of an existing file.
    let (bytes, meta) = content(&index, "/.singularity.d/labels.json");
    assert!(bytes.starts_with(b"{\n\t\"org.gridship.fixture.key\""));
    assert_eq!(meta.mode, 0o600);
    // The old Deffile is kept in bootstrap_history, numbered after the others.
    assert_eq!(
        content(&index, "/.singularity.d/bootstrap_history/Apptainer1").0,
        b"old def\n"
    );
    assert_eq!(
        content(&index, "/.singularity.d/Singularity").0,
        b"bootstrap: docker\nfrom: 127.0.0.1:5000/fixtures/busybox:1\n\n"
    );
    assert_eq!(index.node(root_id).meta.mode, 0o755);

    let [added, changed, removed] = entry_paths(&report);
    assert!(added.contains(&"/.singularity.d/bootstrap_history/Apptainer1"));
    for p in [
        "/",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/singularity",
        "/usr/local/bin/app",
        "/.singularity.d/labels.json",
        "/.singularity.d/Singularity",
    ] {
        assert!(changed.contains(&p), "{p} changed: {changed:?}");
    }
    assert!(removed.is_empty(), "{removed:?}");
    assert!(!added.contains(&"/.exec") && !changed.contains(&"/.exec"));
    let warnings = report.warnings.join("\n");
    for w in [
        "/environment is a directory",
        "/etc/resolv.conf was a symlink",
        "/.build.labels",
    ] {
        assert!(warnings.contains(w), "{w}: {warnings}");
    }
}

#[test]
fn a_hardlinked_hosts_file_changes_with_all_its_names() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(
        &layout,
        "1",
        &[(
            Comp::Gzip,
            vec![
                layers::dir("etc", 0o755),
                layers::file("etc/hosts", 0o644, b"127.0.0.1 localhost\n"),
                layers::hardlink("etc/hosts.orig", "etc/hosts"),
            ],
        )],
    );
    let image = open_layout(&layout, "1");
    let mut index = FsIndex::from_image(&image).unwrap();
    let report = transform(&mut index, image.config.config.clone()).unwrap();
    assert_eq!(content(&index, "/etc/hosts.orig").0, b"");
    let [_, changed, _] = entry_paths(&report);
    assert!(changed.contains(&"/etc/hosts") && changed.contains(&"/etc/hosts.orig"));
    let (_t, root) = written(&index, &image);
    assert_eq!(
        snapshot(&root).hardlinks,
        [["/etc/hosts", "/etc/hosts.orig"]]
    );
}

#[test]
fn what_cannot_be_translated_is_refused() {
    let mut index = FsIndex::new();
    let mut c = config_case("busybox");
    c.env = Some(vec!["OK=1".into(), "NUL_VALUE=a\0b".into()]);
    let e = transform(&mut index, c).unwrap_err();
    assert!(matches!(e, Error::BadInput { .. }) && e.exit_code() == 2);
    assert!(e.to_string().contains("Env[1] (NUL_VALUE)"), "{e}");

    let mut c = config_case("busybox");
    c.cmd = Some(vec!["sh".into(), "x\0".into()]);
    let e = transform(&mut FsIndex::new(), c).unwrap_err();
    assert!(e.to_string().contains("Cmd[1]"), "{e}");

    // Where Apptainer's build fails, so does this one, naming the path.
    let mut index = FsIndex::new();
    index.put("/etc", file_node(b"", 0o644, 0)).unwrap();
    let e = transform(&mut index, config_case("busybox")).unwrap_err();
    assert!(e.to_string().contains("/etc/hosts"), "{e}");
}

#[test]
fn inspect_metadata_reads_the_built_tree_and_the_layers() {
    let image = busybox();
    let mut index = FsIndex::from_image(&image).unwrap();
    transform(&mut index, image.config.config.clone()).unwrap();
    let m = apptainer::inspect_metadata(&index, &image).unwrap();
    let go = go_case("busybox");
    let trim = |s: &str| s.trim_end_matches('\n').to_string();
    assert_eq!(
        m.environment,
        BTreeMap::from([
            (apptainer::ENV_SCRIPT.to_string(), trim(&go["env"])),
            (
                "/.singularity.d/env/90-environment.sh".into(),
                trim(&String::from_utf8(script("90-environment.sh")).unwrap())
            ),
        ])
    );
    assert_eq!(m.runscript, trim(&busybox_runscript()));
    assert_eq!(
        m.deffile,
        "bootstrap: docker\nfrom: 127.0.0.1:5000/fixtures/busybox:1"
    );
    assert_eq!(
        m.startscript,
        trim(&String::from_utf8(script("startscript.sh")).unwrap())
    );
    assert_eq!(m.labels["org.label-schema.schema-version"], "1.0");
    assert_eq!(m.labels.len(), 11);
    assert!(m.test.is_empty() && m.helpfile.is_empty());
    let json: serde_json::Value =
        serde_json::from_slice(&apptainer::inspect_metadata_json(&m)).unwrap();
    assert_eq!(json["type"], "container");
    assert_eq!(
        json["data"]["attributes"]["labels"]["org.label-schema.usage.singularity.deffile.bootstrap"],
        "docker"
    );

    // Files an image brings itself are read from its layer.
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    layers::write_image(
        &layout,
        "1",
        &[(
            Comp::Gzip,
            vec![
                layers::file(
                    ".singularity.d/env/91-environment.sh",
                    0o755,
                    b"export X=1\n\n",
                ),
                layers::file(".singularity.d/test", 0o755, b"#!/bin/sh\ntrue\n"),
                layers::symlink(".singularity.d/env/10-docker-extra.sh", "../test"),
            ],
        )],
    );
    let image = open_layout(&layout, "1");
    let mut index = FsIndex::from_image(&image).unwrap();
    transform(&mut index, image.config.config.clone()).unwrap();
    let m = apptainer::inspect_metadata(&index, &image).unwrap();
    assert_eq!(
        m.environment.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "/.singularity.d/env/10-docker-extra.sh",
            apptainer::ENV_SCRIPT,
            "/.singularity.d/env/90-environment.sh",
            "/.singularity.d/env/91-environment.sh",
        ]
    );
    assert_eq!(
        m.environment["/.singularity.d/env/91-environment.sh"],
        "export X=1"
    );
    assert_eq!(m.test, "#!/bin/sh\ntrue");
    assert_eq!(
        m.environment["/.singularity.d/env/10-docker-extra.sh"],
        "#!/bin/sh\ntrue"
    );
}

#[test]
fn debian_fixture_runs_the_hostile_env_and_runscript_with_its_dash() {
    let image = open_layout(&fixtures().join("debian-oci"), "1");
    let mut index = FsIndex::from_image(&image).unwrap();
    let original = image.config.config.clone();
    let mut config = config_case("hostile");
    config.labels = original.labels.clone();
    let report = transform(&mut index, config.clone()).unwrap();
    // The bookworm image has /etc/resolv.conf (truncated) and no /etc/hosts.
    let [added, changed, removed] = entry_paths(&report);
    assert!(removed.is_empty(), "{removed:?}");
    assert!(
        added.contains(&"/etc/hosts") && added.len() == 27,
        "{added:?}"
    );
    assert_eq!(changed, ["/etc/resolv.conf", "/", "/etc"]);
    let (_tmp, root) = written(&index, &image);

    let env = config.env.clone().unwrap();
    let mut expected = expected_env(&env);
    expected.insert(
        "LD_LIBRARY_PATH".into(),
        "/opt/lib:/.singularity.d/libs".into(),
    );
    let keys: Vec<String> = expected.keys().cloned().collect();
    let out = run(chroot(&root)
        .arg("/.singularity.d/actions/exec")
        .args(["/bin/sh", "-c", PRINT_ENV, "sh"])
        .args(&keys));
    assert_eq!(parse_env(&out), expected, "dash in the Debian image");

    let want: Vec<String> = config.entrypoint.clone().unwrap()[3..]
        .iter()
        .chain(config.cmd.as_ref().unwrap())
        .cloned()
        .collect();
    for no_eval in [false, true] {
        let mut c = chroot(&root);
        if no_eval {
            c.env("SINGULARITY_NO_EVAL", "1");
        }
        let got = split_nul(&run(c.arg("/.singularity.d/actions/run")));
        assert_eq!(got, want, "no_eval={no_eval}");
    }
}

/// The runscript for the busybox fixture's config (Cmd only).
fn busybox_runscript() -> String {
    let c = config_case("busybox");
    apptainer::runscript(
        c.entrypoint.as_deref().unwrap_or_default(),
        c.cmd.as_deref().unwrap_or_default(),
    )
    .unwrap()
}

/// The busybox fixture with the hostile config (Env, Entrypoint, Cmd,
/// Labels), made into a SIF by the gridship binary; built once for the
/// tests that run it in real Apptainer.
fn hostile_sif() -> &'static Path {
    static SIF: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &SIF.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("hostile-oci");
        let hostile: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data_dir().join("hostile.config.json")).unwrap())
                .unwrap();
        layers::extend_image(
            &fixtures().join("busybox-oci"),
            "1",
            &layout,
            "1",
            &[],
            |config| {
                for k in ["Env", "Entrypoint", "Cmd", "Labels"] {
                    config["config"][k] = hostile[k].clone();
                }
            },
        );
        let sif = tmp.path().join("hostile.sif");
        Gridship::new()
            .run(&[
                "sif",
                &format!("oci:{}:1", layout.display()),
                sif.to_str().unwrap(),
            ])
            .ok();
        (tmp, sif)
    })
    .1
}

/// Real Apptainer's runtime (its own action script, in its Go shell) reads
/// the env script exactly: every hostile value, as root and unprivileged.
#[test]
fn real_apptainer_exec_gives_the_hostile_env_exactly() {
    let sif = hostile_sif().to_str().unwrap();
    let config = config_case("hostile");
    let mut expected = expected_env(config.env.as_deref().unwrap());
    expected.insert(
        "LD_LIBRARY_PATH".into(),
        "/opt/lib:/.singularity.d/libs".into(),
    );
    let keys: Vec<String> = expected.keys().cloned().collect();
    for app in [Apptainer::root(), Apptainer::user(65534)] {
        let mut args = vec!["exec", "--cleanenv", sif, "/bin/sh", "-c", PRINT_ENV, "sh"];
        args.extend(keys.iter().map(String::as_str));
        let out = app.cmd(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut got = parse_env(&out.stdout);
        // Apptainer appends the default PATH entries the image's PATH lacks.
        let path = got.remove("PATH").unwrap();
        let mut want = expected.clone();
        let want_path = want.remove("PATH").unwrap();
        assert!(
            path == want_path || path.starts_with(&format!("{want_path}:")),
            "PATH {path:?}"
        );
        assert_eq!(got, want, "root: {}", app.is_root());
    }
}

/// `apptainer run`: the Entrypoint and Cmd exactly, arguments replacing Cmd
/// (through eval, as Apptainer does; --no-eval for hostile ones).
#[test]
fn real_apptainer_run_passes_entrypoint_cmd_and_arguments() {
    let sif = hostile_sif().to_str().unwrap();
    let config = config_case("hostile");
    let ep = config.entrypoint.clone().unwrap();
    let cmd = config.cmd.clone().unwrap();
    // The entrypoint is `sh -c 'printf ...' ARG0 ...`: what it prints.
    let printed =
        |args: &[String]| -> Vec<String> { ep[3..].iter().chain(args).cloned().collect() };
    let app = Apptainer::root();
    let run = |flags: &[&str], args: &[String]| -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        a.extend(flags.iter().map(|s| s.to_string()));
        a.push(sif.into());
        a.extend(args.iter().cloned());
        let out = app.cmd(&a).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        split_nul(&out.stdout)
    };
    assert_eq!(run(&[], &[]), printed(&cmd), "no arguments: Cmd");
    let args = eval_safe_args();
    assert_eq!(run(&[], &args), printed(&args), "arguments replace Cmd");
    assert_eq!(
        run(&["--no-eval"], &cmd),
        printed(&cmd),
        "--no-eval: hostile arguments as given"
    );
}

/// `apptainer inspect` reads the labels, the deffile and the runscript from
/// the SIF's metadata as gridship wrote them.
#[test]
fn real_apptainer_inspect_reads_labels_deffile_runscript() {
    let sif = hostile_sif().to_str().unwrap();
    let app = Apptainer::root();
    let j: serde_json::Value =
        serde_json::from_str(&app.ok(&["inspect", "--json", "--labels", sif])).unwrap();
    assert_eq!(j["type"], "container");
    let labels = &j["data"]["attributes"]["labels"];
    let config = config_case("hostile");
    for (k, v) in config.labels.as_ref().unwrap() {
        assert_eq!(labels[k], v.as_str(), "label {k:?}");
    }
    assert_eq!(labels["org.label-schema.schema-version"], "1.0");
    let deffile = app.ok(&["inspect", "--deffile", sif]);
    assert!(
        deffile.starts_with("bootstrap: oci\nfrom: ") && deffile.contains("hostile-oci:1"),
        "{deffile}"
    );
    let runscript = app.ok(&["inspect", "--runscript", sif]);
    let want = apptainer::runscript(
        config.entrypoint.as_deref().unwrap(),
        config.cmd.as_deref().unwrap(),
    )
    .unwrap();
    assert_eq!(runscript.trim_end(), want.trim_end());
}
