//! Helpers shared by the integration tests: private MariaDB sites loaded with an
//! OpenMRS schema, the `ferry` binary, and a blocking bridge into async code.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::dev::mariadb::{load_sql_file, TestSite};

/// Which OpenMRS database a test runs on.
#[derive(Debug, Clone)]
pub enum Source {
    /// The project's own fixture (fixtures/openmrs).
    Fixture,
    /// The real OpenMRS 2.6.4 dump named by `FERRY_OPENMRS_DUMP`.
    RealDump(PathBuf),
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Fixture => "fixture",
            Source::RealDump(_) => "openmrs-2.6.4",
        }
    }
}

/// The real dump, from `FERRY_OPENMRS_DUMP` or `../shared/openmrs/` beside the project.
pub fn real_dump() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_OPENMRS_DUMP") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "FERRY_OPENMRS_DUMP names {} which does not exist",
            p.display()
        );
        return Some(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/openmrs/openmrs-2.6.4-with-core-test-data.sql");
    p.is_file().then_some(p)
}

/// The fixture always; the real dump too when it can be found. Prints which.
pub fn sources() -> Vec<Source> {
    let mut v = vec![Source::Fixture];
    match real_dump() {
        Some(p) => v.push(Source::RealDump(p)),
        None => eprintln!(
            "note: no OpenMRS dump found (set FERRY_OPENMRS_DUMP); running on the fixture only"
        ),
    }
    v
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openmrs")
}

/// A fresh site loaded with `source`.
pub fn site(name: &str, source: &Source) -> TestSite {
    let site = TestSite::new(name).expect("a private MariaDB server (see README: make deps)");
    match source {
        Source::Fixture => {
            load_sql_file(&site.url, &fixture_dir().join("schema.sql")).expect("load schema");
            load_sql_file(&site.url, &fixture_dir().join("metadata.sql")).expect("load metadata");
        }
        Source::RealDump(p) => load_sql_file(&site.url, p).expect("load dump"),
    }
    site
}

/// A site's backup: `mariadb-dump` of the whole database at `url` into `out`.
pub fn backup(url: &str, out: &Path) {
    ferry::dev::mariadb::dump_database(url, out).unwrap();
}

/// The administrator's restore: the database at `url` replaced by `backup`.
pub fn restore(url: &str, backup: &Path) {
    let opts = mysql_async::Opts::from_url(url).unwrap();
    let db = opts.db_name().unwrap().to_string();
    let server = url.trim_end_matches(&db).to_string();
    ferry::dev::mariadb::run_sql_blocking(
        &server,
        &format!("DROP DATABASE `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8mb4"),
    )
    .unwrap();
    load_sql_file(url, backup).unwrap();
}

/// Runs async test code on a fresh runtime (harness calls must stay outside it).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A node directory with a config file for `url`.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Node {
    pub fn new(name: &str, url: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "init",
                "--db",
                url,
                "--node",
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Node { dir, config }
    }

    /// Runs `ferry ARGS` for this node; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        ferry_with(&self.config, args)
    }

    /// Runs `ferry ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "ferry {args:?} failed:\n{err}\n{out}");
        out
    }

    /// Runs `ferry ARGS --json`-style commands and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad json from {args:?}: {e}\n{out}"))
    }
}

/// Opens a connection to `url`.
pub async fn conn(url: &str) -> mysql_async::Conn {
    ferry::db::DbUrl::parse(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Several nodes, each with its own private MariaDB loaded with `source`, all peers of
/// a hub (the first node) or, with two nodes, of each other.
pub struct Cluster {
    pub sites: Vec<TestSite>,
    pub nodes: Vec<Node>,
    pub names: Vec<String>,
    /// A directory that stands for a USB stick.
    pub stick: tempfile::TempDir,
}

impl Cluster {
    /// `names[0]` is the hub; every other node peers with it only.
    pub fn star(names: &[&str], source: &Source) -> Cluster {
        Cluster::star_with(names, source, &[])
    }

    /// [`Cluster::star`], running `sql` statements on every site before `ferry setup`.
    pub fn star_with(names: &[&str], source: &Source, sql: &[&str]) -> Cluster {
        let mut sites = Vec::new();
        let mut nodes = Vec::new();
        for n in names {
            let s = site(n, source);
            for stmt in sql {
                ferry::dev::mariadb::run_sql_blocking(&s.url, stmt).unwrap();
            }
            nodes.push(Node::new(n, &s.url));
            sites.push(s);
        }
        let keys: Vec<String> = nodes
            .iter()
            .map(|n| n.ok(&["key"]).trim().to_string())
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            for (j, other) in names.iter().enumerate() {
                let linked = i != j && (i == 0 || j == 0);
                if linked {
                    node.ok(&["peer", "add", other, &keys[j]]);
                }
            }
            node.ok(&["setup"]);
        }
        Cluster {
            sites,
            nodes,
            names: names.iter().map(|s| s.to_string()).collect(),
            stick: tempfile::tempdir().unwrap(),
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        &self.nodes[self.index(name)]
    }

    pub fn url(&self, name: &str) -> &str {
        &self.sites[self.index(name)].url
    }

    pub fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }

    /// `from` exports, sends to the stick; `to` receives and imports.
    pub fn carry(&self, from: &str, to: &str) -> serde_json::Value {
        self.carry_with(from, to, &[])
    }

    /// [`Cluster::carry`] with extra export arguments (e.g. `--heartbeat`).
    pub fn carry_with(&self, from: &str, to: &str, export_args: &[&str]) -> serde_json::Value {
        let stick = self.stick.path().to_str().unwrap();
        let mut args = vec!["export"];
        args.extend_from_slice(export_args);
        self.node(from).ok(&args);
        self.node(from).ok(&["send", stick]);
        self.node(to).ok(&["receive", stick]);
        self.node(to).json(&["import", "--json"])
    }

    /// The bundle files in `from`'s outbox for `to` (its own and any it relays), in
    /// name order: by sender, then sequence.
    pub fn outbox(&self, from: &str, to: &str) -> Vec<PathBuf> {
        let dir = self.node(from).dir.path().join("outbox").join(to);
        let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(d) => d
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "bundle"))
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    /// `ferry verify --json` output of a node.
    pub fn verify(&self, name: &str) -> String {
        self.node(name).ok(&["verify", "--json"])
    }
}

