//! The bundle test vectors in `bundle-format/vectors/`: what each valid vector holds
//! (as JSON another implementation can read), how to write it again byte for byte from
//! that JSON and the fixed keys, and how each invalid vector is made defective.
//!
//! `cargo run --example bundle_vectors -- bundle-format/vectors` regenerates them. The
//! committed files are the truth: tests read them and never regenerate.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::bundle_craft::{
    assemble, header_of, resign, resign_raw, resign_raw_in, split, RawMember,
};
use super::bundle_synth::fixed_keys;
use crate::bundle::format::{MAGIC, MAX_PLAIN_LEN, SIGNATURE_CONTEXT_V1};
use crate::bundle::{
    BundleError, BundleMeta, BundleWriter, Change, Identity, NodeKeys, Op, Peers, Value, Version,
};

/// The nodes with fixed keys; `stranger` is known to nobody.
pub const NODES: [&str; 4] = ["clinic-a", "clinic-b", "hub", "stranger"];
/// Every vector is read as this node.
pub const READER: &str = "hub";
/// The senders the reader knows.
pub const READER_PEERS: [&str; 2] = ["clinic-a", "clinic-b"];

/// A node's fixed keys as `keys.json` stores them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyJson {
    /// `ferry1-secret:...`
    pub secret: String,
    /// `ferry1:...`
    pub public: String,
}

/// The caller's choices for a bundle, as JSON (byte strings in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaJson {
    pub sender: String,
    pub recipient: String,
    pub seq: u64,
    pub prev_hash: String,
    pub created_us: i64,
    pub bundle_id: String,
    pub plan_fingerprint: String,
    pub acks: BTreeMap<String, u64>,
    /// The format version (1 when absent: the vectors made before version 2).
    #[serde(default = "version_one", skip_serializing_if = "is_version_one")]
    pub format_version: u16,
}

fn version_one() -> u16 {
    1
}

fn is_version_one(v: &u16) -> bool {
    *v == 1
}

/// A version no ferry has written: what the `unknown-version` vector states.
pub const UNKNOWN_VERSION: u16 = 99;

/// A declared table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableJson {
    pub name: String,
    pub columns: Vec<String>,
}

/// What the header must state beyond the meta (all computed by the writer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedJson {
    /// The bundle's hash (SHA-256 of the header member).
    pub hash: String,
    pub ephemeral_key: String,
    pub change_count: u64,
    pub plain_len: u64,
    pub compressed_len: u64,
    pub body_len: u64,
    pub body_sha256: String,
}

/// One valid vector: `<file>` and its decoded content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidVector {
    pub file: String,
    pub meta: MetaJson,
    /// The ephemeral X25519 secret the writer used (hex): the only randomness.
    pub ephemeral_secret: String,
    pub tables: Vec<TableJson>,
    pub changes: Vec<Change>,
    pub expected: ExpectedJson,
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(|| panic!("{s:?} is not {N} hex bytes"))
}

impl MetaJson {
    /// As the writer takes it.
    pub fn to_meta(&self) -> BundleMeta {
        BundleMeta {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            seq: self.seq,
            prev_hash: unhex(&self.prev_hash),
            created_us: self.created_us,
            bundle_id: unhex(&self.bundle_id),
            plan_fingerprint: unhex(&self.plan_fingerprint),
            acks: self.acks.clone(),
            format_version: self.format_version,
        }
    }
}

/// Keys by node name, from `keys.json`.
pub fn keys_from_json(keys: &BTreeMap<String, KeyJson>) -> BTreeMap<String, NodeKeys> {
    keys.iter()
        .map(|(n, k)| {
            let keys = NodeKeys::from_text(&k.secret).expect("valid secret key");
            assert_eq!(keys.public().to_string(), k.public, "public key of {n}");
            (n.clone(), keys)
        })
        .collect()
}

/// The reader's peers.
pub fn reader_peers(keys: &BTreeMap<String, NodeKeys>) -> Peers {
    let mut peers = Peers::new();
    for n in READER_PEERS {
        peers.insert(n, keys[n].public());
    }
    peers
}

