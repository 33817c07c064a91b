//! Helpers shared by the sync and wire benchmarks: a pair of ferry nodes on one private
//! MariaDB server (databases `src_*` and `dst_*`), a clinical workload of an exact number
//! of changes in the source, child processes measured with `wait4` (wall time and peak
//! RSS of that child alone), and the `mariadb-dump` / `mariadb` baselines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry::dev::gen::{copy_rows, generate, GenOptions};
use ferry::dev::mariadb::{find_program, load_sql_file, run_sql_blocking, MariaServer};
use mysql_async::prelude::*;
use mysql_async::Conn;

/// Reads a positive integer from the environment.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openmrs")
}

/// Wall time, peak RSS (KiB) and exit code of one child process.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub secs: f64,
    pub rss_kb: i64,
    /// Page faults served without I/O (first touches of fresh memory, mostly).
    pub minor_faults: i64,
    /// CPU time, user and system, of the child.
    pub cpu_secs: f64,
    /// CPU time the private server spent meanwhile (from /proc; 0 where unknown).
    pub server_cpu_secs: f64,
}

impl Measured {
    pub fn rss_mb(&self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }
}

fn tv_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// The pid of the server the benchmark runs (set once, by [`watch_server`]).
static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Counts the CPU time of `server` in every measurement from now on.
pub fn watch_server(server: &MariaServer) {
    if let Some(pid) = server.pid() {
        let _ = SERVER_PID.set(pid);
    }
}

/// User and system CPU seconds of process `pid` so far (fields 14 and 15 of
/// /proc/PID/stat, in clock ticks).
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn server_cpu() -> f64 {
    SERVER_PID
        .get()
        .and_then(|p| proc_cpu_secs(*p))
        .unwrap_or(0.0)
}

/// Runs `cmd` to the end (stdin/stdout as already set on it), reaping it with `wait4`
/// to read its own rusage. Panics with its stderr on failure.
pub fn measure(cmd: Command, what: &str) -> Measured {
    measure_logged(cmd, what).0
}

/// [`measure`], also returning the child's stderr.
// The child is reaped by `libc::wait4` (to read its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn measure_logged(mut cmd: Command, what: &str) -> (Measured, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    cmd.stderr(err.reopen().unwrap());
    let server_before = server_cpu();
    let t = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child,
    // which `Child::wait` never reaps (the handle is dropped unwaited).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    let server_cpu_secs = server_cpu() - server_before;
    assert_eq!(pid, child.id() as i32, "{what}: wait4 failed");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        panic!(
            "{what} failed (status {status}):\n{}",
            std::fs::read_to_string(err.path()).unwrap_or_default()
        );
    }
    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    (
        Measured {
            secs,
            rss_kb: usage.ru_maxrss,
            minor_faults: usage.ru_minflt,
            cpu_secs: tv_secs(usage.ru_utime) + tv_secs(usage.ru_stime),
            server_cpu_secs,
        },
        stderr,
    )
}

/// Waits until neither the server nor the kernel has background work left from
/// earlier steps: InnoDB's history purged (`innodb_max_purge_lag_wait = 0`), no dirty
/// pages in its buffer pool, and the files written so far on disk (`sync`). Each
/// measured command starts on the same quiet machine; without this, the first command
/// after the workload shared the two cores with InnoDB purging and flushing the
/// workload's million writes (the first dump ran 1.76 s, the second 1.33 s).
pub fn settle(server: &MariaServer) {
    block_on(async {
        let mut c = connect(&server.url("mysql")).await;
        c.query_drop("SET GLOBAL innodb_max_purge_lag_wait = 0")
            .await
            .unwrap();
        let pct: f64 = c
            .query_first("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
            .await
            .unwrap()
            .unwrap();
        c.query_drop("SET GLOBAL innodb_max_dirty_pages_pct = 0")
            .await
            .unwrap();
        let until = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let dirty: Option<(String, u64)> = c
                .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
                .await
                .unwrap();
            if dirty.map_or(true, |(_, n)| n == 0) || Instant::now() > until {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        c.query_drop(format!("SET GLOBAL innodb_max_dirty_pages_pct = {pct}"))
            .await
            .unwrap();
    });
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `mariadb`/`mariadb-dump` connection arguments for a private server.
pub fn client_args(server: &MariaServer) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        "--protocol=tcp".into(),
        "--host=127.0.0.1".into(),
        format!("--port={}", server.port()),
        "--user=root".into(),
        "--default-character-set=utf8mb4".into(),
    ]
}

/// `mariadb-dump` of `tables` of `db` (rows only, default extended inserts, one
/// consistent snapshot) into `out`.
pub fn dump(server: &MariaServer, db: &str, tables: &[String], out: &Path) -> Measured {
    let mut cmd = Command::new(find_program("mariadb-dump").unwrap());
    cmd.args(client_args(server))
        .args([
            "--no-create-info",
            "--skip-triggers",
            "--single-transaction",
            db,
        ])
        .args(tables)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap());
    measure(cmd, "mariadb-dump")
}

