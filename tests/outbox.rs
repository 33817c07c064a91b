//! Outbox pruning against real MariaDB: a bundle leaves the outbox only once its
//! recipient has applied it, and then it does leave (issue 4 §4). Each test is a
//! regression found in review: a heartbeat left the outbox before it was ever carried;
//! an idle node's heartbeats piled up; a relay deleted the bundles it carried for
//! others when its own were acknowledged, and kept the ones it relayed forever; in a
//! mesh, a node's ack of changes it got another way deleted bundles it never applied.
//! A recipient waiting for a bundle that no longer exists anywhere is stuck for good;
//! one whose copy was damaged or lost on the way gets it again with `send --again`.

mod common;

use common::{Cluster, Source};

/// The file names in `n`'s outbox for `peer`.
fn outbox(c: &Cluster, n: &str, peer: &str) -> Vec<String> {
    c.outbox(n, peer)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Issue 4: the ack of the bundle before a heartbeat must not count as the heartbeat's
/// (it had that bundle's horizon, and left the outbox before it was ever carried).
#[test]
fn a_heartbeat_stays_in_the_outbox_until_it_is_acknowledged() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let stick = c.stick.path().to_str().unwrap();
    common::generate(c.url("site-a"), 1, 2, 1, 2);
    c.carry("site-a", "site-b");
    c.carry_with("site-b", "site-a", &["--heartbeat"]);
    assert_eq!(outbox(&c, "site-a", "site-b"), Vec::<String>::new());
    // Nothing new at site-a: a heartbeat (#2) carries its acknowledgements.
    let e = c.node("site-a").json(&["export", "--heartbeat", "--json"]);
    assert_eq!(e[0]["seq"], 2, "{e}");
    // An import (nothing in the inbox) prunes the outbox: the heartbeat stays.
    c.node("site-a").json(&["import", "--json"]);
    assert_eq!(
        outbox(&c, "site-a", "site-b"),
        vec!["ferry.site-a.site-b.0000000000000002.bundle".to_string()]
    );
    let status = c.node("site-a").json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["unacknowledged_bundles"], 1, "{status}");
    // A real change follows as #3; site-b applies both, in order.
    common::generate(c.url("site-a"), 2, 2, 1, 2);
    c.node("site-a").ok(&["export"]);
    c.node("site-a").ok(&["send", stick]);
    c.node("site-b").ok(&["receive", stick]);
    let r = c.node("site-b").json(&["import", "--json"]);
    assert!(r["held"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["applied"].as_array().unwrap().len(), 2, "{r}");
    // Once site-b acknowledges #3, both leave site-a's outbox.
    c.carry_with("site-b", "site-a", &["--heartbeat"]);
    assert_eq!(outbox(&c, "site-a", "site-b"), Vec::<String>::new());
}

/// Issue 4: a node with nothing new sends heartbeats to carry its acknowledgements. A
/// heartbeat had the horizon of the bundle before it, so no ack could prove it applied
/// until a later bundle moved the horizon: an idle node's heartbeats piled up in its
/// outbox. Each now takes a log position of its own, and leaves once acknowledged.
#[test]
fn an_idle_nodes_heartbeats_leave_the_outbox_once_acknowledged() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 1, 2, 1, 2);
    c.carry("site-a", "site-b");
    c.carry_with("site-b", "site-a", &["--heartbeat"]);
    assert_eq!(outbox(&c, "site-a", "site-b"), Vec::<String>::new());
    for seq in [2, 3] {
        // Nothing new at site-a: a heartbeat, applied at site-b, acknowledged back.
        let r = c.carry_with("site-a", "site-b", &["--heartbeat"]);
        assert_eq!(common::applied_seqs(&r), vec![seq], "{r}");
        c.carry_with("site-b", "site-a", &["--heartbeat"]);
        assert_eq!(outbox(&c, "site-a", "site-b"), Vec::<String>::new());
        let status = c.node("site-a").json(&["status", "--json"]);
        assert_eq!(status["peers"][0]["unacknowledged_bundles"], 0, "{status}");
        assert_eq!(status["peers"][0]["unacknowledged_changes"], 0, "{status}");
    }
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// Issue 4: a relay's outbox folder for a node also holds what it relays to that node
/// from others; acknowledging the relay's own bundles must leave those alone.
#[test]
fn a_relay_keeps_the_bundles_it_carries_for_others_when_its_own_are_acknowledged() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    let stick = c.stick.path().to_str().unwrap();
    let k1 = c.node("s1").ok(&["key"]).trim().to_string();
    let k2 = c.node("s2").ok(&["key"]).trim().to_string();
    c.node("s1").ok(&["peer", "add", "s2", &k2]);
    c.node("s2").ok(&["peer", "add", "s1", &k1]);
    let mut hub = ferry::config::Config::load(&c.node("hub").config).unwrap();
    hub.relay_for = vec!["s2".into()];
    hub.save(true).unwrap();
    // hub -> s2 #1, applied and acknowledged.
    common::generate(c.url("hub"), 1, 2, 1, 2);
    c.node("hub").ok(&["export", "--peer", "s2"]);
    c.node("hub").ok(&["send", stick]);
    c.node("s2").ok(&["receive", stick]);
    c.node("s2").ok(&["import"]);
    c.node("s2").ok(&["export", "--heartbeat", "--peer", "hub"]);
    c.node("s2").ok(&["send", stick]);
    c.node("hub").ok(&["receive", stick]);
    c.node("hub").ok(&["import"]);
    // hub -> s2 #2 is carried and applied; s1 -> s2 #1 reaches the hub to be relayed.
    common::generate(c.url("hub"), 3, 2, 1, 2);
    c.node("hub").ok(&["export", "--peer", "s2"]);
    c.node("hub").ok(&["send", stick]);
    c.node("s2").ok(&["receive", stick]);
    c.node("s2").ok(&["import"]);
    common::generate(c.url("s1"), 2, 2, 1, 2);
    c.node("s1").ok(&["export", "--peer", "s2"]);
    c.node("s1").ok(&["send", stick]);
    let r = c.node("hub").json(&["receive", stick, "--json"]);
    assert_eq!(r["relayed"].as_array().unwrap().len(), 1, "{r}");
    // s2 acknowledges hub #2: the hub's own bundles go, the relayed one stays.
    c.node("s2").ok(&["export", "--heartbeat", "--peer", "hub"]);
    c.node("s2").ok(&["send", stick]);
    c.node("hub").ok(&["receive", stick]);
    c.node("hub").ok(&["import"]);
    assert_eq!(
        outbox(&c, "hub", "s2"),
        vec!["ferry.s1.s2.0000000000000001.bundle".to_string()]
    );
}