/// Writes a valid vector's bundle from its JSON and the keys.
pub fn seal_vector(
    v: &ValidVector,
    keys: &BTreeMap<String, NodeKeys>,
    temp_dir: &Path,
) -> Result<Vec<u8>, BundleError> {
    let meta = v.meta.to_meta();
    let mut w = BundleWriter::with_ephemeral(
        temp_dir,
        &keys[&meta.sender],
        &keys[&meta.recipient].public(),
        meta,
        &unhex(&v.ephemeral_secret),
    )?;
    for t in &v.tables {
        w.declare_table(&t.name, &t.columns)?;
    }
    for c in &v.changes {
        w.push(c)?;
    }
    let mut out = Vec::new();
    w.finish_to(&mut out)?;
    Ok(out)
}

fn version(wall_us: i64, counter: u32, node: &str) -> Version {
    Version {
        wall_us,
        counter,
        node: node.into(),
    }
}

fn id(parts: &[&str]) -> Identity {
    Identity(parts.iter().map(|s| s.to_string()).collect())
}

fn small_changes() -> (Vec<TableJson>, Vec<Change>) {
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let tables = vec![
        TableJson {
            name: "obs".into(),
            columns: cols(&[
                "person_id",
                "concept_id",
                "obs_datetime",
                "value_numeric",
                "value_text",
                "value_complex",
                "date_created",
                "voided",
                "uuid",
            ]),
        },
        TableJson {
            name: "person_attribute_type_x".into(),
            columns: cols(&[
                "int_min",
                "uint_max",
                "float",
                "double",
                "decimal",
                "date_zero",
                "datetime_zero",
                "time_neg",
                "time_pos",
                "date",
            ]),
        },
        TableJson {
            name: "role_privilege".into(),
            columns: cols(&["role", "privilege"]),
        },
    ];
    let p = "3f1e7c2a-8d6b-4b1e-9c55-0a1b2c3d4e5f";
    let changes = vec![
        Change {
            table: "obs".into(),
            identity: id(&["0b7c4b42-6f2f-4d52-9d1a-5d3c1e7a9b10"]),
            op: Op::Insert,
            version: version(1_717_171_717_000_001, 0, "clinic-a"),
            base_version: None,
            origin: "clinic-a".into(),
            values: vec![
                Value::Ref(id(&[p])),
                Value::Ref(id(&["CIEL:5088"])),
                Value::DateTime {
                    year: 2024,
                    month: 5,
                    day: 31,
                    hour: 15,
                    minute: 8,
                    second: 37,
                    micros: 123_456,
                },
                Value::Double(37.5),
                Value::Text("fièvre 🌡️ since 2 days".into()),
                Value::Bytes(vec![0, 1, 2, 254, 255]),
                Value::DateTime {
                    year: 2024,
                    month: 5,
                    day: 31,
                    hour: 15,
                    minute: 8,
                    second: 37,
                    micros: 0,
                },
                Value::Int(0),
                Value::Text("0b7c4b42-6f2f-4d52-9d1a-5d3c1e7a9b10".into()),
            ],
        },
        Change {
            table: "person_attribute_type_x".into(),
            identity: id(&["natural-key-1"]),
            op: Op::Update,
            version: version(1_717_171_717_000_001, 1, "clinic-a"),
            base_version: Some(version(1_700_000_000_000_000, 7, "clinic-b")),
            origin: "clinic-b".into(),
            values: vec![
                Value::Int(i64::MIN),
                Value::UInt(u64::MAX),
                Value::Float(0.1),
                Value::Double(-0.0),
                Value::Decimal("-12345678901234567890.123456789".into()),
                Value::Date {
                    year: 0,
                    month: 0,
                    day: 0,
                },
                Value::DateTime {
                    year: 0,
                    month: 0,
                    day: 0,
                    hour: 0,
                    minute: 0,
                    second: 0,
                    micros: 0,
                },
                Value::Time {
                    negative: true,
                    hours: 838,
                    minutes: 59,
                    seconds: 59,
                    micros: 0,
                },
                Value::Time {
                    negative: false,
                    hours: 0,
                    minutes: 0,
                    seconds: 1,
                    micros: 500_000,
                },
                Value::Date {
                    year: 9999,
                    month: 12,
                    day: 31,
                },
            ],
        },
        Change {
            table: "role_privilege".into(),
            identity: id(&["Clinician", "View Patients"]),
            op: Op::Insert,
            version: version(1_717_171_717_000_002, 0, "hub"),
            base_version: None,
            origin: "hub".into(),
            values: vec![Value::Ref(id(&["Clinician"])), Value::Null],
        },
        Change {
            table: "obs".into(),
            identity: id(&["5e0d1c9a-1111-4a4a-8b8b-222233334444"]),
            op: Op::Delete,
            version: version(1_717_171_717_000_003, 0, "clinic-a"),
            base_version: Some(version(1_717_000_000_000_000, 0, "clinic-a")),
            origin: "clinic-a".into(),
            values: vec![],
        },
    ];
    (tables, changes)
}

