//! Which dated public names gc unpublishes. A nightly publishes each build
//! under a dated tag, `REG/REPO:SITE-nightly-YYYYMMDDTHHMMSSZ` (the build
//! time, UTC), beside moving tags such as `latest-SITE`. A dated name
//! stays at least `days` after its build; the newest of each group (same
//! REG/REPO:SITE) stays whatever its age, so a recipe that stopped
//! changing is never left without an image. Moving names are never
//! touched here: they go when nothing publishes them and gc's grace period
//! for trees applies as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The marker between a dated tag's group and its build time.
pub const DATED_MARK: &str = "-nightly-";

/// A dated public name: its group and build time (Unix seconds).
pub fn dated(link: &Path) -> Option<(String, i64)> {
    let s = link.to_str()?;
    let (repo, tag) = s.rsplit_once(':')?;
    if tag.contains('/') {
        return None;
    }
    let (site, stamp) = tag.rsplit_once(DATED_MARK)?;
    let t = crate::clock::parse_time(stamp).filter(|_| stamp.ends_with('Z'))?;
    Some((format!("{repo}:{site}"), t))
}

/// The dated names among `links` to unpublish at `now`: built more than
/// `days` days before and not the newest of their group.
pub fn expired(links: &[PathBuf], now: i64, days: u64) -> Vec<PathBuf> {
    let horizon = now - (days as i64) * 86_400;
    let mut groups: BTreeMap<String, Vec<(i64, &PathBuf)>> = BTreeMap::new();
    for l in links {
        if let Some((group, t)) = dated(l) {
            groups.entry(group).or_default().push((t, l));
        }
    }
    let mut out = Vec::new();
    for mut members in groups.into_values() {
        members.sort();
        members.pop(); // the newest stays
        out.extend(
            members
                .into_iter()
                .filter(|(t, _)| *t < horizon)
                .map(|(_, l)| l.clone()),
        );
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn name(site: &str, t: i64) -> PathBuf {
        PathBuf::from(format!(
            "reg.example.org/grid/dev:{site}-nightly-{}",
            crate::clock::compact_stamp(t).unwrap()
        ))
    }

    #[test]
    fn dated_names_stay_30_days_and_the_newest_always() {
        let now = 1_800_000_000;
        let links = vec![
            name("glasgow", now - DAY),
            name("glasgow", now - 29 * DAY),
            name("glasgow", now - 31 * DAY),
            name("glasgow", now - 90 * DAY),
            // Bonn's only build is old, and stays: the newest of its group.
            name("bonn", now - 60 * DAY),
            PathBuf::from("reg.example.org/grid/dev:latest-glasgow"),
            PathBuf::from("reg.example.org/grid/dev:glasgow-nightly-notadate"),
        ];
        assert_eq!(
            expired(&links, now, 30),
            vec![
                name("glasgow", now - 90 * DAY),
                name("glasgow", now - 31 * DAY)
            ]
        );
        assert!(expired(&links, now, 100).is_empty());
        assert_eq!(dated(&links[5]), None);
        assert_eq!(dated(&links[6]), None);
    }
}
