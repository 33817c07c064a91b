//! The node's configuration file: the one place that names the database and the node.
//!
//! `ferry init` writes it; every other command reads it through [`Config::load`]. The
//! file is TOML. Its default location is [`DEFAULT_CONFIG_PATH`]; the global `--config`
//! option (or `FERRY_CONFIG`) overrides it. The node's state directory (keys, outbox/,
//! inbox/, quarantine/) defaults to the directory that holds the config file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the config lives when neither `--config` nor `FERRY_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/var/lib/ferry/ferry.toml";

/// Errors of reading, validating and writing the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}\nhint: run `ferry init --db URL --node NAME` first, or pass --config FILE")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}\nhint: fix the file by hand at the place named above; settings go above the first [[peer]] table (a line after it belongs to that peer)")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} already exists\nhint: pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write config file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid node name {name:?}: {why}\nhint: use 1-64 characters from a-z, 0-9, '-' and '_', starting with a letter or digit")]
    NodeName { name: String, why: &'static str },
    #[error("invalid database url {url:?}: {why}\nhint: write it as mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")]
    DbUrl { url: String, why: String },
    #[error("peer {name:?} is declared twice\nhint: remove one of the [[peer]] entries from the config file")]
    DuplicatePeer { name: String },
    #[error("this node, {name:?}, is listed as its own {as_what}\nhint: remove {name:?} from the config file's {as_what} entries (a node never sends bundles to itself)")]
    SelfPeer { name: String, as_what: &'static str },
}

impl ConfigError {
    /// Whether the error is a mistake in the config or the command (exit code 2),
    /// not a failure to write it.
    pub fn is_usage(&self) -> bool {
        !matches!(self, ConfigError::Write { .. })
    }
}

/// A peer node this node exchanges bundles with. Unknown fields are refused: a
/// setting written after a `[[peer]]` table belongs to that peer in TOML, and would
/// otherwise be ignored without a word (issue 4, found by review).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's node name, as it appears in bundle headers.
    pub name: String,
    /// The peer's public key, as printed by `ferry key` on the peer.
    pub public_key: String,
}

