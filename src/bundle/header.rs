//! The cleartext routing header: who sent the bundle to whom, its place in the
//! sequence, its sizes and hashes. It is signed, so a relay or a USB carrier can route
//! and check a bundle without decrypting it.
//!
//! On the wire the `header` member is `MAGIC (8 bytes) || version (u16 BE) ||
//! postcard(Header)`; the `signature` member is Ed25519 over `that version's signature
//! context || 0x00 || header member bytes`. The bundle's hash (what the next bundle's `prev_hash`
//! holds) is SHA-256 of the header member bytes, which commit to the body by its hash.

use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::BundleError;
use super::format::{
    reads_version, signature_context, valid_node_name, BundleName, CHUNK_SIZE, FORMAT_VERSION,
    MAGIC, MAX_ACKS, MAX_PLAIN_LEN, OLDEST_FORMAT_VERSION, TAG_LEN,
};
use super::keys::{NodeKeys, PublicKey};

/// Everything a bundle states in the clear. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The format version: the two bytes after the magic, not a postcard field. The
    /// body is encoded by that version's rules.
    #[serde(skip)]
    pub format_version: u16,
    /// The sending node.
    pub sender: String,
    /// The node the body is encrypted to.
    pub recipient: String,
    /// Sequence number within (sender, recipient): 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// Hash of the previous bundle in this sequence; all zero for seq 1.
    pub prev_hash: [u8; 32],
    /// When the sender sealed it, µs since the Unix epoch (the sender's clock; may be wrong).
    pub created_us: i64,
    /// Unique id of this bundle.
    pub bundle_id: [u8; 16],
    /// The sender's sync-plan fingerprint.
    pub plan_fingerprint: [u8; 32],
    /// The sender's ack vector: per origin node, the highest change id applied. Sorted by
    /// node name, names unique.
    pub acks: Vec<(String, u64)>,
    /// The sender's ephemeral X25519 public key for this bundle's body.
    pub ephemeral_key: [u8; 32],
    /// Number of changes in the body.
    pub change_count: u64,
    /// Length of the decompressed body (the record stream), in bytes.
    pub plain_len: u64,
    /// Length of the zstd frame, in bytes.
    pub compressed_len: u64,
    /// Length of the `body` member (ciphertext with tags), in bytes.
    pub body_len: u64,
    /// SHA-256 of the `body` member.
    pub body_sha256: [u8; 32],
}

/// Length of the ciphertext for `compressed_len` bytes of plaintext: one tag per chunk,
/// and `compressed_len / CHUNK_SIZE + 1` chunks (the last may be empty).
pub fn body_len_for(compressed_len: u64) -> u64 {
    let chunks = compressed_len / CHUNK_SIZE as u64 + 1;
    compressed_len + chunks * TAG_LEN as u64
}

impl Header {
    /// The file name this header's bundle carries.
    pub fn name(&self) -> BundleName {
        BundleName {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            seq: self.seq,
        }
    }

    /// Refuses a file whose name (`named`, parsed from `file`) is not the bundle this
    /// signed header says it is: a renamed bundle would be taken for another number.
    pub fn check_named(&self, file: &str, named: &BundleName) -> Result<(), BundleError> {
        if self.name() == *named {
            return Ok(());
        }
        Err(BundleError::NameMismatch {
            file: file.into(),
            named: format!("{} → {} #{}", named.sender, named.recipient, named.seq),
            actual: format!("{} → {} #{}", self.sender, self.recipient, self.seq),
        })
    }

    /// The bytes of the `header` member.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format_version.to_be_bytes());
        postcard::to_io(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Parses and checks the `header` member's bytes (everything but the signature).
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Header, BundleError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(BundleError::BadMagic { file: file.into() });
        }
        if bytes.len() < 10 {
            return Err(malformed(file, "no format version"));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if !reads_version(version) {
            return Err(BundleError::UnknownVersion {
                file: file.into(),
                version,
                oldest: OLDEST_FORMAT_VERSION,
                supported: FORMAT_VERSION,
            });
        }
        let (mut header, rest): (Header, &[u8]) = postcard::take_from_bytes(&bytes[10..])
            .map_err(|e| malformed(file, &format!("undecodable: {e}")))?;
        if !rest.is_empty() {
            return Err(malformed(
                file,
                &format!("{} bytes after the header fields", rest.len()),
            ));
        }
        header.format_version = version;
        header.check(file)?;
        Ok(header)
    }

    /// Checks the invariants a well-formed header keeps.
    pub fn check(&self, file: &str) -> Result<(), BundleError> {
        if !reads_version(self.format_version) {
            return Err(malformed(
                file,
                "a format version this ferry does not write",
            ));
        }
        if !valid_node_name(&self.sender) {
            return Err(malformed(file, "sender is not a valid node name"));
        }
        if !valid_node_name(&self.recipient) {
            return Err(malformed(file, "recipient is not a valid node name"));
        }
        if self.seq == 0 {
            return Err(malformed(file, "sequence number 0"));
        }
        if self.seq == 1 && self.prev_hash != [0; 32] {
            return Err(malformed(file, "seq 1 with a previous hash"));
        }
        if self.acks.len() > MAX_ACKS {
            return Err(malformed(file, "too many acks"));
        }
        for (i, (name, _)) in self.acks.iter().enumerate() {
            if !valid_node_name(name) {
                return Err(malformed(file, "ack for an invalid node name"));
            }
            if i > 0 && self.acks[i - 1].0 >= *name {
                return Err(malformed(file, "acks not sorted by unique node name"));
            }
        }
        for (what, stated) in [
            ("decompressed body", self.plain_len),
            ("compressed body", self.compressed_len),
        ] {
            if stated > MAX_PLAIN_LEN {
                return Err(BundleError::OverLimit {
                    file: file.into(),
                    what,
                    stated,
                    limit: MAX_PLAIN_LEN,
                });
            }
        }
        if self.body_len != body_len_for(self.compressed_len) {
            return Err(malformed(
                file,
                "body length does not fit the compressed length",
            ));
        }
        Ok(())
    }

