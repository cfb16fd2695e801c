//! The library's error type and the exit-code convention.
//!
//! Exit codes: 0 ok, 1 failure of the work, 2 bad usage or bad input.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input the user gave is wrong: a reference, a file, a flag value.
    /// `input` names it, `place` says where in it, `hint` what to do.
    #[error("{input}: {place}{reason}{}", hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    BadInput {
        input: String,
        place: String,
        reason: String,
        hint: Option<String>,
    },

    /// A layer holds an entry that would escape the image root or is malformed.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("authentication failed for {registry}: {detail}")]
    AuthFailed { registry: String, detail: String },

    /// An ARC CE refused or failed a request (submit, status, kill, clean).
    #[error("ARC CE {ce}: {detail}")]
    CeRequest { ce: String, detail: String },

    #[error("{what} not found: {detail}")]
    NotFound { what: String, detail: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput { .. }
            | Error::UnsafeEntry { .. }
            | Error::NotFound { .. }
            | Error::AuthFailed { .. } => 2,
            _ => 1,
        }
    }

    pub fn bad_input(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadInput {
            input: input.into(),
            place: String::new(),
            reason: reason.into(),
            hint: None,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn io_path(path: &std::path::Path, what: &str, source: std::io::Error) -> Self {
        Error::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

/// Attach a path to an io::Error.
pub trait IoContext<T> {
    fn at(self, what: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, what: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io_path(&path.into(), what, e))
    }
}

/// The exit code for an error that reached the CLI edge: the first typed
/// gridship error in the chain decides; anything else is a failure (1).
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return e.exit_code();
        }
    }
    1
}