/// The validated contents of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name: unique among all nodes that exchange bundles.
    pub node: String,
    /// The OpenMRS database, as a `mysql://` URL.
    pub database: String,
    /// Where keys, outbox/, inbox/ and quarantine/ live. Defaults to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Nodes this node relays for: bundles addressed to them that arrive here are
    /// put, still sealed, into this node's outbox for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_for: Vec<String>,
    /// Shifts ferry's clock by this many seconds (for testing what a node with a wrong
    /// clock does; the machine's clock is left alone). Leave it out in production.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock_offset_seconds: i64,
    /// A received version whose clock reading is further ahead of its bundle's creation
    /// time than this is applied as usual but flagged as skewed (`ferry status`).
    #[serde(
        default = "default_max_clock_skew",
        skip_serializing_if = "is_default_skew"
    )]
    pub max_clock_skew_seconds: i64,
    /// How long an import waits for another import into the same database to finish
    /// before it gives up, applying nothing.
    #[serde(
        default = "default_import_wait",
        skip_serializing_if = "is_default_import_wait"
    )]
    pub import_wait_seconds: u32,
    /// The peers this node exchanges bundles with.
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// The path the config was loaded from (not stored in the file).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Config {
    /// A new config for `node` on `database`, to be saved at `path`.
    pub fn new(path: &Path, node: &str, database: &str) -> Result<Config, ConfigError> {
        let config = Config {
            node: node.to_string(),
            database: database.to_string(),
            state_dir: None,
            relay_for: Vec::new(),
            clock_offset_seconds: 0,
            max_clock_skew_seconds: DEFAULT_MAX_CLOCK_SKEW_SECONDS,
            import_wait_seconds: DEFAULT_IMPORT_WAIT_SECONDS,
            peers: Vec::new(),
            path: path.to_path_buf(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the config file at `path` without validating it (`ferry init --force`
    /// keeps what it can of a config that no longer validates).
    pub fn parse(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // With the line and column, and the line itself.
            message: e.to_string().trim_end().to_string(),
        })?;
        config.path = path.to_path_buf();
        Ok(config)
    }

    /// Checks what serde cannot: the node name, the URL, unique peers other than
    /// this node.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_name(&self.node)?;
        crate::db::DbUrl::parse(&self.database)?;
        let own = |as_what| ConfigError::SelfPeer {
            name: self.node.clone(),
            as_what,
        };
        for (i, peer) in self.peers.iter().enumerate() {
            validate_node_name(&peer.name)?;
            if peer.name == self.node {
                return Err(own("[[peer]]"));
            }
            if self.peers[..i].iter().any(|p| p.name == peer.name) {
                return Err(ConfigError::DuplicatePeer {
                    name: peer.name.clone(),
                });
            }
        }
        for name in &self.relay_for {
            validate_node_name(name)?;
            if *name == self.node {
                return Err(own("relay_for"));
            }
        }
        Ok(())
    }

    /// The node's state directory.
    pub fn state_dir(&self) -> PathBuf {
        match &self.state_dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => self.config_dir().join(dir),
            None => self.config_dir(),
        }
    }

    fn config_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The peer named `name`, if declared.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Writes the config atomically (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, overwrite: bool) -> Result<(), ConfigError> {
        if !overwrite && self.path.exists() {
            return Err(ConfigError::Exists {
                path: self.path.clone(),
            });
        }
        let text = toml::to_string_pretty(self).expect("config serializes");
        let header = "# ferry node configuration. See `ferry --help` and docs/operations.md.\n";
        let err = |source| ConfigError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(err)?;
        }
        crate::transport::atomic::write_file(&self.path, |f| {
            f.write_all(header.as_bytes())?;
            f.write_all(text.as_bytes())
        })
        .map_err(err)
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The default bound on apparent clock skew: ten minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_SECONDS: i64 = 600;

fn default_max_clock_skew() -> i64 {
    DEFAULT_MAX_CLOCK_SKEW_SECONDS
}

fn is_default_skew(n: &i64) -> bool {
    *n == DEFAULT_MAX_CLOCK_SKEW_SECONDS
}

/// How long an import waits for another one by default (ten minutes).
pub const DEFAULT_IMPORT_WAIT_SECONDS: u32 = 600;

fn default_import_wait() -> u32 {
    DEFAULT_IMPORT_WAIT_SECONDS
}

fn is_default_import_wait(n: &u32) -> bool {
    *n == DEFAULT_IMPORT_WAIT_SECONDS
}

/// Node names appear in file names and headers, so they are kept to a safe alphabet.
pub fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let bad = |why| ConfigError::NodeName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("it must be 1 to 64 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(bad("it may hold only a-z, 0-9, '-' and '_'"));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad("it must start with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(validate_node_name("clinic-a").is_ok());
        assert!(validate_node_name("hub_1").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("Clinic").is_err());
        assert!(validate_node_name("-a").is_err());
        assert!(validate_node_name("a/b").is_err());
        assert!(validate_node_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn round_trip_and_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let mut c = Config::new(&path, "clinic-a", "mysql://root@127.0.0.1:3306/openmrs").unwrap();
        c.peers.push(PeerConfig {
            name: "hub".into(),
            public_key: "k".into(),
        });
        c.save(false).unwrap();
        assert!(matches!(c.save(false), Err(ConfigError::Exists { .. })));
        let back = Config::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.state_dir(), dir.path());
    }

    #[test]
    fn rejects_unknown_keys_and_duplicate_peers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        fs::write(&path, "node='a'\ndatabase='mysql://r@h/d'\nbogus=1\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        fs::write(
            &path,
            "node='a'\ndatabase='mysql://r@h/d'\n[[peer]]\nname='b'\npublic_key='x'\n[[peer]]\nname='b'\npublic_key='y'\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::DuplicatePeer { .. })
        ));
    }
}
