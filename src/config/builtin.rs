//! The defaults shipped inside the binary: the repository's `site-overlays/`,
//! `xrsl-templates/` and `smoke-suites/`, embedded by build.rs with their
//! executable bits and symlinks.

/// One entry of an embedded tree, relative to its root.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinEntry {
    pub path: &'static str,
    pub kind: BuiltinKind,
}

#[derive(Debug, Clone, Copy)]
pub enum BuiltinKind {
    Dir,
    File { data: &'static [u8], exec: bool },
    Symlink(&'static str),
}

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The file at `path` of `tree`, if it is one.
pub fn file(tree: &'static [BuiltinEntry], path: &str) -> Option<&'static [u8]> {
    tree.iter().find_map(|e| match e.kind {
        BuiltinKind::File { data, .. } if e.path == path => Some(data),
        _ => None,
    })
}

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("GRIDSHIP_GIT_COMMIT");

/// `--version`: the crate version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("GRIDSHIP_GIT_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_defaults_are_embedded() {
        assert!(file(SITES, "glasgow/site.yaml").is_some());
        assert!(file(TEMPLATES, "gpu-cvmfs.xrsl").is_some());
        assert!(file(SUITES, "gpu-basic.yaml").is_some());
        // Parents come before children: the overlay layer relies on it.
        let pos = |p: &str| SITES.iter().position(|e| e.path == p).unwrap();
        assert!(pos("glasgow") < pos("glasgow/site.yaml"));
    }
}