/// The uuid of the location [`visit_to_an_unsent_location`] creates.
pub const UNSENT_LOCATION: &str = "cccccccc-0000-4000-8000-000000000001";
/// The uuid of the visit [`visit_to_an_unsent_location`] creates.
pub const VISIT_TO_UNSENT: &str = "cccccccc-0000-4000-8000-000000000002";

/// At `from`: a location made while location capture was off there (so no bundle
/// carries it), and a visit (captured) that refers to it. Capture is on again after.
pub fn visit_to_an_unsent_location(c: &Cluster, from: &str) {
    visit_to_unsent(c, from, UNSENT_LOCATION, VISIT_TO_UNSENT);
}

/// [`visit_to_an_unsent_location`] with the location's and the visit's uuids given.
pub fn visit_to_unsent(c: &Cluster, from: &str, location: &str, visit: &str) {
    c.node(from).ok(&["tables", "disable", "location"]);
    block_on(async {
        use mysql_async::prelude::Queryable;
        let mut db = conn(c.url(from)).await;
        db.query_drop(format!(
            "INSERT INTO location (name, creator, date_created, retired, uuid) \
             VALUES ('annex', 1, '2024-01-01', 0, '{location}')"
        ))
        .await
        .unwrap();
        db.query_drop(format!(
            "INSERT INTO visit (patient_id, visit_type_id, date_started, location_id, creator, \
             date_created, voided, uuid) \
             SELECT (SELECT MIN(patient_id) FROM patient), MIN(visit_type_id), '2024-01-02', \
             (SELECT location_id FROM location WHERE uuid = '{location}'), 1, \
             '2024-01-02', 0, '{visit}' FROM visit_type"
        ))
        .await
        .unwrap();
    });
    c.node(from).ok(&["tables", "enable", "location"]);
}

/// Every conflict recorded at a node (`ferry conflicts --all --json`).
pub fn conflicts(c: &Cluster, at: &str) -> Vec<serde_json::Value> {
    c.node(at)
        .json(&["conflicts", "--all", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

/// The sequence numbers an `import --json` report says it applied, in order.
pub fn applied_seqs(report: &serde_json::Value) -> Vec<u64> {
    report["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect()
}

/// Writes the generator's clinic workload into `url` (seeded, so reproducible).
pub fn generate(
    url: &str,
    seed: u64,
    patients: u32,
    encounters_per_visit: u32,
    obs_per_encounter: u32,
) {
    block_on(async {
        let mut db = conn(url).await;
        let opts = ferry::dev::gen::GenOptions {
            seed,
            patients,
            visits_per_patient: 1,
            encounters_per_visit,
            obs_per_encounter,
            ..Default::default()
        };
        ferry::dev::gen::generate(&mut db, &opts).await.unwrap();
    });
}

/// A row's current state at a node (its head: latest log entry or settled record).
pub fn row_head(
    url: &str,
    node: &str,
    table: &str,
    key: &str,
) -> Option<ferry::capture::versions::Head> {
    block_on(async {
        let mut db = conn(url).await;
        let floors = ferry::capture::versions::Floors::load(&mut db)
            .await
            .unwrap();
        let mut heads =
            ferry::capture::versions::heads(&mut db, &floors, node, table, &[key], None)
                .await
                .unwrap();
        heads.remove(key)
    })
}

/// A row's current version at a node: (wall µs, counter, node).
pub fn row_version(url: &str, node: &str, table: &str, key: &str) -> Option<(i64, u32, String)> {
    row_head(url, node, table, key).map(|h| (h.version.wall_us, h.version.counter, h.version.node))
}

/// Every row's current version at a node: (table, identity) → (wall, counter, node).
pub fn all_row_versions(
    url: &str,
    node: &str,
) -> std::collections::BTreeMap<(String, String), (i64, u32, String)> {
    block_on(async {
        let mut db = conn(url).await;
        ferry::capture::versions::all_heads(&mut db, node)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, h)| (k, (h.version.wall_us, h.version.counter, h.version.node)))
            .collect()
    })
}

/// The changes of a bundle, opened with the keys of `node` (its recipient).
pub fn bundle_changes(node: &Node, path: &Path) -> Vec<ferry::bundle::Change> {
    let config = ferry::config::Config::load(&node.config).unwrap();
    let me = config.node.clone();
    let ctx = ferry::node::NodeContext::load(config).unwrap();
    let mut reader = ferry::bundle::open(path, &me, &ctx.keys, &ctx.peers).unwrap();
    let mut out = Vec::new();
    while let Some(c) = reader.next_change().unwrap() {
        out.push(c);
    }
    out
}

/// Runs `ferry --config CONFIG ARGS` (no database needed unless ARGS need one);
/// returns (exit code, stdout, stderr).
#[allow(dead_code)]
pub fn ferry_with(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
