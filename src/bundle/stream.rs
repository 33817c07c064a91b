//! Body encryption: X25519 ECDH with a per-bundle ephemeral key, HKDF-SHA256, and
//! ChaCha20-Poly1305 in the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár
//! 2015) so a body of any size is sealed and opened in bounded memory.
//!
//! The plaintext is cut into chunks of [`CHUNK_SIZE`] bytes; the last chunk holds the
//! remainder (possibly nothing) and is always present. Chunk `i` is sealed under the
//! nonce `prefix (7 bytes) || i (u32 BE) || last (0x01 for the last chunk, else 0x00)`,
//! with empty associated data, and written as ciphertext followed by its 16-byte tag.
//! Reordering, dropping, duplicating or truncating chunks fails authentication.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::error::BundleError;
use super::format::{kdf_info, CHUNK_SIZE, TAG_LEN};

/// What the body key is derived from besides the shared secret.
pub struct KdfContext<'a> {
    /// The bundle's format version (each version has its own `info` prefix).
    pub version: u16,
    /// The bundle's ephemeral X25519 public key.
    pub ephemeral: &'a [u8; 32],
    /// The recipient's X25519 public key.
    pub recipient_key: &'a [u8; 32],
    /// Sender node name.
    pub sender: &'a str,
    /// Recipient node name.
    pub recipient: &'a str,
    /// Sequence number.
    pub seq: u64,
    /// Bundle id.
    pub bundle_id: &'a [u8; 16],
}

/// The body key and nonce prefix.
pub struct BodyKey {
    cipher: ChaCha20Poly1305,
    prefix: [u8; 7],
}

impl BodyKey {
    /// Derives the key from the X25519 shared secret. `None` if the secret is all zero
    /// (the other side used a low-order point).
    pub fn derive(shared: &[u8; 32], ctx: &KdfContext) -> Option<BodyKey> {
        if shared.iter().all(|&b| b == 0) {
            return None;
        }
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(ctx.ephemeral);
        salt[32..].copy_from_slice(ctx.recipient_key);
        let prefix = kdf_info(ctx.version);
        let mut info = Vec::with_capacity(prefix.len() + 100);
        for part in [prefix, ctx.sender, ctx.recipient] {
            info.extend_from_slice(part.as_bytes());
            info.push(0);
        }
        info.extend_from_slice(&ctx.seq.to_be_bytes());
        info.extend_from_slice(ctx.bundle_id);
        let mut okm = Zeroizing::new([0u8; 39]);
        Hkdf::<Sha256>::new(Some(&salt), shared)
            .expand(&info, &mut okm[..])
            .expect("39 bytes is a valid HKDF-SHA256 length");
        let mut prefix = [0u8; 7];
        prefix.copy_from_slice(&okm[32..]);
        Some(BodyKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&okm[..32])),
            prefix,
        })
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = last as u8;
        *Nonce::from_slice(&n)
    }
}

/// Encrypts everything written to it into `inner`, chunk by chunk.
pub struct Encryptor<W: Write> {
    inner: W,
    key: BodyKey,
    buf: Vec<u8>,
    index: u32,
    plain_len: u64,
}

