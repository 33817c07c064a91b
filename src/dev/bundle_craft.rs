//! Taking bundles apart and putting them back together wrongly, on purpose: the
//! invalid test vectors, the refusal tests and the mutation test build their defective
//! files with these helpers. Operators never need them.

use crate::bundle::format::{MEMBER_BODY, MEMBER_HEADER, MEMBER_SIGNATURE, TAR_BLOCK};
use crate::bundle::header::{sign, Header};
use crate::bundle::tarball::{member_header, padding};
use crate::bundle::NodeKeys;

/// One tar member as it will be written: any name, type and link target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMember {
    /// The member's path (at most 100 bytes).
    pub name: String,
    /// The ustar typeflag byte (`b'0'` regular, `b'2'` symlink, ...).
    pub typeflag: u8,
    /// The link target (for links).
    pub linkname: String,
    /// The content.
    pub data: Vec<u8>,
}

impl RawMember {
    /// A regular member.
    pub fn file(name: &str, data: Vec<u8>) -> RawMember {
        RawMember {
            name: name.into(),
            typeflag: b'0',
            linkname: String::new(),
            data,
        }
    }
}

/// The members of a well-formed bundle (panics on anything else: test input only).
pub fn split(bytes: &[u8]) -> Vec<RawMember> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + TAR_BLOCK <= bytes.len() && bytes[pos..pos + TAR_BLOCK].iter().any(|&b| b != 0) {
        let block = &bytes[pos..pos + TAR_BLOCK];
        let end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8(block[..end].to_vec()).expect("utf-8 name");
        let size_text = std::str::from_utf8(&block[124..135]).expect("octal size");
        let size = u64::from_str_radix(size_text, 8).expect("octal size") as usize;
        pos += TAR_BLOCK;
        out.push(RawMember {
            name,
            typeflag: block[156],
            linkname: String::new(),
            data: bytes[pos..pos + size].to_vec(),
        });
        pos += size + padding(size as u64) as usize;
    }
    out
}

/// Writes members as a tar archive with the end-of-archive marker.
pub fn assemble(members: &[RawMember]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut block = member_header(&m.name, m.data.len() as u64);
        block[156] = m.typeflag;
        block[157..157 + m.linkname.len()].copy_from_slice(m.linkname.as_bytes());
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&x| x as u32).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(&m.data);
        out.resize(out.len() + padding(m.data.len() as u64) as usize, 0);
    }
    out.resize(out.len() + 2 * TAR_BLOCK, 0);
    out
}

/// The decoded header of a well-formed bundle.
pub fn header_of(bytes: &[u8]) -> Header {
    let members = split(bytes);
    Header::decode("crafted", &members[0].data).expect("valid header")
}

/// Replaces a bundle's header with `header` (re-encoded and re-signed by `keys`).
pub fn resign(bytes: &[u8], header: &Header, keys: &NodeKeys) -> Vec<u8> {
    let encoded = header.encode();
    resign_raw(bytes, encoded, keys)
}

/// Replaces a bundle's header member with `encoded` bytes, re-signed by `keys`.
pub fn resign_raw(bytes: &[u8], encoded: Vec<u8>, keys: &NodeKeys) -> Vec<u8> {
    let signature = sign(keys, &encoded);
    with_header(bytes, encoded, signature)
}

/// [`resign_raw`], signing under `context` whatever version the header states.
pub fn resign_raw_in(bytes: &[u8], encoded: Vec<u8>, keys: &NodeKeys, context: &str) -> Vec<u8> {
    let signature = crate::bundle::header::sign_in_context(keys, context, &encoded);
    with_header(bytes, encoded, signature)
}

fn with_header(bytes: &[u8], encoded: Vec<u8>, signature: [u8; 64]) -> Vec<u8> {
    let members = split(bytes);
    let signature = signature.to_vec();
    assemble(&[
        RawMember::file(MEMBER_HEADER, encoded),
        RawMember::file(MEMBER_SIGNATURE, signature),
        RawMember::file(MEMBER_BODY, members[2].data.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_assemble_is_identity_for_regular_members() {
        let members = vec![
            RawMember::file("header", vec![1, 2, 3]),
            RawMember::file("signature", vec![4; 64]),
            RawMember::file("body", vec![5; 600]),
        ];
        let bytes = assemble(&members);
        assert_eq!(split(&bytes), members);
        assert_eq!(bytes.len() % TAR_BLOCK, 0);
    }
}
