//! The command line and the config file as an operator meets them (issue 4; each test
//! is a defect a review found): a setting that would be ignored is refused, a syntax
//! error names its line, this node is never its own peer, config mistakes exit 2, a
//! mistyped `--peer` is named before anything connects, and no hint sends the
//! operator to a command that would re-key the node.

mod common;

use common::{Cluster, Node, Source};

use common::ferry_with as ferry;

/// Appends `text` to the config file; returns the whole file as it is now.
fn append(config: &std::path::Path, text: &str) -> String {
    let mut all = std::fs::read_to_string(config).unwrap();
    all.push_str(text);
    std::fs::write(config, &all).unwrap();
    all
}

/// A node `clinic-a` (config, keys) with peer `hub`; no database behind it.
fn offline_node() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    let (code, _, err) = ferry(
        &config,
        &[
            "init",
            "--db",
            "mysql://root@127.0.0.1:1/openmrs",
            "--node",
            "clinic-a",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let hub_dir = tempfile::tempdir().unwrap();
    let hub_cfg = hub_dir.path().join("ferry.toml");
    ferry(
        &hub_cfg,
        &[
            "init",
            "--db",
            "mysql://root@127.0.0.1:1/openmrs",
            "--node",
            "hub",
        ],
    );
    let hub_key = ferry(&hub_cfg, &["key"]).1.trim().to_string();
    let (code, _, err) = ferry(&config, &["peer", "add", "hub", &hub_key]);
    assert_eq!(code, 0, "{err}");
    (dir, config, hub_key)
}

#[test]
fn a_setting_appended_after_a_peer_table_is_refused_not_ignored() {
    // docs/operations.md: "`import_wait_seconds` in ferry.toml". `ferry peer add` leaves
    // a [[peer]] table last; a setting appended to the file lands in that peer and is
    // ignored, even with a value of the wrong type.
    let (_dir, config, _) = offline_node();
    append(&config, "import_wait_seconds = \"half an hour\"\n");
    let (code, _, err) = ferry(&config, &["key"]);
    assert_eq!(
        code, 2,
        "expected a config error naming import_wait_seconds, got {code}: {err}"
    );
    assert!(
        err.contains("import_wait_seconds") && err.contains("above the first [[peer]]"),
        "{err}"
    );
}

#[test]
fn relay_for_written_after_a_peer_table_is_refused_not_ignored() {
    // TOML puts every key after `[[peer]]` into that peer: `relay_for` written at the
    // end of the file configures nothing, and ferry says nothing.
    let (_dir, config, _) = offline_node();
    append(&config, "relay_for = [\"clinic-b\"]\n");
    let (code, _, err) = ferry(&config, &["key"]);
    assert_eq!(
        code, 2,
        "expected a usage error naming relay_for, got {code}: {err}"
    );
    assert!(err.contains("relay_for"), "{err}");
}

#[test]
fn this_node_listed_as_its_own_peer_is_refused() {
    let (_dir, config, _) = offline_node();
    let own = ferry(&config, &["key"]).1.trim().to_string();
    append(
        &config,
        &format!("\n[[peer]]\nname = \"clinic-a\"\npublic_key = \"{own}\"\n"),
    );
    let (code, _, err) = ferry(&config, &["key"]);
    assert_eq!(
        code, 2,
        "a config naming this node as its own peer loads: {err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn init_force_cannot_rename_the_node_to_one_of_its_peers() {
    let (_dir, config, _) = offline_node();
    let (code, _, err) = ferry(
        &config,
        &[
            "init",
            "--force",
            "--db",
            "mysql://root@127.0.0.1:1/openmrs",
            "--node",
            "hub",
        ],
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        code, 2,
        "init --force --node hub succeeded; config now:\n{text}\n{err}"
    );
}

#[test]
fn a_peer_declared_twice_is_a_usage_error_like_any_other_config_mistake() {
    let (_dir, config, hub_key) = offline_node();
    append(
        &config,
        &format!("\n[[peer]]\nname = \"hub\"\npublic_key = \"{hub_key}\"\n"),
    );
    let (code, _, err) = ferry(&config, &["key"]);
    assert!(err.contains("declared twice"), "{err}");
    assert_eq!(
        code, 2,
        "a bad config exits 2 when it cannot parse, {code} here: {err}"
    );
}

#[test]
fn a_syntax_error_in_the_config_names_its_line() {
    let (_dir, config, _) = offline_node();
    append(&config, "\nimport_wait_seconds = 10 minutes\n");
    let (code, _, err) = ferry(&config, &["key"]);
    assert_eq!(code, 2);
    assert!(err.contains("at line"), "no line number in: {err}");
}

#[test]
fn a_missing_key_file_does_not_send_the_operator_to_ferry_init() {
    // `ferry init` refuses (the config exists); `ferry init --force` mints a new key,
    // and every peer then refuses this node's bundles and cannot encrypt to it.
    let (dir, config, _) = offline_node();
    std::fs::rename(
        dir.path().join("node.key"),
        dir.path().join("node.key.moved"),
    )
    .unwrap();
    let (code, _, err) = ferry(&config, &["key"]);
    assert_eq!(code, 1);
    let hint = err
        .lines()
        .find(|l| l.starts_with("hint:"))
        .unwrap_or_default();
    // Re-keying is the last resort, with what every peer must do then.
    assert!(
        hint.contains("restore node.key from a backup") && hint.contains("--replace"),
        "the hint sends the operator to re-key the node first: {err}"
    );
}

#[test]
fn init_force_does_not_replace_a_config_it_cannot_read() {
    let (_dir, config, _) = offline_node();
    let text = append(&config, "\nimport_wait_seconds = 10 minutes\n");
    let (code, _, err) = ferry(
        &config,
        &[
            "init",
            "--force",
            "--db",
            "mysql://root@127.0.0.1:1/openmrs",
            "--node",
            "clinic-a",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("would lose its peers"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        text,
        "left as it was"
    );
}

#[test]
fn a_mistyped_peer_is_a_usage_error_and_a_peer_named_twice_exports_once() {
    let source = Source::Fixture;
    let c = Cluster::star(&["hub", "clinic-a"], &source);
    let hub: &Node = c.node("hub");
    let (code, _, err) = hub.run(&["export", "--peer", "clinc-a"]);
    assert!(
        err.contains("not a peer") && err.contains("clinic-a"),
        "{err}"
    );
    let usage = code;
    hub.ok(&[
        "export",
        "--heartbeat",
        "--peer",
        "clinic-a",
        "--peer",
        "clinic-a",
    ]);
    let bundles = c.outbox("hub", "clinic-a").len();
    assert_eq!(bundles, 1, "one heartbeat asked for, {bundles} sealed");
    assert_eq!(usage, 2, "a mistyped --peer exits {usage}: {err}");
}
