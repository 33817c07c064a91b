//! Sealing a bundle: changes stream through the record encoder, zstd (with a frame
//! checksum), the chunked AEAD and a SHA-256 hasher into an anonymous temporary file;
//! then the signed header, the signature and the body are written as a tar archive.
//! Memory stays bounded whatever the number of changes.
//!
//! All randomness (the ephemeral key) comes from the caller's RNG, and the bundle id and
//! creation time from [`BundleMeta`], so test vectors are reproducible.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::body::BodyEncoder;
use super::error::{io_err, BundleError};
use super::format::{
    reads_version, valid_node_name, FORMAT_VERSION, MAX_ACKS, MAX_PLAIN_LEN, MEMBER_BODY,
    MEMBER_HEADER, MEMBER_SIGNATURE, ZSTD_LEVEL,
};
use super::header::{self, body_len_for, Header};
use super::keys::{NodeKeys, PublicKey};
use super::model::{Change, ChangeRef};
use super::stream::{BodyKey, Encryptor, KdfContext};
use super::tarball;

/// What the caller decides about a bundle before any change is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    /// This node.
    pub sender: String,
    /// The node the bundle is for.
    pub recipient: String,
    /// Sequence number within (sender, recipient), from 1, without gaps.
    pub seq: u64,
    /// Hash of the previous bundle to this recipient (all zero for seq 1).
    pub prev_hash: [u8; 32],
    /// Creation time, µs since the Unix epoch.
    pub created_us: i64,
    /// Unique id.
    pub bundle_id: [u8; 16],
    /// The sender's sync-plan fingerprint.
    pub plan_fingerprint: [u8; 32],
    /// The sender's ack vector: origin node → highest change id applied.
    pub acks: BTreeMap<String, u64>,
    /// The format version to write ([`FORMAT_VERSION`] unless a test vector asks for
    /// an older one this implementation still reads).
    pub format_version: u16,
}

impl BundleMeta {
    /// Metadata with the current time and a random bundle id.
    pub fn new(sender: &str, recipient: &str, seq: u64, prev_hash: [u8; 32]) -> BundleMeta {
        let mut bundle_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bundle_id);
        let created_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        BundleMeta {
            sender: sender.into(),
            recipient: recipient.into(),
            seq,
            prev_hash,
            created_us,
            bundle_id,
            plan_fingerprint: [0; 32],
            acks: BTreeMap::new(),
            format_version: FORMAT_VERSION,
        }
    }
}

/// A finished bundle: its header, its hash (for the next bundle's `prev_hash`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The signed header.
    pub header: Header,
    /// SHA-256 of the header member.
    pub hash: [u8; 32],
    /// File length in bytes.
    pub len: u64,
}

/// Counts and hashes what passes through to the temporary file.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Zstd = zstd::stream::write::Encoder<'static, Encryptor<HashWriter<BufWriter<File>>>>;

/// Records reach zstd in blocks of this many bytes rather than one call each (each call
/// costs a lock and a wake-up of zstd's worker once it compresses in the background).
const FEED_BYTES: usize = 128 * 1024;

type Sink = BufWriter<Zstd>;

/// Writes one bundle. Declare tables, push changes, then [`BundleWriter::finish`].
pub struct BundleWriter {
    body: BodyEncoder<Sink>,
    meta: BundleMeta,
    keys: NodeKeys,
    ephemeral: [u8; 32],
}

impl BundleWriter {
    /// Starts a bundle from `keys`'s node to the holder of `recipient_key`; the body is
    /// staged in an anonymous temporary file in `temp_dir`. The ephemeral key is drawn
    /// from `rng`.
    pub fn new(
        temp_dir: &Path,
        keys: &NodeKeys,
        recipient_key: &PublicKey,
        meta: BundleMeta,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<BundleWriter, BundleError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        BundleWriter::with_ephemeral(temp_dir, keys, recipient_key, meta, &secret)
    }

