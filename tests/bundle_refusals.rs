//! Every way a bundle is refused, built fresh (the vectors cover the same defects as
//! files): truncation at every byte, extra bytes, tampering, foreign members, limits,
//! and the reader's refusal to go on after a failure. Each message is asserted.

use std::path::Path;

use ferry::bundle::{open, verify_reader, BundleError, BundleMeta, BundleWriter, Peers};
use ferry::dev::bundle_craft::{assemble, header_of, resign, split, RawMember};
use ferry::dev::bundle_synth::{fixed_keys, fixed_peers, obs_change, obs_columns};
use rand::SeedableRng;

fn seal(dir: &Path, sender: &str, recipient: &str, seq: u64, changes: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seq);
    let mut meta = BundleMeta::new(sender, recipient, seq, [0; 32]);
    if seq > 1 {
        meta.prev_hash = [1; 32];
    }
    let mut w = BundleWriter::new(
        dir,
        &fixed_keys(sender),
        &fixed_keys(recipient).public(),
        meta,
        &mut rng,
    )
    .unwrap();
    w.declare_table("obs", &obs_columns()).unwrap();
    for i in 0..changes {
        w.push(&obs_change(sender, i)).unwrap();
    }
    let mut out = Vec::new();
    w.finish_to(&mut out).unwrap();
    out
}

fn peers() -> Peers {
    fixed_peers(&["clinic-a", "clinic-b"])
}

fn verify(bytes: &[u8]) -> Result<(), BundleError> {
    verify_reader(bytes, "b.bundle", bytes.len() as u64, &peers()).map(|_| ())
}

/// Opens `bytes` as hub and reads every change; the first error.
fn read_all(dir: &Path, bytes: &[u8]) -> Result<u64, BundleError> {
    let path = dir.join("b.bundle");
    std::fs::write(&path, bytes).unwrap();
    let mut r = open(&path, "hub", &fixed_keys("hub"), &peers())?;
    let mut n = 0;
    while r.next_change()?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn assert_refused(result: Result<impl std::fmt::Debug, BundleError>, kind: &str, phrase: &str) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.kind(), kind, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(phrase), "{msg}");
    assert!(msg.contains("\nhint: "), "{msg}");
}

#[test]
fn sound_bundle_opens() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 300);
    assert_eq!(read_all(dir.path(), &bytes).unwrap(), 300);
}

#[test]
fn truncated_at_every_byte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 20);
    for cut in 0..bytes.len() {
        let err = verify(&bytes[..cut]).expect_err("truncated bundle accepted");
        assert_eq!(err.kind(), "truncated", "cut at {cut}: {err}");
    }
    let mid = bytes.len() / 2;
    assert_refused(
        verify(&bytes[..mid]),
        "truncated",
        &format!("b.bundle is truncated (got {mid} of {} bytes)", bytes.len()),
    );
    assert_refused(
        verify(&bytes[..mid]),
        "truncated",
        "hint: copy it again from the sender's outbox",
    );
}

#[test]
fn extra_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 5);
    for extra in [&[0u8][..], &[0; 512], &[0; 1024], b"x", &[7; 10_000]] {
        let mut b = bytes.clone();
        b.extend_from_slice(extra);
        let err = verify(&b).expect_err("extra bytes accepted");
        assert!(
            matches!(err, BundleError::ExtraBytes { .. }),
            "{} extra: {err}",
            extra.len()
        );
    }
    let mut b = bytes.clone();
    b.extend_from_slice(b"abc");
    assert_refused(verify(&b), "extra-bytes", "has 3 extra bytes after the end");
}

#[test]
fn unknown_sender_and_wrong_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let stranger = seal(dir.path(), "stranger", "hub", 1, 1);
    assert_refused(
        verify(&stranger),
        "unknown-sender",
        "comes from unknown sender \"stranger\"\nhint: if stranger is a genuine node, add it with `ferry peer add stranger KEY`",
    );
    let other = seal(dir.path(), "clinic-a", "clinic-b", 1, 1);
    verify(&other).unwrap();
    assert_refused(
        read_all(dir.path(), &other),
        "wrong-recipient",
        "is addressed to \"clinic-b\", not to this node (\"hub\")",
    );
}

