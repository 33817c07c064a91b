//! Why a bundle was refused (or could not be written): one variant per defect, each
//! message naming the defect and ending with a hint for the operator.
//!
//! A refusal means nothing of the bundle may be trusted: the caller applies nothing and
//! keeps nothing under an inbox name. [`BundleError::is_refusal`] separates defects of
//! the file from local trouble (a full disk, a missing key).

use std::path::PathBuf;

/// Every way reading or writing a bundle can fail.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read or write {path}: {source}\nhint: check that the path exists, the disk has room and ferry may access it")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is truncated (got {got} of {expected} bytes)\nhint: copy it again from the sender's outbox (on the sender, run `ferry send --again DIR`)")]
    Truncated {
        file: String,
        got: u64,
        expected: u64,
    },
    #[error("{file} has {extra} extra bytes after the end of the bundle\nhint: copy it again from the sender's outbox (on the sender, run `ferry send --again DIR`); if it repeats, the copy tool or medium is adding data")]
    ExtraBytes { file: String, extra: u64 },
    #[error("{file} is not a ferry bundle (bad magic)\nhint: only put files written by `ferry` into an inbox or on a carrier")]
    BadMagic { file: String },
    #[error("{file} uses bundle format version {version}, this ferry reads versions {oldest} to {supported}\nhint: upgrade ferry on this node to one that reads version {version}")]
    UnknownVersion {
        file: String,
        version: u16,
        oldest: u16,
        supported: u16,
    },
    #[error("{file} has a tar member {name:?} whose path leaves the bundle (path traversal)\nhint: the file was crafted or damaged; delete it and ask the sender for the bundle again")]
    PathTraversal { file: String, name: String },
    #[error("{file} has a tar member with an absolute path {name:?}\nhint: the file was crafted or damaged; delete it and ask the sender for the bundle again")]
    AbsolutePath { file: String, name: String },
    #[error("{file} has a tar member {name:?} that is a {kind}, only regular files are allowed\nhint: the file was crafted or damaged; delete it and ask the sender for the bundle again")]
    SpecialMember {
        file: String,
        name: String,
        kind: &'static str,
    },
    #[error("{file} has a tar member {name:?} that the bundle format does not name\nhint: the file was not written by this ferry or was tampered with; ask the sender for the bundle again")]
    UnknownMember { file: String, name: String },
    #[error("{file} has the tar member {name:?} twice\nhint: the file was tampered with; ask the sender for the bundle again")]
    DuplicateMember { file: String, name: String },
    #[error("{file} has the tar member {name:?} where {expected:?} must come\nhint: the members were reordered; ask the sender for the bundle again")]
    MemberOrder {
        file: String,
        name: String,
        expected: &'static str,
    },
    #[error("{file} has a malformed tar member header ({why})\nhint: the file is damaged; copy it again from the sender's outbox (on the sender, run `ferry send --again DIR`)")]
    MalformedTar { file: String, why: String },
    #[error("{file} has a malformed bundle header ({why})\nhint: the file is damaged or not written by ferry; ask the sender for the bundle again")]
    MalformedHeader { file: String, why: String },
    #[error("{file} states a {what} of {stated} bytes, over the limit of {limit}\nhint: the file was crafted or damaged; the sender must split its changes into smaller bundles")]
    OverLimit {
        file: String,
        what: &'static str,
        stated: u64,
        limit: u64,
    },
    #[error("{file} comes from unknown sender {sender:?}\nhint: if {sender} is a genuine node, add it with `ferry peer add {sender} KEY` using the key `ferry key` prints there")]
    UnknownSender { file: String, sender: String },
    #[error("{file} is addressed to {recipient:?}, not to this node ({me:?})\nhint: leave it on the carrier for {recipient}, or list {recipient} under relay_for if this node relays for it")]
    WrongRecipient {
        file: String,
        recipient: String,
        me: String,
    },
    #[error("{file} is named for {named} but its signed header says {actual}\nhint: the file was renamed; restore its name or ask the sender for the bundle again")]
    NameMismatch {
        file: String,
        named: String,
        actual: String,
    },
    #[error("{file} has a bad signature for sender {sender:?}\nhint: the file was tampered with, or the key configured for {sender} is wrong; compare it with `ferry key` on {sender}")]
    BadSignature { file: String, sender: String },
    #[error("{file} body does not match the hash its signed header states (hash mismatch)\nhint: the file was damaged in transit; copy it again from the sender's outbox (on the sender, run `ferry send --again DIR`)")]
    HashMismatch { file: String },
    #[error("{file} body decompresses beyond its stated limit of {limit} bytes (zip bomb guard)\nhint: the file was crafted or the sender is broken; do not retry it, report it to the sender's operator")]
    ZipBomb { file: String, limit: u64 },
    #[error("{file} body chunk {chunk} fails authentication (cannot decrypt)\nhint: the bundle was not sealed for this node's key, or was damaged; check `ferry key` here against the key the sender has for this node")]
    Decrypt { file: String, chunk: u64 },
    #[error("{file} body is corrupt ({why})\nhint: the sender wrote an invalid bundle; report it to the sender's operator")]
    Corrupt { file: String, why: String },
    #[error("reading {file} already failed, nothing of it can be trusted\nhint: roll back whatever was applied from this bundle")]
    Poisoned { file: String },
    #[error("table {table:?} was not declared before its first change\nhint: call BundleWriter::declare_table for every table first (this is a bug in the caller)")]
    UndeclaredTable { table: String },
    #[error("change to {table} has {got} values but the table declares {expected} columns\nhint: pass values in the order of the declared column list (this is a bug in the caller)")]
    ValueCount {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("invalid bundle parameters: {why}\nhint: this is a bug in the caller")]
    InvalidParams { why: String },
}