    /// [`BundleWriter::new`] with a given ephemeral X25519 secret (for test vectors; a
    /// secret must never be used twice).
    pub fn with_ephemeral(
        temp_dir: &Path,
        keys: &NodeKeys,
        recipient_key: &PublicKey,
        meta: BundleMeta,
        ephemeral_secret: &[u8; 32],
    ) -> Result<BundleWriter, BundleError> {
        let invalid = |why: &str| {
            Err(BundleError::InvalidParams {
                why: why.to_string(),
            })
        };
        if !valid_node_name(&meta.sender) || !valid_node_name(&meta.recipient) {
            return invalid("sender and recipient must be valid node names");
        }
        if meta.seq == 0 || (meta.seq == 1 && meta.prev_hash != [0; 32]) {
            return invalid("seq starts at 1, and seq 1 has an all-zero prev_hash");
        }
        if !reads_version(meta.format_version) {
            return invalid("a format version this ferry does not write");
        }
        if meta.acks.len() > MAX_ACKS || !meta.acks.keys().all(|n| valid_node_name(n)) {
            return invalid("acks name too many or invalid nodes");
        }
        let secret = StaticSecret::from(*ephemeral_secret);
        let ephemeral = x25519_dalek::PublicKey::from(&secret).to_bytes();
        let shared = secret.diffie_hellman(&recipient_key.x25519);
        let ctx = KdfContext {
            version: meta.format_version,
            ephemeral: &ephemeral,
            recipient_key: recipient_key.x25519.as_bytes(),
            sender: &meta.sender,
            recipient: &meta.recipient,
            seq: meta.seq,
            bundle_id: &meta.bundle_id,
        };
        let Some(key) = BodyKey::derive(shared.as_bytes(), &ctx) else {
            return invalid("the recipient's X25519 key is a low-order point");
        };
        let file = tempfile::tempfile_in(temp_dir).map_err(io_err(temp_dir))?;
        let hashing = HashWriter {
            inner: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            len: 0,
        };
        let io = io_err(temp_dir);
        let mut zstd = zstd::stream::write::Encoder::new(Encryptor::new(hashing, key), ZSTD_LEVEL)
            .map_err(io)?;
        zstd.include_checksum(true).map_err(io_err(temp_dir))?;
        Ok(BundleWriter {
            body: BodyEncoder::for_version(
                BufWriter::with_capacity(FEED_BYTES, zstd),
                meta.format_version,
            ),
            meta,
            keys: keys.clone(),
            ephemeral,
        })
    }

    /// Declares a table's columns (once, before its first change).
    pub fn declare_table(&mut self, name: &str, columns: &[String]) -> Result<(), BundleError> {
        self.body.declare_table(name, columns)
    }

    /// Appends a change; its values follow the declared column order (none for Delete).
    pub fn push(&mut self, change: &Change) -> Result<(), BundleError> {
        self.body.push(change)
    }

    /// Appends a change given by reference (the same bytes as [`BundleWriter::push`]).
    pub fn push_ref(&mut self, change: &ChangeRef) -> Result<(), BundleError> {
        self.body.push_ref(change)
    }

    /// Compresses on a worker thread of zstd's own from here on, while the caller
    /// prepares the next changes (the frame is the same format; its bytes may differ).
    pub fn compress_in_background(&mut self) -> Result<(), BundleError> {
        let io = |e| BundleError::Io {
            path: "<bundle body>".into(),
            source: e,
        };
        self.body.inner_mut().get_mut().multithread(1).map_err(io)
    }

    /// Changes pushed so far.
    pub fn changes(&self) -> u64 {
        self.body.changes()
    }

    /// Finishes the body and writes the whole bundle to `out`.
    pub fn finish_to(self, out: &mut impl Write) -> Result<Sealed, BundleError> {
        let io = |e| BundleError::Io {
            path: "<bundle>".into(),
            source: e,
        };
        let changes = self.body.changes();
        let (feed, plain_len) = self.body.finish()?;
        let zstd = feed.into_inner().map_err(|e| io(e.into_error()))?;
        let encryptor = zstd.finish().map_err(io)?;
        let (hashing, compressed_len) = encryptor.finish().map_err(io)?;
        let body_len = hashing.len;
        debug_assert_eq!(body_len, body_len_for(compressed_len));
        if plain_len.max(compressed_len) > MAX_PLAIN_LEN {
            return Err(BundleError::InvalidParams {
                why: format!("body of {plain_len} bytes is over {MAX_PLAIN_LEN}; split it"),
            });
        }
        let body_sha256: [u8; 32] = hashing.hasher.finalize().into();
        let mut file = hashing.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let m = self.meta;
        let header = Header {
            format_version: m.format_version,
            sender: m.sender,
            recipient: m.recipient,
            seq: m.seq,
            prev_hash: m.prev_hash,
            created_us: m.created_us,
            bundle_id: m.bundle_id,
            plan_fingerprint: m.plan_fingerprint,
            acks: m.acks.into_iter().collect(),
            ephemeral_key: self.ephemeral,
            change_count: changes,
            plain_len,
            compressed_len,
            body_len,
            body_sha256,
        };
        // Never write what a reader would refuse.
        header
            .check("<new bundle>")
            .map_err(|e| BundleError::InvalidParams { why: e.to_string() })?;
        let encoded = header.encode();
        let signature = header::sign(&self.keys, &encoded);
        write_archive(out, &encoded, &signature, &mut file, body_len).map_err(io)?;
        Ok(Sealed {
            hash: Header::hash_of(&encoded),
            len: tarball::archive_len(&[encoded.len() as u64, 64, body_len]),
            header,
        })
    }

