//! Three nodes exchange bundles through one directory (a USB stick) with the real
//! binary: `clinic-a` and `clinic-b` never meet, `hub` relays for `clinic-b`. Each node
//! gets exactly its own bundles, nothing is copied twice, and neither a file truncated
//! mid-copy nor a temporary file is ever taken as a bundle. No database is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::bundle::{BundleMeta, BundleName, BundleWriter, NodeKeys, PublicKey};
use ferry::config::Config;
use ferry::dev::bundle_synth::{obs_change, obs_columns};
use ferry::transport::StateDirs;
use rand::SeedableRng;
use serde_json::Value;

struct Node {
    name: &'static str,
    config: PathBuf,
}

impl Node {
    fn state(&self) -> PathBuf {
        self.config.parent().unwrap().to_path_buf()
    }

    fn ferry(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ferry(args);
        assert_eq!(code, 0, "{} {args:?}: {out}{err}", self.name);
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn inbox(&self) -> Vec<String> {
        names(&StateDirs::new(&self.state()).inbox_bundles().unwrap())
    }

    /// Seals `n` synthetic changes into this node's outbox for `to`.
    fn seal(&self, to: &str, seq: u64, prev: [u8; 32]) -> [u8; 32] {
        let keys = NodeKeys::load(&NodeKeys::path_in(&self.state())).unwrap();
        let config = Config::load(&self.config).unwrap();
        let key = PublicKey::parse(&config.peer(to).unwrap().public_key).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seq);
        let meta = BundleMeta::new(self.name, to, seq, prev);
        let mut w = BundleWriter::new(&self.state(), &keys, &key, meta, &mut rng).unwrap();
        w.declare_table("obs", &obs_columns()).unwrap();
        for i in 0..50 {
            w.push(&obs_change(self.name, seq * 100 + i)).unwrap();
        }
        let dirs = StateDirs::new(&self.state());
        let name = BundleName {
            sender: self.name.into(),
            recipient: to.into(),
            seq,
        };
        w.finish(&dirs.outbox_path(&name).unwrap()).unwrap().hash
    }
}

fn names(list: &[(BundleName, PathBuf)]) -> Vec<String> {
    list.iter().map(|(n, _)| n.file_name()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn file(sender: &str, recipient: &str, seq: u64) -> String {
    BundleName {
        sender: sender.into(),
        recipient: recipient.into(),
        seq,
    }
    .file_name()
}

fn setup(root: &Path) -> Vec<Node> {
    let nodes: Vec<Node> = ["clinic-a", "hub", "clinic-b"]
        .iter()
        .map(|name| Node {
            name,
            config: root.join(name).join("ferry.toml"),
        })
        .collect();
    let mut keys = Vec::new();
    for n in &nodes {
        let out = n.ok(&[
            "init",
            "--db",
            "mysql://root@127.0.0.1:3306/openmrs",
            "--node",
            n.name,
        ]);
        assert!(out.contains("public key: ferry1:"), "{out}");
        let key = n.ok(&["key"]).trim().to_string();
        assert!(out.contains(&key));
        keys.push(key);
    }
    for (i, n) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                n.ok(&["peer", "add", other.name, &keys[j]]);
            }
        }
    }
    let mut hub = Config::load(&nodes[1].config).unwrap();
    hub.relay_for = vec!["clinic-b".into()];
    hub.save(true).unwrap();
    nodes
}