/// Issue 4: in a mesh, a node can hold another's changes before it applied that node's
/// own bundles (a hub forwarded them). Its ack of the other's positions then counted
/// as proof that those bundles were applied, and the sender deleted them from its
/// outbox before they were ever carried: the recipient waited for them forever.
#[test]
fn a_bundle_stays_in_the_outbox_when_its_changes_reached_the_peer_another_way() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    let key = |n: &str| c.node(n).ok(&["key"]).trim().to_string();
    c.node("s1").ok(&["peer", "add", "s2", &key("s2")]);
    c.node("s2").ok(&["peer", "add", "s1", &key("s1")]);
    let import = |n: &str, file: &std::path::Path| {
        c.node(n)
            .json(&["import", file.to_str().unwrap(), "--json"])
    };
    // s1's changes go to the hub and, forwarded, to s2; s1's own bundle to s2 waits.
    common::generate(c.url("s1"), 1, 2, 1, 2);
    c.node("s1").ok(&["export"]);
    let direct = c.outbox("s1", "s2");
    assert_eq!(direct.len(), 1);
    import("hub", &c.outbox("s1", "hub")[0]);
    c.node("hub").ok(&["export", "--peer", "s2"]);
    let r = import("s2", &c.outbox("hub", "s2")[0]);
    assert_eq!(common::applied_seqs(&r), vec![1], "{r}");
    // s2 acknowledges to s1: s1's bundle to s2 was not applied, so it stays.
    c.node("s2").ok(&["export", "--heartbeat", "--peer", "s1"]);
    import("s1", &c.outbox("s2", "s1")[0]);
    assert_eq!(c.outbox("s1", "s2"), direct);
    // Once s2 applies it and says so, it goes.
    let r = import("s2", &direct[0]);
    assert_eq!(common::applied_seqs(&r), vec![1], "{r}");
    c.node("s2").ok(&["export", "--heartbeat", "--peer", "s1"]);
    import("s1", c.outbox("s2", "s1").last().unwrap());
    assert_eq!(c.outbox("s1", "s2"), Vec::<std::path::PathBuf>::new());
    assert_eq!(c.verify("s1"), c.verify("s2"));
    assert_eq!(c.verify("hub"), c.verify("s2"));
}

