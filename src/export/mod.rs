//! Export: turning captured changes into bundles, in uuid space.
//!
//! [`rows`] reads rows with every reference given as the referenced row's identity;
//! it is shared with `ferry verify`, which digests the same representation.

pub mod rows;
