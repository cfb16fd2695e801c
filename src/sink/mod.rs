//! Sinks: where a merged, transformed image goes.

pub mod cvmfs;
pub mod dir;
pub mod sif;
pub mod squashfs;
pub mod tar;
