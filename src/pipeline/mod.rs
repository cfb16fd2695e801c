//! Pipelines: each a short composition of the stages in [`stages`]
//! (source, merge, transforms, sinks, smoke, job description).
//!
//! - [`convert`]: `sif`, `export`, `unpack` (an image to one artifact);
//! - [`publish`]: `cvmfs publish` (images to a CVMFS repository);
//! - [`promote`]: a live session to grid artifacts and a job description;
//! - [`build`] and [`nightly`]: reviewed recipes to site images.

pub mod build;
pub mod convert;
pub mod nightly;
pub mod promote;
pub mod publish;
pub mod stages;
