//! Everything a sync command needs to know about this node, loaded once from the
//! validated config: its name, keys, peers, state directories and clock.

use crate::bundle::{KeyError, NodeKeys, Peers};
use crate::capture::clock::WallClock;
use crate::config::Config;
use crate::db::DbUrl;
use crate::transport::state::{StateDirs, TransportError};

/// Errors loading the node's context.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// This node: config, keys, peers, directories, clock.
pub struct NodeContext {
    pub config: Config,
    pub db: DbUrl,
    pub keys: NodeKeys,
    pub peers: Peers,
    pub dirs: StateDirs,
    pub clock: WallClock,
}

impl NodeContext {
    /// Loads keys and peers for `config` and makes sure the state directories exist.
    pub fn load(config: Config) -> Result<NodeContext, NodeError> {
        let db = DbUrl::parse(&config.database)?;
        let state = config.state_dir();
        let keys = NodeKeys::load(&NodeKeys::path_in(&state))?;
        let peers = Peers::from_config(&config, &keys.public())?;
        let dirs = StateDirs::new(&state);
        dirs.create()?;
        let clock = WallClock {
            offset_us: config.clock_offset_seconds.saturating_mul(1_000_000),
        };
        Ok(NodeContext {
            config,
            db,
            keys,
            peers,
            dirs,
            clock,
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.config.node
    }

    /// The names of the configured peers.
    pub fn peer_names(&self) -> Vec<String> {
        self.config.peers.iter().map(|p| p.name.clone()).collect()
    }
}
