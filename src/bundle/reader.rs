//! Reading a bundle: [`verify_header`] checks everything that needs no decryption (the
//! tar layout, the signed header, sizes, the body hash, nothing before or after);
//! [`open`] does that and then decrypts, decompresses and decodes the body as a stream
//! of changes, checking every chunk, the zstd checksum, the record counts and the body
//! hash again as it goes.
//!
//! A bundle is trustworthy only once [`BundleReader::next_change`] has returned
//! `Ok(None)`. Any error, at any point, means nothing read from it may be kept: the
//! sync engine applies a bundle inside one database transaction and rolls back on error.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::body::{stream_error, BodyDecoder};
use super::error::{io_err, BundleError};
use super::format::{MAX_HEADER_LEN, SIGNATURE_LEN, ZSTD_WINDOW_LOG_MAX};
use super::header::{self, Header};
use super::keys::{NodeKeys, Peers};
use super::model::Change;
use super::stream::{BodyKey, Decryptor, KdfContext};
use super::tarball::{archive_len, TarReader};

/// A bundle whose outside checked out: signature, sizes and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed header.
    pub header: Header,
    /// The bundle's hash (SHA-256 of the header member), which the next bundle of the
    /// sequence names as its `prev_hash`.
    pub hash: [u8; 32],
    /// File length in bytes.
    pub len: u64,
    body_offset: u64,
}

/// How a file is named in messages: its file name.
pub fn label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Checks a bundle without decrypting it: the tar layout, the header's signature by a
/// known peer, the sizes, the body's hash, and that nothing precedes or follows. Does
/// not check the recipient (relays verify bundles for other nodes).
pub fn verify_header(path: &Path, peers: &Peers) -> Result<Verified, BundleError> {
    verify_named(path, &label(path), peers)
}

/// [`verify_header`], naming the file `name` in messages (e.g. while it has a temp name).
pub fn verify_named(path: &Path, name: &str, peers: &Peers) -> Result<Verified, BundleError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    verify_reader(BufReader::with_capacity(64 * 1024, file), name, len, peers)
}

/// [`verify_header`] over any reader of `len` bytes (used by tests and the fuzzer).
pub fn verify_reader(
    input: impl Read,
    file: &str,
    len: u64,
    peers: &Peers,
) -> Result<Verified, BundleError> {
    let mut tar = TarReader::new(input, file, len);
    let (_, header_len) = tar.next_member()?;
    if header_len > MAX_HEADER_LEN {
        return Err(BundleError::OverLimit {
            file: file.into(),
            what: "header member",
            stated: header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    let mut encoded = vec![0u8; header_len as usize];
    tar.read_exact(&mut encoded)?;
    tar.skip_padding(header_len)?;
    let header = Header::decode(file, &encoded)?;
    let key = peers
        .get(&header.sender)
        .ok_or_else(|| BundleError::UnknownSender {
            file: file.into(),
            sender: header.sender.clone(),
        })?;
    let (_, sig_len) = tar.next_member()?;
    if sig_len != SIGNATURE_LEN {
        return Err(BundleError::MalformedTar {
            file: file.into(),
            why: format!("signature member holds {sig_len} bytes, not {SIGNATURE_LEN}"),
        });
    }
    let mut signature = [0u8; SIGNATURE_LEN as usize];
    tar.read_exact(&mut signature)?;
    tar.skip_padding(sig_len)?;
    header::verify(file, &header.sender, key, &encoded, &signature)?;
    let expected = archive_len(&[header_len, SIGNATURE_LEN, header.body_len]);
    tar.set_expected_len(expected);
    let (_, body_len) = tar.next_member()?;
    if len < expected {
        return Err(BundleError::Truncated {
            file: file.into(),
            got: len,
            expected,
        });
    }
    if body_len != header.body_len {
        return Err(BundleError::MalformedTar {
            file: file.into(),
            why: format!(
                "body member holds {body_len} bytes, the signed header states {}",
                header.body_len
            ),
        });
    }
    let body_offset = tar.position();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        tar.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    if <[u8; 32]>::from(hasher.finalize()) != header.body_sha256 {
        return Err(BundleError::HashMismatch { file: file.into() });
    }
    tar.skip_padding(body_len)?;
    tar.finish()?;
    Ok(Verified {
        hash: Header::hash_of(&encoded),
        header,
        len,
        body_offset,
    })
}

/// Hashes what it reads.
struct HashRead<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        Ok(n)
    }
}

/// Refuses to yield more than `limit` bytes of decompressed body (zip-bomb guard).
struct Limit<R> {
    inner: R,
    count: u64,
    limit: u64,
    file: String,
}

impl<R: Read> Read for Limit<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let room = (self.limit - self.count).min(out.len() as u64) as usize;
        let n = if room == 0 {
            self.inner.read(&mut out[..1])?
        } else {
            self.inner.read(&mut out[..room])?
        };
        if room == 0 && n > 0 {
            return Err(io::Error::other(BundleError::ZipBomb {
                file: self.file.clone(),
                limit: self.limit,
            }));
        }
        self.count += n as u64;
        Ok(n)
    }
}

