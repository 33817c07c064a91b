//! `bundle-format/SPEC.md` and `src/bundle/format.rs` must agree: every constant in the
//! spec's constants table equals the code's, and every constant the code has is in the
//! table. Also checks that the spec's worked examples match the encoder.

use std::collections::BTreeMap;

use ferry::bundle::format::*;

fn code_constants() -> BTreeMap<&'static str, String> {
    let s = |v: &str| format!("\"{v}\"");
    BTreeMap::from([
        ("MAGIC", s(std::str::from_utf8(MAGIC).unwrap())),
        ("FORMAT_VERSION", FORMAT_VERSION.to_string()),
        ("OLDEST_FORMAT_VERSION", OLDEST_FORMAT_VERSION.to_string()),
        ("MEMBER_HEADER", s(MEMBER_HEADER)),
        ("MEMBER_SIGNATURE", s(MEMBER_SIGNATURE)),
        ("MEMBER_BODY", s(MEMBER_BODY)),
        ("TAR_BLOCK", TAR_BLOCK.to_string()),
        ("TAR_MODE", s(TAR_MODE)),
        ("MAX_HEADER_LEN", MAX_HEADER_LEN.to_string()),
        ("SIGNATURE_LEN", SIGNATURE_LEN.to_string()),
        ("MAX_PLAIN_LEN", MAX_PLAIN_LEN.to_string()),
        ("MAX_RECORD_LEN", MAX_RECORD_LEN.to_string()),
        ("ZSTD_WINDOW_LOG_MAX", ZSTD_WINDOW_LOG_MAX.to_string()),
        ("ZSTD_LEVEL", ZSTD_LEVEL.to_string()),
        ("CHUNK_SIZE", CHUNK_SIZE.to_string()),
        ("TAG_LEN", TAG_LEN.to_string()),
        ("MAX_ACKS", MAX_ACKS.to_string()),
        ("MAX_TABLES", MAX_TABLES.to_string()),
        ("MAX_COLUMNS", MAX_COLUMNS.to_string()),
        ("MAX_NODES", MAX_NODES.to_string()),
        ("REF_SLOTS", REF_SLOTS.to_string()),
        ("SIGNATURE_CONTEXT", s(SIGNATURE_CONTEXT)),
        ("KDF_INFO", s(KDF_INFO)),
        ("SIGNATURE_CONTEXT_V1", s(SIGNATURE_CONTEXT_V1)),
        ("KDF_INFO_V1", s(KDF_INFO_V1)),
        ("PUBLIC_KEY_PREFIX", s(PUBLIC_KEY_PREFIX)),
        ("SECRET_KEY_PREFIX", s(SECRET_KEY_PREFIX)),
        ("FILE_PREFIX", s(FILE_PREFIX)),
        ("FILE_SUFFIX", s(FILE_SUFFIX)),
        ("SEQ_DIGITS", SEQ_DIGITS.to_string()),
    ])
}

fn spec() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bundle-format/SPEC.md"
    ))
    .unwrap()
}

/// The rows `| `NAME` | `value` |` of the "Constants" section.
fn spec_constants() -> BTreeMap<String, String> {
    let text = spec();
    let start = text.find("## 11. Constants").expect("constants section");
    let end = start + text[start..].find("\n## 12").expect("next section");
    let mut out = BTreeMap::new();
    for line in text[start..end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() == 4 && cells[1].starts_with('`') && cells[2].starts_with('`') {
            let name = cells[1].trim_matches('`').to_string();
            let value = cells[2].trim_matches('`').to_string();
            assert!(out.insert(name.clone(), value).is_none(), "{name} twice");
        }
    }
    out
}

#[test]
fn every_constant_in_the_spec_equals_the_code() {
    let code = code_constants();
    let spec = spec_constants();
    for (name, value) in &spec {
        let ours = code
            .get(name.as_str())
            .unwrap_or_else(|| panic!("SPEC.md names {name}, which format.rs lacks"));
        assert_eq!(value, ours, "{name}: SPEC.md says {value}, the code {ours}");
    }
    for name in code.keys() {
        assert!(spec.contains_key(*name), "{name} is missing from SPEC.md");
    }
}

#[test]
fn every_constant_in_format_rs_is_checked() {
    // A constant added to format.rs without a row here (and in the spec) fails this.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/bundle/format.rs"))
        .unwrap();
    let code = code_constants();
    for line in src.lines() {
        if let Some(rest) = line.strip_prefix("pub const ") {
            let name = rest.split(':').next().unwrap();
            if name != "MEMBERS" {
                assert!(
                    code.contains_key(name),
                    "{name} is not checked against SPEC.md"
                );
            }
        }
    }
}

#[test]
fn spec_examples_match_the_encoder() {
    use ferry::bundle::Value;
    let text = spec();
    let hex_of = |v: &Value| {
        postcard::to_allocvec(v)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (v, shown) in [
        (Value::Int(-2), "`Int(-2)` is `01 03`"),
        (
            Value::Date {
                year: 2024,
                month: 2,
                day: 29,
            },
            "`Date(2024, 2, 29)` is `08 e8 0f 02 1d`",
        ),
        (
            Value::Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 999_999,
            },
            "`Time(true, 838, 59, 59, 999999)` is `0a 01 c6 06 3b 3b bf 84 3d`",
        ),
    ] {
        assert!(text.contains(shown), "SPEC.md lost the example {shown}");
        let bytes = shown.rsplit('`').nth(1).unwrap();
        assert_eq!(hex_of(&v), bytes, "{shown}");
    }
    let name = BundleName {
        sender: "clinic-a".into(),
        recipient: "hub".into(),
        seq: 17,
    };
    assert!(text.contains(&format!("Example: `{}`", name.file_name())));
}
