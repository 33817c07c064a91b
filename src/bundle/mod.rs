//! Bundle files: the sealed, signed, encrypted unit that carries row changes between nodes.
//!
//! A bundle goes from one sender to one recipient. [`BundleWriter`] seals changes into
//! a file; [`verify_header`] checks a file without decrypting it (relays, carriers);
//! [`open`] verifies, decrypts and streams the changes back. The byte-level format is
//! specified in `bundle-format/SPEC.md`; its constants live in [`mod@format`].

pub mod ahead;
pub mod body;
mod encode;
pub mod error;
pub mod format;
pub mod header;
pub mod keys;
pub mod model;
pub mod reader;
pub mod slots;
pub mod stream;
pub mod tarball;
pub mod writer;

pub use ahead::ReadAhead;
pub use error::BundleError;
pub use format::BundleName;
pub use header::Header;
pub use keys::{KeyError, NodeKeys, Peers, PublicKey};
pub use model::{Change, ChangeRef, Identity, IdentityRef, Op, Value, ValueRef, Version};
pub use reader::{
    open, open_named, verify_header, verify_named, verify_reader, BundleReader, Verified,
};
pub use writer::{BundleMeta, BundleWriter, Sealed};
