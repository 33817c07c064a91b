//! 10,000 seeded random mutations of valid bundles (bit flips, truncations, insertions,
//! deletions, member reorders, headers and signatures swapped between two bundles):
//! each must be refused, and none may panic. A failure prints the case's seed; rerun a
//! single case with `FERRY_MUTATION_SEED=<seed> cargo test --test bundle_mutation`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ferry::bundle::{open, BundleMeta, BundleWriter, Peers};
use ferry::dev::bundle_craft::{assemble, split};
use ferry::dev::bundle_synth::{fixed_keys, fixed_peers, obs_change, obs_columns};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const CASES: u64 = 10_000;
const BASE_SEED: u64 = 0x5eed_0000;

fn seal(dir: &Path, sender: &str, seq: u64, changes: u64) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(seq * 31 + changes);
    let prev = if seq == 1 { [0; 32] } else { [9; 32] };
    let meta = BundleMeta::new(sender, "hub", seq, prev);
    let mut w = BundleWriter::new(
        dir,
        &fixed_keys(sender),
        &fixed_keys("hub").public(),
        meta,
        &mut rng,
    )
    .unwrap();
    w.declare_table("obs", &obs_columns()).unwrap();
    for i in 0..changes {
        w.push(&obs_change(sender, i + seq * 1000)).unwrap();
    }
    let mut out = Vec::new();
    w.finish_to(&mut out).unwrap();
    out
}

/// Applies the mutation chosen by `rng`; returns its kind, description and result.
fn mutate(rng: &mut ChaCha20Rng, a: &[u8], b: &[u8]) -> (&'static str, String, Vec<u8>) {
    let mut out = a.to_vec();
    match rng.gen_range(0..8) {
        0 | 1 => {
            let flips = rng.gen_range(1..=4);
            for _ in 0..flips {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            ("bit-flip", format!("{flips} bit flip(s)"), out)
        }
        2 => {
            let len = rng.gen_range(0..out.len());
            out.truncate(len);
            ("truncation", format!("truncation to {len}"), out)
        }
        3 => {
            let at = rng.gen_range(0..=out.len());
            let mut junk = vec![0u8; rng.gen_range(1..600)];
            if rng.gen_bool(0.7) {
                rng.fill_bytes(&mut junk);
            }
            let n = junk.len();
            out.splice(at..at, junk);
            ("insertion", format!("insertion of {n} bytes at {at}"), out)
        }
        4 => {
            let at = rng.gen_range(0..out.len());
            let end = (at + rng.gen_range(1..600)).min(out.len());
            out.drain(at..end);
            ("deletion", format!("deletion of {at}..{end}"), out)
        }
        5 => {
            let mut m = split(a);
            let order = loop {
                let mut o = [0usize, 1, 2];
                for i in (1..3).rev() {
                    o.swap(i, rng.gen_range(0..=i));
                }
                if o != [0, 1, 2] {
                    break o;
                }
            };
            m = order.iter().map(|&i| m[i].clone()).collect();
            ("reorder", format!("member order {order:?}"), assemble(&m))
        }
        6 => {
            // Header and signature of one bundle, body of the other.
            let (ma, mb) = (split(a), split(b));
            let m = vec![ma[0].clone(), ma[1].clone(), mb[2].clone()];
            (
                "body-swap",
                "header of one bundle, body of another".into(),
                assemble(&m),
            )
        }
        _ => {
            let (ma, mb) = (split(a), split(b));
            let (first, second) = if rng.gen_bool(0.5) {
                (ma[0].clone(), mb[1].clone())
            } else {
                (mb[0].clone(), ma[1].clone())
            };
            let m = vec![first, second, ma[2].clone()];
            (
                "signature-swap",
                "header and signature of different bundles".into(),
                assemble(&m),
            )
        }
    }
}

fn accepted(dir: &Path, bytes: &[u8], peers: &Peers) -> bool {
    let path = dir.join("m.bundle");
    std::fs::write(&path, bytes).unwrap();
    let Ok(mut r) = open(&path, "hub", &fixed_keys("hub"), peers) else {
        return false;
    };
    loop {
        match r.next_change() {
            Ok(Some(_)) => continue,
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn ten_thousand_mutations_are_refused_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = [
        seal(dir.path(), "clinic-a", 1, 40),
        seal(dir.path(), "clinic-a", 2, 25),
        seal(dir.path(), "clinic-b", 1, 3000),
    ];
    let peers = fixed_peers(&["clinic-a", "clinic-b"]);
    for b in &bundles {
        assert!(accepted(dir.path(), b, &peers), "unmutated bundle refused");
    }
    let seeds: Vec<u64> = match std::env::var("FERRY_MUTATION_SEED") {
        Ok(s) => vec![s.parse().expect("FERRY_MUTATION_SEED is a number")],
        Err(_) => (BASE_SEED..BASE_SEED + CASES).collect(),
    };
    let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
    for seed in seeds {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let i = rng.gen_range(0..bundles.len());
        let j = (i + rng.gen_range(1..bundles.len())) % bundles.len();
        let (kind, what, mutated) = mutate(&mut rng, &bundles[i], &bundles[j]);
        if mutated == bundles[i] {
            continue;
        }
        let result = catch_unwind(AssertUnwindSafe(|| accepted(dir.path(), &mutated, &peers)));
        match result {
            Ok(false) => {}
            Ok(true) => panic!("seed {seed}: {what} of bundle {i} was accepted"),
            Err(_) => panic!("seed {seed}: {what} of bundle {i} panicked the reader"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    if std::env::var("FERRY_MUTATION_SEED").is_err() {
        assert!(kinds.values().sum::<u64>() >= CASES - 10, "{kinds:?}");
        assert_eq!(kinds.len(), 7, "every mutation kind ran: {kinds:?}");
    }
}
