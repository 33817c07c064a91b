//! The committed test vectors in `bundle-format/vectors/` are the truth: every valid
//! vector opens to exactly its JSON, writing from the JSON with the fixed keys gives the
//! same bytes, and every invalid vector is refused with the defect its name states.
//! Nothing here regenerates them (`cargo run --example bundle_vectors` does, by hand).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry::bundle::{open, verify_header, NodeKeys, ReadAhead};
use ferry::dev::bundle_vectors::{
    keys_from_json, reader_peers, seal_vector, KeyJson, ValidVector, READER,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bundle-format/vectors")
}

fn keys() -> BTreeMap<String, NodeKeys> {
    let text = std::fs::read_to_string(dir().join("keys.json")).unwrap();
    let json: BTreeMap<String, KeyJson> = serde_json::from_str(&text).unwrap();
    keys_from_json(&json)
}

fn valid_vectors() -> Vec<ValidVector> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir().join("valid")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap());
        }
    }
    out.sort_by(|a: &ValidVector, b| a.file.cmp(&b.file));
    assert_eq!(out.len(), 4, "expected the four valid vectors");
    out
}

#[test]
fn valid_vectors_open_to_their_json() {
    let keys = keys();
    let peers = reader_peers(&keys);
    for v in valid_vectors() {
        let path = dir().join("valid").join(&v.file);
        let mut r = open(&path, READER, &keys[READER], &peers).unwrap();
        let h = r.header().clone();
        let meta = v.meta.to_meta();
        assert_eq!(h.sender, meta.sender, "{}", v.file);
        assert_eq!(h.recipient, meta.recipient);
        assert_eq!(h.seq, meta.seq);
        assert_eq!(h.prev_hash, meta.prev_hash);
        assert_eq!(h.created_us, meta.created_us);
        assert_eq!(h.bundle_id, meta.bundle_id);
        assert_eq!(h.plan_fingerprint, meta.plan_fingerprint);
        assert_eq!(h.acks, meta.acks.into_iter().collect::<Vec<_>>());
        assert_eq!(hex::encode(h.ephemeral_key), v.expected.ephemeral_key);
        assert_eq!(h.change_count, v.expected.change_count);
        assert_eq!(h.plain_len, v.expected.plain_len);
        assert_eq!(h.compressed_len, v.expected.compressed_len);
        assert_eq!(h.body_len, v.expected.body_len);
        assert_eq!(hex::encode(h.body_sha256), v.expected.body_sha256);
        assert_eq!(hex::encode(r.hash()), v.expected.hash);
        let mut changes = Vec::new();
        while let Some(c) = r.next_change().unwrap() {
            changes.push(c);
        }
        assert_eq!(changes, v.changes, "{}", v.file);
        let tables: Vec<(String, Vec<String>)> = v
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.columns.clone()))
            .collect();
        assert_eq!(r.tables(), tables.as_slice(), "{}", v.file);
    }
}

#[test]
fn valid_vectors_are_written_byte_for_byte_from_their_json() {
    let keys = keys();
    let tmp = tempfile::tempdir().unwrap();
    for v in valid_vectors() {
        let committed = std::fs::read(dir().join("valid").join(&v.file)).unwrap();
        let written = seal_vector(&v, &keys, tmp.path()).unwrap();
        assert!(
            written == committed,
            "{} differs from its JSON's rewrite",
            v.file
        );
    }
}

#[test]
fn the_valid_vectors_chain_by_hash_and_cover_several_chunks() {
    let vs = valid_vectors();
    let small = vs.iter().find(|v| v.file == "small.bundle").unwrap();
    let empty = vs.iter().find(|v| v.file == "empty.bundle").unwrap();
    assert_eq!(empty.meta.prev_hash, small.expected.hash);
    let multi = vs.iter().find(|v| v.file == "multi-chunk.bundle").unwrap();
    assert!(multi.expected.compressed_len > ferry::bundle::format::CHUNK_SIZE as u64);
}

#[test]
fn the_version_2_vector_is_smaller_than_its_content_in_version_1() {
    let keys = keys();
    let tmp = tempfile::tempdir().unwrap();
    let v2 = valid_vectors()
        .into_iter()
        .find(|v| v.file == "v2-small.bundle")
        .unwrap();
    assert_eq!(v2.meta.format_version, 2);
    let mut v1 = v2.clone();
    v1.meta.format_version = 1;
    let bytes = seal_vector(&v1, &keys, tmp.path()).unwrap();
    let v1_plain = ferry::dev::bundle_craft::header_of(&bytes).plain_len;
    // Slots and clock differences: 5 references by slot, 6 clocks as differences.
    assert!(
        v2.expected.plain_len + 60 < v1_plain,
        "version 2 holds {} bytes, version 1 {v1_plain}",
        v2.expected.plain_len
    );
}

