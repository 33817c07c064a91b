//! The randomized oracle for concurrent edits: every run builds a hub and two or three
//! spokes (private MariaDBs), runs the generator's workload everywhere plus edits of
//! shared patients, obs and attributes at several nodes at once, voids, deletes and
//! users created at two sites with colliding system ids, and delivers bundles in random
//! order with random duplication and delay while one spoke stays offline for most of
//! the run. After draining, it asserts:
//! - `ferry verify` and every row's version are equal on every node;
//! - no bundle was partially applied: no import ever failed, every node applied each
//!   peer's bundles 1..n exactly once (ledger and peer state agree);
//! - a person edited in turn at every node (each edit made once the previous one had
//!   arrived) records no conflict anywhere;
//! - every version that was overwritten without having been seen (it is no ancestor of
//!   the row's final version) is, or precedes, a loser recorded in some `ferry_conflict`;
//! - importing every bundle a second time changes nothing and reports duplicates.
//!
//! `FERRY_SEED=n` replays one seed; `FERRY_SOAK_SEEDS=n` runs seeds 0..n (`make soak`);
//! by default seeds 0..20 run, three at a time.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{all_row_versions, block_on, bundle_changes, conn, row_version, Cluster, Source};
use mysql_async::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value as Json;

/// (wall µs, counter, node)
type Version = (i64, u32, String);
/// (table, row key)
type RowKey = (String, String);

const IN_TURN: &str = "33333333-0000-4000-8000-0000000000aa";

/// One bundle taken from an outbox, kept for delivery and re-delivery.
struct Bundle {
    recipient: String,
    path: PathBuf,
    delivered: bool,
}