impl BundleError {
    /// Whether this is a defect of the bundle file (refuse and quarantine it), as opposed
    /// to a local problem or a caller bug (retry after fixing it).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            BundleError::Io { .. }
                | BundleError::UndeclaredTable { .. }
                | BundleError::ValueCount { .. }
                | BundleError::InvalidParams { .. }
        )
    }

    /// A short machine-readable name of the defect (for `--json` and reason files).
    pub fn kind(&self) -> &'static str {
        match self {
            BundleError::Io { .. } => "io",
            BundleError::Truncated { .. } => "truncated",
            BundleError::ExtraBytes { .. } => "extra-bytes",
            BundleError::BadMagic { .. } => "bad-magic",
            BundleError::UnknownVersion { .. } => "unknown-version",
            BundleError::PathTraversal { .. } => "path-traversal",
            BundleError::AbsolutePath { .. } => "absolute-path",
            BundleError::SpecialMember { .. } => "special-member",
            BundleError::UnknownMember { .. } => "unknown-member",
            BundleError::DuplicateMember { .. } => "duplicate-member",
            BundleError::MemberOrder { .. } => "member-order",
            BundleError::MalformedTar { .. } => "malformed-tar",
            BundleError::MalformedHeader { .. } => "malformed-header",
            BundleError::OverLimit { .. } => "over-limit",
            BundleError::UnknownSender { .. } => "unknown-sender",
            BundleError::WrongRecipient { .. } => "wrong-recipient",
            BundleError::NameMismatch { .. } => "name-mismatch",
            BundleError::BadSignature { .. } => "bad-signature",
            BundleError::HashMismatch { .. } => "hash-mismatch",
            BundleError::ZipBomb { .. } => "zip-bomb",
            BundleError::Decrypt { .. } => "decrypt",
            BundleError::Corrupt { .. } => "corrupt",
            BundleError::Poisoned { .. } => "poisoned",
            BundleError::UndeclaredTable { .. } => "undeclared-table",
            BundleError::ValueCount { .. } => "value-count",
            BundleError::InvalidParams { .. } => "invalid-params",
        }
    }
}

/// Shorthand for an I/O error on `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}
