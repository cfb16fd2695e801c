//! Encoders: a merged index as bytes in one format (tar, squashfs, a
//! directory tree, the SIF container). They write what they are given and
//! decide nothing: the sinks (crate::sink) choose where and under what name.

use serde::Serialize;

pub mod dir;
pub mod sif;
pub mod squashfs;
pub mod tar;

/// Entries written, by kind (the tar and directory encoders' reports).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct EntryKinds {
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    pub fifos: u64,
}
