//! The GRUB environment block (`grubenv`): GRUB's fixed-size file of variables, parsed and
//! written byte-exactly so that a rewrite keeps every line it does not touch. Only the format
//! lives here; which variables Slipway keeps in it is the GRUB backend's business (`grub`).
//!
//! The format: the line `# GRUB Environment Block\n`, then `NAME=VALUE\n` lines (and `#`
//! comment lines), padded with `#` to exactly 1024 bytes. In values `\` is written `\\` and a
//! newline `\` + newline, as grub-editenv does.

/// Size of a GRUB environment block file; GRUB rewrites it in place and never resizes it.
pub const ENV_SIZE: usize = 1024;

/// First line of every environment block.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";

/// One line of an environment block after the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A `#` line other than the trailing padding, kept byte for byte (grub-editenv writes a
    /// warning comment we must not drop).
    Comment(Vec<u8>),
    /// `NAME=VALUE`: the value unescaped, and as the file spells it (GRUB reads `\x` as `x`
    /// for any `x`, so one value has several spellings; an untouched line keeps its own).
    Var {
        name: Vec<u8>,
        value: Vec<u8>,
        raw: Vec<u8>,
    },
}

/// A parsed GRUB environment block that keeps every line it does not touch, so that rewriting it
/// preserves other tools' variables and comments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvBlock {
    lines: Vec<Line>,
}

impl EnvBlock {
    /// An empty block (signature and padding only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a block, refusing anything GRUB would misread or that grub-editenv could not have
    /// written (wrong size or signature, NUL bytes, a line without `=`, an unterminated line,
    /// anything but `#` after the last line). The error says what and where.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != ENV_SIZE {
            return Err(format!(
                "environment block is {} bytes, expected {ENV_SIZE}",
                bytes.len()
            ));
        }
        if !bytes.starts_with(SIGNATURE) {
            return Err("missing the \"# GRUB Environment Block\" signature".into());
        }
        if let Some(at) = bytes.iter().position(|&b| b == 0) {
            return Err(format!("NUL byte at offset {at}"));
        }
        let body = &bytes[SIGNATURE.len()..];
        let offset = |i: usize| SIGNATURE.len() + i;
        let mut lines = Vec::new();
        let mut p = 0;
        while p < body.len() {
            if body[p] == b'#' {
                // Comment lines skip escaped characters like values do (GRUB's find_next_line).
                match line_end(body, p) {
                    Some(end) => {
                        lines.push(Line::Comment(body[p..=end].to_vec()));
                        p = end + 1;
                    }
                    None => {
                        // The padding: must be `#` to the end, or GRUB's save_env calls the block
                        // broken.
                        if let Some(i) = body[p..].iter().position(|&b| b != b'#') {
                            return Err(format!(
                                "unterminated line at offset {} (the padding must be all '#')",
                                offset(p + i)
                            ));
                        }
                        break;
                    }
                }
                continue;
            }
            let eq = body[p..]
                .iter()
                .position(|&b| b == b'=' || b == b'\n')
                .map(|i| p + i);
            let eq = match eq {
                Some(i) if body[i] == b'=' => i,
                _ => return Err(format!("line at offset {} has no '='", offset(p))),
            };
            if eq == p {
                return Err(format!("empty variable name at offset {}", offset(p)));
            }
            let Some(end) = line_end(body, eq + 1) else {
                return Err(format!(
                    "unterminated value of {} at offset {}",
                    String::from_utf8_lossy(&body[p..eq]),
                    offset(eq + 1)
                ));
            };
            lines.push(Line::Var {
                name: body[p..eq].to_vec(),
                value: unescape(&body[eq + 1..end]),
                raw: body[eq + 1..end].to_vec(),
            });
            p = end + 1;
        }
        Ok(Self { lines })
    }

    /// The block as the 1024 bytes GRUB reads, or why it does not fit.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(ENV_SIZE);
        out.extend_from_slice(SIGNATURE);
        for line in &self.lines {
            match line {
                Line::Comment(raw) => out.extend_from_slice(raw),
                Line::Var { name, raw, .. } => {
                    out.extend_from_slice(name);
                    out.push(b'=');
                    out.extend_from_slice(raw);
                    out.push(b'\n');
                }
            }
        }
        if out.len() > ENV_SIZE {
            return Err(format!(
                "environment block full: {} bytes of variables, {ENV_SIZE} available",
                out.len()
            ));
        }
        out.resize(ENV_SIZE, b'#');
        Ok(out)
    }

    /// The value of `name` as GRUB's `load_env` sees it (the last one if repeated).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::Var { name: n, value, .. } if n == name.as_bytes() => Some(value.as_slice()),
            _ => None,
        })
    }

    /// Every variable in file order, values unescaped.
    pub fn vars(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.iter().filter_map(|l| match l {
            Line::Var { name, value, .. } => Some((name.as_slice(), value.as_slice())),
            Line::Comment(_) => None,
        })
    }

    /// Sets `name` in place (first occurrence; later duplicates are dropped so that GRUB and we
    /// agree on the value), or appends it.
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        if name.is_empty() || name.starts_with('#') || name.contains(['=', '\n', '\0']) {
            return Err(format!("invalid variable name {name:?}"));
        }
        if value.contains(&0) {
            return Err(format!("value of {name} contains a NUL byte"));
        }
        let mut seen = false;
        self.lines.retain_mut(|l| match l {
            Line::Var {
                name: n,
                value: v,
                raw,
            } if n == name.as_bytes() => {
                if seen {
                    return false;
                }
                seen = true;
                *v = value.to_vec();
                *raw = escape(value);
                true
            }
            _ => true,
        });
        if !seen {
            self.lines.push(Line::Var {
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
                raw: escape(value),
            });
        }
        Ok(())
    }
}

