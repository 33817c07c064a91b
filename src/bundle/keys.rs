//! A node's keys: an Ed25519 key that signs its bundles and an X25519 key that bundles
//! for it are encrypted to. [`NodeKeys`] holds both secrets (file mode 0600 in the state
//! directory); [`PublicKey`] holds both public halves as one printable string,
//! `ferry1:` + base64url (no padding) of the 32-byte Ed25519 key then the 32-byte X25519
//! key. [`Peers`] maps the node names a node trusts to their public keys.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::format::{valid_node_name, PUBLIC_KEY_PREFIX, SECRET_KEY_PREFIX};
use crate::config::Config;

/// The name of the node's secret key file in the state directory.
pub const KEY_FILE: &str = "node.key";

/// Errors of making, reading and parsing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read key file {path}: {source}\nhint: check `state_dir` in the config and --config; restore node.key from a backup. Only if it is lost for good, run `ferry init --force` and have every peer run `ferry peer add --replace` with the new key (`ferry key`)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}\nhint: check that the state directory exists and is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} already exists\nhint: keep it; a node's keys must not change once peers know them (delete it by hand only to re-key)")]
    Exists { path: PathBuf },
    #[error("key file {path} is readable by other users (mode {mode:o})\nhint: run `chmod 600 {path}` and check who could have copied it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is malformed\nhint: restore it from backup; if it is lost, run `ferry init` again and re-add this node on every peer")]
    Malformed { path: PathBuf },
    #[error("public key {text:?} is malformed: {why}\nhint: copy the whole line `ferry key` prints on the peer, starting with {PUBLIC_KEY_PREFIX}")]
    Public { text: String, why: &'static str },
    #[error("peer {name:?} in the config has an unusable key: {source}")]
    Peer { name: String, source: Box<KeyError> },
}

/// Both public halves of a node's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Verifies the node's signatures.
    pub signing: VerifyingKey,
    /// Bundles for the node are encrypted to this.
    pub x25519: x25519_dalek::PublicKey,
}

impl PublicKey {
    /// Parses the `ferry1:...` form.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let bad = |why| KeyError::Public {
            text: text.to_string(),
            why,
        };
        let b64 = text
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| bad("it does not start with ferry1:"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| bad("it is not valid base64url"))?;
        let raw: [u8; 64] = raw
            .try_into()
            .map_err(|_| bad("it does not hold exactly 64 bytes"))?;
        let signing = VerifyingKey::from_bytes(raw[..32].try_into().expect("32 bytes"))
            .map_err(|_| bad("its Ed25519 half is not a valid point"))?;
        let x: [u8; 32] = raw[32..].try_into().expect("32 bytes");
        Ok(PublicKey {
            signing,
            x25519: x25519_dalek::PublicKey::from(x),
        })
    }

    /// The 64 raw bytes: Ed25519 key then X25519 key.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut raw = [0u8; 64];
        raw[..32].copy_from_slice(self.signing.as_bytes());
        raw[32..].copy_from_slice(self.x25519.as_bytes());
        raw
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes())
        )
    }
}

/// A node's secret keys.
#[derive(Clone)]
pub struct NodeKeys {
    /// Signs this node's bundles.
    pub signing: SigningKey,
    /// Decrypts bundles sent to this node.
    pub x25519: StaticSecret,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKeys({})", self.public())
    }
}

