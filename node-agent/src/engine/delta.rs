//! The delta path: building the new OS image in the inactive slot from blocks the machine
//! already holds, fetching only the rest.
//!
//! 1. The block index the release signed (`os.delta.index`) is fetched and checked against its
//!    signed digest before any entry is used.
//! 2. The running slot and the inactive slot are read and hashed block by block into a
//!    [`Lookup`] of where each needed block is (its memory follows the new image's block count).
//! 3. The image is written in order through the same writer, checkpoints and re-read
//!    verification as a full download ([`download::Sink`]): blocks found locally are copied
//!    (blocks of the inactive slot only from offsets the writing has not reached, and checked
//!    against the index as read, since that slot is being overwritten), the rest fetched from
//!    the uncompressed image with coalesced `Range` requests and checked against the index
//!    before they are written.
//! 4. The slot, re-read, must hash to the signed image digest, exactly as a raw download.
//!
//! Anything that makes a delta impossible or pointless (no index, an index that fails its
//! digest, a server without `Range`, a fetched block that contradicts the index, a finished
//! image with the wrong digest, or a delta that would fetch more than the configured share of
//! the payload) is a [`Applied::Fallback`]: the caller downloads the whole payload instead.
//! Network failures are interruptions, resumed from the last checkpoint like a download.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use slipway_api::blockindex::{BlockIndex, Lookup, RUNNING, Step, TARGET, block_digest};
use slipway_api::manifest::{DeltaSource, PayloadFormat};
use slipway_api::wire::Transfer;

use super::download::{Outcome, Progress, Sink};
use super::machine::Checkpoint;
use crate::error::{Error, Result};

/// Most bytes in one `Range` request (coalesced neighbouring blocks).
const MAX_FETCH: u64 = 8 << 20;
/// Bytes read from a slot at a time (rounded to whole blocks).
const READ_BUF: u64 = 1 << 20;
/// The least of the running slot hashed before judging whether it is related at all.
const SAMPLE: u64 = 32 << 20;
/// A running slot whose sample holds fewer than 1 in this many of the new image's distinct
/// blocks is unrelated.
const UNRELATED: usize = 100;

/// One delta apply.
#[derive(Debug, Clone)]
pub struct DeltaJob {
    /// The signed delta source.
    pub source: DeltaSource,
    /// Absolute URL of the block index.
    pub index_url: String,
    /// Absolute URL of the uncompressed image.
    pub image_url: String,
    /// Signed size of the full payload (what a full download would fetch).
    pub payload_size: u64,
    /// The running slot: read, never written.
    pub running: PathBuf,
    /// The slot to write (its current contents are a source too).
    pub slot_path: PathBuf,
    /// Where to resume (a delta checkpoint), or the start.
    pub from: Checkpoint,
    /// Bytes between durable checkpoints.
    pub checkpoint_bytes: u64,
    /// Longest wait for the next bytes from the server.
    pub idle_timeout: Duration,
    /// Give up when the delta would fetch more than this share of the payload.
    pub max_fetch: f64,
}

/// How a delta apply ended (besides interruptions and failures, which are errors).
#[derive(Debug)]
pub enum Applied {
    /// The slot holds the new image, re-read and matching the signed digest.
    Done(Outcome, Transfer),
    /// No delta: download the whole payload (the reason says why).
    Fallback(String),
}

/// Why an apply stopped early.
enum Stop {
    Fallback(String),
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fail(e)
    }
}

/// Runs `job`. `on_checkpoint` is called after each durable checkpoint, as for downloads.
pub async fn run(
    client: &reqwest::Client,
    job: DeltaJob,
    progress: Progress,
    on_checkpoint: impl Fn(Checkpoint) + Send + 'static,
) -> Result<Applied> {
    match apply(client, &job, progress, on_checkpoint).await {
        Ok(done) => Ok(Applied::Done(done.0, done.1)),
        Err(Stop::Fallback(reason)) => Ok(Applied::Fallback(reason)),
        Err(Stop::Fail(e)) => Err(e),
    }
}