/// Changes whose references name rows the `small` changes named already (so a version-2
/// body refers to them by slot), and whose clock goes backwards once.
fn v2_extra_changes() -> Vec<Change> {
    let p = "3f1e7c2a-8d6b-4b1e-9c55-0a1b2c3d4e5f";
    vec![
        Change {
            table: "role_privilege".into(),
            identity: id(&["Clinician", "Add Patients"]),
            op: Op::Update,
            version: version(1_717_171_716_000_000, 3, "clinic-b"),
            base_version: Some(version(1_717_171_717_000_002, 0, "hub")),
            origin: "clinic-b".into(),
            values: vec![
                Value::Ref(id(&["Clinician"])),
                Value::Ref(id(&["Clinician"])),
            ],
        },
        Change {
            table: "obs".into(),
            identity: id(&["7a3e2b1c-2222-4b4b-9c9c-333344445555"]),
            op: Op::Insert,
            version: version(1_717_171_718_000_000, 0, "clinic-b"),
            base_version: None,
            origin: "clinic-b".into(),
            values: vec![
                Value::Ref(id(&[p])),
                Value::Ref(id(&["CIEL:5088"])),
                Value::Null,
                Value::Double(38.25),
                Value::Text(String::new()),
                Value::Null,
                Value::Null,
                Value::Int(1),
                Value::Text("7a3e2b1c-2222-4b4b-9c9c-333344445555".into()),
            ],
        },
    ]
}

fn meta(sender: &str, seq: u64, prev_hash: [u8; 32], tag: u8) -> MetaJson {
    MetaJson {
        sender: sender.into(),
        recipient: READER.into(),
        seq,
        prev_hash: hex::encode(prev_hash),
        created_us: 1_717_171_800_000_000 + seq as i64,
        bundle_id: hex::encode([tag; 16]),
        plan_fingerprint: hex::encode([0xa5; 32]),
        acks: BTreeMap::from([("clinic-a".into(), 41), ("hub".into(), 7)]),
        format_version: 1,
    }
}

fn finish_vector(
    file: &str,
    meta: MetaJson,
    tag: u8,
    tables: Vec<TableJson>,
    changes: Vec<Change>,
    keys: &BTreeMap<String, NodeKeys>,
    dir: &Path,
) -> (ValidVector, Vec<u8>) {
    let mut v = ValidVector {
        file: file.into(),
        meta,
        ephemeral_secret: hex::encode([tag; 32]),
        tables,
        changes,
        expected: ExpectedJson {
            hash: String::new(),
            ephemeral_key: String::new(),
            change_count: 0,
            plain_len: 0,
            compressed_len: 0,
            body_len: 0,
            body_sha256: String::new(),
        },
    };
    let bytes = seal_vector(&v, keys, dir).expect("vector seals");
    let h = header_of(&bytes);
    v.expected = ExpectedJson {
        hash: hex::encode(crate::bundle::Header::hash_of(&h.encode())),
        ephemeral_key: hex::encode(h.ephemeral_key),
        change_count: h.change_count,
        plain_len: h.plain_len,
        compressed_len: h.compressed_len,
        body_len: h.body_len,
        body_sha256: hex::encode(h.body_sha256),
    };
    (v, bytes)
}

