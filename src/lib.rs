//! gridship: take a development container or a reviewed recipe to the grid.
//!
//! The pipeline is source → merge → transforms → sinks (see DESIGN.md):
//! every image lives in an OCI image layout ([`store`]), is opened from one of
//! the transports in [`reference`], and its layers are merged into one
//! in-memory [`index::FsIndex`] that every sink reads from.

pub mod cli;
pub mod error;
pub mod jobdesc;
pub mod site;

pub use error::{Error, Result};
