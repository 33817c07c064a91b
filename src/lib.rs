//! ferry: store-and-forward replication for OpenMRS databases.
//!
//! The modules follow the data path: [`schema`] reads the database and derives the
//! sync plan, [`capture`] installs the triggers that record every row change,
//! [`bundle`] seals changes into signed, encrypted files, [`transport`] moves those
//! files between directories (outbox, inbox, a USB stick), and the apply stage writes
//! them into another database; [`verify`] proves that two nodes hold the same synced
//! content. [`rejoin`] puts a node whose database was restored from a backup back in
//! step. [`cli`] and [`config`] sit at the edges; [`dev`] holds
//! the tools that tests, benchmarks and the demo share (private MariaDB servers, the
//! workload generator). See ARCHITECTURE.md for the map and the invariants.

pub mod apply;
pub mod bundle;
pub mod capture;
pub mod cli;
pub mod config;
pub mod db;
pub mod dev;
pub mod export;
pub mod node;
pub mod rejoin;
pub mod schema;
pub mod state;
pub mod transport;
pub mod verify;