/// Writes every vector into `dir` (`keys.json`, `valid/`, `invalid/`).
pub fn generate(dir: &Path) -> std::io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let keys_json: BTreeMap<String, KeyJson> = NODES
        .iter()
        .map(|n| {
            let k = fixed_keys(n);
            (
                n.to_string(),
                KeyJson {
                    secret: k.to_text().trim().to_string(),
                    public: k.public().to_string(),
                },
            )
        })
        .collect();
    let keys = keys_from_json(&keys_json);
    std::fs::create_dir_all(dir.join("valid"))?;
    std::fs::create_dir_all(dir.join("invalid"))?;
    std::fs::write(
        dir.join("keys.json"),
        serde_json::to_string_pretty(&keys_json)? + "\n",
    )?;

    let (tables, changes) = small_changes();
    let (small, small_bytes) = finish_vector(
        "small.bundle",
        meta("clinic-a", 1, [0; 32], 1),
        1,
        tables,
        changes,
        &keys,
        tmp.path(),
    );
    let prev: [u8; 32] = unhex(&small.expected.hash);
    let (empty, empty_bytes) = finish_vector(
        "empty.bundle",
        meta("clinic-a", 2, prev, 2),
        2,
        vec![],
        vec![],
        &keys,
        tmp.path(),
    );
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let blobs: Vec<Change> = (0..4)
        .map(|i| {
            let mut blob = vec![0u8; 17_000];
            rng.fill_bytes(&mut blob);
            Change {
                table: "complex_obs".into(),
                identity: id(&[&format!("blob-{i}")]),
                op: Op::Insert,
                version: version(1_717_171_900_000_000 + i, 0, "clinic-b"),
                base_version: None,
                origin: "clinic-b".into(),
                values: vec![Value::Bytes(blob)],
            }
        })
        .collect();
    let table = vec![TableJson {
        name: "complex_obs".into(),
        columns: vec!["value_complex".into()],
    }];
    let (multi, multi_bytes) = finish_vector(
        "multi-chunk.bundle",
        meta("clinic-b", 1, [0; 32], 3),
        3,
        table,
        blobs,
        &keys,
        tmp.path(),
    );
    // Version 2: the small content, plus references that name slots.
    let (tables, mut changes) = small_changes();
    changes.extend(v2_extra_changes());
    let mut v2_meta = meta("clinic-b", 1, [0; 32], 4);
    v2_meta.format_version = 2;
    let (v2, v2_bytes) = finish_vector(
        "v2-small.bundle",
        v2_meta,
        4,
        tables,
        changes,
        &keys,
        tmp.path(),
    );
    for (v, bytes) in [
        (&small, &small_bytes),
        (&empty, &empty_bytes),
        (&multi, &multi_bytes),
        (&v2, &v2_bytes),
    ] {
        std::fs::write(dir.join("valid").join(&v.file), bytes)?;
        let json = dir.join("valid").join(v.file.replace(".bundle", ".json"));
        // Big byte arrays would make pretty JSON one number per line: keep those compact.
        let text = if bytes.len() > 16_384 {
            serde_json::to_string(v)?
        } else {
            serde_json::to_string_pretty(v)?
        };
        std::fs::write(json, text + "\n")?;
    }

    for (name, bytes) in invalid(&small_bytes, &keys, tmp.path()) {
        std::fs::write(dir.join("invalid").join(format!("{name}.bundle")), bytes)?;
    }
    Ok(())
}

