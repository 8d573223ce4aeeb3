//! An OS image's block index: a digest of each fixed-size block of the uncompressed image.
//! A release carries it as a payload of its own, its digest signed in the manifest, so a node can
//! build the new image from blocks it already holds (in either slot, at any offset, from any
//! earlier version) and fetch only the rest with HTTP `Range` requests. Nothing is generated
//! per pair of versions.
//!
//! Format (all integers little-endian): the 8-byte magic [`MAGIC`], the block size (`u32`), the
//! image size (`u64`), then for each block, in order, the first [`DIGEST_LEN`] bytes of its
//! SHA-256; the last block may be shorter than the block size (its digest is of its actual
//! bytes). The block count follows from the sizes, so a truncated or padded index is refused.
//!
//! Why 128 bits of SHA-256 per block: the entries only say where a node may find a block; the
//! image the node builds must still hash (full SHA-256) to the signed image digest before its
//! boot selection can change. Making a different block match an entry is a second preimage on
//! 128 bits, out of reach; and a block that somehow matched wrongly costs a fallback to the
//! full download, never a bad slot. Half the bytes per entry halves the index every node
//! downloads (0.39% of the image in 4 KiB blocks instead of 0.78%) and the memory it holds
//! while applying (16 MiB for a 4 GiB image instead of 32).
//!
//! [`DeltaPlan`] and [`steps`] are the pure half of applying a delta: given where the node
//! holds blocks ([`Lookup`]), which to copy from where and which byte ranges to fetch
//! (adjacent blocks coalesced).

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;

/// The first 8 bytes of an index.
pub const MAGIC: &[u8; 8] = b"SLPBIDX1";
/// Header bytes before the digests.
pub const HEADER_LEN: usize = 8 + 4 + 8;
/// Bytes of each block's SHA-256 kept in the index.
pub const DIGEST_LEN: usize = 16;
/// Smallest block size accepted (the file systems' block).
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;

/// A block's entry: the first [`DIGEST_LEN`] bytes of its SHA-256.
pub type BlockDigest = [u8; DIGEST_LEN];

/// The entry of a block with these bytes.
pub fn block_digest(bytes: &[u8]) -> BlockDigest {
    let full = Sha256::digest(bytes);
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&full[..DIGEST_LEN]);
    d
}

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
    /// One entry per block.
    pub digests: Vec<BlockDigest>,
}

