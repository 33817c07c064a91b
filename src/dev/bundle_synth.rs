//! Synthetic bundle content for tests, the benchmark, the fuzzer and the stress run:
//! deterministic node keys derived from a name, and clinical-looking changes shaped like
//! OpenMRS `obs` rows.

use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::bundle::{
    open, BundleError, BundleMeta, BundleWriter, Change, Identity, NodeKeys, Op, Peers, Value,
    Version,
};

/// Keys derived from `name` alone: for tests and vectors only, never for a real node.
pub fn fixed_keys(name: &str) -> NodeKeys {
    let mut raw = [0u8; 64];
    raw[..32].copy_from_slice(&Sha256::digest(format!("ferry test signing key {name}")));
    raw[32..].copy_from_slice(&Sha256::digest(format!("ferry test x25519 key {name}")));
    NodeKeys::from_bytes(&raw)
}

/// Peers holding the fixed keys of `names`.
pub fn fixed_peers(names: &[&str]) -> Peers {
    let mut peers = Peers::new();
    for n in names {
        peers.insert(n, fixed_keys(n).public());
    }
    peers
}

/// The columns of the synthetic `obs` table.
pub fn obs_columns() -> Vec<String> {
    [
        "person_id",
        "concept_id",
        "encounter_id",
        "obs_datetime",
        "value_numeric",
        "value_text",
        "value_coded",
        "comments",
        "creator",
        "date_created",
        "voided",
        "uuid",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A uuid-looking string derived from `i` (deterministic).
pub fn fake_uuid(kind: u8, i: u64) -> String {
    let h = Sha256::digest([&[kind][..], &i.to_le_bytes()].concat());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-4{}-a{}-{}",
        &x[..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

/// The `i`-th synthetic obs change made at `node`: mostly inserts, some updates and voids.
pub fn obs_change(node: &str, i: u64) -> Change {
    let uuid = fake_uuid(1, i);
    let op = match i % 20 {
        0 => Op::Delete,
        1..=4 => Op::Update,
        _ => Op::Insert,
    };
    let wall = 1_700_000_000_000_000 + (i as i64) * 1_000;
    let version = Version {
        wall_us: wall,
        counter: (i % 3) as u32,
        node: node.to_string(),
    };
    let base_version = (op != Op::Insert).then(|| Version {
        wall_us: wall - 500_000,
        counter: 0,
        node: "hub".to_string(),
    });
    let values = if op == Op::Delete {
        Vec::new()
    } else {
        vec![
            Value::Ref(Identity(vec![fake_uuid(2, i / 40)])),
            Value::Ref(Identity(vec![format!("CIEL:{}", 5000 + i % 300)])),
            Value::Ref(Identity(vec![fake_uuid(3, i / 8)])),
            Value::DateTime {
                year: 2024,
                month: 1 + (i % 12) as u8,
                day: 1 + (i % 28) as u8,
                hour: (i % 24) as u8,
                minute: (i % 60) as u8,
                second: 0,
                micros: 0,
            },
            if i % 3 == 0 {
                Value::Double(36.0 + (i % 50) as f64 / 10.0)
            } else {
                Value::Null
            },
            if i % 7 == 0 {
                Value::Text("patient reports mild headache since yesterday".into())
            } else {
                Value::Null
            },
            if i % 3 == 1 {
                Value::Ref(Identity(vec![format!("CIEL:{}", 1065 + i % 2)]))
            } else {
                Value::Null
            },
            Value::Null,
            Value::Int(1 + (i % 5) as i64),
            Value::DateTime {
                year: 2024,
                month: 1 + (i % 12) as u8,
                day: 1 + (i % 28) as u8,
                hour: (i % 24) as u8,
                minute: (i % 60) as u8,
                second: (i % 60) as u8,
                micros: (i % 1000) as u32 * 1000,
            },
            Value::Int((op == Op::Update && i % 4 == 0) as i64),
            Value::Text(uuid.clone()),
        ]
    };
    Change {
        table: "obs".to_string(),
        identity: Identity(vec![uuid]),
        op,
        version,
        base_version,
        origin: node.to_string(),
        values,
    }
}

/// What a stress run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StressReport {
    /// Changes sealed and read back.
    pub changes: u64,
    /// Bundle file size.
    pub bytes: u64,
    /// Seconds spent sealing.
    pub seal_secs: f64,
    /// Seconds spent opening and reading.
    pub open_secs: f64,
}

/// Seals `changes` synthetic changes from `clinic-a` to `hub` in `dir`, then opens the
/// bundle and reads every change back.
pub fn stress(dir: &Path, changes: u64) -> Result<StressReport, BundleError> {
    let sender = fixed_keys("clinic-a");
    let recipient = fixed_keys("hub");
    let meta = BundleMeta::new("clinic-a", "hub", 1, [0; 32]);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let t = Instant::now();
    let mut w = BundleWriter::new(dir, &sender, &recipient.public(), meta, &mut rng)?;
    w.declare_table("obs", &obs_columns())?;
    for i in 0..changes {
        w.push(&obs_change("clinic-a", i))?;
    }
    let path = dir.join("stress.bundle");
    let sealed = w.finish(&path)?;
    let seal_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut r = open(&path, "hub", &recipient, &fixed_peers(&["clinic-a"]))?;
    let mut n = 0;
    while let Some(change) = r.next_change()? {
        if change.table != "obs" {
            return Err(BundleError::InvalidParams {
                why: "unexpected table".into(),
            });
        }
        n += 1;
    }
    let open_secs = t.elapsed().as_secs_f64();
    if n != changes {
        return Err(BundleError::InvalidParams {
            why: format!("read {n} changes back, sealed {changes}"),
        });
    }
    Ok(StressReport {
        changes,
        bytes: sealed.len,
        seal_secs,
        open_secs,
    })
}
