//! Site overlay content: the `overlay:` section of every site.yaml, the
//! files/ trees, and the thread-count snippet run by dash (POSIX sh) for each
//! batch system it reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gridship::site::{SiteProfile, list_sites};

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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Overlay {
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct WithOverlay {
    overlay: Overlay,
}

#[test]
fn every_site_has_overlay_section_and_files() {
    assert_eq!(list_sites(&overlays()), SITES);
    let threads = std::fs::read(overlays().join("bonn").join(THREADS)).unwrap();
    for site in SITES {
        let dir = overlays().join(site);
        // The ARC sections still load.
        let p = SiteProfile::load(&overlays(), site).unwrap();
        assert!(p.ce.is_some() && !p.gpu_queues.is_empty(), "{site}");
        let text = std::fs::read_to_string(dir.join("site.yaml")).unwrap();
        let o: WithOverlay = serde_saphyr::from_str(&text).unwrap();
        let env = &o.overlay.env;
        assert_eq!(env["X509_CERT_DIR"], "/etc/grid-security/certificates");
        assert_eq!(env["X509_VOMS_DIR"], "/etc/grid-security/vomsdir");
        assert_eq!(env["VOMS_USERCONF"], "/etc/vomses");
        assert_eq!(env["GRIDSHIP_SITE"], site);
        assert_eq!(o.overlay.labels["gridship.site"], site);
        // One snippet for all sites.
        assert_eq!(std::fs::read(dir.join(THREADS)).unwrap(), threads, "{site}");
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("files/etc/gridship/site.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["site"], site);
        assert_eq!(
            json["gocdb"],
            o.overlay.labels["gridship.site.gocdb"].as_str()
        );
        // Only plain files and directories, sourced snippets not executable.
        for f in [
            THREADS,
            "files/etc/profile.d/gridship-site-grid.sh",
            "files/.singularity.d/env/92-gridship-site.sh",
            "files/etc/grid-security/README.gridship",
        ] {
            let md = std::fs::symlink_metadata(dir.join(f)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert!(
                md.is_file() && md.permissions().mode() & 0o111 == 0,
                "{site}/{f}"
            );
        }
        // Every snippet is valid POSIX sh.
        for f in [
            THREADS,
            "files/etc/profile.d/gridship-site-grid.sh",
            "files/.singularity.d/env/92-gridship-site.sh",
        ] {
            let st = Command::new("dash")
                .arg("-n")
                .arg(dir.join(f))
                .status()
                .unwrap();
            assert!(st.success(), "{site}/{f}");
        }
    }
}

/// Source the snippet with dash under `set -eu`, in a clean environment plus
/// `env`; returns the six variables, GRIDSHIP_JOB_CPUS_FROM and leftovers.
fn threads(env: &[(&str, &str)]) -> (Vec<String>, String, String) {
    let file = overlays().join("glasgow").join(THREADS);
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
    let file = overlays().join("qmul/files/etc/profile.d/gridship-site-grid.sh");
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