#[test]
fn three_nodes_through_one_stick() {
    let root = tempfile::tempdir().unwrap();
    let stick = root.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    let nodes = setup(root.path());
    let (a, hub, b) = (&nodes[0], &nodes[1], &nodes[2]);
    let stick_s = stick.to_str().unwrap();

    let h1 = a.seal("hub", 1, [0; 32]);
    a.seal("hub", 2, h1);
    a.seal("clinic-b", 1, [0; 32]);
    hub.seal("clinic-a", 1, [0; 32]);

    // clinic-a carries its three bundles; a second run copies nothing.
    let sent = a.json(&["send", stick_s, "--json"]);
    assert_eq!(strings(&sent["copied"]).len(), 3, "{sent}");
    let again = a.json(&["send", stick_s, "--json"]);
    assert!(strings(&again["copied"]).is_empty(), "{again}");
    assert_eq!(strings(&again["skipped"]).len(), 3);
    // Without the ledger, files already on the stick with the same name and hash are
    // still not copied again.
    let ledger = a.state().join(ferry::transport::carry::LEDGER_FILE);
    std::fs::remove_file(&ledger).unwrap();
    let again = a.json(&["send", stick_s, "--json"]);
    assert!(strings(&again["copied"]).is_empty(), "{again}");
    assert!(ledger.exists(), "the ledger is written again");

    // A copy of a third bundle interrupted halfway, and a copy still under its temp name.
    let h2_path = StateDirs::new(&a.state())
        .outbox_bundles("hub")
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let whole = std::fs::read(&h2_path).unwrap();
    let truncated = file("clinic-a", "hub", 3);
    std::fs::write(stick.join(&truncated), &whole[..whole.len() / 2]).unwrap();
    let temp = format!("{}.4242.tmp", file("clinic-a", "hub", 4));
    std::fs::write(stick.join(&temp), &whole).unwrap();

    // The hub takes its own two, relays clinic-b's, and refuses the truncated file.
    let (code, out, err) = hub.ferry(&["receive", stick_s, "--json"]);
    assert_eq!(code, 1, "a refusal is an operational failure: {out}{err}");
    assert!(err.contains("1 bundle(s) refused"), "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        strings(&got["received"]),
        vec![file("clinic-a", "hub", 1), file("clinic-a", "hub", 2)]
    );
    assert_eq!(
        strings(&got["relayed"]),
        vec![file("clinic-a", "clinic-b", 1)]
    );
    assert_eq!(got["refused"][0]["file"], truncated.as_str());
    assert_eq!(got["refused"][0]["kind"], "truncated");
    assert!(got["refused"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("is truncated (got"));
    assert_eq!(
        hub.inbox(),
        vec![file("clinic-a", "hub", 1), file("clinic-a", "hub", 2)]
    );
    let q = StateDirs::new(&hub.state()).quarantine();
    assert!(q.join(&truncated).exists());
    assert!(
        std::fs::read_to_string(q.join(format!("{truncated}.reason.txt")))
            .unwrap()
            .contains("truncated")
    );
    assert!(
        stick.join(&truncated).exists(),
        "refused files stay on the stick"
    );
    assert!(stick.join(&temp).exists(), "temp files are not touched");
    assert!(
        !stick.join(file("clinic-a", "hub", 1)).exists(),
        "taken off the stick"
    );

    // The hub carries its own bundle and the relayed one; clinic-b takes only its own.
    let sent = hub.json(&["send", stick_s, "--json"]);
    assert_eq!(
        strings(&sent["copied"]),
        vec![file("hub", "clinic-a", 1), file("clinic-a", "clinic-b", 1)]
    );
    // The hub looking at the stick again must not take the relayed bundle back.
    let again = hub.ferry(&["receive", stick_s, "--json"]).1;
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        strings(&again["duplicates"]),
        vec![file("clinic-a", "clinic-b", 1)]
    );
    assert!(stick.join(file("clinic-a", "clinic-b", 1)).exists());
    let got = b.json(&["receive", stick_s, "--json"]);
    assert_eq!(
        strings(&got["received"]),
        vec![file("clinic-a", "clinic-b", 1)]
    );
    assert!(strings(&got["left"]).contains(&file("hub", "clinic-a", 1)));
    assert!(strings(&got["left"]).contains(&truncated));
    assert_eq!(b.inbox(), vec![file("clinic-a", "clinic-b", 1)]);

    // clinic-a takes the hub's bundle; nobody's inbox holds anyone else's.
    let got = a.json(&["receive", stick_s, "--json"]);
    assert_eq!(strings(&got["received"]), vec![file("hub", "clinic-a", 1)]);
    assert_eq!(a.inbox(), vec![file("hub", "clinic-a", 1)]);
    assert_eq!(hub.inbox().len(), 2);

    // Nothing is carried twice: the hub's second send copies nothing.
    let again = hub.json(&["send", stick_s, "--json"]);
    assert!(strings(&again["copied"]).is_empty(), "{again}");

    // Once clinic-a's bundles are acknowledged, they leave its outbox.
    let dirs = StateDirs::new(&a.state());
    assert_eq!(dirs.acknowledge("clinic-a", "hub", 2).unwrap(), 2);
    assert!(dirs.outbox_bundles("hub").unwrap().is_empty());
    assert_eq!(dirs.outbox_bundles("clinic-b").unwrap().len(), 1);
}