fn check_block_size(block_size: u32) -> Result<(), IndexError> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(IndexError::Malformed(format!(
            "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        )));
    }
    Ok(())
}

/// Bytes of the index of an image of `image_size` bytes in blocks of `block_size`.
pub fn index_len(image_size: u64, block_size: u32) -> u64 {
    HEADER_LEN as u64 + DIGEST_LEN as u64 * block_count(image_size, block_size)
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
            digests.push(block_digest(&buf[..filled]));
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
        let mut out = Vec::with_capacity(HEADER_LEN + self.digests.len() * DIGEST_LEN);
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
        if !body.len().is_multiple_of(DIGEST_LEN) || (body.len() / DIGEST_LEN) as u64 != expected {
            return Err(bad(format!(
                "{} bytes of digests for {expected} blocks of {block_size} bytes in {image_size} bytes",
                body.len()
            )));
        }
        Ok(BlockIndex {
            block_size,
            image_size,
            digests: body
                .chunks_exact(DIGEST_LEN)
                .map(|c| c.try_into().expect("DIGEST_LEN bytes"))
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
    /// Which local source ([`RUNNING`] or [`TARGET`]).
    pub source: u8,
    /// Byte offset in that source.
    pub offset: u64,
}

/// The source that is the running slot: read only, any block may be copied from it.
pub const RUNNING: u8 = 0;
/// The source that is the slot being written: the new image overwrites it in order, so a block
/// of it may only be copied to the same or an earlier offset.
pub const TARGET: u8 = 1;

/// Where the node holds each block a new image needs, learnt by hashing its slots block by
/// block ([`Lookup::offer`]). Its memory follows the new image's block count, not the slots':
/// for each distinct entry of the index, a 4-byte position in a sorted order and 8 bytes of
/// where it was found, plus a fixed 256 KiB table of where each 16-bit prefix starts (so a
/// search takes a step or two instead of twenty). A 4 GiB image in 4 KiB blocks: 1,048,576
/// blocks, 16 MiB of index and at most 12.3 MiB here.
#[derive(Debug)]
pub struct Lookup {
    index: Arc<BlockIndex>,
    /// Block numbers of the index with distinct entries, sorted by entry.
    order: Vec<u32>,
    /// `order[starts[p]..starts[p + 1]]` have the prefix `p` (the entry's first two bytes).
    starts: Vec<u32>,
    /// Per entry of `order`: 1 + the block number where each source holds it (0: nowhere).
    found: Vec<[u32; 2]>,
    /// Entries found in some source.
    found_entries: usize,
}

impl Lookup {
    /// An empty lookup for the blocks `index` needs.
    pub fn wanting(index: Arc<BlockIndex>) -> Self {
        let d = &index.digests;
        let mut order: Vec<u32> = (0..d.len() as u32).collect();
        order.sort_unstable_by(|a, b| d[*a as usize].cmp(&d[*b as usize]));
        order.dedup_by(|a, b| d[*a as usize] == d[*b as usize]);
        order.shrink_to_fit();
        let mut starts = vec![0u32; (1 << 16) + 1];
        for &i in &order {
            let e = &d[i as usize];
            starts[usize::from(u16::from_be_bytes([e[0], e[1]])) + 1] += 1;
        }
        for p in 0..1 << 16 {
            starts[p + 1] += starts[p];
        }
        let found = vec![[0u32; 2]; order.len()];
        Lookup {
            index,
            order,
            starts,
            found,
            found_entries: 0,
        }
    }

    /// The index it serves.
    pub fn index(&self) -> &Arc<BlockIndex> {
        &self.index
    }

    fn position(&self, digest: &BlockDigest) -> Option<usize> {
        let p = usize::from(u16::from_be_bytes([digest[0], digest[1]]));
        let (lo, hi) = (self.starts[p] as usize, self.starts[p + 1] as usize);
        self.order[lo..hi]
            .binary_search_by(|&i| self.index.digests[i as usize].cmp(digest))
            .ok()
            .map(|k| lo + k)
    }

    /// Says that `source` holds a block with `digest` at block number `block` (offset
    /// `block * block_size`); returns whether the new image needs it. The running slot's first
    /// copy is kept; the target's last (the one the writing reaches last).
    pub fn offer(&mut self, source: u8, block: u32, digest: &BlockDigest) -> bool {
        let Some(k) = self.position(digest) else {
            return false;
        };
        if self.found[k] == [0, 0] {
            self.found_entries += 1;
        }
        let slot = &mut self.found[k][usize::from(source.min(1))];
        if source == RUNNING && *slot != 0 {
            return true;
        }
        *slot = block + 1;
        true
    }

    /// Distinct entries found in some source so far.
    pub fn found_entries(&self) -> usize {
        self.found_entries
    }

    /// Where to copy the block with `digest` from, for offset `at` of the new image: the
    /// running slot if it has it, else the target if its copy is at `at` or later.
    pub fn locate(&self, digest: &BlockDigest, at: u64) -> Option<LocalBlock> {
        let k = self.position(digest)?;
        let bs = u64::from(self.index.block_size);
        let [running, target] = self.found[k];
        if running != 0 {
            return Some(LocalBlock {
                source: RUNNING,
                offset: u64::from(running - 1) * bs,
            });
        }
        let offset = u64::from(target.checked_sub(1)?) * bs;
        (offset >= at).then_some(LocalBlock {
            source: TARGET,
            offset,
        })
    }

    /// Distinct entries the new image needs.
    pub fn distinct(&self) -> usize {
        self.order.len()
    }

    /// Bytes this lookup holds (not counting the index).
    pub fn heap_bytes(&self) -> usize {
        self.order.capacity() * 4 + self.starts.capacity() * 4 + self.found.capacity() * 8
    }

    /// The steps that build the image from this lookup ([`steps`]).
    pub fn steps(
        &self,
        max_fetch: u64,
    ) -> Steps<'_, impl FnMut(usize, &BlockDigest, u64) -> Option<LocalBlock> + '_> {
        steps(&self.index, |_, d, at| self.locate(d, at), max_fetch)
    }
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

impl Step {
    /// Where in the image it starts, and how many bytes it covers.
    pub fn span(&self) -> (u64, u64) {
        match *self {
            Step::Copy { at, len, .. } | Step::Fetch { at, len } => (at, len),
        }
    }
}

/// The steps that build `index`'s image, in image order, covering it exactly once, made one at a
/// time (a plan of a large image is never held whole). `locate(block, digest, offset)` says
/// where the node holds a block. Adjacent fetched blocks become one range, but no range grows
/// past `max_fetch` bytes (one request's loss costs little, resumes are fine grained);
/// adjacent copies from consecutive local offsets of one source become one copy.
pub fn steps<F>(index: &BlockIndex, locate: F, max_fetch: u64) -> Steps<'_, F>
where
    F: FnMut(usize, &BlockDigest, u64) -> Option<LocalBlock>,
{
    Steps {
        index,
        locate,
        next: 0,
        pending: None,
        max_fetch,
    }
}

/// The iterator of [`steps`].
#[derive(Debug)]
pub struct Steps<'a, F> {
    index: &'a BlockIndex,
    locate: F,
    next: usize,
    pending: Option<Step>,
    max_fetch: u64,
}

impl<F> Iterator for Steps<'_, F>
where
    F: FnMut(usize, &BlockDigest, u64) -> Option<LocalBlock>,
{
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        while self.next < self.index.digests.len() {
            let i = self.next;
            self.next += 1;
            let at = i as u64 * u64::from(self.index.block_size);
            let len = self.index.block_len(i);
            let step = match (self.locate)(i, &self.index.digests[i], at) {
                Some(from) => Step::Copy { at, from, len },
                None => Step::Fetch { at, len },
            };
            let Some(cur) = &mut self.pending else {
                self.pending = Some(step);
                continue;
            };
            match (cur, step) {
                (
                    Step::Copy {
                        at: a,
                        from: f,
                        len: l,
                    },
                    Step::Copy { from, len, .. },
                ) if f.source == from.source && f.offset + *l == from.offset && *a + *l == at => {
                    *l += len;
                }
                (Step::Fetch { at: a, len: l }, Step::Fetch { len, .. })
                    if *a + *l == at && *l + len <= self.max_fetch.max(len) =>
                {
                    *l += len;
                }
                _ => return self.pending.replace(step),
            }
        }
        self.pending.take()
    }
}

/// How to build an image from local blocks and fetched ranges: every step, collected (for
/// tests and tools; the engine walks [`steps`] instead).
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
    /// The plan for `index` (see [`steps`]).
    pub fn new(
        index: &BlockIndex,
        locate: impl FnMut(usize, &BlockDigest, u64) -> Option<LocalBlock>,
        max_fetch: u64,
    ) -> Self {
        let mut plan = DeltaPlan::default();
        for step in steps(index, locate, max_fetch) {
            match step {
                Step::Copy { len, .. } => plan.local_bytes += len,
                Step::Fetch { len, .. } => plan.fetch_bytes += len,
            }
            plan.steps.push(step);
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

    /// The plan for `new` given local sources, each offered block by block as a node hashes
    /// its slots.
    fn plan_for(new: &[u8], sources: &[(&[u8], u8)], max_fetch: u64) -> DeltaPlan {
        let idx = index_of(new);
        let mut lookup = Lookup::wanting(Arc::new(idx.clone()));
        for (img, source) in sources {
            for (i, d) in index_of(img).digests.iter().enumerate() {
                lookup.offer(*source, i as u32, d);
            }
        }
        DeltaPlan::new(&idx, |_, d, at| lookup.locate(d, at), max_fetch)
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

    fn bytes_len(idx: &BlockIndex) -> u64 {
        idx.to_bytes().len() as u64
    }

    #[test]
    fn an_index_round_trips_and_its_digest_is_checked_before_anything_is_read() {
        let img = image(&[1, 2, 3], 100);
        let (idx, whole) = BlockIndex::build(img.as_slice(), B).unwrap();
        assert_eq!(idx.digests.len(), 4);
        assert_eq!(idx.image_size, img.len() as u64);
        assert_eq!(idx.block_len(3), 100);
        assert_eq!(whole, Sha256Digest(Sha256::digest(&img).into()));
        assert_eq!(idx.digests[3], block_digest(&img[3 * B as usize..]));
        assert_eq!(bytes_len(&idx), index_len(img.len() as u64, B));
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
        let short = &bytes[..bytes.len() - DIGEST_LEN];
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
        let plan = plan_for(&img, &[(&img, RUNNING)], 1 << 20);
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
        let plan = plan_for(&new, &[(&old, RUNNING)], 1 << 20);
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
        // slot's leftovers (the target, at a later offset than it is needed at).
        let running = image(&[1, 2, 3, 4], 0);
        let leftover = image(&[6, 6, 6, 6, 6, 6, 7], 0);
        let new = image(&[8, 1, 2, 3, 4, 7], 0);
        let plan = plan_for(&new, &[(&running, RUNNING), (&leftover, TARGET)], 1 << 20);
        assert_eq!(plan.fetch_bytes, u64::from(B), "only block 8 is new");
        assert_eq!(apply(&plan, &[&running, &leftover], &new), new);
    }

    #[test]
    fn fetches_coalesce_up_to_the_cap_and_an_unrelated_image_fetches_everything() {
        let old = image(&[1, 2], 0);
        let new = image(&[10, 11, 12, 13, 14], 0);
        let plan = plan_for(&new, &[(&old, RUNNING)], 2 * u64::from(B));
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

    #[test]
    fn the_target_slot_only_lends_blocks_the_writing_has_not_reached() {
        // The target (the slot being written) holds blocks 5 and 6 at block offsets 0 and 3.
        // The new image wants 6 at block 1 (its copy at 3 is still intact then) and 5 at
        // block 2 (its copy at 0 is overwritten by then): fetched.
        let target = image(&[5, 0, 0, 6], 0);
        let new = image(&[1, 6, 5], 0);
        let plan = plan_for(&new, &[(&target, TARGET)], 1 << 20);
        assert_eq!(plan.local_bytes, u64::from(B));
        assert!(plan.steps.contains(&Step::Copy {
            at: u64::from(B),
            from: LocalBlock {
                source: TARGET,
                offset: 3 * u64::from(B)
            },
            len: u64::from(B)
        }));
        // The running slot wins where both have a block.
        let running = image(&[9, 5], 0);
        let plan = plan_for(&new, &[(&target, TARGET), (&running, RUNNING)], 1 << 20);
        assert_eq!(plan.local_bytes, 2 * u64::from(B));
        assert!(plan.steps.contains(&Step::Copy {
            at: 2 * u64::from(B),
            from: LocalBlock {
                source: RUNNING,
                offset: u64::from(B)
            },
            len: u64::from(B)
        }));
        assert_eq!(apply(&plan, &[&running, &target], &new), new);
    }

    #[test]
    fn the_lookup_holds_each_distinct_digest_once_and_finds_every_prefix() {
        // 5000 blocks with 1000 distinct contents: many share a 16-bit prefix bucket edge.
        let fills: Vec<u8> = (0..5000u32).map(|i| (i % 250) as u8).collect();
        let mut img = Vec::new();
        for (i, f) in fills.iter().enumerate() {
            let mut block = vec![*f; B as usize];
            block[0] = (i % 1000 / 250) as u8;
            img.extend(block);
        }
        let idx = index_of(&img);
        let mut lookup = Lookup::wanting(Arc::new(idx.clone()));
        assert_eq!(lookup.distinct(), 1000);
        assert!(idx.digests.iter().all(|d| lookup.locate(d, 0).is_none()));
        for (i, d) in idx.digests.iter().enumerate() {
            assert!(lookup.offer(RUNNING, i as u32, d));
        }
        for d in &idx.digests {
            assert!(lookup.locate(d, 0).is_some());
        }
        assert_eq!(
            lookup.found_entries(),
            1000,
            "each distinct entry counted once"
        );
        assert!(!lookup.offer(RUNNING, 0, &[7u8; DIGEST_LEN]));
        // 1000 distinct: 4 + 8 bytes each, plus the fixed prefix table.
        assert_eq!(lookup.heap_bytes(), 1000 * 12 + ((1 << 16) + 1) * 4);
    }
}
