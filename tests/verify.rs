//! `ferry verify` against real MariaDB: two sites with the same clinical content under
//! different local ids print identical bytes; a changed column, a changed foreign key, a
//! deleted row, NULL against '' and a change of letter case are each found and named,
//! by table and by row; different plans are refused; a large obs table is digested in
//! bounded memory. Runs on the fixture and, when found, the real OpenMRS dump.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{block_on, conn, site, sources, Node};
use ferry::dev::gen::{generate, grow_to, GenOptions};
use ferry::dev::mariadb::{load_sql_file, run_sql_blocking, MariaServer, ServerOptions};
use ferry::schema::soft_refs::SoftRefEncoding;
use ferry::schema::{Schema, SyncPlan};
use mysql_async::prelude::*;
use mysql_async::Conn;

/// Offset of the local id `table.column` is shifted by, following foreign keys to the
/// integer primary key they point at; `None` for columns that hold no local id.
fn offset_of(
    schema: &Schema,
    offsets: &BTreeMap<String, i64>,
    table: &str,
    column: &str,
) -> Option<i64> {
    let t = schema.tables.get(table)?;
    if let Some(fk) = t.fk_on(column) {
        if fk.ref_table == table && fk.ref_columns[0] == column {
            return None;
        }
        return offset_of(schema, offsets, &fk.ref_table, &fk.ref_columns[0]);
    }
    if t.primary_key.len() == 1 && t.primary_key[0] == column {
        return offsets.get(table).copied();
    }
    None
}

/// Gives every row of the database other local ids: each integer primary key, every
/// foreign key to it and every by-id soft reference moves by a per-table offset. The
/// content in uuid space stays the same.
async fn shift_local_ids(c: &mut Conn, database: &str) {
    let schema = Schema::read(c, database).await.unwrap();
    let plan = SyncPlan::derive(&schema);
    let mut offsets = BTreeMap::new();
    for (i, t) in schema.tables.values().enumerate() {
        if let [pk] = t.primary_key.as_slice() {
            if t.column(pk).is_some_and(|col| col.is_integer()) && t.fk_on(pk).is_none() {
                offsets.insert(t.name.clone(), 1000 + 37 * i as i64);
            }
        }
    }
    c.query_drop("SET FOREIGN_KEY_CHECKS = 0").await.unwrap();
    // By-id soft references first, while the type rows still have their old ids.
    for (table, synced) in plan.synced() {
        for s in synced
            .soft_refs
            .iter()
            .filter(|s| s.encoding == SoftRefEncoding::LocalId)
        {
            let type_fk = schema.tables[table].fk_on(&s.type_column).unwrap();
            for (class, target) in &s.targets {
                let pk = &schema.tables[target].primary_key[0];
                let Some(off) = offset_of(&schema, &offsets, target, pk) else {
                    continue;
                };
                c.exec_drop(
                    format!(
                        "UPDATE `{table}` v JOIN `{tt}` ty ON ty.`{tk}` = v.`{tc}` \
                         SET v.`{col}` = CAST(v.`{col}` AS UNSIGNED) + {off} \
                         WHERE ty.`{disc}` = ? AND v.`{col}` REGEXP '^[0-9]+$'",
                        tt = s.type_table,
                        tk = type_fk.ref_columns[0],
                        tc = s.type_column,
                        col = s.column,
                        disc = s.discriminator,
                    ),
                    (class,),
                )
                .await
                .unwrap();
            }
        }
    }
    let mut shifted = 0;
    for t in schema.tables.values() {
        for col in &t.columns {
            let Some(off) = offset_of(&schema, &offsets, &t.name, &col.name) else {
                continue;
            };
            // Highest first, so that no key passes through a value another row holds.
            c.query_drop(format!(
                "UPDATE `{0}` SET `{1}` = `{1}` + {off} WHERE `{1}` IS NOT NULL ORDER BY `{1}` DESC",
                t.name, col.name
            ))
            .await
            .unwrap();
            shifted += 1;
        }
    }
    c.query_drop("SET FOREIGN_KEY_CHECKS = 1").await.unwrap();
    assert!(shifted > 50, "shifted {shifted} id columns");
}