impl NodeKeys {
    /// Fresh keys from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> NodeKeys {
        let mut seed = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut seed[..]);
        NodeKeys::from_bytes(&seed)
    }

    /// Keys from 64 secret bytes: the Ed25519 seed then the X25519 secret.
    pub fn from_bytes(raw: &[u8; 64]) -> NodeKeys {
        let ed: [u8; 32] = raw[..32].try_into().expect("32 bytes");
        let x: [u8; 32] = raw[32..].try_into().expect("32 bytes");
        NodeKeys {
            signing: SigningKey::from_bytes(&ed),
            x25519: StaticSecret::from(x),
        }
    }

    /// The 64 secret bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut raw = Zeroizing::new([0u8; 64]);
        raw[..32].copy_from_slice(self.signing.as_bytes());
        raw[32..].copy_from_slice(self.x25519.as_bytes());
        raw
    }

    /// The public halves.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            signing: self.signing.verifying_key(),
            x25519: x25519_dalek::PublicKey::from(&self.x25519),
        }
    }

    /// Writes the keys to `path` atomically with mode 0600; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        if path.exists() {
            return Err(KeyError::Exists {
                path: path.to_path_buf(),
            });
        }
        let text = self.to_text();
        crate::transport::atomic::write_file(path, |f| {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())
        })
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads keys written by [`NodeKeys::save`]; refuses a file other users can read.
    pub fn load(path: &Path) -> Result<NodeKeys, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
        NodeKeys::from_text(&text).ok_or_else(|| KeyError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// Parses the key file's text (`ferry1-secret:` + base64url of 64 bytes).
    pub fn from_text(text: &str) -> Option<NodeKeys> {
        let b64 = text.trim().strip_prefix(SECRET_KEY_PREFIX)?;
        let raw = Zeroizing::new(URL_SAFE_NO_PAD.decode(b64).ok()?);
        let raw: &[u8; 64] = raw[..].try_into().ok()?;
        Some(NodeKeys::from_bytes(raw))
    }

    /// The key file's text.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{SECRET_KEY_PREFIX}{}\n",
            URL_SAFE_NO_PAD.encode(&self.to_bytes()[..])
        ))
    }

    /// The key file of a node whose state directory is `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(KEY_FILE)
    }

    /// Creates the node's keys in `state_dir` unless they exist; returns the public key.
    pub fn ensure(state_dir: &Path) -> Result<PublicKey, KeyError> {
        let path = NodeKeys::path_in(state_dir);
        if path.exists() {
            return Ok(NodeKeys::load(&path)?.public());
        }
        std::fs::create_dir_all(state_dir).map_err(|source| KeyError::Write {
            path: path.clone(),
            source,
        })?;
        let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
        keys.save(&path)?;
        Ok(keys.public())
    }
}

/// The nodes this node trusts, by name.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    keys: BTreeMap<String, PublicKey>,
}

impl Peers {
    /// No peers.
    pub fn new() -> Peers {
        Peers::default()
    }

    /// Adds or replaces a peer.
    pub fn insert(&mut self, name: &str, key: PublicKey) {
        debug_assert!(valid_node_name(name));
        self.keys.insert(name.to_string(), key);
    }

    /// The peer's key, if known.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name)
    }

    /// The peers a config declares, plus this node itself (it may read its own bundles).
    pub fn from_config(config: &Config, own: &PublicKey) -> Result<Peers, KeyError> {
        let mut peers = Peers::new();
        for p in &config.peers {
            let key = PublicKey::parse(&p.public_key).map_err(|e| KeyError::Peer {
                name: p.name.clone(),
                source: Box::new(e),
            })?;
            peers.insert(&p.name, key);
        }
        peers.insert(&config.node, own.clone());
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn public_key_round_trips_and_rejects_garbage() {
        let keys = NodeKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        let text = keys.public().to_string();
        assert!(text.starts_with("ferry1:"));
        assert_eq!(PublicKey::parse(&text).unwrap(), keys.public());
        let msg = |t: &str| PublicKey::parse(t).unwrap_err().to_string();
        assert!(msg("abc").contains("does not start with ferry1:"));
        assert!(msg("ferry1:!!").contains("not valid base64url"));
        assert!(msg("ferry1:AAAA").contains("exactly 64 bytes"));
        assert!(msg("ferry1:AAAA").contains("hint: copy the whole line"));
    }

    #[test]
    fn save_load_with_mode_0600_and_refuse_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let public = NodeKeys::ensure(dir.path()).unwrap();
        let path = NodeKeys::path_in(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(NodeKeys::load(&path).unwrap().public(), public);
        assert_eq!(NodeKeys::ensure(dir.path()).unwrap(), public);
        assert!(matches!(
            NodeKeys::load(&path).unwrap().save(&path),
            Err(KeyError::Exists { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by other users"), "{err}");
        assert!(err.contains("hint: run `chmod 600"), "{err}");
    }

    #[test]
    fn malformed_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "ferry1-secret:short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = NodeKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("is malformed"), "{err}");
    }
}
