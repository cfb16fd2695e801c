//! Path patterns for transform rules: shell-style globs over absolute
//! image paths, compiled to one anchored regex each.
//!
//! `*` and `?` stay within one path component, `[...]` is a class
//! (`[!...]` negated), `**` as a whole component matches any number of
//! components (zero included). A pattern names paths; a rule that removes
//! a directory a pattern names removes everything below it too.

use regex::bytes::Regex;

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct PathPattern {
    pub text: String,
    re: Regex,
}

impl PathPattern {
    /// Compile `text` (must start with `/` or `**/`); `input` names where
    /// it came from, for the error.
    pub fn new(text: &str, input: &str) -> Result<PathPattern> {
        let bad = |reason: &str| {
            Error::BadInput {
            input: input.to_string(),
            place: format!("pattern {text:?}: "),
            reason: reason.to_string(),
            hint: Some("patterns are absolute image paths with *, ?, [..] and **, e.g. /usr/share/doc/** or **/.cache/pip".into()),
        }
        };
        let body = if let Some(rest) = text.strip_prefix('/') {
            rest
        } else if text.starts_with("**/") {
            text
        } else {
            return Err(bad("not an absolute path"));
        };
        let body = body.trim_end_matches('/');
        let mut re = String::from("^");
        let comps: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            if *c == "**" {
                // Any number of whole components, each followed by `/`
                // unless it ends the pattern.
                re.push_str(if last { ".*" } else { "(?:[^/]*/)*" });
                continue;
            }
            if c.is_empty() || *c == "." || *c == ".." {
                return Err(bad("empty, `.` or `..` component"));
            }
            let mut chars = c.chars().peekable();
            while let Some(ch) = chars.next() {
                match ch {
                    '*' => re.push_str("[^/]*"),
                    '?' => re.push_str("[^/]"),
                    '[' => {
                        let mut class = String::from("[");
                        let negated = chars.peek() == Some(&'!');
                        if negated {
                            chars.next();
                            // A class never matches the separator.
                            class.push_str("^/");
                        }
                        let mut closed = false;
                        for ch in chars.by_ref() {
                            if ch == ']' {
                                closed = true;
                                break;
                            }
                            if ch == '/' {
                                continue;
                            }
                            if matches!(ch, '\\' | '[' | '^' | '&' | '~') {
                                class.push('\\');
                            }
                            class.push(ch);
                        }
                        if !closed {
                            return Err(bad("`[` without `]`"));
                        }
                        class.push(']');
                        re.push_str(&class);
                    }
                    c => re.push_str(&regex::escape(&c.to_string())),
                }
            }
            if !last {
                re.push('/');
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| bad(&e.to_string()))?;
        Ok(PathPattern {
            text: text.to_string(),
            re,
        })
    }

    /// A pattern naming exactly one index key (no glob characters).
    pub fn literal(key: &[u8]) -> PathPattern {
        let text = format!("/{}", String::from_utf8_lossy(key));
        let re = format!("^{}$", regex::escape(&String::from_utf8_lossy(key)));
        PathPattern {
            text,
            re: Regex::new(&re).expect("an escaped literal is a valid regex"),
        }
    }

    /// Whether the index key (path without the leading `/`) matches.
    pub fn matches(&self, key: &[u8]) -> bool {
        self.re.is_match(key)
    }
}

/// A list of patterns, with the first that names a path or one of its
/// ancestors.
#[derive(Debug, Clone, Default)]
pub struct PatternSet {
    pub patterns: Vec<PathPattern>,
}

impl PatternSet {
    pub fn compile(texts: &[String], input: &str) -> Result<PatternSet> {
        Ok(PatternSet {
            patterns: texts
                .iter()
                .map(|t| PathPattern::new(t, input))
                .collect::<Result<_>>()?,
        })
    }

    pub fn push(&mut self, p: PathPattern) {
        self.patterns.push(p);
    }

    /// The pattern naming `key` itself.
    pub fn matching(&self, key: &[u8]) -> Option<&PathPattern> {
        self.patterns.iter().find(|p| p.matches(key))
    }

    /// The pattern naming `key` or a directory above it.
    pub fn covering(&self, key: &[u8]) -> Option<&PathPattern> {
        self.covering_at(key).map(|(p, _)| p)
    }

    /// Like [`PatternSet::covering`], with the path it names (`key` or the
    /// directory above it).
    pub fn covering_at<'k>(&self, key: &'k [u8]) -> Option<(&PathPattern, &'k [u8])> {
        let mut k = key;
        loop {
            if let Some(p) = self.matching(k) {
                return Some((p, k));
            }
            match k.iter().rposition(|&b| b == b'/') {
                Some(i) => k = &k[..i],
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, key: &str) -> bool {
        PathPattern::new(p, "test").unwrap().matches(key.as_bytes())
    }

    #[test]
    fn globs() {
        assert!(m("/usr/share/doc/**", "usr/share/doc/a/b"));
        assert!(m("/usr/share/doc/**", "usr/share/doc/a"));
        assert!(!m("/usr/share/doc/**", "usr/share/doc"));
        assert!(m("/usr/share/doc", "usr/share/doc"));
        assert!(m("**/.cache/pip", "root/.cache/pip"));
        assert!(m("**/.cache/pip", ".cache/pip"));
        assert!(m("**/.cache/pip", "home/u/x/.cache/pip"));
        assert!(!m("**/.cache/pip", "home/u/.cache/pipx"));
        assert!(m("/home/*/[!.]*", "home/u/project"));
        assert!(!m("/home/*/[!.]*", "home/u/.cache"));
        assert!(!m("/home/*/[!.]*", "home/u/project/x"));
        assert!(m("/etc/ssh/ssh_host_*", "etc/ssh/ssh_host_rsa_key.pub"));
        assert!(!m("/etc/ssh/ssh_host_*", "etc/ssh/ssh_config"));
        assert!(m("/tmp/?", "tmp/a"));
        assert!(!m("/tmp/*", "tmp/a/b"));
        assert!(m("/a.b", "a.b") && !m("/a.b", "axb"));
    }

    #[test]
    fn covering_finds_ancestors() {
        let s = PatternSet::compile(&["/work".into()], "t").unwrap();
        assert!(s.covering(b"work/project/main.py").is_some());
        assert!(s.covering(b"workx").is_none());
    }

    #[test]
    fn bad_patterns_name_the_input() {
        let e = PathPattern::new("usr/share", "site.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("site.yaml") && e.contains("not an absolute path"),
            "{e}"
        );
        assert!(PathPattern::new("/a/[bc", "x").is_err());
        assert!(PathPattern::new("/a/../b", "x").is_err());
    }
}