/// `zstd -3` of `input` into `out`.
pub fn zstd3(input: &Path, out: &Path) -> Measured {
    let mut cmd = Command::new("zstd");
    cmd.args(["-3", "-q", "-f", "-o"])
        .arg(out)
        .arg(input)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    measure(cmd, "zstd -3")
}

/// A fresh database `db` with the fixture schema only (no metadata), for a reload.
pub fn schema_only(server: &MariaServer, db: &str) {
    run_sql_blocking(&server.server_url(), &format!("CREATE DATABASE {db}")).unwrap();
    load_sql_file(&server.url(db), &fixture_dir().join("schema.sql")).unwrap();
}

/// `mariadb DB < dump`.
pub fn reload(server: &MariaServer, db: &str, dump: &Path) -> Measured {
    let mut cmd = Command::new(find_program("mariadb").unwrap());
    cmd.args(client_args(server))
        .arg(db)
        .stdin(std::fs::File::open(dump).unwrap())
        .stdout(Stdio::null());
    measure(cmd, "mariadb < dump")
}

/// The ferry binary the benchmarks run: this build's, or FERRY_BENCH_BIN (to compare
/// another build in the same conditions).
pub fn ferry_bin() -> PathBuf {
    std::env::var_os("FERRY_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")))
}

/// One ferry node: its directory and config file.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Node {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ferry_bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// Runs `ferry ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "ferry {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ferry ARGS --json` measured (wall time, peak RSS) with its stage timings
    /// logged (FERRY_LOG=info); returns the parsed stdout and the "stages" log lines.
    ///
    /// With FERRY_BENCH_PROFILE_DIR set, the command runs under `perf record` (DWARF call
    /// graphs: the release build keeps no frame pointers) into
    /// `DIR/ferry-ARG0.data` (for finding where time goes; the figures of such a run
    /// include perf's overhead and are not the benchmark's).
    pub fn measured_json(&self, args: &[&str]) -> (Measured, serde_json::Value, String) {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = match std::env::var_os("FERRY_BENCH_PROFILE_DIR") {
            Some(dir) => {
                let data = PathBuf::from(dir).join(format!("ferry-{}.data", args[0]));
                let mut perf = Command::new("perf");
                perf.args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
                    .arg(data)
                    .arg("--")
                    .arg(ferry_bin())
                    .arg("--config")
                    .arg(&self.config)
                    .args(args);
                perf
            }
            None => self.command(args),
        };
        cmd.arg("--json")
            .env("FERRY_LOG", "ferry=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap());
        let (m, log) = measure_logged(cmd, &format!("ferry {args:?}"));
        let text = std::fs::read_to_string(out.path()).unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad json: {e}\n{text}"));
        let stages = log
            .lines()
            .filter(|l| l.contains("stages"))
            .map(|l| format!("    {}\n", l.trim()))
            .collect();
        (m, v, stages)
    }

    /// Every `.bundle` file in this node's outbox.
    pub fn outbox_bundles(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "bundle")
                    && p.components().any(|c| c.as_os_str() == "outbox")
                {
                    found.push(p);
                }
            }
        }
        found.sort();
        found
    }
}

/// Two nodes, `src` (node "clinic") and `dst` (node "hub"), peers of each other, with
/// capture set up, on databases `src_TAG` and `dst_TAG` of one server.
pub struct Pair {
    pub src_db: String,
    pub dst_db: String,
    pub src: Node,
    pub dst: Node,
}

