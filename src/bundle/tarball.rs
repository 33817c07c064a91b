//! The outer container: a strict subset of POSIX ustar with exactly the members the
//! format names, in order. The writer emits byte-for-byte fixed member headers (only
//! the name, size and checksum vary); the reader rebuilds the header it expects and
//! refuses any block that differs, so links, devices, `../`, absolute paths, pax or GNU
//! extensions, unknown names, duplicates and reordering are all refused. Nothing is
//! ever unpacked to disk: the caller reads each member's bytes in turn.

use std::io::{self, Read, Write};

use super::error::BundleError;
use super::format::{MEMBERS, TAR_BLOCK, TAR_MODE};

/// Bytes of padding after `size` content bytes to reach a block boundary.
pub fn padding(size: u64) -> u64 {
    (TAR_BLOCK as u64 - size % TAR_BLOCK as u64) % TAR_BLOCK as u64
}

/// Total file length of a bundle whose members have these sizes.
pub fn archive_len(sizes: &[u64]) -> u64 {
    sizes
        .iter()
        .map(|&s| TAR_BLOCK as u64 + s + padding(s))
        .sum::<u64>()
        + 2 * TAR_BLOCK as u64
}

/// The exact 512-byte header block of member `name` holding `size` bytes.
pub fn member_header(name: &str, size: u64) -> [u8; TAR_BLOCK] {
    let mut b = [0u8; TAR_BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    put(&mut b[100..108], &format!("{TAR_MODE}\0"));
    put(&mut b[108..116], "0000000\0");
    put(&mut b[116..124], "0000000\0");
    put(&mut b[124..136], &format!("{size:011o}\0"));
    put(&mut b[136..148], "00000000000\0");
    b[156] = b'0';
    put(&mut b[257..263], "ustar\0");
    put(&mut b[263..265], "00");
    put(&mut b[329..337], "0000000\0");
    put(&mut b[337..345], "0000000\0");
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    put(&mut b[148..156], &format!("{sum:06o}\0 "));
    b
}

/// Whether `start`, a file's first bytes (a whole block, or all the file has), can
/// begin a bundle: its name field begins like a member's, or (a whole block) it carries
/// the ustar magic. A damaged bundle keeps at least one of the two; other files have
/// neither.
fn begins_like_a_bundle(start: &[u8]) -> bool {
    let named = MEMBERS.iter().any(|m| {
        let like = member_header(m, 0);
        let n = start.len().min(100);
        start[..n] == like[..n]
    });
    named || (start.len() >= 263 && start[257..263] == *b"ustar\0")
}

fn put(field: &mut [u8], text: &str) {
    field.copy_from_slice(text.as_bytes());
}

/// Writes a member header; the caller then writes `size` bytes and [`write_padding`].
pub fn write_member_header(w: &mut impl Write, name: &str, size: u64) -> io::Result<()> {
    w.write_all(&member_header(name, size))
}

/// Writes the zero padding after `size` content bytes.
pub fn write_padding(w: &mut impl Write, size: u64) -> io::Result<()> {
    w.write_all(&[0u8; TAR_BLOCK][..padding(size) as usize])
}

/// Writes the end-of-archive marker: two zero blocks.
pub fn write_trailer(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&[0u8; 2 * TAR_BLOCK])
}

/// Reads the members of a bundle in order, refusing anything the spec does not name.
pub struct TarReader<R> {
    inner: R,
    file: String,
    file_len: u64,
    pos: u64,
    next: usize,
    expected_len: Option<u64>,
}

