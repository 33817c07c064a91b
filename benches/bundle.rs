//! Sealing and opening throughput of bundles of clinical-looking synthetic changes
//! (obs-like rows), in MB/s and changes/s, broken down into serialize, compress, hash
//! and encrypt (and their inverses). MB/s always counts the serialized record stream
//! (the plaintext before compression), so the stages compare directly.
//! Run: `cargo bench --bench bundle` (FERRY_BENCH_CHANGES sets the count, default 200000).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferry::bundle::body::{BodyDecoder, BodyEncoder};
use ferry::bundle::format::ZSTD_LEVEL;
use ferry::bundle::stream::{BodyKey, Decryptor, Encryptor, KdfContext};
use ferry::bundle::{open, BundleMeta, BundleWriter, Change};
use ferry::dev::bundle_synth::{fixed_keys, fixed_peers, obs_change, obs_columns};
use rand::SeedableRng;
use sha2::{Digest, Sha256};

struct Line {
    plain: u64,
    changes: u64,
}

impl Line {
    /// One line: time, MB/s of serialized records, changes/s, and the MB/s of the
    /// bytes this stage itself consumes (`input` bytes).
    fn print(&self, what: &str, took: Duration, input: u64) {
        let s = took.as_secs_f64();
        println!(
            "{what:<22} {:>8.3} s {:>9.1} MB/s {:>12.0} changes/s   (stage input {:>6.1} MB at {:>7.1} MB/s)",
            s,
            self.plain as f64 / 1e6 / s,
            self.changes as f64 / s,
            input as f64 / 1e6,
            input as f64 / 1e6 / s
        );
    }
}

fn key() -> BodyKey {
    let ctx = KdfContext {
        version: ferry::bundle::format::FORMAT_VERSION,
        ephemeral: &[1; 32],
        recipient_key: &[2; 32],
        sender: "clinic-a",
        recipient: "hub",
        seq: 1,
        bundle_id: &[3; 16],
    };
    BodyKey::derive(&[9; 32], &ctx).expect("key")
}

fn main() {
    let n: u64 = std::env::var("FERRY_BENCH_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let changes: Vec<Change> = (0..n).map(|i| obs_change("clinic-a", i)).collect();
    let columns = obs_columns();

    // Seal, stage by stage.
    let t = Instant::now();
    let mut enc = BodyEncoder::new(Vec::new());
    enc.declare_table("obs", &columns).unwrap();
    for c in &changes {
        enc.push(c).unwrap();
    }
    let (plain, plain_len) = enc.finish().unwrap();
    let serialize = t.elapsed();
    let line = Line {
        plain: plain_len,
        changes: n,
    };

    let t = Instant::now();
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).unwrap();
    z.include_checksum(true).unwrap();
    z.write_all(&plain).unwrap();
    let compressed = z.finish().unwrap();
    let compress = t.elapsed();

    let t = Instant::now();
    let mut e = Encryptor::new(Vec::new(), key());
    e.write_all(&compressed).unwrap();
    let (sealed, _) = e.finish().unwrap();
    let encrypt = t.elapsed();

    let t = Instant::now();
    let digest = Sha256::digest(&sealed);
    let hash = t.elapsed();
    std::hint::black_box(digest);

    println!(
        "bundle benchmark: {n} obs-like changes, {:.1} MB serialized, {:.1} MB compressed (ratio {:.1}x)",
        plain_len as f64 / 1e6,
        compressed.len() as f64 / 1e6,
        plain_len as f64 / compressed.len() as f64
    );
    println!("-- seal, by stage (MB/s of serialized records)");
    line.print("serialize", serialize, plain_len);
    line.print("compress (zstd 3)", compress, plain_len);
    line.print("encrypt (chacha20)", encrypt, compressed.len() as u64);
    line.print("hash (sha256)", hash, sealed.len() as u64);

    // Seal end to end, into a file.
    let dir = tempfile::tempdir().unwrap();
    let sender = fixed_keys("clinic-a");
    let hub = fixed_keys("hub");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let t = Instant::now();
    let meta = BundleMeta::new("clinic-a", "hub", 1, [0; 32]);
    let mut w = BundleWriter::new(dir.path(), &sender, &hub.public(), meta, &mut rng).unwrap();
    w.declare_table("obs", &columns).unwrap();
    for c in &changes {
        w.push(c).unwrap();
    }
    let path = dir.path().join("bench.bundle");
    let sealed_file = w.finish(&path).unwrap();
    line.print("seal, total", t.elapsed(), plain_len);

    // Open, stage by stage.
    println!("-- open, by stage (MB/s of serialized records)");
    let t = Instant::now();
    let mut d = Decryptor::new(&sealed[..], key(), "bench", compressed.len() as u64);
    let mut back = Vec::new();
    d.read_to_end(&mut back).unwrap();
    line.print("decrypt (chacha20)", t.elapsed(), sealed.len() as u64);

    let t = Instant::now();
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(&back[..])
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    line.print("decompress (zstd)", t.elapsed(), compressed.len() as u64);

    let t = Instant::now();
    let mut dec = BodyDecoder::new(&out[..], "bench");
    let mut k = 0;
    while dec.next_change().unwrap().is_some() {
        k += 1;
    }
    assert_eq!(k, n);
    line.print("deserialize", t.elapsed(), plain_len);
    line.print("hash (sha256)", hash, sealed.len() as u64);

    let t = Instant::now();
    let mut r = open(&path, "hub", &hub, &fixed_peers(&["clinic-a"])).unwrap();
    let mut k = 0;
    while r.next_change().unwrap().is_some() {
        k += 1;
    }
    assert_eq!(k, n);
    line.print("open, total", t.elapsed(), sealed_file.len);
    println!(
        "bundle file: {:.1} MB, {:.1} bytes per change",
        sealed_file.len as f64 / 1e6,
        sealed_file.len as f64 / n as f64
    );
}