/// Runs `ferry verify ARGS` on `node` writing stdout to `file`; returns stdout.
fn save(node: &Node, args: &[&str], file: &Path) -> String {
    let out = node.ok(args);
    std::fs::write(file, &out).unwrap();
    out
}

fn against(node: &Node, file: &Path, rows: bool) -> (i32, String, String) {
    let f = file.to_str().unwrap();
    let mut args = vec!["verify", "--against", f];
    if rows {
        args.push("--rows");
    }
    node.run(&args)
}

struct Pair {
    a: Node,
    b: Node,
    sum_a: std::path::PathBuf,
    rows_a: std::path::PathBuf,
}

impl Pair {
    /// Rewrites A's files (after a change at A).
    fn refresh_a(&self) {
        save(&self.a, &["verify", "--json"], &self.sum_a);
        save(&self.a, &["verify", "--rows", "--json"], &self.rows_a);
    }

    /// Asserts B equals A, by table and by row.
    fn assert_equal(&self, why: &str) {
        let (code, out, err) = against(&self.b, &self.sum_a, false);
        assert_eq!(code, 0, "{why}: tables should be equal\n{out}\n{err}");
        let (code, out, err) = against(&self.b, &self.rows_a, true);
        assert_eq!(code, 0, "{why}: rows should be equal\n{out}\n{err}");
    }

    /// Asserts B differs from A in `table`, at the row `uuid` with `kind`.
    fn assert_differs(&self, why: &str, table: &str, uuid: &str, kind: &str) {
        let (code, out, err) = against(&self.b, &self.sum_a, false);
        assert_eq!(code, 1, "{why}: exit 1 expected\n{out}\n{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{why}: exactly one table differs: {out}");
        assert!(
            lines[0].starts_with(&format!("{table}: differs")),
            "{why}: {out}"
        );
        assert!(
            err.contains("the nodes differ") && err.contains("hint:"),
            "{err}"
        );

        let f = self.sum_a.to_str().unwrap();
        let (code, out, _) = self.b.run(&["verify", "--against", f, "--json"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["equal"], false);
        assert_eq!(v["differ"].as_array().map(Vec::len), Some(1), "{out}");
        assert_eq!(v["differ"][0]["table"], table);
        assert_eq!(v["differ"][0]["kind"], "content");

        let (code, out, err) = against(&self.b, &self.rows_a, true);
        assert_eq!(code, 1, "{why}: exit 1 expected\n{out}\n{err}");
        assert_eq!(out.trim_end(), format!("{table} {uuid}: {kind}"), "{why}");

        let f = self.rows_a.to_str().unwrap();
        let (code, out, _) = self.b.run(&["verify", "--against", f, "--rows", "--json"]);
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["table"], table);
        assert_eq!(v["identity"], serde_json::json!([uuid]));
        assert_eq!(
            v["kind"],
            kind.replace(' ', "_").replace("differs", "content")
        );
    }
}

/// Asserts equal text, showing only the lines that differ.
fn assert_same_bytes(a: &str, b: &str, why: &str) {
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .take(10)
            .map(|(i, (x, y))| format!("line {}: {x} | {y}", i + 1))
            .collect();
        panic!(
            "{why}: outputs differ ({} and {} lines)\n{}",
            a.lines().count(),
            b.lines().count(),
            diff.join("\n")
        );
    }
}

async fn one(c: &mut Conn, sql: &str) -> String {
    let v: Option<String> = c.query_first(sql).await.unwrap();
    v.unwrap_or_else(|| panic!("no row for {sql}"))
}

