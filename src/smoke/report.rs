//! Smoke-test reports: one human line per check, and JUnit XML for CI
//! systems (`<testsuite>` with one `<testcase>` per check, `<failure>` and
//! `<skipped>` with the detail as message). `--json` prints the
//! [`super::Report`] itself.

use std::io::Cursor;
use std::path::Path;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, Event};

use super::{Report, Status};
use crate::{Error, Result};

/// One line per check, bootc style, then a summary line.
pub fn human(r: &Report) -> String {
    let mut s = format!(
        "smoke {} (suite {}, backend {}{})\n",
        r.image,
        r.suite,
        r.backend,
        if r.queues.is_empty() {
            String::new()
        } else {
            format!(", queues {}", r.queues.join(", "))
        }
    );
    if let Some(why) = &r.suite_chosen_by {
        s.push_str(&format!(
            "  suite {} from {}: {why}\n",
            r.suite, r.suite_path
        ));
    }
    let w = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &r.checks {
        s.push_str(&format!(
            "  {:<4}  {:<w$}  {:>6.2}s  {}\n",
            c.status.name().to_uppercase(),
            c.name,
            c.seconds,
            c.detail
        ));
    }
    s.push_str(&format!(
        "{} passed, {} failed, {} skipped in {:.1}s\n",
        r.passed, r.failed, r.skipped, r.seconds
    ));
    s
}

fn xml_err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("writing JUnit XML: {e}"))
}

/// The JUnit XML document.
pub fn junit(r: &Report) -> Result<Vec<u8>> {
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(xml_err)?;
    let tests = r.checks.len().to_string();
    let failures = r.failed.to_string();
    let skipped = r.skipped.to_string();
    let time = format!("{:.3}", r.seconds);
    let name = format!("gridship smoke {} ({})", r.suite, r.image);
    let suite = BytesStart::new("testsuite").with_attributes([
        ("name", name.as_str()),
        ("tests", tests.as_str()),
        ("failures", failures.as_str()),
        ("errors", "0"),
        ("skipped", skipped.as_str()),
        ("time", time.as_str()),
    ]);
    w.write_event(Event::Start(suite)).map_err(xml_err)?;
    let classname = format!("smoke.{}", r.suite);
    for c in &r.checks {
        let t = format!("{:.3}", c.seconds);
        let case = BytesStart::new("testcase").with_attributes([
            ("name", c.name.as_str()),
            ("classname", classname.as_str()),
            ("time", t.as_str()),
        ]);
        let inner = match c.status {
            Status::Pass => None,
            Status::Fail => Some("failure"),
            Status::Skip => Some("skipped"),
        };
        match inner {
            None => w.write_event(Event::Empty(case)).map_err(xml_err)?,
            Some(tag) => {
                w.write_event(Event::Start(case)).map_err(xml_err)?;
                w.write_event(Event::Empty(
                    BytesStart::new(tag).with_attributes([("message", c.detail.as_str())]),
                ))
                .map_err(xml_err)?;
                w.write_event(Event::End(BytesEnd::new("testcase")))
                    .map_err(xml_err)?;
            }
        }
    }
    w.write_event(Event::End(BytesEnd::new("testsuite")))
        .map_err(xml_err)?;
    let mut out = w.into_inner().into_inner();
    out.push(b'\n');
    Ok(out)
}

/// Write the JUnit XML to `path` atomically.
pub fn write_junit(r: &Report, path: &Path) -> Result<()> {
    crate::fsutil::write_atomic(path, &junit(r)?, 0o644)
}
