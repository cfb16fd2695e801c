//! Where gridship's defaults come from: the shipped sites, templates and
//! smoke suites built into the binary ([`builtin`]), the search path that
//! lets a user's or an admin's copy shadow them ([`search`]), and the
//! `config.yaml` defaults for everyday options ([`file`]).
//!
//! Precedence everywhere: command-line option > env var >
//! `$XDG_CONFIG_HOME/gridship` > `/etc/gridship` > built-in.

pub mod builtin;
pub mod file;
pub mod search;

pub use file::Defaults;
pub use search::{Found, Kind, Origin, SearchPath};
