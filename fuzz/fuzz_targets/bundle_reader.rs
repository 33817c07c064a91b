//! Feeds arbitrary bytes to the bundle reader with fixed test keys. The first byte picks
//! the layer: the record decoder alone (0: version 2's rules, 2: version 1's), the
//! header decoder alone (1), or (default) the whole
//! reader (tar, header, signature, hashes; and if that passes, decryption and decoding).
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run bundle_reader -- -max_total_time=60`.

#![no_main]

use std::sync::OnceLock;

use ferry::bundle::body::BodyDecoder;
use ferry::bundle::{open, verify_reader, Header, NodeKeys, Peers};
use ferry::dev::bundle_synth::{fixed_keys, fixed_peers};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static (NodeKeys, Peers, tempfile::TempDir) {
    static KEYS: OnceLock<(NodeKeys, Peers, tempfile::TempDir)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            fixed_keys("hub"),
            fixed_peers(&["clinic-a", "clinic-b"]),
            tempfile::tempdir().expect("temp dir"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (hub, peers, dir) = keys();
    match data.first() {
        Some(0) => {
            let mut d = BodyDecoder::new(&data[1..], "fuzz");
            while let Ok(Some(_)) = d.next_change() {}
        }
        Some(1) => {
            let _ = Header::decode("fuzz", &data[1..]);
        }
        Some(2) => {
            let mut d = BodyDecoder::for_version(&data[1..], "fuzz", 1);
            while let Ok(Some(_)) = d.next_change() {}
        }
        _ => {
            if verify_reader(data, "fuzz", data.len() as u64, peers).is_ok() {
                let path = dir.path().join("fuzz.bundle");
                std::fs::write(&path, data).expect("write");
                if let Ok(mut r) = open(&path, "hub", hub, peers) {
                    while let Ok(Some(_)) = r.next_change() {}
                }
            }
        }
    }
});
