//! What a payload file's first bytes say it is: the format `slipway sign` writes into a
//! release (`raw`, `zstd`, `xz`, the encodings nodes decode) and compressions nodes cannot
//! decode, which signing refuses instead of shipping bytes no node can install.

use std::fmt;

use slipway_api::manifest::PayloadFormat;

/// How many leading bytes [`detect`] needs (the longest magic, xz's).
pub const MAGIC_LEN: usize = 6;

/// zstd frame: `0xFD2FB528` little-endian.
const ZSTD: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// xz stream header.
const XZ: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
/// lz4 frame: `0x184D2204` little-endian.
const LZ4: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// What a payload's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    /// An encoding nodes decode ([`PayloadFormat::Raw`] when no known magic matches).
    Format(PayloadFormat),
    /// A compression nodes cannot decode; the name of it (`gzip`, `bzip2`, `lz4`).
    Unsupported(&'static str),
}

/// Judges a payload by its first bytes (up to [`MAGIC_LEN`]; fewer only for tiny files).
/// Anything that carries no known compression magic is the slot image itself (`raw`).
pub fn detect(head: &[u8]) -> Magic {
    if head.starts_with(&ZSTD) || is_zstd_skippable(head) {
        // A stream may begin with a skippable frame (metadata); the engine's zstd decoder
        // passes over it, so it is zstd all the same.
        Magic::Format(PayloadFormat::Zstd)
    } else if head.starts_with(&XZ) {
        Magic::Format(PayloadFormat::Xz)
    } else if head.starts_with(&[0x1F, 0x8B]) {
        Magic::Unsupported("gzip")
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Magic::Unsupported("bzip2")
    } else if head.starts_with(&LZ4) {
        Magic::Unsupported("lz4")
    } else {
        Magic::Format(PayloadFormat::Raw)
    }
}

/// zstd skippable frames: `0x184D2A50`..=`0x184D2A5F` little-endian.
fn is_zstd_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xF0 == 0x50 && head[1..4] == [0x2A, 0x4D, 0x18]
}

impl fmt::Display for Magic {
    /// How a file of this kind is described in messages: `zstd-compressed`, `not compressed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Magic::Format(PayloadFormat::Raw) => f.write_str("not compressed (raw)"),
            Magic::Format(other) => write!(f, "{}-compressed", other.as_str()),
            Magic::Unsupported(name) => write!(f, "{name}-compressed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_magic_bytes() {
        let raw = Magic::Format(PayloadFormat::Raw);
        let cases: &[(&[u8], Magic)] = &[
            // `zstd -c`, `xz -c`, `gzip -c`, `bzip2 -c`, `lz4 -c` of "hello\n".
            (
                &[0x28, 0xB5, 0x2F, 0xFD, 0x04, 0x58],
                Magic::Format(PayloadFormat::Zstd),
            ),
            (
                &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00],
                Magic::Format(PayloadFormat::Xz),
            ),
            (
                &[0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00],
                Magic::Unsupported("gzip"),
            ),
            (b"BZh91A", Magic::Unsupported("bzip2")),
            (
                &[0x04, 0x22, 0x4D, 0x18, 0x64, 0x40],
                Magic::Unsupported("lz4"),
            ),
            // A skippable frame first (seekable-format metadata, pzstd headers).
            (
                &[0x50, 0x2A, 0x4D, 0x18, 0x04, 0x00],
                Magic::Format(PayloadFormat::Zstd),
            ),
            (
                &[0x5F, 0x2A, 0x4D, 0x18, 0x04, 0x00],
                Magic::Format(PayloadFormat::Zstd),
            ),
            // Not quite: the slot image itself.
            (&[0x60, 0x2A, 0x4D, 0x18, 0x04, 0x00], raw),
            (&[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x01], raw),
            (b"BZh0xx", raw),
            (b"hsqs\0\0", raw), // squashfs
            (&[0u8; 6], raw),   // ext4, GPT disk images: zeros first
            (&[0x28, 0xB5, 0x2F], raw),
            (&[], raw),
        ];
        for (head, want) in cases {
            assert_eq!(detect(head), *want, "{head:02x?}");
        }
    }

    #[test]
    fn descriptions() {
        assert_eq!(
            Magic::Format(PayloadFormat::Zstd).to_string(),
            "zstd-compressed"
        );
        assert_eq!(
            Magic::Format(PayloadFormat::Raw).to_string(),
            "not compressed (raw)"
        );
        assert_eq!(Magic::Unsupported("gzip").to_string(), "gzip-compressed");
        // The names are the manifest's own spelling.
        for f in [PayloadFormat::Raw, PayloadFormat::Zstd, PayloadFormat::Xz] {
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::Value::from(f.as_str())
            );
        }
    }

    proptest! {
        /// Only the first bytes matter: whatever follows a magic does not change the verdict.
        #[test]
        fn verdict_depends_only_on_the_head(
            head in proptest::collection::vec(any::<u8>(), MAGIC_LEN),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut long = head.clone();
            long.extend(&tail);
            prop_assert_eq!(detect(&head), detect(&long));
        }
    }
}