    /// The bundle's hash: SHA-256 of the `header` member bytes.
    pub fn hash_of(encoded: &[u8]) -> [u8; 32] {
        Sha256::digest(encoded).into()
    }
}

fn malformed(file: &str, why: &str) -> BundleError {
    BundleError::MalformedHeader {
        file: file.into(),
        why: why.into(),
    }
}

/// What is signed: the context of the version the header states, then the header.
/// (Headers too short to state a version are refused before any signature is checked.)
fn signed_message(encoded: &[u8]) -> Vec<u8> {
    let version = match encoded.get(MAGIC.len()..MAGIC.len() + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => FORMAT_VERSION,
    };
    signed_in_context(signature_context(version), encoded)
}

fn signed_in_context(context: &str, encoded: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(context.len() + 1 + encoded.len());
    msg.extend_from_slice(context.as_bytes());
    msg.push(0);
    msg.extend_from_slice(encoded);
    msg
}

/// Signs the encoded header (under the context of the version it states).
pub fn sign(keys: &NodeKeys, encoded: &[u8]) -> [u8; 64] {
    keys.signing.sign(&signed_message(encoded)).to_bytes()
}

/// Signs the encoded header under `context`, whatever version it states (for crafting
/// invalid test vectors).
pub fn sign_in_context(keys: &NodeKeys, context: &str, encoded: &[u8]) -> [u8; 64] {
    keys.signing
        .sign(&signed_in_context(context, encoded))
        .to_bytes()
}

/// Verifies the signature over the encoded header with the sender's key.
pub fn verify(
    file: &str,
    sender: &str,
    key: &PublicKey,
    encoded: &[u8],
    signature: &[u8],
) -> Result<(), BundleError> {
    let bad = || BundleError::BadSignature {
        file: file.into(),
        sender: sender.into(),
    };
    let sig: [u8; 64] = signature.try_into().map_err(|_| bad())?;
    key.signing
        .verify_strict(&signed_message(encoded), &Signature::from_bytes(&sig))
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Header {
        Header {
            format_version: FORMAT_VERSION,
            sender: "clinic-a".into(),
            recipient: "hub".into(),
            seq: 2,
            prev_hash: [7; 32],
            created_us: 1_700_000_000_000_000,
            bundle_id: [1; 16],
            plan_fingerprint: [2; 32],
            acks: vec![("clinic-a".into(), 5), ("hub".into(), 9)],
            ephemeral_key: [3; 32],
            change_count: 10,
            plain_len: 1000,
            compressed_len: 100,
            body_len: body_len_for(100),
            body_sha256: [4; 32],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(&bytes[..10], b"FERRYBDL\x00\x02");
        assert_eq!(Header::decode("f", &bytes).unwrap(), h);
        let v1 = Header {
            format_version: 1,
            ..sample()
        };
        assert_eq!(&v1.encode()[..10], b"FERRYBDL\x00\x01");
        assert_eq!(Header::decode("f", &v1.encode()).unwrap(), v1);
    }

    #[test]
    fn refuses_bad_magic_version_and_trailing() {
        let mut bytes = sample().encode();
        for unknown in [0, FORMAT_VERSION + 1] {
            bytes[8..10].copy_from_slice(&u16::to_be_bytes(unknown));
            let e = Header::decode("f", &bytes).unwrap_err();
            assert!(matches!(e, BundleError::UnknownVersion { version, .. } if version == unknown));
            assert!(e.to_string().contains("reads versions 1 to 2"), "{e}");
            assert!(e.to_string().contains("hint: upgrade ferry"));
        }
        bytes[0] = b'X';
        assert!(matches!(
            Header::decode("f", &bytes),
            Err(BundleError::BadMagic { .. })
        ));
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(
            Header::decode("f", &bytes),
            Err(BundleError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn refuses_unsorted_acks_and_huge_sizes() {
        let mut h = sample();
        h.acks.reverse();
        assert!(Header::decode("f", &h.encode()).is_err());
        let mut h = sample();
        h.plain_len = MAX_PLAIN_LEN + 1;
        assert!(matches!(
            Header::decode("f", &h.encode()),
            Err(BundleError::OverLimit { .. })
        ));
    }

    #[test]
    fn body_len_counts_one_tag_per_chunk() {
        assert_eq!(body_len_for(0), 16);
        assert_eq!(
            body_len_for(CHUNK_SIZE as u64 - 1),
            CHUNK_SIZE as u64 - 1 + 16
        );
        assert_eq!(body_len_for(CHUNK_SIZE as u64), CHUNK_SIZE as u64 + 32);
    }
}