async fn apply(
    client: &reqwest::Client,
    job: &DeltaJob,
    progress: Progress,
    on_checkpoint: impl Fn(Checkpoint) + Send + 'static,
) -> std::result::Result<(Outcome, Transfer), Stop> {
    let src = &job.source;
    let interrupted = |url: &str, reason: String| Error::Interrupted {
        url: url.into(),
        reason,
    };
    // A checkpoint of something else (or past the end) starts over.
    let mut from = job.from.clone();
    let aligned =
        from.written.is_multiple_of(u64::from(src.block_size)) || from.written == src.image.size;
    if !from.delta || from.written > src.image.size || !aligned {
        from = Checkpoint::default();
    }

    // 1. The index, checked against its signed digest before anything in it is read.
    let index = fetch_index(client, job).await?;

    // 2. Where the node holds each block.
    let started = std::time::Instant::now();
    let lookup = {
        let running = job.running.clone();
        let target = job.slot_path.clone();
        let skip_target = from.written;
        let index = Arc::new(index);
        tokio::task::spawn_blocking(move || -> Result<std::result::Result<Lookup, String>> {
            let mut lookup = Lookup::wanting(index);
            let running_unrelated = offer_slot(&mut lookup, RUNNING, &running, 0, true)?;
            // The part of the target already rewritten holds new blocks at their own
            // offsets, before where writing resumes: of no use. When the running slot is
            // unrelated, the inactive one may still hold a relative (after a rollback), so it
            // is sampled the same way before the delta is given up.
            let give_up = running_unrelated.is_some();
            let target_unrelated = offer_slot(&mut lookup, TARGET, &target, skip_target, give_up)?;
            match (running_unrelated, target_unrelated) {
                (Some(why), Some(_)) => Ok(Err(format!("{why}, and the inactive slot too"))),
                _ => Ok(Ok(lookup)),
            }
        })
        .await
        .map_err(|e| Error::Refused(format!("hashing the slots: {e}")))??
        .map_err(Stop::Fallback)?
    };
    let index = lookup.index().clone();
    // The plan is walked twice (to size it, then to apply it), never held whole.
    let (mut local_bytes, mut fetch_bytes) = (0u64, 0u64);
    for step in lookup.steps(MAX_FETCH) {
        match step {
            Step::Copy { len, .. } => local_bytes += len,
            Step::Fetch { len, .. } => fetch_bytes += len,
        }
    }
    let index_bytes = job.source.index.size;
    tracing::info!(
        local = local_bytes,
        fetch = fetch_bytes,
        image = src.image.size,
        distinct_blocks = lookup.distinct(),
        lookup_bytes = lookup.heap_bytes(),
        secs = started.elapsed().as_secs_f64(),
        "delta planned"
    );
    let limit = job.max_fetch * job.payload_size as f64;
    if from.written == 0 && (fetch_bytes + index_bytes) as f64 > limit {
        return Err(Stop::Fallback(format!(
            "the delta would fetch {} bytes (index included), more than {:.0}% of the {}-byte \
             payload",
            fetch_bytes + index_bytes,
            job.max_fetch * 100.0,
            job.payload_size
        )));
    }

    // 3. Write the image in order.
    let mut sink = Sink::open(
        &job.slot_path,
        &job.image_url,
        src.image.size,
        PayloadFormat::Raw,
        &from,
        (Sha256::new(), Sha256::new()),
        job.checkpoint_bytes,
        progress,
        on_checkpoint,
    )?;
    sink.start_delta(from.fetched);
    let mut applier = Applier {
        client,
        job,
        index: index.clone(),
        running: open_read(&job.running)?,
        target: open_read(&job.slot_path)?,
        fetched: from.fetched,
    };
    let streamed: std::result::Result<(), Stop> = async {
        for step in lookup.steps(MAX_FETCH) {
            let (at, len) = step.span();
            if at + len <= from.written {
                continue;
            }
            // Steps are whole blocks and checkpoints fall between blocks.
            let skip = from.written.saturating_sub(at);
            match step {
                Step::Copy { from: local, .. } => {
                    applier
                        .copy(
                            &mut sink,
                            at + skip,
                            local.source,
                            local.offset + skip,
                            len - skip,
                        )
                        .await?
                }
                Step::Fetch { .. } => applier.fetch(&mut sink, at + skip, len - skip).await?,
            }
        }
        if sink.position() != src.image.size {
            return Err(Stop::Fail(Error::Verify {
                slot: job.slot_path.display().to_string(),
                reason: format!(
                    "the delta wrote {} of {} bytes",
                    sink.position(),
                    src.image.size
                ),
            }));
        }
        sink.finish()?;
        Ok(())
    }
    .await;
    let (streamed, fallback) = match streamed {
        Ok(()) => (Ok(()), None),
        Err(Stop::Fail(e)) => (Err(e), None),
        Err(Stop::Fallback(r)) => (
            Err(interrupted(&job.image_url, "delta given up".into())),
            Some(r),
        ),
    };
    let outcome = sink.close(streamed, src.image.sha256, None).await;
    if let Some(reason) = fallback {
        return Err(Stop::Fallback(reason));
    }
    let outcome = outcome?;
    // 4. The only check that matters: the slot as re-read is the signed image.
    if outcome.reread_digest != src.image.sha256 {
        return Err(Stop::Fallback(format!(
            "the image built from the block index hashes to {}, not the signed {}",
            outcome.reread_digest, src.image.sha256
        )));
    }
    let transfer = Transfer {
        image_bytes: src.image.size,
        fetched_bytes: applier.fetched + index_bytes,
        local_bytes: src.image.size.saturating_sub(applier.fetched),
        delta: true,
        fallback: String::new(),
    };
    Ok((outcome, transfer))
}