struct Run {
    seed: u64,
    rng: ChaCha8Rng,
    c: Cluster,
    offline: String,
    pool: Vec<Bundle>,
    pool_dir: tempfile::TempDir,
    /// Every version that travelled: version → (row, base), from the bundles.
    versions: HashMap<Version, (RowKey, Option<Version>)>,
    gen_seed: u64,
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("FERRY_SEED") {
        return vec![s.parse().expect("FERRY_SEED is a number")];
    }
    let n: u64 = std::env::var("FERRY_SOAK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    (0..n).collect()
}

#[test]
fn randomized_runs_converge_and_lose_nothing_silently() {
    let queue = Arc::new(Mutex::new(seeds()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let threads: usize = std::env::var("FERRY_SEED_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let queue = queue.clone();
            let failed = failed.clone();
            std::thread::spawn(move || loop {
                let Some(seed) = queue.lock().unwrap().pop() else {
                    break;
                };
                let outcome = std::panic::catch_unwind(|| run_seed(seed));
                match outcome {
                    Ok(()) => eprintln!("seed {seed}: ok"),
                    Err(e) => {
                        let why = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        eprintln!("seed {seed} FAILED (replay: FERRY_SEED={seed}): {why}");
                        failed.lock().unwrap().push(seed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "failing seeds: {failed:?}; replay one with FERRY_SEED=n cargo test --test convergence"
    );
}

fn run_seed(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let spokes = rng.gen_range(2..=3);
    let mut names = vec!["hub".to_string()];
    for i in 1..=spokes {
        names.push(format!("s{i}"));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = Cluster::star(&refs, &Source::Fixture);
    let offline = names.last().unwrap().clone();
    let mut run = Run {
        seed,
        rng,
        c,
        offline,
        pool: Vec::new(),
        pool_dir: tempfile::tempdir().unwrap(),
        versions: HashMap::new(),
        gen_seed: seed * 1000,
    };
    // A clock a year off at one spoke, now and then.
    if run.rng.gen_bool(0.3) {
        let who = names[run.rng.gen_range(1..names.len())].clone();
        let off = if run.rng.gen_bool(0.5) { 1 } else { -1 } * 365 * 86_400;
        set_clock(&run.c, &who, off);
    }
    run.start();
    for _ in 0..run.rng.gen_range(10..16) {
        run.step();
    }
    run.drain();
    run.check();
}

fn set_clock(c: &Cluster, node: &str, offset_s: i64) {
    let path = &c.node(node).config;
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("clock_offset_seconds = {offset_s}\n{text}")).unwrap();
    c.node(node).ok(&["setup"]);
}

fn exec(url: &str, sql: &str, params: Vec<mysql_async::Value>) -> u64 {
    block_on(async {
        let mut db = conn(url).await;
        db.exec_drop(sql, params).await.unwrap();
        db.affected_rows()
    })
}

fn strings(url: &str, sql: &str) -> Vec<String> {
    block_on(async {
        let mut db = conn(url).await;
        db.query(sql).await.unwrap()
    })
}

impl Run {
    fn online(&self) -> Vec<String> {
        self.c
            .names
            .iter()
            .filter(|n| **n != self.offline)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<String> {
        self.c.names.clone()
    }

    fn generate(&mut self, node: &str, users: u32) {
        self.gen_seed += 1;
        let opts = ferry::dev::gen::GenOptions {
            seed: self.gen_seed,
            users,
            patients: self.rng.gen_range(1..=2),
            visits_per_patient: 1,
            encounters_per_visit: 1,
            obs_per_encounter: 2,
            orders_per_encounter: 0,
            edits_per_patient: 1.0,
            ..Default::default()
        };
        block_on(async {
            let mut db = conn(self.c.url(node)).await;
            ferry::dev::gen::generate(&mut db, &opts).await.unwrap();
        });
    }

    /// Everyone syncs fully once (before the offline spoke leaves); then the
    /// workload, including users at two sites that will collide.
    fn start(&mut self) {
        exec(
            self.c.url("hub"),
            "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
             VALUES ('U', '1980-01-01', 1, '2024-01-01 08:00:00', 0, ?)",
            vec![IN_TURN.into()],
        );
        for n in self.all() {
            self.generate(&n, u32::from(n == "s1" || n == "s2"));
        }
        // The offline spoke takes part once, then leaves until the end.
        let all = self.all();
        for _ in 0..2 {
            for n in &all {
                self.export(n, false);
            }
            self.deliver_all(&all);
        }
    }

    fn step(&mut self) {
        let online = self.online();
        match self.rng.gen_range(0..10) {
            0 | 1 => {
                let all = self.all();
                let n = all.choose(&mut self.rng).unwrap().clone();
                self.generate(&n, 0);
            }
            2 | 3 => self.concurrent_edits(),
            4 => self.in_turn_edit(),
            _ => {
                // Some nodes export; a random part of the pool is delivered, in random
                // order, some of it again.
                for n in &online {
                    if self.rng.gen_bool(0.7) {
                        self.export(n, false);
                    }
                }
                self.deliver_some(&online);
            }
        }
        if self.rng.gen_bool(0.5) {
            self.in_turn_edit();
        }
    }

    /// Shared rows edited at two or three online nodes before they hear of each other.
    fn concurrent_edits(&mut self) {
        let online = self.online();
        let people = strings(
            self.c.url("hub"),
            &format!(
                "SELECT uuid FROM person WHERE uuid <> '{IN_TURN}' ORDER BY person_id DESC LIMIT 12"
            ),
        );
        let obs = strings(
            self.c.url("hub"),
            "SELECT uuid FROM obs WHERE value_numeric IS NOT NULL ORDER BY obs_id DESC LIMIT 12",
        );
        let attrs = strings(
            self.c.url("hub"),
            "SELECT uuid FROM person_attribute ORDER BY person_attribute_id DESC LIMIT 12",
        );
        let k = self.rng.gen_range(2..=online.len().min(3));
        let editors: Vec<String> = online.choose_multiple(&mut self.rng, k).cloned().collect();
        for (i, n) in editors.iter().enumerate() {
            let url = self.c.url(n).to_string();
            if let Some(p) = people.choose(&mut self.rng) {
                let g = ["M", "F", "O", "U"][self.rng.gen_range(0..4)];
                exec(
                    &url,
                    "UPDATE person SET gender = ?, birthdate = DATE_ADD('1970-01-01', INTERVAL ? DAY) WHERE uuid = ?",
                    vec![g.into(), (self.rng.gen_range(0..20_000) as i64 + i as i64).into(), p.clone().into()],
                );
            }
            if let Some(o) = obs.choose(&mut self.rng) {
                if self.rng.gen_bool(0.3) {
                    exec(
                        &url,
                        "UPDATE obs SET voided = 1, voided_by = 1, date_voided = '2024-02-02 10:00:00', \
                         void_reason = 'entered in error' WHERE uuid = ? AND voided = 0",
                        vec![o.clone().into()],
                    );
                } else {
                    exec(
                        &url,
                        "UPDATE obs SET value_numeric = ? WHERE uuid = ?",
                        vec![
                            (self.rng.gen_range(1..500) as f64 + i as f64 / 10.0).into(),
                            o.clone().into(),
                        ],
                    );
                }
            }
            if let Some(a) = attrs.choose(&mut self.rng) {
                if self.rng.gen_bool(0.4) {
                    exec(
                        &url,
                        "DELETE FROM person_attribute WHERE uuid = ?",
                        vec![a.clone().into()],
                    );
                } else {
                    exec(
                        &url,
                        "UPDATE person_attribute SET voided = 1 - voided WHERE uuid = ?",
                        vec![a.clone().into()],
                    );
                }
            }
        }
    }

    /// The in-turn person: edited only at a node that holds its latest version (local
    /// edits not yet exported included: their versions follow from their log entries).
    fn in_turn_edit(&mut self) {
        let mut latest: BTreeMap<String, Option<Version>> = BTreeMap::new();
        for n in self.online() {
            latest.insert(
                n.clone(),
                row_version(self.c.url(&n), &n, "person", IN_TURN),
            );
        }
        let max = latest.values().max().cloned().flatten();
        let ready: Vec<String> = latest
            .iter()
            .filter(|(_, v)| **v == max && max.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let Some(n) = ready.choose(&mut self.rng).cloned() else {
            return;
        };
        exec(
            self.c.url(&n),
            "UPDATE person SET birthdate = DATE_ADD(birthdate, INTERVAL 1 DAY) WHERE uuid = ?",
            vec![IN_TURN.into()],
        );
    }

    /// Exports at `node`, takes new outbox bundles into the pool, snapshots versions.
    fn export(&mut self, node: &str, heartbeat: bool) {
        let mut args = vec!["export"];
        if heartbeat {
            args.push("--heartbeat");
        }
        self.c.node(node).ok(&args);
        let outbox = self.c.node(node).dir.path().join("outbox");
        for peer in self.c.names.clone() {
            for (name, path) in ferry::transport::state::list_bundles(&outbox.join(&peer)).unwrap()
            {
                let file = name.file_name();
                let dest = self.pool_dir.path().join(&file);
                if dest.exists() {
                    continue;
                }
                std::fs::copy(&path, &dest).unwrap();
                self.record_versions(&name.recipient, &dest);
                self.pool.push(Bundle {
                    recipient: name.recipient.clone(),
                    path: dest,
                    delivered: false,
                });
            }
        }
    }

    /// Records the versions a new bundle carries, each with its base. One version can
    /// travel on top of different bases to different peers (coalesced with more or
    /// fewer of its predecessors): the nearest (greatest) base is its parent.
    fn record_versions(&mut self, recipient: &str, path: &std::path::Path) {
        for ch in bundle_changes(self.c.node(recipient), path) {
            let v = (ch.version.wall_us, ch.version.counter, ch.version.node);
            let key = ferry::apply::changes::identity_text(&ch.identity);
            let base = ch.base_version.map(|b| (b.wall_us, b.counter, b.node));
            let e = self
                .versions
                .entry(v)
                .or_insert(((ch.table.clone(), key), None));
            if base > e.1 {
                e.1 = base;
            }
        }
    }

    fn import(&self, node: &str, path: &std::path::Path) -> Json {
        let r = self
            .c
            .node(node)
            .json(&["import", path.to_str().unwrap(), "--json"]);
        assert!(
            r["failed"].as_array().unwrap().is_empty()
                && r["refused"].as_array().unwrap().is_empty(),
            "seed {}: import at {node} went wrong: {r}",
            self.seed
        );
        r
    }

    fn deliver_some(&mut self, to: &[String]) {
        let mut picks: Vec<usize> = Vec::new();
        for i in 0..self.pool.len() {
            if !to.contains(&self.pool[i].recipient) {
                continue;
            }
            // Some bundles again, the rest of the pool later.
            let again = self.pool[i].delivered && self.rng.gen_bool(0.15);
            if (!self.pool[i].delivered || again) && self.rng.gen_bool(0.6) {
                picks.push(i);
            }
        }
        picks.shuffle(&mut self.rng);
        for i in picks {
            let (r, p) = (self.pool[i].recipient.clone(), self.pool[i].path.clone());
            self.import(&r, &p);
            self.pool[i].delivered = true;
        }
    }

    fn deliver_all(&mut self, to: &[String]) {
        let mut picks: Vec<usize> = (0..self.pool.len())
            .filter(|&i| to.contains(&self.pool[i].recipient) && !self.pool[i].delivered)
            .collect();
        picks.shuffle(&mut self.rng);
        for i in picks {
            let (r, p) = (self.pool[i].recipient.clone(), self.pool[i].path.clone());
            self.import(&r, &p);
            self.pool[i].delivered = true;
        }
    }

    /// The offline spoke comes back; rounds of export and delivery until nothing new,
    /// then heartbeats so that acknowledgements travel too.
    fn drain(&mut self) {
        let all = self.all();
        for round in 0..20 {
            let before = self.pool.len();
            for n in &all {
                self.export(n, false);
            }
            self.deliver_all(&all);
            if self.pool.len() == before && round > 0 {
                break;
            }
            assert!(
                round < 19,
                "seed {}: no quiescence after 20 rounds",
                self.seed
            );
        }
        for _ in 0..2 {
            for n in &all {
                self.export(n, true);
            }
            self.deliver_all(&all);
        }
    }

    fn check(&mut self) {
        let all = self.all();
        // 1. Same content, same versions.
        let first = self.c.verify("hub");
        for n in &all[1..] {
            assert_eq!(
                self.c.verify(n),
                first,
                "seed {}: {n} differs from hub",
                self.seed
            );
        }
        let row_versions =
            |n: &str| -> BTreeMap<RowKey, Version> { all_row_versions(self.c.url(n), n) };
        let finals = row_versions("hub");
        for n in &all[1..] {
            assert_eq!(
                row_versions(n),
                finals,
                "seed {}: versions at {n}",
                self.seed
            );
        }
        // 2. Each sender's bundles applied 1..n once, ledger and peer state agreeing.
        for n in &all {
            let rows: Vec<(String, u64, u64, u64)> = block_on(async {
                let mut db = conn(self.c.url(n)).await;
                db.query(
                    "SELECT p.peer, p.in_seq, COUNT(l.seq), COALESCE(MAX(l.seq), 0) FROM ferry_peer p \
                     LEFT JOIN ferry_ledger l ON l.sender = p.peer GROUP BY p.peer, p.in_seq",
                )
                .await
                .unwrap()
            });
            for (peer, in_seq, count, max) in rows {
                assert!(
                    in_seq == count && count == max,
                    "seed {}: {n} from {peer}: in_seq {in_seq}, {count} ledger entries, max {max}",
                    self.seed
                );
                let sent = self
                    .pool
                    .iter()
                    .filter(|b| b.recipient == *n && file_sender(&b.path) == peer)
                    .count() as u64;
                assert_eq!(
                    sent, in_seq,
                    "seed {}: {n} applied every bundle of {peer}",
                    self.seed
                );
            }
        }
        // 3. The in-turn person: edited, never in conflict.
        let mut losers: HashMap<RowKey, Vec<Version>> = HashMap::new();
        for n in &all {
            let rows: Vec<(String, String, String, i64, u32, String)> = block_on(async {
                let mut db = conn(self.c.url(n)).await;
                db.query(
                    "SELECT table_name, row_key, kind, loser_wall, loser_counter, loser_node \
                     FROM ferry_conflict",
                )
                .await
                .unwrap()
            });
            for (t, k, kind, w, c, node) in rows {
                assert!(
                    k != IN_TURN,
                    "seed {}: a conflict recorded at {n} for the person edited in turn",
                    self.seed
                );
                if kind == "concurrent" {
                    losers.entry((t, k)).or_default().push((w, c, node));
                }
            }
        }
        // 4. Every version overwritten unseen is, or precedes, a recorded loser.
        let ancestors = |v: &Version| -> BTreeSet<Version> {
            let mut out = BTreeSet::new();
            let mut cur = Some(v.clone());
            while let Some(x) = cur {
                if !out.insert(x.clone()) {
                    break;
                }
                cur = self.versions.get(&x).and_then(|(_, b)| b.clone());
            }
            out
        };
        let mut by_row: HashMap<RowKey, Vec<Version>> = HashMap::new();
        for (v, (row, _)) in &self.versions {
            by_row.entry(row.clone()).or_default().push(v.clone());
        }
        for (row, vs) in by_row {
            let Some(fin) = finals.get(&row) else {
                panic!("seed {}: no final version of {row:?}", self.seed);
            };
            let kept = ancestors(fin);
            let covered: BTreeSet<Version> = losers
                .get(&row)
                .into_iter()
                .flatten()
                .flat_map(&ancestors)
                .collect();
            for v in vs {
                assert!(
                    kept.contains(&v) || covered.contains(&v),
                    "seed {}: version {v:?} of {row:?} was overwritten unseen and recorded nowhere \
                     (final {fin:?}, losers {:?})",
                    self.seed,
                    losers.get(&row)
                );
            }
        }
        // 5. Every bundle again: duplicates, nothing changes.
        for b in &self.pool {
            let r = self.import(&b.recipient, &b.path);
            assert!(
                r["applied"].as_array().unwrap().is_empty(),
                "seed {}: {r}",
                self.seed
            );
            assert_eq!(
                r["duplicates"].as_array().unwrap().len(),
                1,
                "seed {}: {r}",
                self.seed
            );
        }
        for n in &all {
            assert_eq!(
                self.c.verify(n),
                first,
                "seed {}: {n} changed on re-import",
                self.seed
            );
        }
        assert_eq!(row_versions("hub"), finals);
        eprintln!(
            "seed {}: {} nodes, {} versions ({} of the in-turn person), {} bundles, {} recorded losers",
            self.seed,
            all.len(),
            self.versions.len(),
            self.versions
                .values()
                .filter(|((_, k), _)| k == IN_TURN)
                .count(),
            self.pool.len(),
            losers.values().map(Vec::len).sum::<usize>()
        );
    }
}

/// The sender named in a bundle file name.
fn file_sender(path: &std::path::Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    ferry::bundle::BundleName::parse(&name)
        .map(|n| n.sender)
        .unwrap_or_default()
}
