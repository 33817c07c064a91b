//! Capture overhead: the generator's clinical workload written into two databases on one
//! private server, one with ferry's triggers and one without, interleaved round by round
//! (ABBA order) so that both see the same machine noise. Prints rows/s of each and the
//! ratio. Target: capture costs at most 25% of write throughput.
//!
//! Scale with FERRY_BENCH_PATIENTS (per round, default 300) and FERRY_BENCH_ROUNDS (default 4).

use std::time::Instant;

use ferry::capture::setup::setup;
use ferry::db::DbUrl;
use ferry::dev::gen::{generate, GenOptions};
use ferry::dev::mariadb::{load_sql_file, run_sql_blocking, MariaServer, ServerOptions};

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let patients = env_u32("FERRY_BENCH_PATIENTS", 300);
    let rounds = env_u32("FERRY_BENCH_ROUNDS", 4);
    let server = MariaServer::start_with(ServerOptions {
        buffer_pool_mb: 512,
        ..Default::default()
    })
    .expect("private MariaDB (run `make deps`)");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openmrs");
    for db in ["plain", "captured"] {
        run_sql_blocking(&server.server_url(), &format!("CREATE DATABASE {db}")).unwrap();
        load_sql_file(&server.url(db), &fixture.join("schema.sql")).unwrap();
        load_sql_file(&server.url(db), &fixture.join("metadata.sql")).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let plain_url = DbUrl::parse(&server.url("plain")).unwrap();
        let cap_url = DbUrl::parse(&server.url("captured")).unwrap();
        let mut plain = plain_url.connect().await.unwrap();
        let mut cap = cap_url.connect().await.unwrap();
        setup(&mut cap, "captured", 0).await.unwrap();

        let (mut rows_plain, mut secs_plain, mut rows_cap, mut secs_cap) = (0u64, 0f64, 0u64, 0f64);
        for round in 0..rounds {
            let opts = GenOptions {
                seed: 1000 + round as u64,
                patients,
                ..GenOptions::default()
            };
            let order: [bool; 2] = if round % 2 == 0 { [false, true] } else { [true, false] };
            for captured in order {
                let conn = if captured { &mut cap } else { &mut plain };
                let t = Instant::now();
                let report = generate(conn, &opts).await.unwrap();
                let secs = t.elapsed().as_secs_f64();
                let rows = report.total.rows();
                if captured {
                    rows_cap += rows;
                    secs_cap += secs;
                } else {
                    rows_plain += rows;
                    secs_plain += secs;
                }
            }
        }
        let tp_plain = rows_plain as f64 / secs_plain;
        let tp_cap = rows_cap as f64 / secs_cap;
        let ratio = tp_cap / tp_plain;
        println!("capture overhead benchmark: {rounds} rounds x {patients} patients, interleaved");
        println!("  without capture: {rows_plain:>8} row writes in {secs_plain:>7.2} s = {tp_plain:>8.0} rows/s");
        println!("  with capture:    {rows_cap:>8} row writes in {secs_cap:>7.2} s = {tp_cap:>8.0} rows/s");
        println!(
            "  ratio with/without = {ratio:.3}; capture costs {:.1}% of write throughput (target <= 25%)",
            (1.0 - ratio) * 100.0
        );
    });
}
