//! Sinks: where a merged, transformed image goes.

pub mod dir;
pub mod tar;