/// Fetches and verifies the block index; anything wrong with it is a fallback.
async fn fetch_index(
    client: &reqwest::Client,
    job: &DeltaJob,
) -> std::result::Result<BlockIndex, Stop> {
    let src = &job.source;
    let url = &job.index_url;
    let fallback = |why: String| Stop::Fallback(format!("block index {url}: {why}"));
    let mut resp = tokio::time::timeout(job.idle_timeout, client.get(url).send())
        .await
        .map_err(|_| fallback(format!("no answer within {:?}", job.idle_timeout)))?
        .map_err(|e| fallback(format!("request failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(fallback(format!("HTTP {}", resp.status())));
    }
    let mut bytes = Vec::with_capacity(src.index.size.min(64 << 20) as usize);
    loop {
        let chunk = tokio::time::timeout(job.idle_timeout, resp.chunk())
            .await
            .map_err(|_| fallback(format!("no bytes for {:?}", job.idle_timeout)))?
            .map_err(|e| fallback(format!("connection failed: {e}")))?;
        let Some(chunk) = chunk else { break };
        if bytes.len() as u64 + chunk.len() as u64 > src.index.size {
            return Err(fallback(format!(
                "longer than the signed {} bytes",
                src.index.size
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let index = BlockIndex::parse_verified(&bytes, &src.index.sha256)
        .map_err(|e| fallback(e.to_string()))?;
    if index.block_size != src.block_size || index.image_size != src.image.size {
        return Err(fallback(format!(
            "describes {} bytes in {}-byte blocks, the release {} in {}-byte blocks",
            index.image_size, index.block_size, src.image.size, src.block_size
        )));
    }
    Ok(index)
}

fn open_read(path: &Path) -> Result<Arc<std::fs::File>> {
    std::fs::File::open(path)
        .map(Arc::new)
        .map_err(|e| Error::io(path, e))
}

/// Bytes per read: [`READ_BUF`] rounded down to whole blocks, at least one block.
fn read_len(block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    (READ_BUF / bs).max(1) * bs
}

/// Hashes the slot at `path` block by block, from block-aligned offset `skip`, offering each
/// block to the lookup: up to the end of the file or device, but no further than a quarter
/// past the new image's size (a slot partition is often much larger than the image it holds,
/// and what lies that far past the image's end is left over, not moved).
///
/// With `give_up`, hashing stops early when the slot is plainly unrelated to the new image:
/// once an eighth of it (at least [`SAMPLE`]) is hashed, fewer than 1 in [`UNRELATED`] of the
/// image's distinct blocks found means the rest would find too few to be worth reading (a
/// related image shares its blocks throughout, its first eighth included), and the reason is
/// returned. A delta that cannot pay off then costs a fraction of a slot's read, not two.
fn offer_slot(
    lookup: &mut Lookup,
    source: u8,
    path: &Path,
    skip: u64,
    give_up: bool,
) -> Result<Option<String>> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let io = |e| Error::io(path, e);
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        // An inactive slot that does not exist yet holds nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && source == TARGET => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // Block devices report no length in their metadata; seeking to the end does.
    let (image_size, block_size) = (lookup.index().image_size, lookup.index().block_size);
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(io)?
        .min(image_size.saturating_add(image_size / 4));
    let bs = u64::from(block_size);
    let mut buf = vec![0u8; read_len(block_size) as usize];
    let mut at = skip - skip % bs;
    let check_at = (size / 8).max(SAMPLE);
    let mut checked = !give_up;
    while at < size {
        if !checked && at >= check_at {
            checked = true;
            if lookup.found_entries() * UNRELATED < lookup.distinct() {
                return Ok(Some(format!(
                    "the first {} MiB of the {} slot hold {} of the new image's {} distinct \
                     blocks: an unrelated image",
                    at >> 20,
                    if source == RUNNING {
                        "running"
                    } else {
                        "inactive"
                    },
                    lookup.found_entries(),
                    lookup.distinct()
                )));
            }
        }
        let want = (size - at).min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let n = file
                .read_at(&mut buf[filled..want], at + filled as u64)
                .map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        for (i, block) in buf[..filled].chunks(bs as usize).enumerate() {
            let digest = block_digest(block);
            let number = at / bs + i as u64;
            if let Ok(number) = u32::try_from(number) {
                lookup.offer(source, number, &digest);
            }
        }
        if filled < want {
            break;
        }
        at += filled as u64;
    }
    Ok(None)
}

/// The writing half of a delta apply.
struct Applier<'a> {
    client: &'a reqwest::Client,
    job: &'a DeltaJob,
    index: Arc<BlockIndex>,
    running: Arc<std::fs::File>,
    target: Arc<std::fs::File>,
    /// Bytes fetched (since the apply started, across resumes).
    fetched: u64,
}

impl Applier<'_> {
    /// Copies `len` bytes at `offset` of local `source` to image offset `at`. Blocks of the
    /// target slot are checked against the index as read (the slot is being overwritten, and
    /// after a crash may hold anything past the checkpoint); one that does not match is
    /// fetched instead.
    async fn copy(
        &mut self,
        sink: &mut Sink,
        at: u64,
        source: u8,
        offset: u64,
        len: u64,
    ) -> std::result::Result<(), Stop> {
        let bs = u64::from(self.index.block_size);
        let step = read_len(self.index.block_size);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(step);
            let file = if source == RUNNING {
                self.running.clone()
            } else {
                self.target.clone()
            };
            let index = self.index.clone();
            let (piece_at, piece_off) = (at + done, offset + done);
            let check = source != RUNNING;
            let path = if source == RUNNING {
                self.job.running.clone()
            } else {
                self.job.slot_path.clone()
            };
            // Reads (and the checks) off the async threads.
            let (buf, bad) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Vec<u64>)> {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; n as usize];
                file.read_exact_at(&mut buf, piece_off)
                    .map_err(|e| Error::io(&path, e))?;
                let mut bad = Vec::new();
                if check {
                    for (i, block) in buf.chunks(bs as usize).enumerate() {
                        let number = (piece_at / bs) as usize + i;
                        if index.digests.get(number) != Some(&block_digest(block)) {
                            bad.push(i as u64);
                        }
                    }
                }
                Ok((buf, bad))
            })
            .await
            .map_err(|e| Error::Refused(format!("reading a slot: {e}")))??;
            if bad.is_empty() {
                sink.push_delta(Bytes::from(buf), false)?;
            } else {
                // Push the good runs, fetch the changed blocks.
                let buf = Bytes::from(buf);
                let mut pos = 0u64;
                for b in bad {
                    let start = b * bs;
                    if start > pos {
                        sink.push_delta(buf.slice(pos as usize..start as usize), false)?;
                    }
                    let end = (start + bs).min(n);
                    self.fetch(sink, piece_at + start, end - start).await?;
                    pos = end;
                }
                if pos < n {
                    sink.push_delta(buf.slice(pos as usize..n as usize), false)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Fetches image bytes `at..at + len` with one `Range` request, checking each block
    /// against the index before it is written.
    async fn fetch(&mut self, sink: &mut Sink, at: u64, len: u64) -> std::result::Result<(), Stop> {
        let url = &self.job.image_url;
        let size = self.job.source.image.size;
        let interrupted = |reason: String| {
            Stop::Fail(Error::Interrupted {
                url: url.clone(),
                reason,
            })
        };
        let last = at + len - 1;
        let request = self
            .client
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={at}-{last}"));
        let mut resp = tokio::time::timeout(self.job.idle_timeout, request.send())
            .await
            .map_err(|_| interrupted(format!("no answer within {:?}", self.job.idle_timeout)))?
            .map_err(|e| interrupted(format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        match status {
            206 => {}
            200 => {
                return Err(Stop::Fallback(format!(
                    "{url} answered a Range request with the whole image (no Range support)"
                )));
            }
            s if (500..600).contains(&s) || s == 408 || s == 429 => {
                return Err(interrupted(format!("HTTP {}", resp.status())));
            }
            _ => {
                return Err(Stop::Fallback(format!(
                    "{url}: HTTP {} to a Range request",
                    resp.status()
                )));
            }
        }
        let expected = format!("bytes {at}-{last}/{size}");
        let got = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got != expected {
            return Err(Stop::Fallback(format!(
                "{url} answered Range {at}-{last} with Content-Range {got:?}"
            )));
        }
        let bs = u64::from(self.index.block_size);
        let mut block = Vec::with_capacity(bs as usize);
        let mut pos = at;
        loop {
            let chunk = tokio::time::timeout(self.job.idle_timeout, resp.chunk())
                .await
                .map_err(|_| {
                    interrupted(format!(
                        "no bytes for {:?} at byte {pos}",
                        self.job.idle_timeout
                    ))
                })?
                .map_err(|e| interrupted(format!("connection failed at byte {pos}: {e}")))?;
            let Some(mut chunk) = chunk else { break };
            if pos + (block.len() + chunk.len()) as u64 > at + len {
                return Err(Stop::Fallback(format!(
                    "{url} sent more than the {len} bytes asked for at {at}"
                )));
            }
            while !chunk.is_empty() {
                let number = pos / bs;
                let block_len = self.index.block_len(number as usize);
                let take = (block_len as usize - block.len()).min(chunk.len());
                block.extend_from_slice(&chunk[..take]);
                chunk = chunk.slice(take..);
                if block.len() as u64 == block_len {
                    if self.index.digests.get(number as usize) != Some(&block_digest(&block)) {
                        return Err(Stop::Fallback(format!(
                            "block {number} of {url} does not match the signed block index"
                        )));
                    }
                    let full = std::mem::replace(&mut block, Vec::with_capacity(bs as usize));
                    self.fetched += block_len;
                    sink.push_delta(Bytes::from(full), true)?;
                    pos += block_len;
                }
            }
        }
        if pos != at + len {
            return Err(interrupted(format!(
                "the server ended a Range body at byte {pos} of {at}-{last}"
            )));
        }
        Ok(())
    }
}
