//! Sinks: where a merged, transformed image goes.

pub mod cvmfs;
pub mod dir;
pub mod oci;
pub mod sif;
pub mod squashfs;
pub mod tar;
