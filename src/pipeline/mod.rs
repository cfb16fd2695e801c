//! Pipelines that compose the stages: recipe builds and the nightly.

pub mod build;
pub mod nightly;
pub mod promote;
