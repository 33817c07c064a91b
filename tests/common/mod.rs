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