type Body = HashRead<io::Take<File>>;
type Zstd = zstd::stream::read::Decoder<'static, BufReader<Decryptor<Body>>>;
type Chain = BufReader<Limit<Zstd>>;

/// An open bundle, decrypted and decoded one change at a time.
pub struct BundleReader {
    verified: Verified,
    file: String,
    body: Option<BodyDecoder<Chain>>,
    tables: Vec<(String, Vec<String>)>,
    failed: bool,
    done: bool,
}

/// Opens a bundle addressed to `me`: verifies it (as [`verify_header`]) and prepares to
/// stream its changes.
pub fn open(
    path: &Path,
    me: &str,
    keys: &NodeKeys,
    peers: &Peers,
) -> Result<BundleReader, BundleError> {
    open_named(path, &label(path), me, keys, peers)
}

/// [`open`], naming the file `file` in messages.
pub fn open_named(
    path: &Path,
    file: &str,
    me: &str,
    keys: &NodeKeys,
    peers: &Peers,
) -> Result<BundleReader, BundleError> {
    let verified = verify_named(path, file, peers)?;
    let file = file.to_string();
    let h = &verified.header;
    if h.recipient != me {
        return Err(BundleError::WrongRecipient {
            file,
            recipient: h.recipient.clone(),
            me: me.into(),
        });
    }
    let ephemeral = x25519_dalek::PublicKey::from(h.ephemeral_key);
    let shared = keys.x25519.diffie_hellman(&ephemeral);
    let own = keys.public();
    let ctx = KdfContext {
        version: h.format_version,
        ephemeral: &h.ephemeral_key,
        recipient_key: own.x25519.as_bytes(),
        sender: &h.sender,
        recipient: &h.recipient,
        seq: h.seq,
        bundle_id: &h.bundle_id,
    };
    let key =
        BodyKey::derive(shared.as_bytes(), &ctx).ok_or_else(|| BundleError::MalformedHeader {
            file: file.clone(),
            why: "the ephemeral key is a low-order point".into(),
        })?;
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(verified.body_offset))
        .map_err(io_err(path))?;
    let body = HashRead {
        inner: f.take(h.body_len),
        hasher: Sha256::new(),
    };
    let decrypt = Decryptor::new(body, key, &file, h.compressed_len);
    let mut zstd =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(64 * 1024, decrypt))
            .map_err(io_err(path))?
            .single_frame();
    zstd.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(io_err(path))?;
    let limited = Limit {
        inner: zstd,
        count: 0,
        limit: h.plain_len,
        file: file.clone(),
    };
    let body = BodyDecoder::for_version(
        BufReader::with_capacity(64 * 1024, limited),
        &file,
        h.format_version,
    );
    Ok(BundleReader {
        verified,
        file,
        body: Some(body),
        tables: Vec::new(),
        failed: false,
        done: false,
    })
}

impl BundleReader {
    /// The signed header.
    pub fn header(&self) -> &Header {
        &self.verified.header
    }

    /// The bundle's hash (for the next bundle's `prev_hash`).
    pub fn hash(&self) -> [u8; 32] {
        self.verified.hash
    }

    /// Tables declared so far (name, columns), in declaration order.
    pub fn tables(&self) -> &[(String, Vec<String>)] {
        match &self.body {
            Some(b) => b.tables(),
            None => &self.tables,
        }
    }