#[test]
fn tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 50);
    let members = split(&bytes);
    let mut m = members.clone();
    m[1].data[0] ^= 1;
    assert_refused(
        verify(&assemble(&m)),
        "bad-signature",
        "has a bad signature for sender \"clinic-a\"",
    );
    let mut m = members.clone();
    let last = m[2].data.len() - 1;
    m[2].data[last] ^= 0x80;
    assert_refused(verify(&assemble(&m)), "hash-mismatch", "hash mismatch");
    // A header re-signed by another known node is still a bad signature for the sender.
    let h = header_of(&bytes);
    assert_refused(
        verify(&resign(&bytes, &h, &fixed_keys("clinic-b"))),
        "bad-signature",
        "bad signature",
    );
    // A header with a different body hash, properly signed, but the body unchanged.
    let mut h2 = h.clone();
    h2.body_sha256[0] ^= 1;
    assert_refused(
        verify(&resign(&bytes, &h2, &fixed_keys("clinic-a"))),
        "hash-mismatch",
        "does not match the hash its signed header states",
    );
    // Stating fewer changes than the body holds: the body is authentic, the count not.
    let mut h3 = h.clone();
    h3.change_count = 49;
    assert_refused(
        read_all(dir.path(), &resign(&bytes, &h3, &fixed_keys("clinic-a"))),
        "corrupt",
        "the change count differs from the header's",
    );
}

/// An edit of a bundle's members.
type Edit = Box<dyn Fn(&mut Vec<RawMember>)>;

#[test]
fn foreign_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 3);
    let members = split(&bytes);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|m| m[0].name = "a/../../header".into()),
            "path-traversal",
            "path leaves the bundle",
        ),
        (
            Box::new(|m| m[2].name = "/body".into()),
            "absolute-path",
            "absolute path \"/body\"",
        ),
        (
            Box::new(|m| {
                m[1].typeflag = b'2';
                m[1].linkname = "../../etc/shadow".into();
            }),
            "special-member",
            "\"signature\" that is a symbolic link",
        ),
        (
            Box::new(|m| m[2].typeflag = b'1'),
            "special-member",
            "that is a hard link",
        ),
        (
            Box::new(|m| m[0].typeflag = b'4'),
            "special-member",
            "that is a block device",
        ),
        (
            Box::new(|m| m[0].typeflag = b'6'),
            "special-member",
            "that is a fifo",
        ),
        (
            Box::new(|m| m[0].typeflag = b'x'),
            "special-member",
            "pax extended header",
        ),
        (
            Box::new(|m| m.insert(0, RawMember::file("README", vec![1]))),
            "unknown-member",
            "\"README\" that the bundle format does not name",
        ),
        (
            Box::new(|m| m.push(RawMember::file("extra", vec![1]))),
            "unknown-member",
            "\"extra\"",
        ),
        (
            Box::new(|m| m.push(m[2].clone())),
            "duplicate-member",
            "the tar member \"body\" twice",
        ),
        (
            Box::new(|m| m.swap(1, 2)),
            "member-order",
            "has the tar member \"body\" where \"signature\" must come",
        ),
        (
            Box::new(|m| m[0].name = "Header".into()),
            "unknown-member",
            "\"Header\"",
        ),
    ];
    for (edit, kind, phrase) in cases {
        let mut m = members.clone();
        edit(&mut m);
        assert_refused(verify(&assemble(&m)), kind, phrase);
    }
    // A non-zero byte in a header field the spec fixes (here: uid).
    let mut b = bytes.clone();
    b[108] = b'1';
    let err = verify(&b).unwrap_err();
    assert_eq!(err.kind(), "malformed-tar", "{err}");
}

#[test]
fn version_magic_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 3);
    let keys = fixed_keys("clinic-a");
    let mut encoded = header_of(&bytes).encode();
    encoded[9] = 9;
    let b = ferry::dev::bundle_craft::resign_raw(&bytes, encoded, &keys);
    assert_refused(
        verify(&b),
        "unknown-version",
        "uses bundle format version 9, this ferry reads versions 1 to 2\nhint: upgrade ferry",
    );
    let mut m = split(&bytes);
    m[0].data[..8].copy_from_slice(b"NOTFERRY");
    assert_refused(verify(&assemble(&m)), "bad-magic", "is not a ferry bundle");
    let mut m = split(&bytes);
    m[0].data = vec![b'F'; 70_000];
    assert_refused(
        verify(&assemble(&m)),
        "over-limit",
        "states a header member of 70000 bytes, over the limit of 65536",
    );
}