#[test]
fn bundle_verify_and_inspect_commands() {
    let root = tempfile::tempdir().unwrap();
    let nodes = setup(root.path());
    let (a, hub) = (&nodes[0], &nodes[1]);
    a.seal("hub", 1, [0; 32]);
    let path = StateDirs::new(&a.state())
        .outbox_bundles("hub")
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let p = path.to_str().unwrap();
    let out = hub.ok(&["bundle", "verify", p]);
    assert!(
        out.contains("ok (clinic-a → hub seq 1, decrypted)"),
        "{out}"
    );
    // The sender can check signature and hashes, not decrypt.
    let out = a.ok(&["bundle", "verify", p]);
    assert!(out.contains("signature and hashes only"), "{out}");
    let v = hub.json(&["bundle", "inspect", p, "--json"]);
    assert_eq!(v["counts"]["obs"]["insert"], 35);
    assert_eq!(v["counts"]["obs"]["update"], 12);
    assert_eq!(v["counts"]["obs"]["delete"], 3);
    let text = hub.ok(&["bundle", "inspect", p]);
    assert!(
        text.contains("table       obs: delete 3, insert 35, update 12"),
        "{text}"
    );

    let bad = root.path().join(file("clinic-a", "hub", 2));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 700]).unwrap();
    let (code, _, err) = hub.ferry(&["bundle", "verify", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is truncated"), "{err}");
    assert!(err.contains("hint: copy it again"), "{err}");

    // Issue 4: a file named for another number than its header's said ok.
    let renamed = root.path().join(file("clinic-a", "hub", 10));
    std::fs::copy(&path, &renamed).unwrap();
    let (code, _, err) = hub.ferry(&["bundle", "verify", renamed.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "is named for clinic-a → hub #10 but its signed header says clinic-a → hub #1"
        ),
        "{err}"
    );

    let (code, _, err) = hub.ferry(&["peer", "add", "x", "not-a-key"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not start with ferry1:"), "{err}");
}

#[test]
fn world_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let nodes = setup(root.path());
    let key = NodeKeys::path_in(&nodes[0].state());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = nodes[0].ferry(&["key"]);
    assert_eq!(code, 1);
    assert!(err.contains("readable by other users"), "{err}");
}

/// Issue 4: `ferry init --force` (which an operator uses to change the database URL)
/// rewrote the config without its peers:
/// export then said "no peers configured" and exited 0. It now keeps them.
#[test]
fn init_force_keeps_the_peers() {
    let root = tempfile::tempdir().unwrap();
    let nodes = setup(root.path());
    let a = &nodes[0];
    let before = Config::load(&a.config).unwrap();
    assert!(!before.peers.is_empty());
    let out = a.ok(&[
        "init",
        "--db",
        "mysql://root@127.0.0.1:3307/openmrs",
        "--node",
        a.name,
        "--force",
    ]);
    let kept = format!("kept {} peer(s)", before.peers.len());
    assert!(out.contains(&kept), "{out}");
    let after = Config::load(&a.config).unwrap();
    assert_eq!(after.database, "mysql://root@127.0.0.1:3307/openmrs");
    let peers = |c: &Config| -> Vec<(String, String)> {
        c.peers
            .iter()
            .map(|p| (p.name.clone(), p.public_key.clone()))
            .collect()
    };
    assert_eq!(peers(&after), peers(&before));
}

/// clinic-a seals bundle 1 for the hub and carries it on a stick (`<root>/stick`);
/// the hub receives it into its inbox.
fn one_bundle_received() -> (tempfile::TempDir, Vec<Node>) {
    let root = tempfile::tempdir().unwrap();
    let stick = root.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    let nodes = setup(root.path());
    let stick_s = stick.to_str().unwrap();
    nodes[0].seal("hub", 1, [0; 32]);
    nodes[0].ok(&["send", stick_s]);
    nodes[1].ok(&["receive", stick_s]);
    assert_eq!(nodes[1].inbox(), vec![file("clinic-a", "hub", 1)]);
    (root, nodes)
}

/// Regression (issue 4, found by review): a torn copy of a bundle that the inbox
/// already holds intact (a second, damaged stick) was refused as a "conflict" that
/// "was tampered with or re-sealed", not named for what it is (truncated).
#[test]
fn a_torn_copy_of_a_bundle_already_in_the_inbox_is_named_truncated() {
    let (root, nodes) = one_bundle_received();
    let (a, hub) = (&nodes[0], &nodes[1]);
    let stick = root.path().join("stick");
    let stick_s = stick.to_str().unwrap();
    // The same bundle arrives again on a damaged stick, cut halfway.
    let path = StateDirs::new(&a.state()).outbox_bundles("hub").unwrap()[0]
        .1
        .clone();
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(
        stick.join(file("clinic-a", "hub", 1)),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    let (_code, out, err) = hub.ferry(&["receive", stick_s, "--json"]);
    let got: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(got["refused"][0]["kind"], "truncated", "{got:#}");
}

/// Regression (issue 4, found by review): `ferry receive` pointed at the node's own
/// inbox (a folder rsync'd straight into it, a cron job's wrong path) deleted the
/// bundles waiting there: each was "the same" as itself, so the "carrier copy" went.
#[test]
fn receive_from_the_inbox_itself_keeps_the_bundles() {
    let (_root, nodes) = one_bundle_received();
    let hub = &nodes[1];
    let inbox = StateDirs::new(&hub.state()).inbox();
    let (code, out, err) = hub.ferry(&["receive", inbox.to_str().unwrap(), "--json"]);
    assert_eq!(
        hub.inbox(),
        vec![file("clinic-a", "hub", 1)],
        "the bundle left the inbox unapplied: exit {code}\n{out}{err}"
    );
}
