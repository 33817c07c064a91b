//! Bytes on the wire (issue 3 §7): one real bundle exported from the clinical workload,
//! per change, against `zstd -3` of a `mariadb-dump` (rows only, default extended
//! inserts) of the tables it covers, per row, both from the same database in the same
//! run. Each side counts its own rows: changes the bundle carries, rows the dump holds.
//! Target: the bundle at most 1.3x the zstd'd dump per row.
//!
//! Run: `cargo bench --bench wire` (FERRY_BENCH_WIRE_CHANGES sets the size, default 100000).

mod common;

use common::*;
use ferry::dev::mariadb::{find_program, MariaServer, ServerOptions};

fn main() {
    let target = env_u64("FERRY_BENCH_WIRE_CHANGES", 100_000);
    let server = MariaServer::start_with(ServerOptions {
        buffer_pool_mb: 512,
        ..Default::default()
    })
    .expect("private MariaDB (run `make deps`)");
    let pair = Pair::new(&server, "wire");
    let patients = ((target / 70).max(1) as u32).min(1500);
    let w = block_on(workload(&server, &pair.src_db, target, patients));
    let rows = block_on(rows_in(&server, &pair.src_db, &w.tables));
    let (_, out, _) = pair.src.measured_json(&["export"]);
    let changes = out[0]["changes"].as_u64().unwrap();
    let bundle = &pair.src.outbox_bundles()[0];
    let bundle_bytes = file_len(bundle);
    let work = tempfile::tempdir().unwrap();
    let dump_path = work.path().join("dump.sql");
    let zpath = work.path().join("dump.sql.zst");
    dump(&server, &pair.src_db, &w.tables, &dump_path);
    zstd3(&dump_path, &zpath);
    let dump_bytes = file_len(&dump_path);
    let zstd_bytes = file_len(&zpath);
    let per_change = bundle_bytes as f64 / changes as f64;
    let per_row = zstd_bytes as f64 / rows as f64;
    let ratio = per_change / per_row;
    println!(
        "wire benchmark: {changes} changes ({} log entries) in {} tables: {}",
        w.entries,
        w.tables.len(),
        w.tables.join(", ")
    );
    println!("  bundle:                {bundle_bytes:>11} B for {changes:>8} changes = {per_change:>6.1} B/change");
    println!(
        "  mariadb-dump:          {dump_bytes:>11} B for {rows:>8} rows    = {:>6.1} B/row",
        dump_bytes as f64 / rows as f64
    );
    println!(
        "  zstd -3 of the dump:   {zstd_bytes:>11} B for {rows:>8} rows    = {per_row:>6.1} B/row"
    );
    // Diagnostic: the same obs rows compressed in id order (as the dump has them) and
    // in uuid order (as the bundle seals them, by row key).
    let mut order_sizes = Vec::new();
    for order in ["obs_id", "uuid"] {
        let raw = work.path().join(format!("obs_by_{order}.tsv"));
        let mut cmd = std::process::Command::new(find_program("mariadb").unwrap());
        cmd.args(client_args(&server))
            .args(["-N", "-B", "-e"])
            .arg(format!("SELECT * FROM obs ORDER BY {order}"))
            .arg(&pair.src_db)
            .stdout(std::fs::File::create(&raw).unwrap());
        measure(cmd, "mariadb -e SELECT");
        let z = work.path().join(format!("obs_by_{order}.tsv.zst"));
        zstd3(&raw, &z);
        order_sizes.push((order, file_len(&raw), file_len(&z)));
    }
    for (order, raw, z) in &order_sizes {
        println!("  obs rows as text, ordered by {order:<7} {raw:>11} B, zstd -3 {z:>10} B");
    }
    let order_cost = order_sizes[1].2 as f64 / order_sizes[0].2 as f64;
    println!();
    println!("wire benchmark summary");
    println!(
        "  bundle / zstd -3 dump, per change = {ratio:.2} (target <= 1.3): {}",
        met(ratio <= 1.3)
    );
    println!("  (obs compressed in uuid order / in id order = {order_cost:.2})");
}