impl<W: Write> Encryptor<W> {
    /// An encryptor writing sealed chunks to `inner`.
    pub fn new(inner: W, key: BodyKey) -> Encryptor<W> {
        Encryptor {
            inner,
            key,
            buf: Vec::with_capacity(CHUNK_SIZE + TAG_LEN),
            index: 0,
            plain_len: 0,
        }
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let nonce = self.key.nonce(self.index, last);
        let tag = self
            .key
            .cipher
            .encrypt_in_place_detached(&nonce, b"", &mut self.buf)
            .map_err(|_| io::Error::other("chunk encryption failed"))?;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(&tag)?;
        self.buf.clear();
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| io::Error::other("too many chunks"))?;
        Ok(())
    }

    /// Seals the last chunk; returns the inner writer and the plaintext length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.seal(true)?;
        Ok((self.inner, self.plain_len))
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.plain_len += n as u64;
        if self.buf.len() == CHUNK_SIZE {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts a body of `compressed_len` plaintext bytes read from `inner`.
pub struct Decryptor<R: Read> {
    inner: R,
    key: BodyKey,
    file: String,
    chunks: u64,
    compressed_len: u64,
    index: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> Decryptor<R> {
    /// A decryptor for a body holding `compressed_len` bytes of plaintext.
    pub fn new(inner: R, key: BodyKey, file: &str, compressed_len: u64) -> Decryptor<R> {
        Decryptor {
            inner,
            key,
            file: file.to_string(),
            chunks: compressed_len / CHUNK_SIZE as u64 + 1,
            compressed_len,
            index: 0,
            buf: Vec::with_capacity(CHUNK_SIZE + TAG_LEN),
            pos: 0,
        }
    }

    /// Whether every chunk, the last included, has been read and authenticated.
    pub fn is_done(&self) -> bool {
        self.index == self.chunks && self.pos == self.buf.len()
    }

    /// The inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn open_next(&mut self) -> Result<(), BundleError> {
        let last = self.index + 1 == self.chunks;
        let plain = if last {
            (self.compressed_len % CHUNK_SIZE as u64) as usize
        } else {
            CHUNK_SIZE
        };
        self.buf.resize(plain + TAG_LEN, 0);
        self.inner
            .read_exact(&mut self.buf)
            .map_err(|e| BundleError::Corrupt {
                file: self.file.clone(),
                why: format!("body ends inside chunk {}: {e}", self.index),
            })?;
        let tag = Tag::clone_from_slice(&self.buf[plain..]);
        self.buf.truncate(plain);
        let nonce = self.key.nonce(self.index as u32, last);
        self.key
            .cipher
            .decrypt_in_place_detached(&nonce, b"", &mut self.buf, &tag)
            .map_err(|_| BundleError::Decrypt {
                file: self.file.clone(),
                chunk: self.index,
            })?;
        self.index += 1;
        self.pos = 0;
        Ok(())
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.index == self.chunks {
                return Ok(0);
            }
            self.open_next().map_err(io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BodyKey {
        let ctx = KdfContext {
            version: crate::bundle::format::FORMAT_VERSION,
            ephemeral: &[1; 32],
            recipient_key: &[2; 32],
            sender: "a",
            recipient: "b",
            seq: 1,
            bundle_id: &[3; 16],
        };
        BodyKey::derive(&[9; 32], &ctx).unwrap()
    }

    fn seal(data: &[u8]) -> Vec<u8> {
        let mut e = Encryptor::new(Vec::new(), key());
        e.write_all(data).unwrap();
        e.finish().unwrap().0
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        for len in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = seal(&data);
            assert_eq!(
                sealed.len() as u64,
                super::super::header::body_len_for(len as u64)
            );
            let mut d = Decryptor::new(&sealed[..], key(), "f", len as u64);
            let mut back = Vec::new();
            d.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            assert!(d.is_done());
        }
    }

    #[test]
    fn dropped_last_chunk_and_flipped_bit_fail() {
        let data = vec![5u8; CHUNK_SIZE];
        let sealed = seal(&data);
        // Claim the body ended after the first (full) chunk: its nonce says "not last".
        let mut d = Decryptor::new(
            &sealed[..CHUNK_SIZE + TAG_LEN],
            key(),
            "f",
            CHUNK_SIZE as u64 - 1,
        );
        assert!(d.read_to_end(&mut Vec::new()).is_err());
        let mut bad = sealed.clone();
        bad[10] ^= 1;
        let mut d = Decryptor::new(&bad[..], key(), "f", CHUNK_SIZE as u64);
        let err = d.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("chunk 0 fails authentication"),
            "{err}"
        );
    }

    #[test]
    fn all_zero_shared_secret_is_refused() {
        let ctx = KdfContext {
            version: crate::bundle::format::FORMAT_VERSION,
            ephemeral: &[0; 32],
            recipient_key: &[2; 32],
            sender: "a",
            recipient: "b",
            seq: 1,
            bundle_id: &[3; 16],
        };
        assert!(BodyKey::derive(&[0; 32], &ctx).is_none());
    }
}
