//! Site overlay content: the `overlay:` section of every site.yaml, the
//! files/ trees, and the thread-count snippet run by dash (POSIX sh) for each
//! batch system it reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gridship::config::{Kind, SearchPath};
use gridship::site::SiteProfile;
use gridship::transform::overlay::SiteOverlay;

const SITES: [&str; 4] = ["bonn", "glasgow", "manchester", "qmul"];
const THREADS: &str = "files/etc/profile.d/gridship-site-threads.sh";
const VARS: [&str; 6] = [
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMEXPR_MAX_THREADS",
    "JULIA_NUM_THREADS",
];

fn overlays() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("site-overlays")
}

fn sites() -> SearchPath {
    SearchPath::new(Kind::Sites, Some(&overlays()))
}

/// The overlay layer's entries: path -> (mode, bytes).
fn layer_entries(o: &SiteOverlay) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut ar = tar::Archive::new(&o.layer[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (path, (mode, data))
        })
        .collect()
}

const SHARED: [&str; 4] = [
    THREADS,
    "files/etc/profile.d/gridship-site-grid.sh",
    "files/.singularity.d/env/92-gridship-site.sh",
    "files/etc/grid-security/README.gridship",
];

#[test]
fn every_site_has_overlay_section_and_files() {
    let listed: Vec<String> = sites()
        .list()
        .into_iter()
        .filter(|l| l.found.place.dir.is_some())
        .map(|l| l.name)
        .collect();
    assert_eq!(listed, ["bonn", "common", "glasgow", "manchester", "qmul"]);
    let common = overlays().join("common");
    for site in SITES {
        // The ARC sections still load.
        let p = SiteProfile::load(&sites(), site).unwrap();
        assert!(p.ce.is_some() && !p.gpu_queues.is_empty(), "{site}");
        // gridship smoke's cuda-driver-compat needs a driver per GPU queue.
        for (qn, q) in &p.gpu_queues {
            assert!(q.driver_version.is_some(), "{site}/{qn}: no driver_version");
        }
        let chain: Vec<&str> = p.chain.docs.iter().map(|d| d.found.name.as_str()).collect();
        assert_eq!(chain, ["common", site]);
        let o = SiteOverlay::from_profile(&p).unwrap();
        let env = &o.env;
        assert_eq!(env["X509_CERT_DIR"], "/etc/grid-security/certificates");
        assert_eq!(env["X509_VOMS_DIR"], "/etc/grid-security/vomsdir");
        assert_eq!(env["VOMS_USERCONF"], "/etc/vomses");
        assert_eq!(env["GRIDSHIP_SITE"], site);
        assert_eq!(o.labels["gridship.site"], site);
        // The shared snippets come from common, byte for byte, as 0644;
        // site.json is the site's own.
        let layer = layer_entries(&o);
        for f in SHARED {
            let in_image = f.strip_prefix("files/").unwrap();
            let (mode, data) = &layer[in_image];
            assert_eq!(*mode, 0o644, "{site}/{f}");
            assert_eq!(data, &std::fs::read(common.join(f)).unwrap(), "{site}/{f}");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&layer["etc/gridship/site.json"].1).unwrap();
        assert_eq!(json["site"], site);
        assert_eq!(json["gocdb"], o.labels["gridship.site.gocdb"].as_str());
        // No copy of a shared file is left in the site's own tree.
        for f in SHARED {
            assert!(!overlays().join(site).join(f).exists(), "{site}/{f}");
        }
    }
    // Only plain files, sourced snippets not executable, valid POSIX sh.
    for f in SHARED {
        let md = std::fs::symlink_metadata(common.join(f)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert!(md.is_file() && md.permissions().mode() & 0o111 == 0, "{f}");
        if f.ends_with(".sh") {
            let st = Command::new("dash")
                .arg("-n")
                .arg(common.join(f))
                .status()
                .unwrap();
            assert!(st.success(), "{f}");
        }
    }
}

/// Source the snippet with dash under `set -eu`, in a clean environment plus
/// `env`; returns the six variables, GRIDSHIP_JOB_CPUS_FROM and leftovers.
fn threads(env: &[(&str, &str)]) -> (Vec<String>, String, String) {
    let file = overlays().join("common").join(THREADS);
    let script = format!(
        ". '{}'; echo {}; echo \"$GRIDSHIP_JOB_CPUS_FROM\"; set | grep '^_gs' || true; command -v _gs_try || true",
        file.display(),
        VARS.map(|v| format!("\"${v}\"")).join(" ")
    );
    let out = Command::new("dash")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .args(["-euc", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{env:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let vals = lines
        .next()
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect();
    let from = lines.next().unwrap().to_string();
    let rest: Vec<&str> = lines.collect();
    (vals, from, rest.join("\n"))
}

fn all(n: &str) -> Vec<String> {
    vec![n.to_string(); 6]
}

#[test]
fn thread_counts_per_batch_system() {
    let tmp = tempfile::tempdir().unwrap();
    let ad = tmp.path().join("machine.ad");
    std::fs::write(&ad, "Memory = 16000\nCpus = 4\nGPUs = 1\n").unwrap();
    std::fs::write(tmp.path().join(".machine.ad"), "Cpus = 3\n").unwrap();
    let ad = ad.to_str().unwrap();
    let scratch = tmp.path().to_str().unwrap();
    let nproc = String::from_utf8(Command::new("nproc").output().unwrap().stdout).unwrap();
    let nproc = nproc.trim();

    // HTCondor sets OMP_NUM_THREADS itself: the others follow it.
    assert_eq!(
        threads(&[("OMP_NUM_THREADS", "8"), ("_CONDOR_MACHINE_AD", ad)]),
        (all("8"), "OMP_NUM_THREADS".into(), String::new())
    );
    // HTCondor machine ad (Cpus), by variable or in the scratch dir.
    assert_eq!(threads(&[("_CONDOR_MACHINE_AD", ad)]).0, all("4"));
    assert_eq!(threads(&[("_CONDOR_MACHINE_AD", ad)]).1, "htcondor");
    assert_eq!(threads(&[("_CONDOR_SCRATCH_DIR", scratch)]).0, all("3"));
    // Slurm.
    assert_eq!(
        threads(&[
            ("SLURM_CPUS_PER_TASK", "6"),
            ("SLURM_JOB_CPUS_PER_NODE", "12")
        ]),
        (all("6"), "slurm".into(), String::new())
    );
    assert_eq!(
        threads(&[("SLURM_JOB_CPUS_PER_NODE", "16(x2)")]).0,
        all("16")
    );
    assert_eq!(threads(&[("SLURM_JOB_CPUS_PER_NODE", "2,4")]).0, all("2"));
    // PBS/Torque and PBS Pro.
    assert_eq!(
        threads(&[("PBS_NUM_PPN", "12")]),
        (all("12"), "pbs".into(), String::new())
    );
    assert_eq!(threads(&[("NCPUS", "5")]).0, all("5"));
    // Nothing from a batch system: nproc.
    assert_eq!(threads(&[]), (all(nproc), "nproc".into(), String::new()));
    // Garbage is skipped, not exported.
    assert_eq!(
        threads(&[
            ("SLURM_CPUS_PER_TASK", "abc"),
            ("PBS_NUM_PPN", "0"),
            ("NCPUS", "7")
        ])
        .0,
        all("7")
    );
    // What is set stays set.
    let (v, _, _) = threads(&[("MKL_NUM_THREADS", "1"), ("SLURM_CPUS_PER_TASK", "6")]);
    assert_eq!(v, ["6", "1", "6", "6", "6", "6"]);
}

#[test]
fn grid_snippet_leaves_bound_dirs_alone() {
    // No /cvmfs here: the variables keep what the image config says.
    let file = overlays().join("common/files/etc/profile.d/gridship-site-grid.sh");
    let out = Command::new("dash")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("X509_CERT_DIR", "/etc/grid-security/certificates")
        .arg("-euc")
        .arg(format!(
            ". '{}'; echo \"$X509_CERT_DIR\"; set | grep '^_gs' || true",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/etc/grid-security/certificates\n"
    );
}

/// The merge rules of site-overlays/README.md ("Sites that share: extends"),
/// one by one, on profiles made here.
#[test]
fn extends_merges_as_the_readme_says() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let write = |rel: &str, text: &str| {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let queue = |model: &str| {
        format!(
            "    gpu_model: {model}\n    gpu_request: fixed\n    gpus_per_job: 1\n    cores_per_gpu: 4\n    memory_per_gpu_mb: 16000\n"
        )
    };
    write(
        "base/site.yaml",
        &format!(
            "ce: {{endpoint: https://base.example.org/arex}}\ngpu_queues:\n  gpu:\n{}    environment: {{A: base, B: base}}\n    max_walltime_hours: 48\n  old:\n{}overlay:\n  env: {{A: base, B: base}}\n  labels: {{l1: base}}\nslim:\n  keep: ['/opt/base/**']\n",
            queue("base-gpu"),
            queue("base-old")
        ),
    );
    write("base/files/etc/a.conf", "base a\n");
    write("base/files/etc/b.conf", "base b\n");
    write("base/files/opt/tool/bin/run", "#!/bin/sh\n");
    std::fs::set_permissions(
        d.join("base/files/opt/tool/bin/run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(
        "extra/site.yaml",
        "overlay:\n  env: {B: extra, C: extra}\nslim:\n  keep: ['/opt/extra/**']\n",
    );
    write("extra/files/etc/b.conf", "extra b\n");
    // The child's gpu queue gives three fields; the rest comes from base's.
    write(
        "child/site.yaml",
        "extends: [base, extra]\nce: {endpoint: https://child.example.org/arex}\ngpu_queues:\n  gpu:\n    gpu_model: child-gpu\n    driver_version: \"580.95.05\"\n    environment: {C: child}\noverlay:\n  env: {C: child}\n  labels: {l2: child}\n",
    );
    write("child/files/etc/c.conf", "child c\n");
    // A file over the parent's directory replaces the directory whole.
    write("child/files/opt/tool", "now a file\n");

    let search = SearchPath::new(Kind::Sites, Some(d));
    let p = SiteProfile::load(&search, "child").unwrap();
    let order: Vec<&str> = p.chain.docs.iter().map(|x| x.found.name.as_str()).collect();
    assert_eq!(order, ["base", "extra", "child"]);
    // ce: the last profile that has one; gpu_queues: by name, field by
    // field (a map given replaces the parent's whole).
    assert_eq!(
        p.ce.as_ref().unwrap().endpoint,
        "https://child.example.org/arex"
    );
    let gpu = &p.gpu_queues["gpu"];
    assert_eq!(gpu.gpu_model, "child-gpu");
    assert_eq!(gpu.driver_version.as_deref(), Some("580.95.05"));
    assert_eq!(
        (
            gpu.cores_per_gpu,
            gpu.memory_per_gpu_mb,
            gpu.max_walltime_hours
        ),
        (4, 16000, Some(48))
    );
    assert_eq!(gpu.container_rte, "ENV/SINGULARITY");
    let env: Vec<(&str, &str)> = gpu
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("C", "child")]);
    assert_eq!(p.gpu_queues["old"].gpu_model, "base-old");
    assert_eq!(p.gpu_queues["old"].driver_version, None);
    // env and labels: by name, later wins.
    let o = SiteOverlay::from_profile(&p).unwrap();
    let env: Vec<(&str, &str)> = o
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("A", "base"), ("B", "extra"), ("C", "child")]);
    assert_eq!(o.labels["l1"], "base");
    assert_eq!(o.labels["l2"], "child");
    // files: by path, later wins; the file replaced the directory and all below it.
    let layer = layer_entries(&o);
    let names: Vec<&str> = layer.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "etc",
            "etc/a.conf",
            "etc/b.conf",
            "etc/c.conf",
            "opt",
            "opt/tool"
        ]
    );
    assert_eq!(layer["etc/a.conf"].1, b"base a\n");
    assert_eq!(layer["etc/b.conf"].1, b"extra b\n");
    assert_eq!(layer["opt/tool"], (0o644, b"now a file\n".to_vec()));
    // slim: applied in order, parents first (both keeps hold).
    let mut policy = gridship::transform::slim::Policy::new().unwrap();
    policy.apply_site(&p.chain).unwrap();
    let sources = policy.sources.join(" ");
    assert!(
        sources.contains("base/site.yaml") && sources.contains("extra/site.yaml"),
        "{sources}"
    );

    // A profile that extends its own name builds on the one it shadows:
    // a user's glasgow on top of the shipped one.
    let user = tmp.path().join("user");
    std::fs::create_dir_all(user.join("glasgow/files/etc")).unwrap();
    std::fs::write(
        user.join("glasgow/site.yaml"),
        "extends: glasgow\noverlay:\n  env: {GRIDSHIP_SITE: glasgow-mine}\n",
    )
    .unwrap();
    std::fs::write(user.join("glasgow/files/etc/mine"), "x\n").unwrap();
    let search = SearchPath::new(Kind::Sites, Some(&user));
    let g = SiteProfile::load(&search, "glasgow").unwrap();
    let order: Vec<String> = g
        .chain
        .docs
        .iter()
        .map(|x| format!("{}@{}", x.found.name, x.found.place.origin))
        .collect();
    assert_eq!(order[1..], ["glasgow@built-in", "glasgow@option"]);
    assert_eq!(order[0], "common@built-in");
    assert!(!g.gpu_queues.is_empty());
    let o = SiteOverlay::from_profile(&g).unwrap();
    assert_eq!(o.env["GRIDSHIP_SITE"], "glasgow-mine");
    let layer = layer_entries(&o);
    assert!(layer.contains_key("etc/mine") && layer.contains_key("etc/gridship/site.json"));

    // Errors name the file and the key: a cycle, a missing parent, a typo.
    write("c1/site.yaml", "extends: c2\n");
    write("c2/site.yaml", "extends: c1\n");
    let search = SearchPath::new(Kind::Sites, Some(d));
    let e = SiteProfile::load(&search, "c1").unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let m = e.to_string();
    assert!(
        m.contains("extends: a cycle") && m.contains("c1/site.yaml"),
        "{m}"
    );
    write("orphan/site.yaml", "extends: nowhere\n");
    let m = SiteProfile::load(&search, "orphan")
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("orphan/site.yaml: extends: no site profile 'nowhere'"),
        "{m}"
    );
    write("typo/site.yaml", "name: typo\noverlays:\n  env: {A: b}\n");
    let m = SiteProfile::load(&search, "typo").unwrap_err().to_string();
    assert!(
        m.contains("typo/site.yaml") && m.contains("overlays"),
        "{m}"
    );
    // Queues: each profile's part, then the merged queue as one.
    let load_err = |site: &str, text: &str| {
        write(&format!("{site}/site.yaml"), text);
        let e = SiteProfile::load(&search, site).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        e.to_string()
    };
    // A misspelt key in a queue that only sets a field: its own file.
    let m = load_err(
        "qtypo",
        "extends: base\ngpu_queues:\n  gpu:\n    driver_versoin: \"580.95.05\"\n",
    );
    assert!(
        m.contains("qtypo/site.yaml") && m.contains("driver_versoin"),
        "{m}"
    );
    // A queue no parent has must be whole.
    let m = load_err(
        "newq",
        "extends: base\ngpu_queues:\n  fresh:\n    driver_version: \"580.95.05\"\n",
    );
    assert!(
        m.contains("newq/site.yaml: gpu_queues.fresh: no gpu_model, gpu_request, gpus_per_job, cores_per_gpu, memory_per_gpu_mb"),
        "{m}"
    );
    let m = load_err(
        "badmerge",
        "extends: base\ngpu_queues:\n  gpu:\n    max_gpus_per_job: 0\n    gpu_request: cores\n    gpus_per_job: 2\n",
    );
    assert!(
        m.contains("badmerge/site.yaml: gpu_queues.gpu: max_gpus_per_job is below gpus_per_job"),
        "{m}"
    );
}