#[test]
fn zip_bomb_is_refused_and_the_reader_stays_failed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 2000);
    let mut h = header_of(&bytes);
    let real = h.plain_len;
    h.plain_len = real / 2;
    let bomb = resign(&bytes, &h, &fixed_keys("clinic-a"));
    let path = dir.path().join("bomb.bundle");
    std::fs::write(&path, &bomb).unwrap();
    let mut r = open(&path, "hub", &fixed_keys("hub"), &peers()).unwrap();
    let err = loop {
        match r.next_change() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("bomb accepted"),
            Err(e) => break e,
        }
    };
    assert_refused(
        Err::<(), _>(err),
        "zip-bomb",
        &format!(
            "bomb.bundle body decompresses beyond its stated limit of {} bytes (zip bomb guard)",
            real / 2
        ),
    );
    assert_refused(
        r.next_change(),
        "poisoned",
        "reading bomb.bundle already failed, nothing of it can be trusted\nhint: roll back",
    );
    assert!(r.next().is_none(), "the iterator ends after a failure");
    // Stating more than the body holds is refused too, at the end.
    h.plain_len = real + 1;
    let short = resign(&bytes, &h, &fixed_keys("clinic-a"));
    assert_refused(
        read_all(dir.path(), &short),
        "corrupt",
        "shorter than the header states",
    );
}

#[test]
fn body_sealed_to_another_key_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    // Sealed for clinic-b, then its header re-addressed to hub and re-signed.
    let bytes = seal(dir.path(), "clinic-a", "clinic-b", 1, 3);
    let mut h = header_of(&bytes);
    h.recipient = "hub".into();
    let b = resign(&bytes, &h, &fixed_keys("clinic-a"));
    assert_refused(
        read_all(dir.path(), &b),
        "decrypt",
        "body chunk 0 fails authentication (cannot decrypt)",
    );
}

#[test]
fn every_refusal_kind_is_a_refusal_and_local_trouble_is_not() {
    let io = BundleError::Io {
        path: "x".into(),
        source: std::io::Error::other("disk full"),
    };
    assert!(!io.is_refusal());
    assert!(io.to_string().contains("hint: "));
    let r = BundleError::HashMismatch { file: "f".into() };
    assert!(r.is_refusal());
}

#[test]
fn malformed_header_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 1);
    let mut m = split(&bytes);
    m[0].data.truncate(20);
    assert_refused(
        verify(&assemble(&m)),
        "malformed-header",
        "has a malformed bundle header (undecodable",
    );
    let mut h = header_of(&bytes);
    h.acks = vec![("zz".into(), 1), ("aa".into(), 2)];
    assert_refused(
        verify(&resign(&bytes, &h, &fixed_keys("clinic-a"))),
        "malformed-header",
        "acks not sorted by unique node name",
    );
}

#[test]
fn a_renamed_bundle_is_refused_on_receive() {
    use ferry::transport::{receive, Receiver, StateDirs};
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    let bytes = seal(dir.path(), "clinic-a", "hub", 1, 2);
    // Sequence 1 presented as sequence 5.
    let renamed = "ferry.clinic-a.hub.0000000000000005.bundle";
    std::fs::write(stick.join(renamed), &bytes).unwrap();
    let state = StateDirs::new(&dir.path().join("hub"));
    let keys = fixed_keys("hub");
    let peers = peers();
    let rx = Receiver {
        me: "hub",
        relay_for: &[],
        keys: &keys,
        peers: &peers,
    };
    let report = receive(&state, &stick, &rx, &indicatif::ProgressBar::hidden()).unwrap();
    assert!(report.received.is_empty());
    assert_eq!(report.refused.len(), 1);
    let r = &report.refused[0];
    assert_eq!(r.kind, "name-mismatch");
    assert!(
        r.reason
            .contains("is named for clinic-a → hub #5 but its signed header says clinic-a → hub #1\nhint: the file was renamed"),
        "{}",
        r.reason
    );
    assert!(
        state.inbox_bundles().unwrap().is_empty(),
        "nothing kept in the inbox"
    );
    assert_eq!(
        std::fs::read_dir(state.inbox()).unwrap().count(),
        0,
        "no temporary file left in the inbox"
    );
}
