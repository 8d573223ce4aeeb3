//! An OS image's block index: the SHA-256 of each fixed-size block of the uncompressed image.
//! A release carries it as a payload of its own, its digest signed in the manifest, so a node can
//! build the new image from blocks it already holds (in either slot, at any offset, from any
//! earlier version) and fetch only the rest with HTTP `Range` requests. Nothing is generated
//! per pair of versions.
//!
//! Format (all integers little-endian): the 8-byte magic [`MAGIC`], the block size (`u32`), the
//! image size (`u64`), then one 32-byte SHA-256 per block, in order; the last block may be
//! shorter than the block size (its digest is of its actual bytes). The block count follows from
//! the sizes, so a truncated or padded index is refused.
//!
//! [`DeltaPlan`] is the pure half of applying a delta: given which blocks the node has locally,
//! which to copy from where and which byte ranges to fetch (adjacent blocks coalesced).

use std::collections::HashMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;

/// The first 8 bytes of an index.
pub const MAGIC: &[u8; 8] = b"SLPBIDX1";
/// Header bytes before the digests.
pub const HEADER_LEN: usize = 8 + 4 + 8;
/// Smallest block size accepted (the file systems' block).
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;

/// Why an index was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Not what the manifest signed.
    #[error("block index digest {found} does not match the signed {expected}")]
    Digest {
        /// The signed digest.
        expected: Sha256Digest,
        /// The digest of the bytes received.
        found: Sha256Digest,
    },
    /// Malformed.
    #[error("block index is malformed: {0}")]
    Malformed(String),
}

/// A parsed, verified block index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    /// Bytes per block (a power of two, [`MIN_BLOCK_SIZE`] to [`MAX_BLOCK_SIZE`]).
    pub block_size: u32,
    /// The uncompressed image's size.
    pub image_size: u64,
    /// One SHA-256 per block.
    pub digests: Vec<[u8; 32]>,
}

fn check_block_size(block_size: u32) -> Result<(), IndexError> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(IndexError::Malformed(format!(
            "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        )));
    }
    Ok(())
}

/// Blocks in an image of `image_size` bytes.
pub fn block_count(image_size: u64, block_size: u32) -> u64 {
    image_size.div_ceil(u64::from(block_size))
}

impl BlockIndex {
    /// Reads the whole image from `image` and indexes it; also returns the image's SHA-256 (the
    /// digest the finished slot must have).
    pub fn build(
        mut image: impl Read,
        block_size: u32,
    ) -> std::io::Result<(BlockIndex, Sha256Digest)> {
        check_block_size(block_size)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut whole = Sha256::new();
        let mut digests = Vec::new();
        let mut buf = vec![0u8; block_size as usize];
        let mut size = 0u64;
        loop {
            // Fill one block (reads may return less).
            let mut filled = 0;
            while filled < buf.len() {
                match image.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                break;
            }
            whole.update(&buf[..filled]);
            digests.push(Sha256::digest(&buf[..filled]).into());
            size += filled as u64;
            if filled < buf.len() {
                break;
            }
        }
        let index = BlockIndex {
            block_size,
            image_size: size,
            digests,
        };
        Ok((index, Sha256Digest(whole.finalize().into())))
    }

    /// The serialized index.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.digests.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        for d in &self.digests {
            out.extend_from_slice(d);
        }
        out
    }

    /// Parses `bytes` after checking they are what the manifest signed (`signed`): nothing in
    /// an index is trusted before that.
    pub fn parse_verified(bytes: &[u8], signed: &Sha256Digest) -> Result<BlockIndex, IndexError> {
        let found = Sha256Digest(Sha256::digest(bytes).into());
        if &found != signed {
            return Err(IndexError::Digest {
                expected: *signed,
                found,
            });
        }
        Self::parse(bytes)
    }

    /// Parses `bytes` (already verified against a signed digest).
    fn parse(bytes: &[u8]) -> Result<BlockIndex, IndexError> {
        let bad = |why: String| IndexError::Malformed(why);
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad("no block index header".into()));
        }
        let block_size = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let image_size = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        check_block_size(block_size)?;
        let body = &bytes[HEADER_LEN..];
        let expected = block_count(image_size, block_size);
        if !body.len().is_multiple_of(32) || body.len() as u64 / 32 != expected {
            return Err(bad(format!(
                "{} bytes of digests for {expected} blocks of {block_size} bytes in {image_size} bytes",
                body.len()
            )));
        }
        Ok(BlockIndex {
            block_size,
            image_size,
            digests: body
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        })
    }

    /// Byte length of block `i` (the last may be short).
    pub fn block_len(&self, i: usize) -> u64 {
        let start = i as u64 * u64::from(self.block_size);
        (self.image_size - start).min(u64::from(self.block_size))
    }
}

