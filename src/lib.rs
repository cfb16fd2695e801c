//! gridship: take a development container or a reviewed recipe to the grid.
//!
//! The pipeline is source → merge → transforms → sinks (see DESIGN.md):
//! every image lives in an OCI image layout ([`store`]), is opened from one of
//! the transports in [`reference`], and its layers are merged into one
//! in-memory [`index::FsIndex`] that every sink reads from.

pub mod archive;
pub mod ce;
pub mod cli;
pub mod clock;
pub mod config;
pub mod digest;
pub mod encode;
pub mod engine;
pub mod error;
pub mod event;
pub mod fsutil;
pub mod image;
pub mod index;
pub mod jobdesc;
pub mod layer_store;
pub mod layers;
pub mod lockfile;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod recipe;
pub mod reference;
pub mod registry;
pub mod serve;
pub mod sink;
pub mod site;
pub mod smoke;
pub mod store;
pub mod transform;
pub mod transport;

pub use error::{Error, Result};