/// A value as grub-editenv writes it: `\` and newline escaped with `\`.
fn escape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if b == b'\\' || b == b'\n' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Index of the `\n` ending the line that starts at `from`, skipping `\x` escapes; `None` if the
/// line runs to the end of the block.
fn line_end(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'\n' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            // line_end guarantees an escape is never the last byte of a line.
            if let Some(&next) = it.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block with `body` after the signature, padded with `#`.
    fn block(body: &[u8]) -> Vec<u8> {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(body);
        bytes.resize(ENV_SIZE, b'#');
        bytes
    }

    #[test]
    fn empty_block_is_signature_and_padding() {
        let bytes = EnvBlock::new().to_bytes().unwrap();
        assert_eq!(bytes, block(b""));
        let parsed = EnvBlock::parse(&bytes).unwrap();
        assert_eq!(parsed, EnvBlock::new());
        assert_eq!(parsed.vars().count(), 0);
    }

    #[test]
    fn malformed_blocks_are_refused_saying_what_and_where() {
        let at = SIGNATURE.len();
        let mut nul = block(b"a=1\n");
        nul[at + 2] = 0;
        let cases: [(&str, Vec<u8>, String); 9] = [
            (
                "short",
                block(b"")[..1000].to_vec(),
                "1000 bytes, expected 1024".into(),
            ),
            (
                "long",
                [block(b""), b"#".to_vec()].concat(),
                "1025 bytes".into(),
            ),
            ("signature", vec![b'#'; ENV_SIZE], "signature".into()),
            ("nul", nul, format!("NUL byte at offset {}", at + 2)),
            (
                "no equals",
                block(b"a=1\nname only\n"),
                format!("offset {} has no '='", at + 4),
            ),
            (
                "empty name",
                block(b"=x\n"),
                format!("empty variable name at offset {at}"),
            ),
            (
                "unterminated value",
                block(b"key=abc"),
                "unterminated value of key".into(),
            ),
            (
                "escaped last newline",
                block(b"key=abc\\"),
                "unterminated value of key".into(),
            ),
            (
                "padding",
                block(b"a=1\n##x"),
                format!("unterminated line at offset {}", at + 6),
            ),
        ];
        for (what, bytes, expect) in cases {
            match EnvBlock::parse(&bytes) {
                Err(e) => assert!(e.contains(&expect), "{what}: {e:?} lacks {expect:?}"),
                Ok(b) => panic!("{what}: parsed as {b:?}"),
            }
        }
    }

    #[test]
    fn comments_and_foreign_variables_survive_a_rewrite_byte_for_byte() {
        // grub-editenv's warning, and a comment continued by an escaped newline (GRUB skips
        // escapes in comments too, so that is one line).
        let original = block(b"# WARNING: do not edit\nsaved_entry=1\n#a\\\nb\nother=x\\\\y\n");
        let mut env = EnvBlock::parse(&original).unwrap();
        assert_eq!(
            env.vars().collect::<Vec<_>>(),
            [
                (&b"saved_entry"[..], &b"1"[..]),
                (&b"other"[..], &b"x\\y"[..])
            ]
        );
        assert_eq!(
            env.to_bytes().unwrap(),
            original,
            "untouched block re-serialises as read"
        );
        env.set("new", b"v").unwrap();
        let rewritten = env.to_bytes().unwrap();
        let kept = b"# WARNING: do not edit\nsaved_entry=1\n#a\\\nb\nother=x\\\\y\nnew=v\n";
        assert_eq!(rewritten, block(kept));
    }

    #[test]
    fn repeated_variables_read_as_grub_does_and_set_collapses_them() {
        let mut env = EnvBlock::parse(&block(b"x=1\ny=2\nx=3\n")).unwrap();
        assert_eq!(env.get("x"), Some(&b"3"[..]), "load_env keeps the last");
        env.set("x", b"4").unwrap();
        assert_eq!(env.to_bytes().unwrap(), block(b"x=4\ny=2\n"));
        assert_eq!(env.get("missing"), None);
    }

    #[test]
    fn set_refuses_what_grub_could_not_read_back() {
        let mut env = EnvBlock::new();
        env.set("keep", b"1").unwrap();
        let before = env.clone();
        for name in ["", "#x", "a=b", "a\nb", "a\0b"] {
            assert!(env.set(name, b"v").is_err(), "{name:?}");
        }
        assert!(env.set("v", b"a\0b").is_err());
        assert_eq!(env, before, "a refused set changes nothing");
    }

    #[test]
    fn a_block_filled_exactly_fits_and_one_byte_more_is_refused() {
        let room = ENV_SIZE - SIGNATURE.len() - b"v=\n".len();
        let mut env = EnvBlock::new();
        env.set("v", &vec![b'x'; room]).unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(bytes.len(), ENV_SIZE);
        assert_eq!(bytes.last(), Some(&b'\n'), "no room left for padding");
        assert_eq!(EnvBlock::parse(&bytes).unwrap(), env);
        // An escaped byte takes two.
        env.set("v", &[vec![b'x'; room - 1], b"\\".to_vec()].concat())
            .unwrap();
        let e = env.to_bytes().unwrap_err();
        assert!(e.contains("full"), "{e}");
    }

    #[test]
    fn escapes_round_trip() {
        let mut b = EnvBlock::new();
        b.set("x", b"a\\b\nc\\\\\n").unwrap();
        let bytes = b.to_bytes().unwrap();
        let needle = b"x=a\\\\b\\\nc\\\\\\\\\\\n\n";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        assert_eq!(EnvBlock::parse(&bytes).unwrap(), b);
    }

    #[test]
    fn an_untouched_variable_keeps_its_own_spelling_of_an_escape() {
        // Found by the grubenv fuzz target: `\,` reads as `,` (GRUB drops the backslash before
        // any character), and a rewrite used to spell it `,`, changing another tool's line.
        let bytes = block(b"other=a\\,b\\\nc\nslipway_slot=A\n");
        let mut env = EnvBlock::parse(&bytes).unwrap();
        assert_eq!(env.get("other"), Some(&b"a,b\nc"[..]));
        assert_eq!(env.to_bytes().unwrap(), bytes);
        env.set("slipway_slot", b"B").unwrap();
        assert_eq!(
            env.to_bytes().unwrap(),
            block(b"other=a\\,b\\\nc\nslipway_slot=B\n")
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1100)) {
            let _ = EnvBlock::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_after_signature(
            tail in proptest::collection::vec(
                proptest::sample::select(vec![b'#', b'\\', b'\n', b'=', b'A', b'1', b' ']),
                ENV_SIZE - SIGNATURE.len(),
            )
        ) {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(block) = EnvBlock::parse(&bytes) {
                // Whatever parses re-serialises to a block that parses to the same thing.
                let again = block.to_bytes().unwrap();
                proptest::prop_assert_eq!(EnvBlock::parse(&again).unwrap(), block);
            }
        }

        #[test]
        fn set_then_get_round_trips(value in proptest::collection::vec(1u8..=255, 0..200)) {
            let mut b = EnvBlock::new();
            b.set("v", &value).unwrap();
            let parsed = EnvBlock::parse(&b.to_bytes().unwrap()).unwrap();
            proptest::prop_assert_eq!(parsed.get("v"), Some(&value[..]));
        }
    }
}