/// The invalid vectors, each named after its defect, made from a valid bundle.
pub fn invalid(
    valid: &[u8],
    keys: &BTreeMap<String, NodeKeys>,
    tmp: &Path,
) -> Vec<(&'static str, Vec<u8>)> {
    let sender = &keys["clinic-a"];
    let members = split(valid);
    let header = header_of(valid);
    let with = |f: &dyn Fn(&mut Vec<RawMember>)| {
        let mut m = members.clone();
        f(&mut m);
        assemble(&m)
    };
    let mut out = Vec::new();
    out.push(("truncated", valid[..valid.len() / 2].to_vec()));
    let mut b = valid.to_vec();
    b.extend_from_slice(b"trailing junk");
    out.push(("extra-bytes", b));
    out.push(("bad-signature", with(&|m| m[1].data[5] ^= 0x40)));
    out.push(("hash-mismatch", with(&|m| m[2].data[3] ^= 0x01)));
    out.push(("bad-magic", with(&|m| m[0].data[0] = b'X')));
    out.push(("path-traversal", with(&|m| m[0].name = "../header".into())));
    out.push(("absolute-path", with(&|m| m[0].name = "/header".into())));
    out.push((
        "symlink-member",
        with(&|m| {
            m[0].typeflag = b'2';
            m[0].linkname = "/etc/passwd".into();
        }),
    ));
    out.push((
        "hardlink-member",
        with(&|m| {
            m[2].typeflag = b'1';
            m[2].linkname = "header".into();
        }),
    ));
    out.push(("device-member", with(&|m| m[1].typeflag = b'3')));
    out.push((
        "unknown-member",
        with(&|m| m.insert(2, RawMember::file("notes.txt", b"hi".to_vec()))),
    ));
    out.push(("duplicate-member", with(&|m| m.insert(2, m[1].clone()))));
    out.push(("member-order", with(&|m| m.swap(0, 1))));
    out.push((
        "missing-member",
        with(&|m| {
            m.pop();
        }),
    ));
    let mut encoded = header.encode();
    encoded[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&UNKNOWN_VERSION.to_be_bytes());
    out.push(("unknown-version", resign_raw(valid, encoded, sender)));
    // A version-1 bundle relabelled as version 2 and signed under version 1's context
    // (this file was `unknown-version` while version 2 did not exist): its body would
    // read differently under version 2's rules, so its signature must not verify.
    let mut encoded = header.encode();
    encoded[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&2u16.to_be_bytes());
    out.push((
        "version-relabelled",
        resign_raw_in(valid, encoded, sender, SIGNATURE_CONTEXT_V1),
    ));
    let mut h = header.clone();
    h.plain_len = MAX_PLAIN_LEN + 1;
    out.push(("over-limit", resign(valid, &h, sender)));
    // Signed by a node the reader does not know.
    let mut h = header.clone();
    h.sender = "stranger".into();
    out.push(("unknown-sender", resign(valid, &h, &keys["stranger"])));
    // A sound bundle for another node.
    let mut h = header.clone();
    h.recipient = "clinic-b".into();
    out.push(("wrong-recipient", resign(valid, &h, sender)));
    // Signed correctly, but the body is sealed to another node's key.
    out.push(("decrypt-failure", sealed_to_wrong_key(keys, tmp)));
    out.push(("zip-bomb", zip_bomb(keys, tmp)));
    out
}

fn sealed_to_wrong_key(keys: &BTreeMap<String, NodeKeys>, tmp: &Path) -> Vec<u8> {
    let m = meta("clinic-a", 1, [0; 32], 9).to_meta();
    let mut w = BundleWriter::with_ephemeral(
        tmp,
        &keys["clinic-a"],
        &keys["clinic-b"].public(),
        m,
        &[9; 32],
    )
    .expect("writer");
    w.declare_table("t", &["c".into()]).expect("table");
    let mut out = Vec::new();
    w.finish_to(&mut out).expect("seal");
    out
}

/// A signed bundle whose body decompresses to 16 MiB while its header states 1 KiB.
fn zip_bomb(keys: &BTreeMap<String, NodeKeys>, tmp: &Path) -> Vec<u8> {
    let m = meta("clinic-a", 1, [0; 32], 8).to_meta();
    let mut w =
        BundleWriter::with_ephemeral(tmp, &keys["clinic-a"], &keys["hub"].public(), m, &[8; 32])
            .expect("writer");
    w.declare_table("t", &["c".into()]).expect("table");
    w.push(&Change {
        table: "t".into(),
        identity: id(&["x"]),
        op: Op::Insert,
        version: version(1, 0, "clinic-a"),
        base_version: None,
        origin: "clinic-a".into(),
        values: vec![Value::Bytes(vec![0; 16 << 20])],
    })
    .expect("push");
    let mut out = Vec::new();
    w.finish_to(&mut out).expect("seal");
    let mut h = header_of(&out);
    h.plain_len = 1024;
    resign(&out, &h, &keys["clinic-a"])
}