impl Pair {
    pub fn new(server: &MariaServer, tag: &str) -> Pair {
        let src_db = format!("src_{tag}");
        let dst_db = format!("dst_{tag}");
        let mut nodes = Vec::new();
        for (db, name) in [(&src_db, "clinic"), (&dst_db, "hub")] {
            run_sql_blocking(&server.server_url(), &format!("CREATE DATABASE {db}")).unwrap();
            load_sql_file(&server.url(db), &fixture_dir().join("schema.sql")).unwrap();
            load_sql_file(&server.url(db), &fixture_dir().join("metadata.sql")).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("ferry.toml");
            let node = Node { dir, config };
            node.ok(&["init", "--db", &server.url(db), "--node", name]);
            nodes.push(node);
        }
        let dst = nodes.pop().unwrap();
        let src = nodes.pop().unwrap();
        let src_key = src.ok(&["key"]).trim().to_string();
        let dst_key = dst.ok(&["key"]).trim().to_string();
        src.ok(&["peer", "add", "hub", &dst_key]);
        dst.ok(&["peer", "add", "clinic", &src_key]);
        src.ok(&["setup"]);
        dst.ok(&["setup"]);
        Pair {
            src_db,
            dst_db,
            src,
            dst,
        }
    }
}

/// What the workload left in the source's change log.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Distinct rows changed (what one bundle carries, one change each).
    pub changes: u64,
    /// Log entries (before coalescing).
    pub entries: u64,
    /// Tables with at least one change.
    pub tables: Vec<String>,
    /// Row writes of the generator, and rows added by doubling.
    pub generated: u64,
    pub grown: u64,
    pub secs: f64,
}

pub async fn connect(url: &str) -> Conn {
    ferry::db::DbUrl::parse(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn distinct_changes(c: &mut Conn) -> u64 {
    c.query_first("SELECT COUNT(*) FROM (SELECT DISTINCT table_name, row_key FROM ferry_change) d")
        .await
        .unwrap()
        .unwrap()
}

async fn count(c: &mut Conn, table: &str) -> u64 {
    c.query_first(format!("SELECT COUNT(*) FROM `{table}`"))
        .await
        .unwrap()
        .unwrap()
}

/// Writes a clinical workload of exactly `target` changes into `db` (capture installed):
/// the generator's patients, visits, encounters, obs, orders and edits (`patients`
/// of them), then encounters and obs copied with fresh uuids in the generator's own
/// encounter:obs proportion until the log holds `target` distinct rows.
pub async fn workload(server: &MariaServer, db: &str, target: u64, patients: u32) -> Workload {
    let t = Instant::now();
    let mut c = connect(&server.url(db)).await;
    let opts = GenOptions {
        seed: 42,
        patients,
        retire_metadata: false,
        ..GenOptions::default()
    };
    let report = generate(&mut c, &opts).await.unwrap();
    let generated = report.total.rows();
    let have = distinct_changes(&mut c).await;
    let need = target.saturating_sub(have);
    if need > 0 {
        let enc = count(&mut c, "encounter").await;
        let obs = count(&mut c, "obs").await;
        let add_enc = need * enc / (enc + obs).max(1);
        copy_rows(&mut c, "encounter", "encounter_id", add_enc)
            .await
            .unwrap();
        copy_rows(&mut c, "obs", "obs_id", need - add_enc)
            .await
            .unwrap();
    }
    let changes = distinct_changes(&mut c).await;
    let entries: u64 = c
        .query_first("SELECT COUNT(*) FROM ferry_change")
        .await
        .unwrap()
        .unwrap();
    let tables: Vec<String> = c
        .query("SELECT DISTINCT table_name FROM ferry_change ORDER BY table_name")
        .await
        .unwrap();
    Workload {
        changes,
        entries,
        tables,
        generated,
        grown: need,
        secs: t.elapsed().as_secs_f64(),
    }
}

/// Rows in `tables` of `db` (what a dump of them holds).
pub async fn rows_in(server: &MariaServer, db: &str, tables: &[String]) -> u64 {
    let mut c = connect(&server.url(db)).await;
    let mut n = 0;
    for t in tables {
        n += count(&mut c, t).await;
    }
    n
}

/// Runs async code on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// "yes" or "NO" for a summary table.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