    /// The next change. `Ok(None)` means the whole bundle was read and verified; after
    /// any error every later call fails too.
    pub fn next_change(&mut self) -> Result<Option<Change>, BundleError> {
        if self.failed {
            return Err(BundleError::Poisoned {
                file: self.file.clone(),
            });
        }
        if self.done {
            return Ok(None);
        }
        let result = self.step();
        match &result {
            Err(_) => self.failed = true,
            Ok(None) => self.done = true,
            Ok(Some(_)) => {}
        }
        result
    }

    fn step(&mut self) -> Result<Option<Change>, BundleError> {
        let body = self.body.as_mut().expect("body present until done");
        if let Some(change) = body.next_change()? {
            return Ok(Some(change));
        }
        self.finish_checks()?;
        Ok(None)
    }

    fn corrupt(&self, why: &str) -> BundleError {
        BundleError::Corrupt {
            file: self.file.clone(),
            why: why.into(),
        }
    }

    fn finish_checks(&mut self) -> Result<(), BundleError> {
        let h = self.verified.header.clone();
        let decoder = self.body.take().expect("body present until done");
        self.tables = decoder.tables().to_vec();
        if decoder.ended_with() != Some(h.change_count) {
            return Err(self.corrupt("the change count differs from the header's"));
        }
        let mut chain = decoder.into_inner();
        let mut probe = [0u8; 1];
        let n = chain
            .read(&mut probe)
            .map_err(|e| stream_error(&self.file, e, "after the End record"))?;
        if n != 0 {
            return Err(self.corrupt("data after the End record"));
        }
        let limited = chain.into_inner();
        if limited.count != h.plain_len {
            return Err(self.corrupt("the body is shorter than the header states"));
        }
        let mut buffered = limited.inner.finish();
        if !buffered.buffer().is_empty() {
            return Err(self.corrupt("data after the zstd frame"));
        }
        let decrypt = buffered.get_mut();
        let n = decrypt
            .read(&mut probe)
            .map_err(|e| stream_error(&self.file, e, "after the zstd frame"))?;
        if n != 0 || !decrypt.is_done() {
            return Err(self.corrupt("data after the zstd frame"));
        }
        let body = buffered.into_inner().into_inner();
        if body.inner.limit() != 0 || <[u8; 32]>::from(body.hasher.finalize()) != h.body_sha256 {
            return Err(BundleError::HashMismatch {
                file: self.file.clone(),
            });
        }
        Ok(())
    }
}

impl Iterator for BundleReader {
    type Item = Result<Change, BundleError>;

    /// Yields changes; stops after the first error (which is yielded).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.next_change().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleMeta, BundleWriter};
    use crate::dev::bundle_synth::{fixed_keys, fixed_peers, obs_change, obs_columns};
    use rand::SeedableRng;

    #[test]
    fn seal_then_open_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let meta = BundleMeta::new("clinic-a", "hub", 1, [0; 32]);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let hub = fixed_keys("hub");
        let mut w = BundleWriter::new(
            dir.path(),
            &fixed_keys("clinic-a"),
            &hub.public(),
            meta,
            &mut rng,
        )
        .unwrap();
        w.declare_table("obs", &obs_columns()).unwrap();
        let changes: Vec<_> = (0..5000).map(|i| obs_change("clinic-a", i)).collect();
        for c in &changes {
            w.push(c).unwrap();
        }
        let path = dir.path().join("b.bundle");
        let sealed = w.finish(&path).unwrap();
        assert_eq!(sealed.len, std::fs::metadata(&path).unwrap().len());
        let peers = fixed_peers(&["clinic-a"]);
        let v = verify_header(&path, &peers).unwrap();
        assert_eq!(v.header, sealed.header);
        assert_eq!(v.hash, sealed.hash);
        let mut r = open(&path, "hub", &hub, &peers).unwrap();
        let mut back = Vec::new();
        while let Some(c) = r.next_change().unwrap() {
            back.push(c);
        }
        assert_eq!(back, changes);
        assert_eq!(r.tables()[0].0, "obs");
        assert!(r.next_change().unwrap().is_none());
    }
}
