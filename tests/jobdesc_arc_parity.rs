//! Every xRSL and ADL gridship writes is read back by ARC's own library
//! (python3-nordugrid-arc) and compared field by field with the JobSpec it
//! came from; the xRSL and the ADL of one JobSpec must give the same ARC job.

mod common;

use std::collections::BTreeMap;

use common::arc::{arc_parse, assert_same, key, repo};
use gridship::jobdesc::{
    self, EnvVar, InputFile, JobSpec, Notify, NotifyState, OutputFile, Request, RuntimeEnv,
    Template, adl, xrsl,
};
use gridship::site::SiteProfile;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Check a batch with one ARC run: xRSL and ADL of each spec parse in ARC to
/// the spec's own fields, and gridship reads its own output back unchanged.
fn check_batch(specs: &[JobSpec]) {
    let mut items = Vec::new();
    for s in specs {
        assert!(
            jobdesc::validate::check(s).is_empty(),
            "generator made an invalid spec: {:?}\n{s:#?}",
            jobdesc::validate::check(s)
        );
        items.push((xrsl::write_job(s), "nordugrid:xrsl"));
        items.push((adl::write_job(s), "emies:adl"));
    }
    let res = arc_parse(&items);
    for (i, s) in specs.iter().enumerate() {
        let (x, a) = (&res[2 * i], &res[2 * i + 1]);
        assert!(
            x.ok,
            "ARC rejects our xRSL: {}\n{}",
            x.error,
            items[2 * i].0
        );
        assert!(
            a.ok,
            "ARC rejects our ADL: {}\n{}",
            a.error,
            items[2 * i + 1].0
        );
        assert_eq!((x.jobs.len(), a.jobs.len()), (1, 1));
        let ours = key(s);
        assert_same(&format!("xRSL\n{}", items[2 * i].0), &ours, &x.jobs[0]);
        assert_same(&format!("ADL\n{}", items[2 * i + 1].0), &ours, &a.jobs[0]);
        assert_eq!(
            x.jobs[0], a.jobs[0],
            "ARC reads the xRSL and the ADL of one JobSpec differently"
        );
        // Our readers are the inverse of our writers.
        let back = xrsl::read("t", &items[2 * i].0, &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{e}\n{}", items[2 * i].0));
        assert_eq!(&back[0].spec, s);
        assert_eq!(
            &adl::read("t", &items[2 * i + 1].0).unwrap_or_else(|e| panic!("{e}"))[0],
            s
        );
    }
}

#[test]
fn every_site_and_template_parses_identically_in_arc() {
    let overlays = repo().join("site-overlays");
    let tdir = repo().join("xrsl-templates");
    let mut specs = Vec::new();
    let mut multi = Vec::new();
    for site in ["glasgow", "manchester", "qmul", "bonn"] {
        let p = SiteProfile::load(&overlays, site).unwrap();
        for q in p.gpu_queues.keys() {
            for (t, image) in [
                (
                    "gpu-cvmfs",
                    "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/atlasml/ml-base:py-3.9.7",
                ),
                (
                    "gpu-sif-staged",
                    "https://images.example.org:443/sif/train-v2.sif",
                ),
                (
                    "gpu-hpscan",
                    "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/atlasml/ml-base:py-3.9.7",
                ),
            ] {
                let tpl = Template::load(&tdir, t).unwrap();
                let req = Request {
                    gpus: None,
                    work: jobdesc::work::Work {
                        command: Some(jobdesc::work::Command::Shell(
                            "python3 train.py --out results".into(),
                        )),
                        outputs: vec!["results/".into()],
                        ..Default::default()
                    },
                    image_command: jobdesc::work::ImageCommand::Unknown("remote".into()),
                };
                let jobs = jobdesc::for_image(&p, q, image, &tpl, &req).unwrap();
                // Site numbers land in the jobs.
                let gq = &p.gpu_queues[q];
                for j in &jobs {
                    assert_eq!(j.queue.as_deref(), Some(q.as_str()));
                    assert_eq!(j.count, Some(gq.gpus_per_job * gq.cores_per_gpu));
                    assert_eq!(
                        j.memory_mb,
                        Some(gq.memory_per_gpu_mb / u64::from(gq.cores_per_gpu))
                    );
                    assert_eq!(j.runtime_environments[0].name, gq.container_rte);
                }
                if t == "gpu-hpscan" {
                    assert_eq!(jobs.len(), 3);
                    multi.push(jobs.clone());
                }
                specs.extend(jobs);
            }
        }
    }
    check_batch(&specs);
    // A multi-request as one + text: ARC splits it into the same jobs.
    let texts: Vec<(String, &str)> = multi
        .iter()
        .map(|j| (xrsl::write(j), "nordugrid:xrsl"))
        .collect();
    for (r, jobs) in arc_parse(&texts).iter().zip(&multi) {
        assert!(r.ok, "{}", r.error);
        assert_eq!(r.jobs.len(), jobs.len());
        for (a, j) in r.jobs.iter().zip(jobs) {
            assert_same("multi-request", &key(j), a);
        }
        let lrs: Vec<&str> = r
            .jobs
            .iter()
            .map(|j| {
                let env = j["environment"].as_array().unwrap();
                let lr = env
                    .iter()
                    .find(|e| e[0] == "LR")
                    .expect("LR in the environment");
                lr[1].as_str().unwrap()
            })
            .collect();
        assert_eq!(lrs, ["0.1", "0.01", "0.001"]);
    }
}

const PIECES: &[&str] = &[
    "\"", "\"\"", "'", "''", "(", ")", "(*", "*)", "^", "^#", "#", "$", "$(X)", "&", "|", "+", "=",
    "!=", "<", ">", " ", "  ", "\t", "\n", "\r\n", "\r", "é", "€", "😀", "\u{202e}", "日本", "a",
    "Z", "0", "9", "-", "_", ":", ";", "\\", "`", "{", "}", "[", "]", "%", "@", "~", "*", "?", ",",
];

fn hostile() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..10).prop_map(|v| v.concat())
}