#[test]
fn same_content_under_other_ids_verifies_equal_and_each_difference_is_named() {
    for source in sources() {
        eprintln!("verify on {}", source.name());
        let started = Instant::now();
        let site_a = site("verify-a", &source);
        let site_b = site("verify-b", &source);
        let opts = GenOptions::default().seed(11).patients(25);
        block_on(async {
            let mut a = conn(&site_a.url).await;
            let mut b = conn(&site_b.url).await;
            let ra = generate(&mut a, &opts).await.unwrap();
            let rb = generate(&mut b, &opts).await.unwrap();
            assert_eq!(ra.per_table, rb.per_table, "same workload on both sites");
            assert!(ra.table("obs").inserts > 100);
            shift_local_ids(&mut b, &site_b.database).await;
            // Natural keys whose byte order differs from the collation's order, so that
            // the sorted row form must sort by bytes for the merge to accept it.
            for c in [&mut a, &mut b] {
                c.query_drop(
                    "INSERT INTO global_property (property, property_value, uuid) VALUES \
                     ('zeta.sort', 'z', '00000000-0000-4000-8000-00000000000a'), \
                     ('Alpha.sort', 'A', '00000000-0000-4000-8000-00000000000b'), \
                     ('alpha.sort\tb', 't', '00000000-0000-4000-8000-00000000000c'), \
                     ('\u{e9}psilon.sort', '\u{e9}', '00000000-0000-4000-8000-00000000000d')",
                )
                .await
                .unwrap();
            }
            let probe = "SELECT CONCAT(obs_id, '/', person_id, '/', concept_id) FROM obs ORDER BY uuid LIMIT 1";
            assert_ne!(
                one(&mut a, probe).await,
                one(&mut b, probe).await,
                "local ids differ"
            );
            let soft = "SELECT pa.value FROM person_attribute pa JOIN person_attribute_type t \
                 ON t.person_attribute_type_id = pa.person_attribute_type_id \
                 WHERE t.format = 'org.openmrs.Location' ORDER BY pa.uuid LIMIT 1";
            let va: Option<String> = a.query_first(soft).await.unwrap();
            let vb: Option<String> = b.query_first(soft).await.unwrap();
            if matches!(source, common::Source::Fixture) {
                assert!(
                    va.is_some(),
                    "the fixture's workload has by-id soft references"
                );
            }
            if let (Some(x), Some(y)) = (&va, &vb) {
                assert_ne!(x, y, "by-id soft references hold other local ids");
            }
        });
        let a = Node::new("clinic-a", &site_a.url);
        let b = Node::new("clinic-b", &site_b.url);
        // A verifies with the plan derived from its schema, B with the one setup stores.
        b.ok(&["setup"]);

        let dir = tempfile::tempdir().unwrap();
        let pair = Pair {
            sum_a: dir.path().join("a.json"),
            rows_a: dir.path().join("a-rows.jsonl"),
            a,
            b,
        };
        let sum_a = save(&pair.a, &["verify", "--json"], &pair.sum_a);
        let sum_b = pair.b.ok(&["verify", "--json"]);
        assert_same_bytes(&sum_a, &sum_b, "nodes in sync print identical bytes");
        let report: serde_json::Value = serde_json::from_str(&sum_a).unwrap();
        let tables = report["tables"].as_array().unwrap();
        assert!(tables.len() > 20, "{} tables", tables.len());
        let obs = tables.iter().find(|t| t["table"] == "obs").unwrap();
        assert!(obs["rows"].as_u64().unwrap() > 100);
        assert!(!sum_a.contains("clinic-"), "nothing node-specific");
        let rows_a = save(&pair.a, &["verify", "--rows", "--json"], &pair.rows_a);
        assert_same_bytes(
            &rows_a,
            &pair.b.ok(&["verify", "--rows", "--json"]),
            "rows too",
        );
        let total: u64 = tables.iter().map(|t| t["rows"].as_u64().unwrap()).sum();
        assert_eq!(
            rows_a.lines().count() as u64,
            total + 1,
            "a header and one line per row"
        );
        let text = pair.b.ok(&["verify"]);
        assert!(text.lines().any(|l| l.starts_with("obs ")), "{text}");
        assert!(text.contains(report["digest"].as_str().unwrap()), "{text}");
        let text_rows = pair.b.ok(&["verify", "--rows"]);
        assert_eq!(
            text_rows.lines().count() as u64,
            total,
            "one text line per row"
        );
        assert!(
            text_rows.lines().all(|l| l.split(' ').count() >= 3),
            "{text_rows}"
        );
        pair.assert_equal("local ids alone");

        block_on(async {
            let mut a = conn(&site_a.url).await;
            let mut b = conn(&site_b.url).await;

            // One column of one obs.
            let u = one(&mut b, "SELECT uuid FROM obs ORDER BY uuid LIMIT 1").await;
            let old: Option<String> = b
                .exec_first::<Option<String>, _, _>(
                    "SELECT comments FROM obs WHERE uuid = ?",
                    (&u,),
                )
                .await
                .unwrap()
                .unwrap();
            b.exec_drop(
                "UPDATE obs SET comments = 'edited at B' WHERE uuid = ?",
                (&u,),
            )
            .await
            .unwrap();
            pair.assert_differs("a changed column", "obs", &u, "differs");
            b.exec_drop("UPDATE obs SET comments = ? WHERE uuid = ?", (&old, &u))
                .await
                .unwrap();
            pair.assert_equal("the column changed back");

            // A foreign key: the obs points at another concept.
            let u = one(&mut b, "SELECT uuid FROM obs ORDER BY uuid DESC LIMIT 1").await;
            let old: i64 = b
                .exec_first("SELECT concept_id FROM obs WHERE uuid = ?", (&u,))
                .await
                .unwrap()
                .unwrap();
            b.exec_drop(
                "UPDATE obs SET concept_id = (SELECT MIN(concept_id) FROM concept WHERE concept_id <> ?) \
                 WHERE uuid = ?",
                (old, &u),
            )
            .await
            .unwrap();
            pair.assert_differs("a changed foreign key", "obs", &u, "differs");
            b.exec_drop("UPDATE obs SET concept_id = ? WHERE uuid = ?", (old, &u))
                .await
                .unwrap();
            pair.assert_equal("the foreign key changed back");

            // A row of a table with a natural key.
            b.query_drop(
                "UPDATE global_property SET property_value = 'T' WHERE property = 'alpha.sort\tb'",
            )
            .await
            .unwrap();
            pair.assert_differs(
                "a natural key's row",
                "global_property",
                "alpha.sort\tb",
                "differs",
            );
            b.query_drop(
                "UPDATE global_property SET property_value = 't' WHERE property = 'alpha.sort\tb'",
            )
            .await
            .unwrap();
            pair.assert_equal("natural key's row changed back");

            // A by-id soft reference pointing at another location.
            let row: Option<(String, String)> = b
                .query_first(
                    "SELECT pa.uuid, pa.value FROM person_attribute pa JOIN person_attribute_type t \
                     ON t.person_attribute_type_id = pa.person_attribute_type_id \
                     WHERE t.format = 'org.openmrs.Location' ORDER BY pa.uuid LIMIT 1",
                )
                .await
                .unwrap();
            if let Some((u, old)) = row {
                b.exec_drop(
                    "UPDATE person_attribute SET value = \
                     (SELECT MIN(location_id) FROM location WHERE location_id <> ?) WHERE uuid = ?",
                    (&old, &u),
                )
                .await
                .unwrap();
                pair.assert_differs("a soft reference", "person_attribute", &u, "differs");
                b.exec_drop(
                    "UPDATE person_attribute SET value = ? WHERE uuid = ?",
                    (&old, &u),
                )
                .await
                .unwrap();
                pair.assert_equal("the soft reference changed back");
            }

            // NULL against the empty string.
            let u = one(
                &mut b,
                "SELECT uuid FROM person_name WHERE middle_name IS NULL ORDER BY uuid LIMIT 1",
            )
            .await;
            b.exec_drop(
                "UPDATE person_name SET middle_name = '' WHERE uuid = ?",
                (&u,),
            )
            .await
            .unwrap();
            pair.assert_differs("NULL against ''", "person_name", &u, "differs");
            b.exec_drop(
                "UPDATE person_name SET middle_name = NULL WHERE uuid = ?",
                (&u,),
            )
            .await
            .unwrap();
            pair.assert_equal("NULL again");

            // Letter case in a case-insensitive column: 'a' at A, 'A' at B.
            let collation = one(
                &mut b,
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = 'person_name' AND COLUMN_NAME = 'given_name'",
            )
            .await;
            assert!(collation.ends_with("_general_ci"), "{collation}");
            let u = one(
                &mut b,
                "SELECT uuid FROM person_name ORDER BY uuid DESC LIMIT 1",
            )
            .await;
            a.exec_drop(
                "UPDATE person_name SET given_name = 'a' WHERE uuid = ?",
                (&u,),
            )
            .await
            .unwrap();
            b.exec_drop(
                "UPDATE person_name SET given_name = 'A' WHERE uuid = ?",
                (&u,),
            )
            .await
            .unwrap();
            let folded: Option<u64> = b
                .exec_first(
                    "SELECT COUNT(*) FROM person_name WHERE uuid = ? AND given_name = 'a'",
                    (&u,),
                )
                .await
                .unwrap();
            assert_eq!(folded, Some(1), "the database itself finds 'A' = 'a'");
            pair.refresh_a();
            pair.assert_differs("letter case", "person_name", &u, "differs");
            b.exec_drop(
                "UPDATE person_name SET given_name = 'a' WHERE uuid = ?",
                (&u,),
            )
            .await
            .unwrap();
            pair.assert_equal("same case again");

            // A deleted row: missing at B, so only there (at A).
            let u = one(
                &mut b,
                "SELECT o.uuid FROM obs o WHERE NOT EXISTS (SELECT 1 FROM obs x \
                 WHERE x.obs_group_id = o.obs_id OR x.previous_version = o.obs_id) ORDER BY o.uuid LIMIT 1",
            )
            .await;
            b.exec_drop("DELETE FROM obs WHERE uuid = ?", (&u,))
                .await
                .unwrap();
            pair.assert_differs("a deleted row", "obs", &u, "only there");
            let (code, _, err) = against(&pair.a, &pair.b.dir.path().join("none"), false);
            assert_eq!(code, 1, "a missing file is an operational failure");
            assert!(
                err.contains("cannot read") && err.contains("hint:"),
                "{err}"
            );
        });

        // A table switched off on one node is named, not silently skipped.
        pair.b.ok(&["tables", "disable", "visit_type"]);
        let (code, out, _) = against(&pair.b, &pair.sum_a, false);
        assert_eq!(code, 1);
        assert!(out.contains("visit_type: verified there only"), "{out}");

        // Different plans are refused with a hint.
        run_sql_blocking(
            &site_b.url,
            "ALTER TABLE location ADD COLUMN ferry_extra INT NULL",
        )
        .unwrap();
        pair.b.ok(&["setup"]);
        for rows in [false, true] {
            let file = if rows { &pair.rows_a } else { &pair.sum_a };
            let (code, _, err) = against(&pair.b, file, rows);
            assert_eq!(code, 1, "{err}");
            assert!(
                err.contains("different sync plans") && err.contains("hint:"),
                "{err}"
            );
        }
        // The wrong kind of file is a usage error.
        let (code, _, err) = against(&pair.a, &pair.rows_a, false);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--rows"), "{err}");
        let (code, _, err) = against(&pair.a, &pair.sum_a, true);
        assert_eq!(code, 2, "{err}");
        eprintln!("verify on {} took {:.1?}", source.name(), started.elapsed());
    }
}