/// Where the node can read a block it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalBlock {
    /// Which local source (e.g. 0 = the running slot, 1 = the inactive slot).
    pub source: u8,
    /// Byte offset in that source.
    pub offset: u64,
}

/// One step of building the new image, in image order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copy `len` bytes from a local source into the image at `at`.
    Copy {
        /// Offset in the new image.
        at: u64,
        /// Where the bytes are.
        from: LocalBlock,
        /// How many.
        len: u64,
    },
    /// Fetch image bytes `at..at + len` from the server (one `Range` request).
    Fetch {
        /// Offset in the new image (and in the served image).
        at: u64,
        /// How many.
        len: u64,
    },
}

/// How to build an image from local blocks and fetched ranges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeltaPlan {
    /// The steps, in image order, covering it exactly once.
    pub steps: Vec<Step>,
    /// Bytes copied from local sources.
    pub local_bytes: u64,
    /// Bytes to fetch.
    pub fetch_bytes: u64,
}

impl DeltaPlan {
    /// The plan for `index` given the blocks the node has (`local`: digest → where), fetching
    /// every block it does not have. Adjacent fetched blocks become one range, but no range
    /// grows past `max_fetch` bytes (so one request's loss costs little and resumes are fine
    /// grained); adjacent copies from consecutive local offsets of one source become one copy.
    pub fn new(index: &BlockIndex, local: &HashMap<[u8; 32], LocalBlock>, max_fetch: u64) -> Self {
        let mut plan = DeltaPlan::default();
        for (i, d) in index.digests.iter().enumerate() {
            let at = i as u64 * u64::from(index.block_size);
            let len = index.block_len(i);
            match local.get(d) {
                Some(&from) => {
                    plan.local_bytes += len;
                    if let Some(Step::Copy {
                        at: a,
                        from: f,
                        len: l,
                    }) = plan.steps.last_mut()
                        && f.source == from.source
                        && f.offset + *l == from.offset
                        && *a + *l == at
                    {
                        *l += len;
                        continue;
                    }
                    plan.steps.push(Step::Copy { at, from, len });
                }
                None => {
                    plan.fetch_bytes += len;
                    if let Some(Step::Fetch { at: a, len: l }) = plan.steps.last_mut()
                        && *a + *l == at
                        && *l + len <= max_fetch.max(len)
                    {
                        *l += len;
                        continue;
                    }
                    plan.steps.push(Step::Fetch { at, len });
                }
            }
        }
        plan
    }

