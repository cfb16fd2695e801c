//! gridship's xRSL parser against ARC's on a corpus: the grammar accepts and
//! rejects what ARC does, valid descriptions read to the same fields, and
//! what ARC silently misreads is refused with a reason.

mod common;

use std::collections::BTreeMap;

use common::arc::{arc_parse, assert_same, key};
use gridship::jobdesc::xrsl;

#[test]
fn grammar_and_fields_agree_with_arc() {
    // Valid for both, same fields.
    let valid = [
        r##"&(executable="/bin/echo")(arguments="say ""hi""" 'it''s' ^#a "b"#)"##,
        "&(* c *)(Executable = /bin/echo)(Job_Name=x)(* d *)(arguments=a b c)",
        r##"&(rsl_substitution=("V" "v1"))(executable="/bin/"#"echo")(arguments="run" # ".sh" $(V))"##,
        r##"&(rsl_substitution=("D" "/opt"))(executable=$(D)/run)(walltime="1h30m")(cputime="PT2H")"##,
        r##"+(&(executable="/bin/a")(queue="gpu"))(&(executable="/bin/b")(count="4")(countpernode="2"))"##,
        r##"&(executable="/bin/a")(inputfiles=("x" "")("y" "https://h.org:443/y"))(executables="x")(outputfiles=("o" ""))"##,
        r##"&(executable="/bin/a")(environment=("A" "1")("B" ""))(runtimeenvironment="APPS/X-1.2" "o1")(notify="bqfe u@h.org")"##,
        "&(executable=\"/bin/a\")(stdout=\"o\")(join=\"yes\")(memory=\"2000\")(disk=\"10\")(priority=\"7\")(rerun=\"1\")(gmlog=\"g\")",
        "&(executable=\"a(*b*)\")",
    ];
    // Syntax errors for both.
    let invalid = [
        r##"&(executable="a")(arguments="b""##.to_string(),
        r##"&(executable="a"))"##.to_string(),
        r##"&(executable="a")(* open"##.to_string(),
        r##"&(executable="a(*b")"##.to_string(),
        r##"&(executable=)"##.replace(")", ""),
        r##"&(executable="a")(&(+(executable="b")))"##.to_string(),
        r##"&(executable "a")"##.to_string(),
        r##"&(exec(utable="a")"##.to_string(),
        r##"&(executable="a" # )"##.to_string(),
        "&(executable=^".to_string(),
    ]
    .map(|s| s.to_string());
    let mut items: Vec<(String, &str)> = valid
        .iter()
        .map(|s| (s.to_string(), "nordugrid:xrsl"))
        .collect();
    items.extend(invalid.iter().map(|s| (s.clone(), "nordugrid:xrsl")));
    let res = arc_parse(&items);
    for (i, src) in valid.iter().enumerate() {
        assert!(res[i].ok, "ARC rejects {src}: {}", res[i].error);
        let ours = xrsl::read("c", src, &BTreeMap::new()).unwrap_or_else(|e| panic!("{src}\n{e}"));
        assert_eq!(ours.len(), res[i].jobs.len());
        for (o, a) in ours.iter().zip(&res[i].jobs) {
            assert_same(src, &key(&o.spec), a);
        }
    }
    for (i, src) in invalid.iter().enumerate() {
        let r = &res[valid.len() + i];
        assert!(!r.ok, "ARC accepts {src}");
        let ours = xrsl::parse(src).map(|rsl| xrsl::evaluate(&rsl, &BTreeMap::new()));
        assert!(
            !matches!(ours, Ok(Ok(_))),
            "gridship's grammar accepts {src}"
        );
    }
}

#[test]
fn what_arc_misreads_is_refused() {
    // (text, what ARC made of it, gridship's reason)
    let cases = [
        (
            r##"&(executable="/bin/a")(walltime="1:30:00")"##,
            ("walltime_s", serde_json::json!(0)),
            "HH:MM:SS",
        ),
        (
            r##"&(executable="/bin/a")(memory="4GB")"##,
            ("memory_mb", serde_json::json!(4)),
            "write \"4096\"",
        ),
        (
            r##"&(executable="/bin/a")(gpus="1")"##,
            ("executable", serde_json::json!("/bin/a")),
            "no GPU attribute",
        ),
        (
            r##"&(executable="/bin/a")(walltme="60")"##,
            ("walltime_s", serde_json::Value::Null),
            "did you mean 'walltime'",
        ),
        (
            r##"&(executable="/bin/a")(memory="1000")(memory="2000")"##,
            ("memory_mb", serde_json::json!(2000)),
            "given twice",
        ),
        (
            r##"&(executable="/bin/a")(arguments=$(UNSET))"##,
            ("arguments", serde_json::json!([""])),
            "not defined",
        ),
        (
            r##"&(executable="/bin/a")(priority="200")"##,
            ("priority", serde_json::json!(100)),
            "clamp",
        ),
        (
            r##"&(executable="/bin/a")(maxwalltime="60")"##,
            ("walltime_s", serde_json::Value::Null),
            "use (walltime=...)",
        ),
        (
            r##"&(executable="/bin/a")(|(queue="gpu")(queue="gpu2"))"##,
            ("queue", serde_json::json!("gpu")),
            "alternatives",
        ),
        (
            r##"&(executable="/bin/a")(walltime="1h30")"##,
            ("walltime_s", serde_json::json!(5400)),
            "without unit",
        ),
    ];
    let items: Vec<(String, &str)> = cases
        .iter()
        .map(|(s, _, _)| (s.to_string(), "nordugrid:xrsl"))
        .collect();
    let res = arc_parse(&items);
    for ((src, (field, arc_value), reason), r) in cases.iter().zip(&res) {
        assert!(r.ok, "ARC rejects {src}: {}", r.error);
        assert_eq!(&r.jobs[0][field], arc_value, "what ARC reads from {src}");
        assert!(
            xrsl::parse(src).is_ok(),
            "the grammar itself agrees with ARC on {src}"
        );
        let e = xrsl::read("c", src, &BTreeMap::new())
            .expect_err(src)
            .to_string();
        assert!(e.contains(reason) && e.contains("c:1:"), "{src}: {e}");
    }
}