/// Each invalid vector, the defect (`BundleError::kind`) it must be refused with, and
/// a phrase its message must contain.
const INVALID: &[(&str, &str, &str)] = &[
    (
        "truncated",
        "truncated",
        "is truncated (got 2304 of 4608 bytes)",
    ),
    ("extra-bytes", "extra-bytes", "13 extra bytes after the end"),
    (
        "bad-signature",
        "bad-signature",
        "bad signature for sender \"clinic-a\"",
    ),
    ("hash-mismatch", "hash-mismatch", "hash mismatch"),
    ("bad-magic", "bad-magic", "not a ferry bundle"),
    (
        "path-traversal",
        "path-traversal",
        "\"../header\" whose path leaves the bundle",
    ),
    (
        "absolute-path",
        "absolute-path",
        "absolute path \"/header\"",
    ),
    ("symlink-member", "special-member", "is a symbolic link"),
    ("hardlink-member", "special-member", "is a hard link"),
    ("device-member", "special-member", "is a character device"),
    (
        "unknown-member",
        "unknown-member",
        "\"notes.txt\" that the bundle format does not name",
    ),
    (
        "duplicate-member",
        "duplicate-member",
        "the tar member \"signature\" twice",
    ),
    (
        "member-order",
        "member-order",
        "\"signature\" where \"header\" must come",
    ),
    (
        "missing-member",
        "malformed-tar",
        "ends where member \"body\" must come",
    ),
    (
        "unknown-version",
        "unknown-version",
        "format version 99, this ferry reads versions 1 to 2",
    ),
    // Made as `unknown-version` before version 2 existed: a version-1 bundle relabelled
    // as version 2. Version 2 signs under its own context, so it fails there.
    (
        "version-relabelled",
        "bad-signature",
        "bad signature for sender \"clinic-a\"",
    ),
    ("over-limit", "over-limit", "over the limit"),
    (
        "unknown-sender",
        "unknown-sender",
        "unknown sender \"stranger\"",
    ),
    (
        "wrong-recipient",
        "wrong-recipient",
        "addressed to \"clinic-b\", not to this node (\"hub\")",
    ),
    ("decrypt-failure", "decrypt", "chunk 0 fails authentication"),
    (
        "zip-bomb",
        "zip-bomb",
        "beyond its stated limit of 1024 bytes",
    ),
];

#[test]
fn invalid_vectors_are_refused_with_their_defect() {
    let keys = keys();
    let peers = reader_peers(&keys);
    let mut files: Vec<String> = std::fs::read_dir(dir().join("invalid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = INVALID
        .iter()
        .map(|(n, _, _)| format!("{n}.bundle"))
        .collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "every invalid vector is listed here, and only those"
    );
    for (name, kind, phrase) in INVALID {
        let path = dir().join("invalid").join(format!("{name}.bundle"));
        let err = match open(&path, READER, &keys[READER], &peers) {
            Err(e) => e,
            Ok(mut r) => loop {
                match r.next_change() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("{name} was accepted"),
                    Err(e) => break e,
                }
            },
        };
        assert_eq!(err.kind(), *kind, "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(phrase), "{name}: {msg}");
        assert!(msg.contains("\nhint: "), "{name} has no hint: {msg}");
        assert!(
            msg.starts_with(&format!("{name}.bundle ")),
            "{name}: the message names the file: {msg}"
        );
    }
}

#[test]
fn relays_check_valid_vectors_without_decrypting() {
    let keys = keys();
    let peers = reader_peers(&keys);
    for v in valid_vectors() {
        let verified = verify_header(&dir().join("valid").join(&v.file), &peers).unwrap();
        assert_eq!(hex::encode(verified.hash), v.expected.hash);
    }
}

/// Read ahead on a thread of its own (as import reads), every invalid vector whose
/// header passes ends in the same error as reading it in place.
#[test]
fn invalid_vectors_read_ahead_end_in_the_same_error() {
    let keys = keys();
    let peers = reader_peers(&keys);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut streamed = 0;
    for (name, _, _) in INVALID {
        let path = dir().join("invalid").join(format!("{name}.bundle"));
        let Ok(mut r) = open(&path, READER, &keys[READER], &peers) else {
            continue; // refused before any change is read
        };
        let plain = loop {
            match r.next_change() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{name} was accepted"),
                Err(e) => break e.to_string(),
            }
        };
        let r = open(&path, READER, &keys[READER], &peers).unwrap();
        let ahead = rt.block_on(async {
            let mut changes = ReadAhead::start(r);
            loop {
                match changes.next_batch().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("{name} was accepted read ahead"),
                    Err(e) => break e.to_string(),
                }
            }
        });
        assert_eq!(ahead, plain, "{name}");
        streamed += 1;
    }
    assert!(
        streamed >= 2,
        "only {streamed} vectors fail while streaming"
    );
}
