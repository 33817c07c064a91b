//! The bundle format's constants and its file-name grammar, in one place.
//!
//! Every number and string that another implementation needs to read or write a bundle
//! lives here and in `bundle-format/SPEC.md`; a test (`tests/bundle_spec.rs`) parses the
//! spec and asserts that each constant written there equals the one below, so the two
//! cannot drift apart. Change a constant only together with the spec and a new
//! [`FORMAT_VERSION`].

/// The first 8 bytes of the `header` member.
pub const MAGIC: &[u8; 8] = b"FERRYBDL";

/// The format version this implementation writes (2 bytes, big-endian, after the magic).
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this implementation still reads (it reads every version
/// from this one to [`FORMAT_VERSION`]).
pub const OLDEST_FORMAT_VERSION: u16 = 1;

/// Tar member 1: the cleartext, signed routing header.
pub const MEMBER_HEADER: &str = "header";
/// Tar member 2: the Ed25519 signature over the header.
pub const MEMBER_SIGNATURE: &str = "signature";
/// Tar member 3: the encrypted, compressed body.
pub const MEMBER_BODY: &str = "body";
/// The members of a bundle, in the only order allowed.
pub const MEMBERS: [&str; 3] = [MEMBER_HEADER, MEMBER_SIGNATURE, MEMBER_BODY];

/// Size of a tar block.
pub const TAR_BLOCK: usize = 512;
/// The mode field of every member header (octal text).
pub const TAR_MODE: &str = "0000644";

/// Largest `header` member accepted, in bytes.
pub const MAX_HEADER_LEN: u64 = 65_536;
/// Length of an Ed25519 signature, the whole `signature` member.
pub const SIGNATURE_LEN: u64 = 64;
/// Largest stated decompressed (and compressed) body accepted, in bytes (4 GiB).
pub const MAX_PLAIN_LEN: u64 = 4_294_967_296;
/// Largest single body record (after its length prefix), in bytes (64 MiB).
pub const MAX_RECORD_LEN: u32 = 67_108_864;
/// Largest zstd window a reader accepts, as a power of two (8 MiB): bounds reader memory.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The zstd compression level writers use (readers do not care).
pub const ZSTD_LEVEL: i32 = 3;
/// Plaintext bytes per AEAD chunk; every chunk but the last holds exactly this many.
pub const CHUNK_SIZE: usize = 65_536;
/// Bytes of Poly1305 tag after each chunk.
pub const TAG_LEN: usize = 16;
/// Most node names in an ack vector.
pub const MAX_ACKS: usize = 1_024;
/// Most tables a body may declare.
pub const MAX_TABLES: usize = 4_096;
/// Most columns a table may declare.
pub const MAX_COLUMNS: usize = 4_096;
/// Most node names a body may declare.
pub const MAX_NODES: usize = 4_096;
/// Reference slots of a version-2 body: each full reference and each change's own
/// identity takes the next slot (cyclically); a later reference may name the slot.
pub const REF_SLOTS: usize = 65_536;

/// Prefix of the message signed with Ed25519 (followed by the header member's bytes).
pub const SIGNATURE_CONTEXT: &str = "ferry bundle v2 header signature";
/// HKDF-SHA256 `info` prefix for the body key and nonce prefix.
pub const KDF_INFO: &str = "ferry bundle v2 body key";
/// [`SIGNATURE_CONTEXT`] of version 1.
pub const SIGNATURE_CONTEXT_V1: &str = "ferry bundle v1 header signature";
/// [`KDF_INFO`] of version 1.
pub const KDF_INFO_V1: &str = "ferry bundle v1 body key";
/// Prefix of the text form of a public key.
pub const PUBLIC_KEY_PREFIX: &str = "ferry1:";
/// Prefix of the text form of a node's secret key file.
pub const SECRET_KEY_PREFIX: &str = "ferry1-secret:";

/// File names are `ferry.<sender>.<recipient>.<seq>.bundle`.
pub const FILE_PREFIX: &str = "ferry.";
/// The suffix of every bundle file name.
pub const FILE_SUFFIX: &str = ".bundle";
/// Digits of the zero-padded sequence number in a file name.
pub const SEQ_DIGITS: usize = 16;

/// Whether this implementation reads format `version`.
pub fn reads_version(version: u16) -> bool {
    (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version)
}

/// The signature context of format `version` (one this implementation reads): each
/// version signs under its own string, so a header relabelled to another version does
/// not verify.
pub fn signature_context(version: u16) -> &'static str {
    if version == 1 {
        SIGNATURE_CONTEXT_V1
    } else {
        SIGNATURE_CONTEXT
    }
}

/// The HKDF `info` prefix of format `version` (one this implementation reads).
pub fn kdf_info(version: u16) -> &'static str {
    if version == 1 {
        KDF_INFO_V1
    } else {
        KDF_INFO
    }
}

/// What a bundle's file name says: who sent it to whom, and its place in the sequence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BundleName {
    /// The sending node.
    pub sender: String,
    /// The node the bundle is encrypted to.
    pub recipient: String,
    /// The sequence number within (sender, recipient), from 1.
    pub seq: u64,
}

impl BundleName {
    /// The file name, e.g. `ferry.clinic-a.hub.0000000000000017.bundle`.
    pub fn file_name(&self) -> String {
        format!(
            "{FILE_PREFIX}{}.{}.{:0width$}{FILE_SUFFIX}",
            self.sender,
            self.recipient,
            self.seq,
            width = SEQ_DIGITS
        )
    }

    /// Parses a file name; `None` for anything that is not exactly a bundle name
    /// (temporary files, reason files, stray files).
    pub fn parse(name: &str) -> Option<BundleName> {
        let rest = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
        let mut parts = rest.split('.');
        let (sender, recipient, seq) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !valid_node_name(sender) || !valid_node_name(recipient) {
            return None;
        }
        if seq.len() != SEQ_DIGITS || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        if seq == 0 {
            return None;
        }
        Some(BundleName {
            sender: sender.to_string(),
            recipient: recipient.to_string(),
            seq,
        })
    }
}

/// Whether `name` matches `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn valid_node_name(name: &str) -> bool {
    crate::config::validate_node_name(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        let n = |seq| BundleName {
            sender: "clinic-a".into(),
            recipient: "hub_1".into(),
            seq,
        };
        assert_eq!(
            n(17).file_name(),
            "ferry.clinic-a.hub_1.0000000000000017.bundle"
        );
        assert_eq!(BundleName::parse(&n(17).file_name()), Some(n(17)));
        let mut names: Vec<String> = [10, 9, 100, 1].iter().map(|&s| n(s).file_name()).collect();
        names.sort();
        let seqs: Vec<u64> = names
            .iter()
            .map(|s| BundleName::parse(s).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 9, 10, 100]);
    }

    #[test]
    fn rejects_near_misses() {
        for bad in [
            "ferry.a.b.0000000000000001.bundle.123.tmp",
            "ferry.a.b.1.bundle",
            "ferry.a.b.0000000000000000.bundle",
            "ferry.A.b.0000000000000001.bundle",
            "ferry.a.b.c.0000000000000001.bundle",
            "ferry..b.0000000000000001.bundle",
            "ferry.a.b.000000000000001x.bundle",
            "x.a.b.0000000000000001.bundle",
        ] {
            assert_eq!(BundleName::parse(bad), None, "{bad}");
        }
    }
}
