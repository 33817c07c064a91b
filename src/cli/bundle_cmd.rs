//! Commands of the bundle stage: key, peer add, send, receive, bundle inspect, bundle
//! verify, and the hidden `dev bundle-stress` used by the memory test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{load, Output, UsageError};
use crate::bundle::{self, BundleError, Header, NodeKeys, PublicKey};
use crate::config::{validate_node_name, Config, PeerConfig};
use crate::node::NodeContext;
use crate::transport::{self, Receiver, StateDirs};

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Trust a peer: bundles from NAME are checked with KEY and bundles to it encrypted to KEY.
    Add {
        /// The peer's node name.
        name: String,
        /// The peer's public key, as `ferry key` prints it there (ferry1:...).
        key: String,
        /// Replace the key of a peer that is already configured.
        #[arg(long)]
        replace: bool,
    },
    /// Stop syncing with a peer (a site closed for good).
    ///
    /// Exports no longer seal bundles for NAME, and the change log no longer waits for
    /// its acknowledgements. Bundle numbers are kept: NAME added back later resumes
    /// them, but receives only the changes still in the log.
    Remove {
        /// The peer's node name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CarryArgs {
    /// The carrier directory (a mounted USB stick, a shared folder).
    pub dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub carry: CarryArgs,
    /// Copy every bundle still in the outbox (not yet acknowledged) again, even if it was
    /// carried before; a damaged or different copy on DIR is replaced. Use it when a
    /// carrier was damaged (the receiver refused a bundle as truncated or damaged) or
    /// lost, or the receiver is waiting for a bundle that was carried.
    #[arg(long)]
    pub again: bool,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Show a bundle's header; with this node's key, also its changes per table.
    Inspect {
        /// The bundle file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle completely; exit 0 if sound, 1 with the defect otherwise.
    Verify {
        /// The bundle file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// This node's name, keys, peers and directories (the context sync commands share).
fn node(config_path: &Path) -> anyhow::Result<NodeContext> {
    Ok(NodeContext::load(load(config_path)?)?)
}

/// Creates the node's keypair (called by `ferry init`); returns the public key.
pub fn ensure_keys(config: &Config) -> anyhow::Result<PublicKey> {
    let public = NodeKeys::ensure(&config.state_dir())?;
    StateDirs::new(&config.state_dir()).create()?;
    Ok(public)
}

/// `ferry key`.
pub fn key(config_path: &Path, out: &Output) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let keys = NodeKeys::load(&NodeKeys::path_in(&config.state_dir()))?;
    out.line(keys.public().to_string());
    Ok(())
}

/// `ferry peer ...`.
pub fn peer(config_path: &Path, cmd: PeerCommand, out: &Output) -> anyhow::Result<()> {
    let (name, key, replace) = match cmd {
        PeerCommand::Add { name, key, replace } => (name, key, replace),
        PeerCommand::Remove { name } => return remove_peer(config_path, &name, out),
    };
    validate_node_name(&name)?;
    let parsed = PublicKey::parse(&key).map_err(|e| UsageError(e.to_string()))?;
    let mut config = load(config_path)?;
    if name == config.node {
        return Err(UsageError(format!(
            "{name} is this node itself\nhint: run `ferry peer add` with the name of another node"
        ))
        .into());
    }
    let key = parsed.to_string();
    let new = config.peer(&name).is_none();
    match config.peers.iter_mut().find(|p| p.name == name) {
        Some(p) if p.public_key == key => {}
        Some(_) if !replace => {
            return Err(UsageError(format!(
                "peer {name} already has a different key\nhint: pass --replace if {name} was re-keyed on purpose"
            ))
            .into())
        }
        Some(p) => p.public_key = key,
        None => config.peers.push(PeerConfig {
            name: name.clone(),
            public_key: key,
        }),
    }
    config.save(true)?;
    out.line(format!("peer {name} added to {}", config.path.display()));
    if new {
        out.line(format!(
            "note: if {name} does not start with this database's data (a copy of it, or loaded alike), make its first export a full one: `ferry export --full --peer {name}`"
        ));
    }
    Ok(())
}

/// `ferry peer remove NAME`.
fn remove_peer(config_path: &Path, name: &str, out: &Output) -> anyhow::Result<()> {
    let mut config = load(config_path)?;
    let Some(at) = config.peers.iter().position(|p| p.name == name) else {
        return Err(super::no_such_peer(&config, format!("there is no peer named {name}")).into());
    };
    config.peers.remove(at);
    config.save(true)?;
    let waiting = StateDirs::new(&config.state_dir())
        .outbox_bundles(name)
        .map(|b| b.len())
        .unwrap_or(0);
    out.line(format!(
        "peer {name} removed from {}: exports no longer seal bundles for it, and the change \
         log no longer waits for its acknowledgements",
        config.path.display()
    ));
    if waiting > 0 {
        out.line(format!(
            "its {waiting} unacknowledged bundle(s) stay in {}; delete them once {name} is gone for good",
            StateDirs::new(&config.state_dir()).outbox(name).display()
        ));
    }
    Ok(())
}

/// `ferry send [--again] DIR`.
pub fn send(config_path: &Path, args: SendArgs, out: &Output) -> anyhow::Result<()> {
    let SendArgs { carry: args, again } = args;
    let n = node(config_path)?;
    check_dir(&args.dir)?;
    let bar = out.progress(0, "sending");
    let report = transport::send(&n.dirs, &args.dir, again, &bar)?;
    bar.finish_and_clear();
    if args.json {
        out.json(&report);
    } else {
        for f in &report.copied {
            out.line(format!("copied  {f}"));
        }
        out.line(format!(
            "{} bundle(s) copied to {}, {} already {}",
            report.copied.len(),
            args.dir.display(),
            report.skipped.len(),
            if again { "there" } else { "carried" }
        ));
    }
    Ok(())
}

/// `ferry receive DIR`.
pub fn receive(config_path: &Path, args: CarryArgs, out: &Output) -> anyhow::Result<()> {
    let n = node(config_path)?;
    check_dir(&args.dir)?;
    let rx = Receiver {
        me: &n.config.node,
        relay_for: &n.config.relay_for,
        keys: &n.keys,
        peers: &n.peers,
    };
    let bar = out.progress(0, "receiving");
    let report = transport::receive(&n.dirs, &args.dir, &rx, &bar)?;
    bar.finish_and_clear();
    if args.json {
        out.json(&report);
    } else {
        for f in &report.received {
            out.line(format!("received {f}"));
        }
        for f in &report.relayed {
            out.line(format!("relayed  {f}"));
        }
        for f in &report.pruned {
            out.line(format!(
                "pruned   {f} (relayed earlier; its recipient applied it)"
            ));
        }
        for r in &report.refused {
            out.line(format!(
                "REFUSED  {}: {}\n         (copy in {})",
                r.file,
                r.reason.replace('\n', "\n         "),
                r.quarantined.display()
            ));
        }
        out.line(format!(
            "{} received, {} relayed, {} already had, {} left for other nodes, {} refused",
            report.received.len(),
            report.relayed.len(),
            report.duplicates.len(),
            report.left.len(),
            report.refused.len()
        ));
    }
    if !report.refused.is_empty() {
        anyhow::bail!(
            "{} bundle(s) refused and copied to {}\nhint: read the .reason.txt files there",
            report.refused.len(),
            n.dirs.quarantine().display()
        );
    }
    Ok(())
}

fn check_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "{} is not a directory\nhint: mount the carrier and pass its directory",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

#[derive(Serialize)]
struct HeaderView {
    file: String,
    sender: String,
    recipient: String,
    seq: u64,
    hash: String,
    prev_hash: String,
    created_us: i64,
    bundle_id: String,
    plan_fingerprint: String,
    acks: BTreeMap<String, u64>,
    change_count: u64,
    plain_len: u64,
    body_len: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<BTreeMap<String, BTreeMap<&'static str, u64>>>,
}

fn view(file: &Path, h: &Header, hash: [u8; 32]) -> HeaderView {
    HeaderView {
        file: file.display().to_string(),
        sender: h.sender.clone(),
        recipient: h.recipient.clone(),
        seq: h.seq,
        hash: hex::encode(hash),
        prev_hash: hex::encode(h.prev_hash),
        created_us: h.created_us,
        bundle_id: hex::encode(h.bundle_id),
        plan_fingerprint: hex::encode(h.plan_fingerprint),
        acks: h.acks.iter().cloned().collect(),
        change_count: h.change_count,
        plain_len: h.plain_len,
        body_len: h.body_len,
        counts: None,
    }
}

/// Verifies `file` as completely as this node can; counts changes when it can decrypt.
/// Verifies a bundle file (and decrypts it when it is for this node). With `named`, a
/// file named for another bundle than its signed header says is refused, as import and
/// receive refuse it (`verify` said ok before); `inspect` shows such a file.
fn check_bundle(n: &NodeContext, file: &Path, named: bool) -> Result<HeaderView, BundleError> {
    let verified = bundle::verify_header(file, &n.peers)?;
    let label = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match bundle::BundleName::parse(&label) {
        Some(name) if named => verified.header.check_named(&label, &name)?,
        _ => {}
    }
    let mut v = view(file, &verified.header, verified.hash);
    if verified.header.recipient == n.config.node {
        let mut reader = bundle::open(file, &n.config.node, &n.keys, &n.peers)?;
        let mut counts: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        while let Some(c) = reader.next_change()? {
            *counts
                .entry(c.table)
                .or_default()
                .entry(c.op.as_str())
                .or_default() += 1;
        }
        v.counts = Some(counts);
    }
    Ok(v)
}

/// `ferry bundle ...`.
pub fn bundle(config_path: &Path, cmd: BundleCommand, out: &Output) -> anyhow::Result<()> {
    let n = node(config_path)?;
    match cmd {
        BundleCommand::Inspect { file, json } => {
            let v = check_bundle(&n, &file, false)?;
            if json {
                out.json(&v);
                return Ok(());
            }
            out.line(format!("bundle      {}", v.file));
            out.line(format!(
                "from        {} to {} seq {}",
                v.sender, v.recipient, v.seq
            ));
            out.line(format!("hash        {}", v.hash));
            out.line(format!("prev hash   {}", v.prev_hash));
            out.line(format!("created us  {}", v.created_us));
            out.line(format!("bundle id   {}", v.bundle_id));
            out.line(format!("plan        {}", v.plan_fingerprint));
            out.line(format!("changes     {}", v.change_count));
            out.line(format!(
                "body        {} bytes ({} decompressed)",
                v.body_len, v.plain_len
            ));
            for (node, id) in &v.acks {
                out.line(format!("ack         {node} {id}"));
            }
            match &v.counts {
                Some(counts) => {
                    for (table, ops) in counts {
                        let ops: Vec<String> =
                            ops.iter().map(|(op, k)| format!("{op} {k}")).collect();
                        out.line(format!("table       {table}: {}", ops.join(", ")));
                    }
                }
                None => out.line("body        sealed for another node; not decrypted"),
            }
            Ok(())
        }
        BundleCommand::Verify { file, json } => {
            let result = check_bundle(&n, &file, true);
            if json {
                let value = match &result {
                    Ok(v) => {
                        serde_json::json!({"ok": true, "file": v.file, "decrypted": v.counts.is_some()})
                    }
                    Err(e) => {
                        serde_json::json!({"ok": false, "file": file.display().to_string(), "defect": e.kind(), "message": e.to_string()})
                    }
                };
                out.json(&value);
            }
            let v = result.with_context(|| format!("{} refused", file.display()))?;
            if !json {
                out.line(format!(
                    "{}: ok ({} → {} seq {}{})",
                    v.file,
                    v.sender,
                    v.recipient,
                    v.seq,
                    if v.counts.is_some() {
                        ", decrypted"
                    } else {
                        ", signature and hashes only"
                    }
                ));
            }
            Ok(())
        }
    }
}

/// `ferry dev ...`.
pub fn bundle_stress(changes: u64, dir: Option<PathBuf>, out: &Output) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| tmp.path().to_path_buf());
    let report = crate::dev::bundle_synth::stress(&dir, changes)?;
    out.json(&report);
    Ok(())
}