/// Rows of the bounded-memory test; FERRY_VERIFY_ROWS overrides.
fn big_rows() -> u64 {
    std::env::var("FERRY_VERIFY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Runs `ferry ARGS` to the end with stdout into `stdout`; returns (exit code, peak RSS
/// in KiB) of that child alone (`wait4`).
// The child is reaped by `wait4`, which `Child::wait` cannot do (it returns no rusage).
#[allow(clippy::zombie_processes)]
fn run_measured(config: &Path, args: &[&str], stdout: &Path) -> (i32, i64) {
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(std::fs::File::create(stdout).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status));
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[test]
fn a_large_obs_table_is_digested_in_bounded_memory() {
    let target = big_rows();
    // Its own tmpdir: the doubling and the sorted scan spill temporary files, and a
    // shared /tmp proved unreliable for those.
    let tmp = tempfile::tempdir().unwrap();
    let server = MariaServer::start_with(ServerOptions {
        buffer_pool_mb: 512,
        extra_args: vec![format!("--tmpdir={}", tmp.path().display())],
    })
    .expect("private MariaDB (run `make deps`)");
    run_sql_blocking(&server.server_url(), "CREATE DATABASE big").unwrap();
    let url = server.url("big");
    let fixture = common::fixture_dir();
    load_sql_file(&url, &fixture.join("schema.sql")).unwrap();
    load_sql_file(&url, &fixture.join("metadata.sql")).unwrap();
    let t = Instant::now();
    block_on(async {
        let mut c = conn(&url).await;
        generate(&mut c, &GenOptions::default().seed(3).patients(20))
            .await
            .unwrap();
        grow_to(&mut c, "obs", "obs_id", target).await.unwrap();
    });
    let grow = t.elapsed();
    let node = Node::new("big", &url);
    let dir = tempfile::tempdir().unwrap();
    let (summary, rows) = (dir.path().join("sum.json"), dir.path().join("rows.jsonl"));
    const LIMIT_KIB: i64 = 64 * 1024;

    let t = Instant::now();
    let (code, rss_kib) = run_measured(&node.config, &["verify", "--json"], &summary);
    let secs = t.elapsed().as_secs_f64();
    let out = std::fs::read_to_string(&summary).unwrap();
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tables = report["tables"].as_array().unwrap();
    let total: u64 = tables.iter().map(|t| t["rows"].as_u64().unwrap()).sum();
    let obs = tables.iter().find(|t| t["table"] == "obs").unwrap();
    assert_eq!(obs["rows"].as_u64(), Some(target));
    eprintln!(
        "verify --json: {total} rows ({target} obs) in {secs:.1} s = {:.0} rows/s, peak RSS {} MiB (obs grown in {grow:.1?})",
        total as f64 / secs,
        rss_kib / 1024
    );
    assert!(rss_kib < LIMIT_KIB, "verify --json: peak RSS {rss_kib} KiB");

    // The sorted row form and the merge against it stream too.
    let t = Instant::now();
    let (code, rss_kib) = run_measured(&node.config, &["verify", "--rows", "--json"], &rows);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(code, 0);
    let lines = std::io::BufReader::new(std::fs::File::open(&rows).unwrap())
        .lines()
        .count();
    assert_eq!(lines as u64, total + 1);
    eprintln!(
        "verify --rows --json: {:.0} rows/s, peak RSS {} MiB",
        total as f64 / secs,
        rss_kib / 1024
    );
    assert!(
        rss_kib < LIMIT_KIB,
        "verify --rows --json: peak RSS {rss_kib} KiB"
    );
    let t = Instant::now();
    let f = rows.to_str().unwrap();
    let (code, rss_kib) = run_measured(
        &node.config,
        &["verify", "--rows", "--against", f],
        &dir.path().join("diff.txt"),
    );
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        code,
        0,
        "{}",
        std::fs::read_to_string(dir.path().join("diff.txt")).unwrap()
    );
    eprintln!(
        "verify --rows --against: {:.0} rows/s, peak RSS {} MiB",
        total as f64 / secs,
        rss_kib / 1024
    );
    assert!(
        rss_kib < LIMIT_KIB,
        "verify --rows --against: peak RSS {rss_kib} KiB"
    );
}
