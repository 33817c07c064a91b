//! A bundle of 1,000,000 changes seals and opens in bounded memory: the work runs in a
//! child process (`ferry dev bundle-stress`) and its peak RSS, read with `wait4`, must
//! stay under 128 MB.

use std::io::Read;
use std::process::{Command, Stdio};

const CHANGES: u64 = 1_000_000;
const MAX_RSS_KB: i64 = 128 * 1024;

#[test]
// The child is reaped by `libc::wait4` below (to read its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn a_million_changes_seal_and_open_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "dev",
            "bundle-stress",
            "--changes",
            &CHANGES.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: pid is our child, not yet reaped; the pointers are valid for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "stress run failed: {out}"
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["changes"], CHANGES);
    let peak_kb = usage.ru_maxrss;
    eprintln!(
        "1,000,000 changes: {} bytes, sealed in {:.1}s, opened in {:.1}s, peak RSS {} MB",
        report["bytes"],
        report["seal_secs"].as_f64().unwrap(),
        report["open_secs"].as_f64().unwrap(),
        peak_kb / 1024
    );
    assert!(
        peak_kb < MAX_RSS_KB,
        "peak RSS {peak_kb} KB is over {MAX_RSS_KB} KB"
    );
}