fn name() -> impl Strategy<Value = String> {
    // File names: hostile but relative and without path components.
    hostile().prop_map(|s| format!("f{}", s.replace(['/', '.'], "_")))
}

fn url() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,12}".prop_map(|p| format!("https://data.example.org:443/store/{p}"))
}

fn spec() -> impl Strategy<Value = JobSpec> {
    let files = (
        prop::collection::vec((name(), prop::option::of(url()), any::<bool>()), 0..3),
        prop::collection::vec((name(), prop::option::of(url())), 0..3),
    );
    let resources = (
        prop::option::of(1u64..2_000_000),
        prop::option::of(1u64..2_000_000),
        prop::option::of(1u64..200_000),
        prop::option::of(1u64..100_000),
        prop::option::of((1u32..9, 1u32..5, prop::option::of(any::<bool>()))),
        prop::option::of("[a-z][a-z0-9_-]{0,10}"),
    );
    let text = (
        hostile(),
        prop::collection::vec(hostile(), 0..5),
        prop::collection::vec(("[A-Z_][A-Z0-9_]{0,8}", hostile()), 0..3),
        prop::option::of(hostile().prop_map(|s| format!("j{s}"))),
        prop::collection::vec(
            (
                "(ENV/SINGULARITY|ENV/APPTAINER|APPS/HEP/ATLAS-2[0-9]\\.[0-9]|ENV/GPU)",
                prop::collection::vec(hostile(), 0..3),
            ),
            0..3,
        ),
        (
            prop::option::of(name()),
            prop::option::of(name()),
            prop::option::of(name()),
        ),
    );
    let misc = (
        prop::collection::vec(
            (
                "[a-z]{1,8}@[a-z]{1,8}\\.org",
                prop::sample::subsequence(NotifyState::ALL.to_vec(), 1..=4),
            ),
            0..2,
        ),
        prop::option::of(0u8..=100),
        prop::option::of(0u32..5),
        prop::option::of(name()),
    );
    (files, resources, text, misc).prop_map(
        |(
            (ins, outs),
            (wall, cpu, mem, disk, slots, queue),
            (exe, args, env, job_name, rtes, (stdin, stdout, stderr)),
            (notify, priority, rerun, gmlog),
        )| {
            let mut seen = std::collections::HashSet::new();
            let input_files: Vec<InputFile> = ins
                .into_iter()
                // Uploaded names with ':' are refused (ARC reads them as URLs); tested in jobdesc_corpus.
                .map(|(n, s, e)| (if s.is_none() { n.replace(':', "_") } else { n }, s, e))
                // Executable names with "(*" are refused (ARC loses the flag in xRSL).
                .map(|(n, s, e)| (if e { n.replace("(*", "(_") } else { n }, s, e))
                .filter(|(n, _, _)| seen.insert(n.clone()))
                .map(|(name, source, executable)| InputFile {
                    name,
                    source,
                    executable,
                })
                .collect();
            // A relative executable must be staged; make it an absolute path instead.
            let executable = format!("/opt/{exe}");
            let mut seen = std::collections::HashSet::new();
            let output_files = outs
                .into_iter()
                .filter(|(n, _)| seen.insert(n.clone()))
                .map(|(name, target)| OutputFile { name, target })
                .collect();
            let mut emails = std::collections::HashSet::new();
            let (count, count_per_node, exclusive) = match slots {
                Some((per, mult, ex)) => (Some(per * mult), Some(per), ex),
                None => (None, None, None),
            };
            let mut rte_names = std::collections::HashSet::new();
            JobSpec {
                executable,
                arguments: args,
                stdin,
                stdout,
                stderr,
                input_files,
                output_files,
                environment: env
                    .into_iter()
                    .map(|(name, value)| EnvVar { name, value })
                    .collect(),
                walltime_s: wall,
                cputime_s: cpu,
                memory_mb: mem,
                disk_mb: disk,
                count,
                count_per_node,
                exclusive,
                queue,
                runtime_environments: rtes
                    .into_iter()
                    .filter(|(n, _)| rte_names.insert(n.clone()))
                    .map(|(name, options)| RuntimeEnv { name, options })
                    .collect(),
                job_name,
                notify: notify
                    .into_iter()
                    .filter(|(e, _)| emails.insert(e.clone()))
                    .map(|(email, states)| Notify { email, states })
                    .collect(),
                priority,
                rerun,
                gmlog,
            }
        },
    )
}

#[test]
fn hostile_jobspecs_survive_our_writers_and_arcs_parser() {
    // Batches keep the number of ARC (python) runs small.
    let mut runner = TestRunner::new(Config {
        cases: 8,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(spec(), 24), |specs| {
            check_batch(&specs);
            Ok(())
        })
        .unwrap();
}

#[test]
fn quoting_edge_cases_by_hand() {
    let base = JobSpec {
        executable: "/bin/echo".into(),
        ..JobSpec::default()
    };
    let args = [
        "(*", "*)", "(* x *)", "a(*b*)c", "\"", "\"\"", "^#x#", "$(HOME)", "#", "'", "\n", "", " ",
        "(", ")((**", "\\\"", "é",
    ];
    let mut specs = Vec::new();
    for a in args {
        specs.push(JobSpec {
            arguments: vec![a.to_string(), "end".into()],
            job_name: Some(format!("j{a}")),
            ..base.clone()
        });
    }
    check_batch(&specs);
}
