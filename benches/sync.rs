//! Export and import throughput of the `ferry` release binary on the clinical workload
//! at 100k and 1M changes (issue 4 §8), against baselines run side by side on the same
//! private server in the same run: `ferry export` against `mariadb-dump` of the same
//! tables (dump, then three rounds of export and dump; each round's export against the
//! dumps on either side of it, the median round reported), `ferry import` against `mariadb DB < dump.sql` into
//! a fresh database with the fixture schema (reload, import, reload: ABA). Peak RSS of
//! each child comes from `wait4`. The bundle's size is compared with `zstd -3` of the
//! dump. Targets: export >= 0.5x dump, import >= 0.5x reload, RSS <= 256 MB at 1M,
//! bundle <= 1.3x the zstd'd dump. Before each measured command the server is left to
//! settle (history purged, no dirty pages, files synced: [`settle`]), so that no command
//! pays for the background work of the one before it.
//!
//! Run: `cargo bench --bench sync`. FERRY_BENCH_MAX_CHANGES sets the large step
//! (default 1000000; a value at or under 100000 runs that single step);
//! FERRY_BENCH_STEPS lists the steps instead (e.g. `1000000`);
//! FERRY_BENCH_PATIENTS the generator's patients per step (default 1500); the rest of
//! each step is encounters and obs copied with fresh uuids under capture. For finding
//! where time goes: FERRY_BENCH_BIN runs another ferry build, FERRY_BENCH_EXPORT_AB=BIN
//! exports each step's backlog again with BIN and this build in turn, and
//! FERRY_BENCH_PROFILE_DIR records `perf` profiles of export and import.
//! FERRY_BENCH_HOLD=FILE keeps each step's backlog for experiments by hand: after the
//! export rounds the bench writes the source's config, database and server URL to FILE
//! and waits until FILE is deleted.

mod common;

use std::time::Instant;

use common::*;
use ferry::dev::mariadb::{run_sql_blocking, MariaServer, ServerOptions};

/// Figures of one step.
struct Step {
    changes: u64,
    dump_rows: u64,
    export: Measured,
    dumps: [Measured; 2],
    import: Measured,
    reloads: [Measured; 2],
    bundle_bytes: u64,
    dump_bytes: u64,
    zstd_bytes: u64,
    zstd: Measured,
}

impl Step {
    fn export_rate(&self) -> f64 {
        self.changes as f64 / self.export.secs
    }
    fn dump_rate(&self) -> f64 {
        self.dump_rows as f64 / ((self.dumps[0].secs + self.dumps[1].secs) / 2.0)
    }
    fn import_rate(&self) -> f64 {
        self.changes as f64 / self.import.secs
    }
    fn reload_rate(&self) -> f64 {
        self.dump_rows as f64 / ((self.reloads[0].secs + self.reloads[1].secs) / 2.0)
    }
    fn bundle_per_change(&self) -> f64 {
        self.bundle_bytes as f64 / self.changes as f64
    }
    fn zstd_per_row(&self) -> f64 {
        self.zstd_bytes as f64 / self.dump_rows as f64
    }
}