impl<R: Read> TarReader<R> {
    /// A reader over a file of `file_len` bytes, named `file` in messages.
    pub fn new(inner: R, file: &str, file_len: u64) -> TarReader<R> {
        TarReader {
            inner,
            file: file.to_string(),
            file_len,
            pos: 0,
            next: 0,
            expected_len: None,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The file length given at construction.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Tells the reader the whole file's length once the header states it, so a
    /// truncation is reported against it.
    pub fn set_expected_len(&mut self, len: u64) {
        self.expected_len = Some(len);
    }

    fn truncated(&self, want: u64) -> BundleError {
        BundleError::Truncated {
            file: self.file.clone(),
            got: self.file_len,
            expected: self.expected_len.unwrap_or(want).max(self.file_len + 1),
        }
    }

    /// A file that does not begin like a bundle (a note, a photo, a spreadsheet put
    /// where bundles go) is not called damaged.
    fn not_a_bundle(&self) -> BundleError {
        BundleError::BadMagic {
            file: self.file.clone(),
        }
    }

    fn malformed(&self, why: impl Into<String>) -> BundleError {
        BundleError::MalformedTar {
            file: self.file.clone(),
            why: why.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes, reporting a short file as truncated.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BundleError> {
        let want = self.pos + buf.len() as u64;
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos = want;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated(want)),
            Err(e) => Err(BundleError::Io {
                path: self.file.clone().into(),
                source: e,
            }),
        }
    }

    /// Reads the next member's header block; returns its content size. The member must
    /// be the next one [`MEMBERS`] names.
    pub fn next_member(&mut self) -> Result<(&'static str, u64), BundleError> {
        let expected = MEMBERS[self.next];
        let mut block = [0u8; TAR_BLOCK];
        if self.pos == 0 && self.file_len < TAR_BLOCK as u64 {
            // Shorter than one block: a torn copy, or not a bundle at all.
            let start = &mut block[..self.file_len as usize];
            self.read_exact(start)?;
            if !begins_like_a_bundle(start) {
                return Err(self.not_a_bundle());
            }
            return Err(self.truncated(TAR_BLOCK as u64));
        }
        self.read_exact(&mut block)?;
        if self.pos == TAR_BLOCK as u64 && !begins_like_a_bundle(&block) {
            return Err(self.not_a_bundle());
        }
        if block.iter().all(|&b| b == 0) {
            return Err(self.malformed(format!(
                "the archive ends where member {expected:?} must come"
            )));
        }
        self.check_block(&block, expected)?;
        self.next += 1;
        let size = parse_octal(&block[124..135]).ok_or_else(|| self.malformed("bad size field"))?;
        if block != member_header(expected, size) {
            return Err(self.malformed(format!(
                "member {expected:?} has header fields the spec does not allow"
            )));
        }
        Ok((expected, size))
    }

    fn check_block(
        &self,
        block: &[u8; TAR_BLOCK],
        expected: &'static str,
    ) -> Result<(), BundleError> {
        let name = member_name(block);
        let file = self.file.clone();
        let stored = parse_octal(&block[148..154]).unwrap_or(u64::MAX);
        let mut summed = *block;
        summed[148..156].fill(b' ');
        if summed.iter().map(|&x| x as u64).sum::<u64>() != stored || block[154..156] != *b"\0 " {
            return Err(self.malformed("header checksum mismatch"));
        }
        if name.starts_with('/') {
            return Err(BundleError::AbsolutePath { file, name });
        }
        if name.split(['/', '\\']).any(|part| part == "..") {
            return Err(BundleError::PathTraversal { file, name });
        }
        let kind = match block[156] {
            b'0' | 0 => None,
            b'1' => Some("hard link"),
            b'2' => Some("symbolic link"),
            b'3' => Some("character device"),
            b'4' => Some("block device"),
            b'5' => Some("directory"),
            b'6' => Some("fifo"),
            b'x' | b'g' => Some("pax extended header"),
            b'L' | b'K' => Some("gnu long name"),
            _ => Some("member of an unknown type"),
        };
        if let Some(kind) = kind {
            return Err(BundleError::SpecialMember { file, name, kind });
        }
        match MEMBERS.iter().position(|m| *m == name) {
            None => Err(BundleError::UnknownMember { file, name }),
            Some(i) if i < self.next => Err(BundleError::DuplicateMember { file, name }),
            Some(_) if name != expected => Err(BundleError::MemberOrder {
                file,
                name,
                expected,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Skips and checks the zero padding after a member of `size` bytes.
    pub fn skip_padding(&mut self, size: u64) -> Result<(), BundleError> {
        let mut pad = [0u8; TAR_BLOCK];
        let pad = &mut pad[..padding(size) as usize];
        self.read_exact(pad)?;
        if pad.iter().any(|&b| b != 0) {
            return Err(self.malformed("non-zero padding after a member"));
        }
        Ok(())
    }

    /// Checks the end-of-archive marker and that nothing follows it.
    pub fn finish(&mut self) -> Result<(), BundleError> {
        let mut block = [0u8; TAR_BLOCK];
        for _ in 0..2 {
            self.read_exact(&mut block)?;
            if block.iter().any(|&b| b != 0) {
                // Another member where the archive must end: say what it is.
                self.next = MEMBERS.len() - 1;
                let name = member_name(&block);
                if MEMBERS.contains(&name.as_str()) {
                    return Err(BundleError::DuplicateMember {
                        file: self.file.clone(),
                        name,
                    });
                }
                self.check_block(&block, MEMBERS[MEMBERS.len() - 1])?;
                return Err(self.malformed("data where the end-of-archive marker must be"));
            }
        }
        if self.file_len > self.pos {
            return Err(BundleError::ExtraBytes {
                file: self.file.clone(),
                extra: self.file_len - self.pos,
            });
        }
        let mut probe = [0u8; 1];
        match self.inner.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(BundleError::ExtraBytes {
                file: self.file.clone(),
                extra: 1,
            }),
            Err(source) => Err(BundleError::Io {
                path: self.file.clone().into(),
                source,
            }),
        }
    }

    /// Takes back the inner reader.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Records that the caller consumed `n` bytes through [`TarReader::inner_mut`].
    pub fn advance(&mut self, n: u64) {
        self.pos += n;
    }
}

fn member_name(block: &[u8; TAR_BLOCK]) -> String {
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = field(&block[..100]);
    let prefix = field(&block[345..500]);
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    field.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(8)?.checked_add((b - b'0') as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_block_is_a_standard_ustar_header() {
        // The tar crate must read what we write, as any tar tool would.
        let mut bytes = Vec::new();
        for (name, data) in [("header", &b"abc"[..]), ("signature", &[9u8; 64][..])] {
            write_member_header(&mut bytes, name, data.len() as u64).unwrap();
            bytes.extend_from_slice(data);
            write_padding(&mut bytes, data.len() as u64).unwrap();
        }
        write_trailer(&mut bytes).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().size().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![("header".to_string(), 3), ("signature".to_string(), 64)]
        );
        assert_eq!(archive_len(&[3, 64]), bytes.len() as u64);
    }

    #[test]
    fn reader_refuses_symlinks_and_traversal() {
        let mut b = member_header("header", 0);
        b[156] = b'2';
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut r = TarReader::new(&b[..], "f", 512);
        let e = r.next_member().unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::SpecialMember {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        let b = member_header("../header", 0);
        let mut r = TarReader::new(&b[..], "f", 512);
        assert!(matches!(
            r.next_member(),
            Err(BundleError::PathTraversal { .. })
        ));
        let b = member_header("/etc/passwd", 0);
        let mut r = TarReader::new(&b[..], "f", 512);
        assert!(matches!(
            r.next_member(),
            Err(BundleError::AbsolutePath { .. })
        ));
        let b = member_header("body", 0);
        let mut r = TarReader::new(&b[..], "f", 512);
        assert!(matches!(
            r.next_member(),
            Err(BundleError::MemberOrder { .. })
        ));
        let r = TarReader::new(&b[..100], "f", 100).next_member_owned();
        assert!(matches!(r, Err(BundleError::Truncated { got: 100, .. })));
    }

    /// A file that is no bundle at all is named as such, not as a damaged one; a torn
    /// copy of a bundle is still truncated (issue 4: `ferry import notes.txt` said the
    /// note was truncated and should be copied again from the sender).
    #[test]
    fn a_file_that_does_not_begin_like_a_bundle_is_not_called_damaged() {
        let not_a_bundle = |bytes: &[u8]| {
            let r = TarReader::new(bytes, "f", bytes.len() as u64).next_member_owned();
            matches!(r, Err(BundleError::BadMagic { .. }))
        };
        assert!(not_a_bundle(b"hello\n"));
        assert!(not_a_bundle(&[b'%'; 4096]));
        let mut pdf = b"%PDF-1.7\n".to_vec();
        pdf.resize(3000, b' ');
        assert!(not_a_bundle(&pdf));
        // A bundle's first block, however torn or damaged, is not refused as no bundle.
        let b = member_header("header", 40);
        for cut in [0, 1, 6, 99, 300, 511] {
            let r = TarReader::new(&b[..cut], "f", cut as u64).next_member_owned();
            assert!(matches!(r, Err(BundleError::Truncated { .. })), "cut {cut}");
        }
        let mut damaged = b;
        damaged[257..263].fill(b'x');
        assert!(!not_a_bundle(&damaged));
        let mut damaged = b;
        damaged[..6].fill(b'x');
        assert!(!not_a_bundle(&damaged));
    }

    impl<R: Read> TarReader<R> {
        fn next_member_owned(mut self) -> Result<(&'static str, u64), BundleError> {
            self.next_member()
        }
    }
}
