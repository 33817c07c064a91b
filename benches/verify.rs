//! `ferry verify` throughput and memory on a large obs table, in a release build: the
//! generator's clinical workload on the fixture, obs doubled with INSERT .. SELECT (each
//! copy a fresh uuid) to FERRY_BENCH_ROWS rows (default 1,000,000 under `cargo bench`,
//! 20,000 when `cargo test --all-targets` runs it as a smoke test), then the `ferry`
//! binary run three ways: `verify --json` (streamed digest), `verify --rows --json`
//! (sorted row form to a file) and `verify --rows --against` that file (streamed merge).
//! Prints rows/s and the peak RSS of each child (`wait4`). Target: under 64 MiB each.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ferry::db::DbUrl;
use ferry::dev::gen::{generate, grow_to, GenOptions};
use ferry::dev::mariadb::{load_sql_file, run_sql_blocking, MariaServer, ServerOptions};

/// Runs `ferry ARGS` with stdout into `stdout`; returns (exit code, peak RSS in KiB).
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

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let target: u64 = std::env::var("FERRY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 20_000 });
    let tmp = tempfile::tempdir().unwrap();
    let server = MariaServer::start_with(ServerOptions {
        buffer_pool_mb: 512,
        extra_args: vec![format!("--tmpdir={}", tmp.path().display())],
    })
    .expect("private MariaDB (run `make deps`)");
    run_sql_blocking(&server.server_url(), "CREATE DATABASE big").unwrap();
    let url = server.url("big");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openmrs");
    load_sql_file(&url, &fixture.join("schema.sql")).unwrap();
    load_sql_file(&url, &fixture.join("metadata.sql")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = DbUrl::parse(&url).unwrap().connect().await.unwrap();
        generate(&mut c, &GenOptions::default().seed(3).patients(20))
            .await
            .unwrap();
        grow_to(&mut c, "obs", "obs_id", target).await.unwrap();
    });
    let node = tempfile::tempdir().unwrap();
    let config = node.path().join("ferry.toml");
    let init = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "init",
            "--db",
            &url,
            "--node",
            "bench",
        ])
        .output()
        .unwrap();
    assert!(init.status.success());
    let summary = node.path().join("sum.json");
    let rows = node.path().join("rows.jsonl");
    let rows_arg = rows.to_str().unwrap().to_string();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("ferry verify benchmark: {target} obs rows ({build} build)");
    let runs: [(&str, Vec<&str>, &Path); 3] = [
        ("verify --json", vec!["verify", "--json"], &summary),
        (
            "verify --rows --json",
            vec!["verify", "--rows", "--json"],
            &rows,
        ),
        (
            "verify --rows --against",
            vec!["verify", "--rows", "--against", &rows_arg],
            &node.path().join("diff.txt"),
        ),
    ];
    let mut total = 0u64;
    for (name, args, out) in runs {
        let t = Instant::now();
        let (code, rss_kib) = run_measured(&config, &args, out);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(code, 0, "{name} failed");
        if total == 0 {
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
            total = report["tables"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["rows"].as_u64().unwrap())
                .sum();
        }
        println!(
            "  {name:<26} {total:>9} rows in {secs:>6.2} s = {:>8.0} rows/s, peak RSS {:>5.1} MiB (target < 64)",
            total as f64 / secs,
            rss_kib as f64 / 1024.0
        );
    }
}