    /// Finishes the bundle and publishes it atomically at `path`.
    pub fn finish(self, path: &Path) -> Result<Sealed, BundleError> {
        let mut sealed = None;
        let mut failure = None;
        crate::transport::atomic::write_file(path, |f| {
            let mut w = BufWriter::with_capacity(256 * 1024, f);
            match self.finish_to(&mut w) {
                Ok(s) => sealed = Some(s),
                Err(e) => {
                    failure = Some(e);
                    return Err(io::Error::other("sealing failed"));
                }
            }
            w.flush()
        })
        .map_err(|e| failure.take().unwrap_or_else(|| io_err(path)(e)))?;
        sealed.ok_or_else(|| io_err(path)(io::Error::other("sealing produced nothing")))
    }
}

/// Writes the tar archive: header, signature, then the staged body.
pub fn write_archive(
    out: &mut impl Write,
    header: &[u8],
    signature: &[u8],
    body: &mut impl io::Read,
    body_len: u64,
) -> io::Result<()> {
    for (name, data) in [(MEMBER_HEADER, header), (MEMBER_SIGNATURE, signature)] {
        tarball::write_member_header(out, name, data.len() as u64)?;
        out.write_all(data)?;
        tarball::write_padding(out, data.len() as u64)?;
    }
    tarball::write_member_header(out, MEMBER_BODY, body_len)?;
    let copied = io::copy(&mut Read::take(body, body_len), out)?;
    if copied != body_len {
        return Err(io::Error::other("staged body shorter than written"));
    }
    tarball::write_padding(out, body_len)?;
    tarball::write_trailer(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::bundle_synth::fixed_keys;

    fn meta(seq: u64, prev: [u8; 32]) -> BundleMeta {
        let mut m = BundleMeta::new("clinic-a", "hub", seq, prev);
        m.created_us = 1;
        m.bundle_id = [5; 16];
        m
    }

    #[test]
    fn finish_publishes_atomically_and_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let (a, hub) = (fixed_keys("clinic-a"), fixed_keys("hub"));
        let seal = |name: &str| {
            let w = BundleWriter::with_ephemeral(
                dir.path(),
                &a,
                &hub.public(),
                meta(1, [0; 32]),
                &[7; 32],
            )
            .unwrap();
            let path = dir.path().join(name);
            let sealed = w.finish(&path).unwrap();
            (sealed, std::fs::read(path).unwrap())
        };
        let (s1, b1) = seal("one.bundle");
        let (s2, b2) = seal("two.bundle");
        assert_eq!(b1, b2, "same inputs, same bytes");
        assert_eq!(s1, s2);
        assert_eq!(s1.len, b1.len() as u64);
        assert_eq!(s1.header.change_count, 0);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    }

    #[test]
    fn refuses_bad_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let (a, hub) = (fixed_keys("clinic-a"), fixed_keys("hub"));
        let new = |m: BundleMeta| {
            BundleWriter::with_ephemeral(dir.path(), &a, &hub.public(), m, &[7; 32])
                .err()
                .map(|e| e.to_string())
        };
        assert!(new(meta(0, [0; 32])).unwrap().contains("seq starts at 1"));
        assert!(new(meta(1, [1; 32]))
            .unwrap()
            .contains("all-zero prev_hash"));
        let mut m = meta(2, [1; 32]);
        m.recipient = "Hub".into();
        assert!(new(m).unwrap().contains("valid node names"));
        let mut low_order = hub.public();
        low_order.x25519 = x25519_dalek::PublicKey::from([0u8; 32]);
        let e =
            BundleWriter::with_ephemeral(dir.path(), &a, &low_order, meta(1, [0; 32]), &[7; 32])
                .err()
                .unwrap();
        assert!(e.to_string().contains("low-order point"), "{e}");
    }
}