fn run_step(server: &MariaServer, target: u64, patients: u32) -> Step {
    let tag = format!("{target}");
    println!("== step: {target} changes");
    let pair = Pair::new(server, &tag);
    let w = block_on(workload(server, &pair.src_db, target, patients));
    let dump_rows = block_on(rows_in(server, &pair.src_db, &w.tables));
    println!(
        "workload: {} changes ({} log entries; {} generator row writes, {} rows copied) in {} tables, {:.1} s; the dump of those tables holds {} rows",
        w.changes, w.entries, w.generated, w.grown, w.tables.len(), w.secs, dump_rows
    );
    let work = tempfile::tempdir().unwrap();
    let dump_path = work.path().join("dump.sql");
    let dump_b = work.path().join("dump_b.sql");

    // Export: dump, then rounds of (export, dump), each command on a settled server.
    // Each round's ratio is its export against the dumps on either side of it; the
    // step reports the median round (the machine is shared: one round can be off by a
    // fifth either way). The peer's state is reset before each export after the first;
    // the last round's bundle is the one imported below.
    settle(server);
    let mut dumps = vec![dump(server, &pair.src_db, &w.tables, &dump_path)];
    let mut rounds = Vec::new();
    let mut last = None;
    for round in 0..EXPORT_ROUNDS {
        if round > 0 {
            reset_peer(server, &pair);
        }
        settle(server);
        let (export, out, stages) = pair.src.measured_json(&["export"]);
        settle(server);
        let d = dump(server, &pair.src_db, &w.tables, &dump_b);
        assert_eq!(file_len(&dump_path), file_len(&dump_b), "the dumps differ");
        let before = dumps[round];
        println!(
            "export round {round}: mariadb-dump {:.2} s | ferry export {:.2} s ({} changes, {} entries, {:.1} MB peak RSS) | mariadb-dump {:.2} s ({:.1} MB peak RSS)",
            before.secs, export.secs, out[0]["changes"], out[0]["entries"], export.rss_mb(), d.secs, d.rss_mb()
        );
        println!(
            "         CPU s (client + server): mariadb-dump {} | ferry export {} | mariadb-dump {}",
            cpu(&before),
            cpu(&export),
            cpu(&d)
        );
        rounds.push((export, [before, d]));
        dumps.push(d);
        last = Some((out, stages));
    }
    std::fs::remove_file(&dump_b).unwrap();
    let (out, export_stages) = last.expect("at least one round");
    // The median round by ratio (export time over the mean of its two dumps).
    let ratio = |(e, [a, b]): &(Measured, [Measured; 2])| (a.secs + b.secs) / 2.0 / e.secs;
    let mut by_ratio: Vec<usize> = (0..rounds.len()).collect();
    by_ratio.sort_by(|&i, &j| ratio(&rounds[i]).total_cmp(&ratio(&rounds[j])));
    let (export, [d1, d2]) = rounds[by_ratio[rounds.len() / 2]];
    println!(
        "export rounds' ratios: {}",
        rounds
            .iter()
            .map(|r| format!("{:.2}", ratio(r)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let exported = out[0]["changes"].as_u64().unwrap();
    let bundles = pair.src.outbox_bundles();
    assert_eq!(bundles.len(), 1, "{out}");
    let bundle = &bundles[0];
    let bundle_bytes = file_len(bundle);
    let dump_bytes = file_len(&dump_path);
    let zpath = work.path().join("dump.sql.zst");
    let zstd = zstd3(&dump_path, &zpath);
    let zstd_bytes = file_len(&zpath);
    print!("{export_stages}");
    if let Some(other) = std::env::var_os("FERRY_BENCH_EXPORT_AB") {
        export_ab(server, &pair, std::path::Path::new(&other));
    }
    if let Some(hold) = std::env::var_os("FERRY_BENCH_HOLD") {
        hold_backlog(server, &pair, std::path::Path::new(&hold));
    }

    // Import: reload, import, reload.
    let reload_a = format!("reload_a_{tag}");
    let reload_b = format!("reload_b_{tag}");
    schema_only(server, &reload_a);
    schema_only(server, &reload_b);
    settle(server);
    let r1 = reload(server, &reload_a, &dump_path);
    settle(server);
    let (import, rep, import_stages) = pair
        .dst
        .measured_json(&["import", bundle.to_str().unwrap()]);
    settle(server);
    let r2 = reload(server, &reload_b, &dump_path);
    let applied = &rep["applied"][0];
    let imported = applied["changes"].as_u64().unwrap_or(0);
    assert_eq!(imported, exported, "import report: {rep}");
    println!(
        "import:  reload {:.2} s | ferry import {:.2} s ({imported} changes, {:.1} MB peak RSS) | reload {:.2} s",
        r1.secs,
        import.secs,
        import.rss_mb(),
        r2.secs
    );
    println!(
        "         CPU s (client + server): reload {} | ferry import {} | reload {}",
        cpu(&r1),
        cpu(&import),
        cpu(&r2)
    );
    print!("{import_stages}");
    println!(
        "wire:    bundle {bundle_bytes} B; dump {dump_bytes} B; zstd -3 of the dump {zstd_bytes} B ({:.2} s)",
        zstd.secs
    );
    // A full export (`--full`, every row of every synced table: what a joining site
    // gets) of the same database, for the record: it is no target, and it covers
    // every synced table, not only the dump's.
    reset_peer(server, &pair);
    settle(server);
    let (full, fout, full_stages) = pair
        .src
        .measured_json(&["export", "--full", "--peer", "hub"]);
    print!("{full_stages}");
    let rows = fout[0]["changes"].as_u64().unwrap_or(0);
    println!(
        "full export: {rows} rows in {:.2} s ({:.0} rows/s; CPU s {}; {:.1} MB peak RSS) | mariadb-dump of the step's tables {:.0} rows/s",
        full.secs,
        rows as f64 / full.secs,
        cpu(&full),
        full.rss_mb(),
        dump_rows as f64 / ((d1.secs + d2.secs) / 2.0)
    );
    let step = Step {
        changes: exported,
        dump_rows,
        export,
        dumps: [d1, d2],
        import,
        reloads: [r1, r2],
        bundle_bytes,
        dump_bytes,
        zstd_bytes,
        zstd,
    };
    for db in [&pair.src_db, &pair.dst_db, &reload_a, &reload_b] {
        run_sql_blocking(&server.server_url(), &format!("DROP DATABASE {db}")).unwrap();
    }
    step
}

/// Export rounds per step (see `run_step`).
const EXPORT_ROUNDS: usize = 3;

/// Forgets what the source exported to its peer (sequence, cursor, outbox), so that the
/// next export seals the same backlog again.
fn reset_peer(server: &MariaServer, pair: &Pair) {
    for b in pair.src.outbox_bundles() {
        std::fs::remove_file(b).unwrap();
    }
    // The state directory's record of bundle numbers goes back with the database's
    // (else export refuses a database behind it, as it must after a restore).
    let _ = std::fs::remove_file(pair.src.dir.path().join("sequences.json"));
    let reset = format!(
        "UPDATE `{db}`.ferry_peer SET out_seq = 0, out_hash = NULL, out_cursor = 0, out_at = NULL; \
         DELETE FROM `{db}`.ferry_outbox",
        db = pair.src_db
    );
    run_sql_blocking(&server.server_url(), &reset).unwrap();
}

/// "client + server" CPU seconds of a measurement.
fn cpu(m: &Measured) -> String {
    format!("{:.2} + {:.2}", m.cpu_secs, m.server_cpu_secs)
}

/// With FERRY_BENCH_HOLD=FILE: writes where the backlog is to FILE and waits until FILE
/// is deleted (reset the peer with the SQL in FILE before each export by hand).
fn hold_backlog(server: &MariaServer, pair: &Pair, file: &std::path::Path) {
    let text = format!(
        "config={}\ndatabase={}\nserver={}\ndir={}\nreset=UPDATE `{db}`.ferry_peer SET out_seq = 0, out_hash = NULL, out_cursor = 0, out_at = NULL; DELETE FROM `{db}`.ferry_outbox\n",
        pair.src.config.display(),
        pair.src_db,
        server.server_url(),
        pair.src.dir.path().display(),
        db = pair.src_db
    );
    std::fs::write(file, text).unwrap();
    println!("holding the backlog: delete {} to go on", file.display());
    while file.exists() {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    reset_peer(server, pair);
}

/// With FERRY_BENCH_EXPORT_AB=BIN: exports the same backlog again, alternating BIN
/// and this build (B, A three times; the peer's state reset before each), for comparing two
/// builds on the same data in the same conditions. The last export is this build's.
fn export_ab(server: &MariaServer, pair: &Pair, other: &std::path::Path) {
    for round in 0..3 {
        for (label, bin) in [("B", other.to_path_buf()), ("A", ferry_bin())] {
            reset_peer(server, pair);
            settle(server);
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("--config")
                .arg(&pair.src.config)
                .args(["export", "--json"])
                .stdout(std::process::Stdio::null());
            let m = measure(cmd, &format!("{} export", bin.display()));
            println!(
                "export A/B round {round}: {label} {:.2} s ({:.2} s CPU, server {:.2} s, {:.1} MB peak RSS, {} minor faults)",
                m.secs,
                m.cpu_secs,
                m.server_cpu_secs,
                m.rss_mb(),
                m.minor_faults
            );
        }
    }
}

fn main() {
    let started = Instant::now();
    let max = env_u64("FERRY_BENCH_MAX_CHANGES", 1_000_000);
    let patients = env_u64("FERRY_BENCH_PATIENTS", 1500) as u32;
    let steps: Vec<u64> = match std::env::var("FERRY_BENCH_STEPS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("FERRY_BENCH_STEPS: changes per step, comma-separated")
            })
            .collect(),
        Err(_) if max <= 100_000 => vec![max],
        Err(_) => vec![100_000, max],
    };
    let server = MariaServer::start_with(ServerOptions {
        buffer_pool_mb: 1024,
        ..Default::default()
    })
    .expect("private MariaDB (run `make deps`)");
    watch_server(&server);
    println!(
        "sync benchmark: ferry export/import (release binary) against mariadb-dump / reload, same server, ABA order"
    );
    let results: Vec<Step> = steps
        .iter()
        .map(|&n| run_step(&server, n, patients.min((n / 70).max(1) as u32)))
        .collect();

    println!();
    println!("sync benchmark summary (ratios against the baseline run in the same run)");
    println!(
        "{:<10} {:<34} {:>14} {:>14} {:>8} {:>9} {:>4}",
        "changes", "measure", "ferry", "baseline", "ratio", "target", "met"
    );
    for s in &results {
        let n = s.changes;
        let ex = s.export_rate() / s.dump_rate();
        println!(
            "{n:<10} {:<34} {:>10.0} ch/s {:>8.0} rows/s {ex:>8.2} {:>9} {:>4}",
            "export vs mariadb-dump",
            s.export_rate(),
            s.dump_rate(),
            ">= 0.5",
            met(ex >= 0.5)
        );
        let im = s.import_rate() / s.reload_rate();
        println!(
            "{n:<10} {:<34} {:>10.0} ch/s {:>8.0} rows/s {im:>8.2} {:>9} {:>4}",
            "import vs mariadb reload",
            s.import_rate(),
            s.reload_rate(),
            ">= 0.5",
            met(im >= 0.5)
        );
        let wire = s.bundle_per_change() / s.zstd_per_row();
        println!(
            "{n:<10} {:<34} {:>11.1} B/ch {:>9.1} B/row {wire:>8.2} {:>9} {:>4}",
            "bundle vs zstd -3 of the dump",
            s.bundle_per_change(),
            s.zstd_per_row(),
            "<= 1.3",
            met(wire <= 1.3)
        );
        let rss_target = if n >= 1_000_000 { "<= 256" } else { "(256)" };
        for (what, m) in [("export", s.export), ("import", s.import)] {
            println!(
                "{n:<10} {:<34} {:>11.1} MB {:>14} {:>8} {:>9} {:>4}",
                format!("peak RSS of ferry {what}"),
                m.rss_mb(),
                "",
                "",
                rss_target,
                met(m.rss_mb() <= 256.0)
            );
        }
        println!(
            "{n:<10} {:<34} dump {:.2}/{:.2} s, reload {:.2}/{:.2} s, zstd -3 {:.2} s, dump {:.1} MB, dump rows {}",
            "baselines (A, B)",
            s.dumps[0].secs,
            s.dumps[1].secs,
            s.reloads[0].secs,
            s.reloads[1].secs,
            s.zstd.secs,
            s.dump_bytes as f64 / 1e6,
            s.dump_rows
        );
    }
    println!(
        "sync benchmark took {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