    /// The share of the image fetched, 0 to 1.
    pub fn fetch_ratio(&self) -> f64 {
        let total = self.local_bytes + self.fetch_bytes;
        if total == 0 {
            0.0
        } else {
            self.fetch_bytes as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u32 = 4096;

    /// `n` blocks, block `i` filled with byte `fill(i)`, plus `tail` extra bytes.
    fn image(fills: &[u8], tail: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for f in fills {
            v.extend(std::iter::repeat_n(*f, B as usize));
        }
        v.extend(std::iter::repeat_n(0xEE, tail));
        v
    }

    fn index_of(img: &[u8]) -> BlockIndex {
        BlockIndex::build(img, B).unwrap().0
    }

    /// Every block of `img` as a local source 0 (what a node would hash from a slot).
    fn lookup(img: &[u8], source: u8) -> HashMap<[u8; 32], LocalBlock> {
        let idx = index_of(img);
        idx.digests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    *d,
                    LocalBlock {
                        source,
                        offset: i as u64 * u64::from(B),
                    },
                )
            })
            .collect()
    }

    /// Applies `plan` from `sources` and the served `new` image.
    fn apply(plan: &DeltaPlan, sources: &[&[u8]], new: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; new.len()];
        for s in &plan.steps {
            match *s {
                Step::Copy { at, from, len } => {
                    let src = sources[from.source as usize];
                    out[at as usize..(at + len) as usize]
                        .copy_from_slice(&src[from.offset as usize..(from.offset + len) as usize]);
                }
                Step::Fetch { at, len } => {
                    out[at as usize..(at + len) as usize]
                        .copy_from_slice(&new[at as usize..(at + len) as usize]);
                }
            }
        }
        out
    }

    #[test]
    fn an_index_round_trips_and_its_digest_is_checked_before_anything_is_read() {
        let img = image(&[1, 2, 3], 100);
        let (idx, whole) = BlockIndex::build(img.as_slice(), B).unwrap();
        assert_eq!(idx.digests.len(), 4);
        assert_eq!(idx.image_size, img.len() as u64);
        assert_eq!(idx.block_len(3), 100);
        assert_eq!(whole, Sha256Digest(Sha256::digest(&img).into()));
        let bytes = idx.to_bytes();
        let signed = Sha256Digest(Sha256::digest(&bytes).into());
        assert_eq!(BlockIndex::parse_verified(&bytes, &signed).unwrap(), idx);
        // Tampered: refused on the digest, before parsing.
        let mut tampered = bytes.clone();
        tampered[HEADER_LEN] ^= 1;
        assert!(matches!(
            BlockIndex::parse_verified(&tampered, &signed),
            Err(IndexError::Digest { .. })
        ));
        // Truncated, even if signed that way: the count does not match the sizes.
        let short = &bytes[..bytes.len() - 32];
        let e = BlockIndex::parse_verified(short, &Sha256Digest(Sha256::digest(short).into()))
            .unwrap_err();
        assert!(e.to_string().contains("for 4 blocks"), "{e}");
        // A bad block size.
        let mut odd = bytes.clone();
        odd[8..12].copy_from_slice(&3000u32.to_le_bytes());
        let e = BlockIndex::parse_verified(&odd, &Sha256Digest(Sha256::digest(&odd).into()))
            .unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        assert!(BlockIndex::build(img.as_slice(), 1000).is_err());
    }

    #[test]
    fn an_identical_image_fetches_nothing() {
        let img = image(&[1, 2, 3, 4], 10);
        let plan = DeltaPlan::new(&index_of(&img), &lookup(&img, 0), 1 << 20);
        assert_eq!(plan.fetch_bytes, 0);
        assert_eq!(plan.local_bytes, img.len() as u64);
        // One copy: the blocks are consecutive in the source.
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(apply(&plan, &[&img], &img), img);
    }

    #[test]
    fn one_changed_block_is_the_only_fetch() {
        let old = image(&[1, 2, 3, 4, 5], 0);
        let new = image(&[1, 2, 9, 4, 5], 0);
        let plan = DeltaPlan::new(&index_of(&new), &lookup(&old, 0), 1 << 20);
        assert_eq!(plan.fetch_bytes, u64::from(B));
        assert_eq!(
            plan.steps
                .iter()
                .filter(|s| matches!(s, Step::Fetch { .. }))
                .collect::<Vec<_>>(),
            vec![&Step::Fetch {
                at: 2 * u64::from(B),
                len: u64::from(B)
            }]
        );
        assert_eq!(apply(&plan, &[&old], &new), new);
        assert!((plan.fetch_ratio() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn moved_blocks_are_found_at_their_new_offsets_in_either_source() {
        // The new image shifts everything by one block and takes one block from the inactive
        // slot's leftovers (source 1).
        let running = image(&[1, 2, 3, 4], 0);
        let leftover = image(&[7, 7], 0);
        let new = image(&[8, 1, 2, 3, 4, 7], 0);
        let mut local = lookup(&running, 0);
        for (d, b) in lookup(&leftover, 1) {
            local.entry(d).or_insert(b);
        }
        let plan = DeltaPlan::new(&index_of(&new), &local, 1 << 20);
        assert_eq!(plan.fetch_bytes, u64::from(B), "only block 8 is new");
        assert_eq!(apply(&plan, &[&running, &leftover], &new), new);
    }

    #[test]
    fn fetches_coalesce_up_to_the_cap_and_an_unrelated_image_fetches_everything() {
        let old = image(&[1, 2], 0);
        let new = image(&[10, 11, 12, 13, 14], 0);
        let plan = DeltaPlan::new(&index_of(&new), &lookup(&old, 0), 2 * u64::from(B));
        let fetches: Vec<u64> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Fetch { len, .. } => *len / u64::from(B),
                Step::Copy { .. } => panic!("nothing to copy"),
            })
            .collect();
        assert_eq!(fetches, vec![2, 2, 1]);
        assert_eq!(plan.fetch_ratio(), 1.0);
        assert_eq!(apply(&plan, &[&old], &new), new);
    }
}
