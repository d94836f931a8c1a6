//! OCI images: results as image layers.

pub mod layer;