/// Issue 4: a relay kept every bundle it relayed, forever. A bundle from the recipient
/// back to the sender, which the relay carries too, tells how far the recipient applied
/// the sender's bundles: the relayed ones before that go.
#[test]
fn a_relay_drops_what_it_relayed_once_the_recipient_shows_it_applied_it() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    let stick = c.stick.path().to_str().unwrap();
    let key = |n: &str| c.node(n).ok(&["key"]).trim().to_string();
    c.node("s1").ok(&["peer", "add", "s2", &key("s2")]);
    c.node("s2").ok(&["peer", "add", "s1", &key("s1")]);
    let mut hub = ferry::config::Config::load(&c.node("hub").config).unwrap();
    hub.relay_for = vec!["s1".into(), "s2".into()];
    hub.save(true).unwrap();
    let relay = |from: &str| {
        c.node(from).ok(&["send", stick]);
        c.node("hub").json(&["receive", stick, "--json"])
    };
    let deliver = |to: &str| {
        c.node("hub").ok(&["send", stick]);
        c.node(to).ok(&["receive", stick]);
        c.node(to).json(&["import", "--json"])
    };
    // s2 acknowledges s1 by a heartbeat the hub relays; returns what the hub pruned
    // and what it still holds for s2 (bundle numbers of s1's sequence).
    let acknowledge = || {
        c.node("s2").ok(&["export", "--heartbeat", "--peer", "s1"]);
        let r = relay("s2");
        let seq = |f: &str| f.rsplit('.').nth(1).unwrap().parse::<u64>().unwrap();
        let pruned: Vec<u64> = r["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| seq(f.as_str().unwrap()))
            .collect();
        let kept: Vec<u64> = outbox(&c, "hub", "s2").iter().map(|f| seq(f)).collect();
        (pruned, kept)
    };
    // s1 -> s2 #1 and #2 reach the hub, which relays them to s2.
    for seed in [1, 2] {
        common::generate(c.url("s1"), seed, 2, 1, 2);
        c.node("s1").ok(&["export", "--peer", "s2"]);
        assert_eq!(relay("s1")["relayed"].as_array().unwrap().len(), 1);
    }
    let r = deliver("s2");
    assert_eq!(common::applied_seqs(&r), vec![1, 2], "{r}");
    // #3 reaches the hub, not yet s2.
    common::generate(c.url("s1"), 3, 2, 1, 2);
    c.node("s1").ok(&["export", "--peer", "s2"]);
    relay("s1");
    // s2 -> s1 goes through the hub too: it shows s2 applied #2, so #1 goes. #2 (the
    // one that moved the horizon to the ack) stays until a later one is applied, and
    // #3, not applied yet, stays.
    assert_eq!(acknowledge(), (vec![1], vec![2, 3]));
    let r = deliver("s2");
    assert_eq!(common::applied_seqs(&r), vec![3], "{r}");
    assert_eq!(acknowledge(), (vec![2], vec![3]));
    // s1 gets s2's bundles through the hub, and both hold the same.
    let r = deliver("s1");
    assert_eq!(common::applied_seqs(&r), vec![1, 2], "{r}");
    assert_eq!(c.verify("s1"), c.verify("s2"));
}

/// Issue 4: `send` carries a bundle once (its ledger says so), so when the stick copy
/// was truncated or the stick lost, plain `send` copied nothing again, not even to a new
/// empty stick, while the receiver refused the torn copy and waited for it: the operator
/// had no ferry command to recover. `send --again` copies every bundle still in the
/// outbox (unacknowledged), replacing a damaged copy and leaving an identical one alone.
#[test]
fn send_again_recopies_unacknowledged_bundles_onto_a_damaged_or_new_carrier() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let stick = c.stick.path().to_str().unwrap();
    let (a, b) = (c.node("site-a"), c.node("site-b"));
    common::generate(c.url("site-a"), 1, 2, 1, 2);
    a.ok(&["export"]);
    let r = a.json(&["send", stick, "--json"]);
    let file = "ferry.site-a.site-b.0000000000000001.bundle";
    assert_eq!(r["copied"], serde_json::json!([file]), "{r}");
    // The stick copy is torn: site-b refuses it and names the command that recovers.
    let on_stick = c.stick.path().join(file);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&on_stick)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let (code, out, err) = b.run(&["receive", stick, "--json"]);
    assert_eq!(code, 1, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["refused"][0]["kind"], "truncated", "{r}");
    let reason = r["refused"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("run `ferry send --again DIR`"), "{reason}");
    // Plain send still copies nothing: the ledger says it was carried.
    let r = a.json(&["send", stick, "--json"]);
    assert_eq!(r["copied"], serde_json::json!([]), "{r}");
    // send --again replaces the torn copy; a second run finds it intact and skips it.
    let r = a.json(&["send", "--again", stick, "--json"]);
    assert_eq!(r["copied"], serde_json::json!([file]), "{r}");
    let outbox_copy = &c.outbox("site-a", "site-b")[0];
    assert_eq!(
        std::fs::read(&on_stick).unwrap(),
        std::fs::read(outbox_copy).unwrap()
    );
    let r = a.json(&["send", "--again", stick, "--json"]);
    assert_eq!(r["copied"], serde_json::json!([]), "{r}");
    assert_eq!(r["skipped"], serde_json::json!([file]), "{r}");
    // A lost stick: a new empty one gets the unacknowledged bundle with --again only.
    let new_stick = tempfile::tempdir().unwrap();
    let fresh = new_stick.path().to_str().unwrap();
    let r = a.json(&["send", fresh, "--json"]);
    assert_eq!(r["copied"], serde_json::json!([]), "{r}");
    let r = a.json(&["send", "--again", fresh, "--json"]);
    assert_eq!(r["copied"], serde_json::json!([file]), "{r}");
    // site-b takes the good copy and converges with site-a.
    let r = b.json(&["receive", stick, "--json"]);
    assert_eq!(r["received"], serde_json::json!([file]), "{r}");
    let r = b.json(&["import", "--json"]);
    assert_eq!(common::applied_seqs(&r), vec![1], "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}
