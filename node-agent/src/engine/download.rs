//! Streaming a payload into a slot in one pass: HTTP body → SHA-256 of the served bytes →
//! decompression (zstd / xz / none) → a writer thread that writes and fsyncs the slot, and a
//! verifier thread that re-reads each batch from the slot right after it was written and hashes
//! it. Memory is bounded by a few fixed buffers whatever the payload size; the network side, the
//! writer and the verifier run on different threads so that hashing and writing overlap. A raw
//! payload's chunks reach the writer as the HTTP client received them (one vectored write per
//! batch), so the network side copies nothing.
//!
//! A raw payload is hashed once, on the way back: its bytes are the slot's bytes, so the
//! SHA-256 of the slot as re-read from disk must equal the signed digest. That one check covers
//! what the server sent, what was written and what the disk returns, and leaves the network
//! side only copying (hashing the served bytes too would be a second full SHA-256 pass over the
//! same bytes). A compressed payload is hashed as served (the signed digest is of the
//! compressed bytes) and as written (the decompressed bytes, compared with the re-read).
//!
//! Durable checkpoints (`Checkpoint`) are taken every `checkpoint_bytes` at positions where the
//! decoder can restart (anywhere for raw payloads, at frame/stream ends for zstd/xz): the slot is
//! fsynced first, then the checkpoint — with both hash states serialized — is handed to the
//! runner to persist. A restarted engine resumes with an HTTP `Range` request from there.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use bytes::Bytes;
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256};
use slipway_api::Sha256Digest;
use slipway_api::manifest::PayloadFormat;

use super::machine::Checkpoint;
use crate::error::{Error, Result};

/// Bytes per batch handed to the writer thread.
const WRITE_BUF: usize = 1 << 20;
/// Most pieces in one batch (the network may deliver small chunks).
const BATCH_PARTS: usize = 256;
/// Buffers in flight between the network side and the writer.
const QUEUE_DEPTH: usize = 4;
/// The verifier's read size: small enough that each block is still in the core's L2 cache when
/// it is hashed (with 1 MiB reads the copy out of the page cache cost about a fifth more).
const VERIFY_BUF: usize = 128 << 10;
/// Scratch output of one decompression call.
const DECODE_BUF: usize = 256 << 10;

/// One payload to write into one slot.
#[derive(Debug, Clone)]
pub struct Job {
    /// Absolute payload URL.
    pub url: String,
    /// Signed size of the served bytes.
    pub size: u64,
    /// Signed SHA-256 of the served bytes.
    pub sha256: Sha256Digest,
    /// Encoding of the served bytes.
    pub format: PayloadFormat,
    /// The slot (file or block device) to write. Never the booted slot: the caller checks.
    pub slot_path: PathBuf,
    /// Where to resume (default: from the start).
    pub from: Checkpoint,
    /// Bytes between durable checkpoints.
    pub checkpoint_bytes: u64,
    /// Longest wait for the next bytes from the server.
    pub idle_timeout: Duration,
}

/// What a finished download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes written into the slot.
    pub written: u64,
    /// SHA-256 of the bytes written into the slot.
    pub written_digest: Sha256Digest,
    /// SHA-256 of the slot's first `written` bytes as re-read from the slot after they were
    /// written (the slot was fsynced before the download returned).
    pub reread_digest: Sha256Digest,
}

/// Live progress: served bytes so far (for D-Bus properties and progress bars).
pub type Progress = Arc<AtomicU64>;

fn hash_state(h: &Sha256) -> String {
    hex::encode(h.serialize().as_slice())
}

fn restore_hash(hexed: &str) -> Option<Sha256> {
    if hexed.is_empty() {
        return Some(Sha256::new());
    }
    let bytes = hex::decode(hexed).ok()?;
    let state = bytes.as_slice().try_into().ok()?;
    Sha256::deserialize(state).ok()
}

enum Msg {
    /// Consecutive bytes for the slot, written with one vectored write.
    Data(Vec<Bytes>),
    Checkpoint(Checkpoint),
    Finish,
}

/// The decoder of compressed served bytes, able to say where it may restart.
enum Decoder {
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
    Xz(Box<liblzma::stream::Stream>),
}

/// One decode call: how much input was consumed, how much output produced, and whether the
/// decoder now sits at a restartable boundary (end of a zstd frame / xz stream).
struct Step {
    consumed: usize,
    produced: usize,
    boundary: bool,
}

impl Decoder {
    /// The decoder for `format`; none for raw payloads, whose bytes are the slot's bytes.
    fn new(format: PayloadFormat, url: &str) -> Result<Option<Self>> {
        let fail = |e: std::io::Error| Error::Payload {
            url: url.into(),
            reason: format!("decoder: {e}"),
        };
        Ok(Some(match format {
            PayloadFormat::Raw => return Ok(None),
            PayloadFormat::Zstd => {
                Decoder::Zstd(Box::new(zstd::stream::raw::Decoder::new().map_err(fail)?))
            }
            PayloadFormat::Xz => Decoder::Xz(Box::new(new_xz(url)?)),
        }))
    }

    fn step(&mut self, input: &[u8], out: &mut [u8], url: &str) -> Result<Step> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let bad = |reason: String| Error::Payload {
            url: url.into(),
            reason,
        };
        match self {
            Decoder::Zstd(d) => {
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(out);
                let hint = d
                    .run(&mut inb, &mut outb)
                    .map_err(|e| bad(format!("zstd: {e}")))?;
                Ok(Step {
                    consumed: inb.pos(),
                    produced: outb.pos(),
                    boundary: hint == 0,
                })
            }
            Decoder::Xz(s) => {
                let (in0, out0) = (s.total_in(), s.total_out());
                let status = s
                    .process(input, out, liblzma::stream::Action::Run)
                    .map_err(|e| bad(format!("xz: {e}")))?;
                let step = Step {
                    consumed: (s.total_in() - in0) as usize,
                    produced: (s.total_out() - out0) as usize,
                    boundary: status == liblzma::stream::Status::StreamEnd,
                };
                if step.boundary {
                    // A concatenated payload continues with a fresh stream.
                    **s = new_xz(url)?;
                }
                Ok(step)
            }
        }
    }
}

fn new_xz(url: &str) -> Result<liblzma::stream::Stream> {
    liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| Error::Payload {
        url: url.into(),
        reason: format!("xz decoder: {e}"),
    })
}

/// The network-side half: hashing, decoding, batching for the writer.
struct Pipeline {
    url: String,
    size: u64,
    compressed: bool,
    served: u64,
    served_hash: Sha256,
    written: u64,
    written_hash: Sha256,
    /// None for a raw payload.
    decoder: Option<Decoder>,
    at_boundary: bool,
    /// Decoded bytes being gathered into a piece of the batch (compressed payloads).
    buf: Vec<u8>,
    /// The batch for the writer: raw payloads' chunks as received (no copy), decoded pieces.
    batch: Vec<Bytes>,
    batch_len: usize,
    scratch: Vec<u8>,
    last_checkpoint: u64,
    checkpoint_bytes: u64,
    tx: SyncSender<Msg>,
    progress: Progress,
    /// Set by a delta apply: checkpoints say so, and how many bytes were fetched.
    delta: bool,
    fetched: u64,
}

impl Pipeline {
    fn send(&self, msg: Msg) -> Result<()> {
        // The writer only hangs up when it failed; its error is reported by `join`.
        self.tx.send(msg).map_err(|_| Error::Payload {
            url: self.url.clone(),
            reason: "slot writer stopped".into(),
        })
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_BUF));
            self.batch_len += piece.len();
            self.batch.push(Bytes::from(piece));
        }
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_PARTS));
            self.batch_len = 0;
            self.send(Msg::Data(batch))?;
        }
        Ok(())
    }

    fn push(&mut self, chunk: Bytes) -> Result<()> {
        if self.served + chunk.len() as u64 > self.size {
            return Err(Error::Payload {
                url: self.url.clone(),
                reason: format!(
                    "server sent more than the signed size of {} bytes; stopped reading",
                    self.size
                ),
            });
        }
        let pushed = match self.decoder.take() {
            None => self.push_raw(chunk),
            Some(mut decoder) => {
                let pushed = self.push_decoded(&mut decoder, &chunk);
                self.decoder = Some(decoder);
                pushed
            }
        };
        self.progress.store(self.served, Ordering::Relaxed);
        pushed
    }

    /// Raw chunks go to the writer as they came from the network, without a copy on this
    /// thread (copying a gigabyte into write buffers cost a fifth of a core); a checkpoint may
    /// follow any chunk.
    fn push_raw(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.served += chunk.len() as u64;
        self.written += chunk.len() as u64;
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= WRITE_BUF || self.batch.len() >= BATCH_PARTS {
            self.flush()?;
        }
        if self.written - self.last_checkpoint >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Compressed bytes: hashed as served, decoded through the scratch buffer; checkpoints only
    /// where the decoder can restart.
    fn push_decoded(&mut self, decoder: &mut Decoder, mut chunk: &[u8]) -> Result<()> {
        while !chunk.is_empty() {
            let mut scratch = std::mem::take(&mut self.scratch);
            let step = decoder.step(chunk, &mut scratch, &self.url)?;
            self.served_hash.update(&chunk[..step.consumed]);
            self.served += step.consumed as u64;
            chunk = &chunk[step.consumed..];
            self.emit(&scratch[..step.produced])?;
            self.scratch = scratch;
            if step.consumed > 0 || step.produced > 0 {
                self.at_boundary = step.boundary;
            }
            if step.boundary && self.written - self.last_checkpoint >= self.checkpoint_bytes {
                self.checkpoint()?;
            }
            if step.consumed == 0 && step.produced == 0 {
                return Err(Error::Payload {
                    url: self.url.clone(),
                    reason: "decoder made no progress (corrupt compressed payload)".into(),
                });
            }
        }
        // The decoder may hold output it could not fit; drain it.
        loop {
            let mut scratch = std::mem::take(&mut self.scratch);
            let step = decoder.step(&[], &mut scratch, &self.url)?;
            self.emit(&scratch[..step.produced])?;
            self.scratch = scratch;
            if step.produced > 0 {
                self.at_boundary = step.boundary;
            }
            if step.produced < DECODE_BUF {
                return Ok(());
            }
        }
    }

    /// Decoded bytes: hashed as written, gathered into write-sized pieces.
    fn emit(&mut self, out: &[u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.written_hash.update(out);
        self.written += out.len() as u64;
        let mut rest = out;
        while !rest.is_empty() {
            let room = WRITE_BUF - self.buf.len();
            let n = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == WRITE_BUF {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.flush()?;
        self.last_checkpoint = self.written;
        let cp = Checkpoint {
            served: self.served,
            written: self.written,
            // A raw payload's digest is checked on the re-read, which starts from byte 0.
            served_hash: if self.compressed {
                hash_state(&self.served_hash)
            } else {
                String::new()
            },
            written_hash: if self.compressed {
                hash_state(&self.written_hash)
            } else {
                String::new()
            },
            delta: self.delta,
            fetched: self.fetched,
        };
        self.send(Msg::Checkpoint(cp))
    }
}

/// Writes `job`'s payload into its slot. `on_checkpoint` is called (from the writer thread)
/// after each fsync with a checkpoint that is safe to persist.
pub async fn run(
    client: &reqwest::Client,
    job: Job,
    progress: Progress,
    on_checkpoint: impl Fn(Checkpoint) + Send + 'static,
) -> Result<Outcome> {
    let url = job.url.clone();
    let payload_err = |reason: String| Error::Payload {
        url: url.clone(),
        reason,
    };
    let interrupted = |reason: String| Error::Interrupted {
        url: url.clone(),
        reason,
    };
    let mut from = job.from.clone();
    if from.served > job.size {
        from = Checkpoint::default();
    }
    let (served_hash, written_hash) = match (
        restore_hash(&from.served_hash),
        restore_hash(&from.written_hash),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            tracing::warn!(url = %url, "checkpoint hash state unreadable; restarting download");
            from = Checkpoint::default();
            (Sha256::new(), Sha256::new())
        }
    };

    let mut request = client.get(&job.url);
    if from.served > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={}-", from.served));
    }
    let mut resp = tokio::time::timeout(job.idle_timeout, request.send())
        .await
        .map_err(|_| interrupted(format!("no answer within {:?}", job.idle_timeout)))?
        .map_err(|e| interrupted(format!("request failed: {}", crate::error::with_causes(&e))))?;
    let status = resp.status();
    let (served_hash, written_hash) = match status.as_u16() {
        206 if from.served > 0 => {
            let expected = format!("bytes {}-{}/{}", from.served, job.size - 1, job.size);
            let got = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if got != expected {
                return Err(payload_err(format!(
                    "resumed with Content-Range {got:?}, expected {expected:?}"
                )));
            }
            (served_hash, written_hash)
        }
        200 => {
            if from.served > 0 {
                tracing::info!(url = %url, "server ignored Range; restarting from byte 0");
            }
            from = Checkpoint::default();
            (Sha256::new(), Sha256::new())
        }
        s if (500..600).contains(&s) || s == 408 || s == 429 => {
            return Err(interrupted(format!("HTTP {status}")));
        }
        _ => return Err(payload_err(format!("HTTP {status}"))),
    };
    if let Some(len) = resp.content_length()
        && from.served + len != job.size
    {
        return Err(payload_err(format!(
            "server announces {} bytes, the signed size is {}",
            from.served + len,
            job.size
        )));
    }

    let compressed = job.format != PayloadFormat::Raw;
    let mut sink = Sink::open(
        &job.slot_path,
        &url,
        job.size,
        job.format,
        &from,
        (served_hash, written_hash),
        job.checkpoint_bytes,
        progress,
        on_checkpoint,
    )?;
    let pipe = &mut sink.pipe;
    let streamed: Result<()> = async {
        loop {
            let chunk = tokio::time::timeout(job.idle_timeout, resp.chunk())
                .await
                .map_err(|_| {
                    interrupted(format!(
                        "no bytes for {:?} at byte {}",
                        job.idle_timeout, pipe.served
                    ))
                })?
                .map_err(|e| {
                    interrupted(format!("connection failed at byte {}: {e}", pipe.served))
                })?;
            match chunk {
                Some(bytes) => pipe.push(bytes)?,
                None => break,
            }
        }
        if pipe.served != job.size {
            // Indistinguishable from a connection cut short: resume later.
            return Err(interrupted(format!(
                "the server ended the body at byte {} of {}",
                pipe.served, job.size
            )));
        }
        if !pipe.at_boundary {
            return Err(payload_err(
                "compressed payload ends inside a frame (truncated or corrupt)".into(),
            ));
        }
        if compressed {
            let served = Sha256Digest::from_hasher(pipe.served_hash.clone());
            if served != job.sha256 {
                return Err(payload_err(format!(
                    "sha256 digest mismatch: signed {}, served bytes hash to {served}",
                    job.sha256
                )));
            }
        }
        pipe.flush()?;
        pipe.send(Msg::Finish)
    }
    .await;
    let written_digest = if compressed {
        Sha256Digest::from_hasher(sink.pipe.written_hash.clone())
    } else {
        job.sha256
    };
    sink.close(
        streamed,
        written_digest,
        (!compressed).then_some(job.sha256),
    )
    .await
}

/// The slot side of a download or delta apply: the network-side pipeline feeding a writer
/// thread and a verifier thread.
pub(super) struct Sink {
    pipe: Pipeline,
    writer: std::thread::JoinHandle<Result<(u64, bool)>>,
    verifier: std::thread::JoinHandle<Result<(u64, Sha256Digest)>>,
    slot_path: PathBuf,
}

impl Sink {
    /// Opens `slot_path` for writing from checkpoint `from` (whose hash states are `hashes`),
    /// and starts the writer and the verifier (which first re-reads what `from` says was
    /// written).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        slot_path: &std::path::Path,
        url: &str,
        size: u64,
        format: PayloadFormat,
        from: &Checkpoint,
        hashes: (Sha256, Sha256),
        checkpoint_bytes: u64,
        progress: Progress,
        on_checkpoint: impl Fn(Checkpoint) + Send + 'static,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(slot_path)
            .map_err(|e| Error::io(slot_path, e))?;
        let (tx, rx) = sync_channel::<Msg>(QUEUE_DEPTH);
        let (vtx, vrx) = std::sync::mpsc::channel::<u64>();
        let start = from.written;
        // The bytes written before a resume are re-read first.
        let _ = vtx.send(start);
        let wpath = slot_path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("slot-writer".into())
            .spawn(move || write_slot(file, wpath, start, rx, vtx, on_checkpoint))
            .map_err(|e| Error::io(slot_path, e))?;
        let vpath = slot_path.to_path_buf();
        let verifier = std::thread::Builder::new()
            .name("slot-verifier".into())
            .spawn(move || reread_slot(vpath, vrx))
            .map_err(|e| Error::io(slot_path, e))?;

        let compressed = format != PayloadFormat::Raw;
        let pipe = Pipeline {
            url: url.to_owned(),
            size,
            compressed,
            served: from.served,
            served_hash: hashes.0,
            written: from.written,
            written_hash: hashes.1,
            decoder: Decoder::new(format, url)?,
            at_boundary: true,
            // The decode buffers only for compressed payloads (raw chunks go to the batch as is).
            buf: if compressed {
                Vec::with_capacity(WRITE_BUF)
            } else {
                Vec::new()
            },
            batch: Vec::with_capacity(BATCH_PARTS),
            batch_len: 0,
            scratch: if compressed {
                vec![0u8; DECODE_BUF]
            } else {
                Vec::new()
            },
            last_checkpoint: from.written,
            checkpoint_bytes,
            tx,
            progress,
            delta: false,
            fetched: 0,
        };
        Ok(Sink {
            pipe,
            writer,
            verifier,
            slot_path: slot_path.to_path_buf(),
        })
    }

    /// Marks this sink as a delta apply's: its checkpoints say so and count fetched bytes
    /// (from `fetched`, the count at the checkpoint resumed from).
    pub(super) fn start_delta(&mut self, fetched: u64) {
        self.pipe.delta = true;
        self.pipe.fetched = fetched;
    }

    /// Writes the next `bytes` of a delta apply (whole blocks, so checkpoints fall between
    /// blocks); `fetched` says they came from the server.
    pub(super) fn push_delta(&mut self, bytes: Bytes, fetched: bool) -> Result<()> {
        if fetched {
            self.pipe.fetched += bytes.len() as u64;
        }
        self.pipe.push(bytes)
    }

    /// Bytes written so far (including those before the checkpoint resumed from).
    pub(super) fn position(&self) -> u64 {
        self.pipe.written
    }

    /// Flushes and tells the writer everything was sent.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.pipe.flush()?;
        self.pipe.send(Msg::Finish)
    }

    /// Waits for the writer and the verifier after the network side ended with `streamed`
    /// (having sent `Finish` when it succeeded), and checks that everything written was
    /// re-read, and, where `expect_reread` is given, that the re-read has that digest.
    pub(super) async fn close(
        self,
        streamed: Result<()>,
        written_digest: Sha256Digest,
        expect_reread: Option<Sha256Digest>,
    ) -> Result<Outcome> {
        let Sink {
            pipe,
            writer,
            verifier,
            slot_path,
        } = self;
        let url = pipe.url.clone();
        let payload_err = |reason: String| Error::Payload {
            url: url.clone(),
            reason,
        };
        let written = pipe.written;
        drop(pipe); // hang up, so a writer waiting for more stops
        let (wrote, reread) = tokio::task::spawn_blocking(move || (writer.join(), verifier.join()))
            .await
            .map_err(|e| payload_err(format!("writer task: {e}")))?;
        let wrote = wrote.map_err(|_| payload_err("slot writer panicked".into()))?;
        let reread = reread.map_err(|_| payload_err("slot verifier panicked".into()))?;
        match (streamed, wrote) {
            // The writer's own failure (e.g. disk full) explains a "writer stopped" on our side.
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok((total, finished))) => {
                let (reread_len, reread_digest) = reread?;
                if !finished || total != written || reread_len != written {
                    return Err(Error::Verify {
                        slot: slot_path.display().to_string(),
                        reason: format!(
                            "wrote {total} and re-read {reread_len} of {written} bytes"
                        ),
                    });
                }
                if let Some(expected) = expect_reread
                    && reread_digest != expected
                {
                    // The only hash of a raw payload or a delta: what was written, read back.
                    return Err(payload_err(format!(
                        "sha256 digest mismatch: signed {expected}, the bytes written to the slot \
                         and read back hash to {reread_digest}"
                    )));
                }
                Ok(Outcome {
                    written,
                    written_digest,
                    reread_digest,
                })
            }
        }
    }
}

/// The writer thread: positional writes into the page cache, each announced to the verifier.
/// Checkpoints go to a syncer thread that fsyncs while writing goes on (a flush of tens of MiB
/// would otherwise stall the whole pipeline), then hands the checkpoint on to be persisted.
/// `fdatasync` covers every write issued before it started, so a checkpoint is reported only
/// once everything up to its offset is on disk.
fn write_slot(
    file: std::fs::File,
    path: PathBuf,
    mut offset: u64,
    rx: Receiver<Msg>,
    verify: std::sync::mpsc::Sender<u64>,
    on_checkpoint: impl Fn(Checkpoint) + Send + 'static,
) -> Result<(u64, bool)> {
    let io = |e| Error::io(&path, e);
    let sync_file = file.try_clone().map_err(io)?;
    let (stx, srx) = sync_channel::<Checkpoint>(1);
    let sync_path = path.clone();
    let syncer = std::thread::Builder::new()
        .name("slot-syncer".into())
        .spawn(move || -> Result<()> {
            for cp in srx {
                sync_file
                    .sync_data()
                    .map_err(|e| Error::io(&sync_path, e))?;
                fail::fail_point!("download-after-checkpoint-fsync");
                on_checkpoint(cp);
            }
            Ok(())
        })
        .map_err(io)?;
    let outcome = (|| -> Result<(u64, bool)> {
        loop {
            match rx.recv() {
                Ok(Msg::Data(batch)) => {
                    slot_write_fault(&path, offset).map_err(io)?;
                    offset += write_batch(&file, offset, &batch).map_err(io)?;
                    let _ = verify.send(offset);
                }
                Ok(Msg::Checkpoint(cp)) => {
                    if stx.send(cp).is_err() {
                        // The syncer failed; its error is reported below.
                        return Ok((offset, false));
                    }
                }
                Ok(Msg::Finish) => return Ok((offset, true)),
                // The network side gave up; its error is the one reported.
                Err(_) => return Ok((offset, false)),
            }
        }
    })();
    drop(stx);
    let synced = syncer
        .join()
        .map_err(|_| Error::io(&path, std::io::Error::other("slot syncer panicked")))?;
    let (offset, finished) = outcome?;
    synced?;
    if finished {
        file.sync_all().map_err(io)?;
    }
    Ok((offset, finished))
}

/// The slot's device failing (tests; a no-op unless built with the `failpoints` feature).
/// Configured as `return(PATH@OFFSET)`, writes to the slot at PATH fail with EIO once they
/// reach OFFSET; other slots (other tests' engines in the same process) are not hit.
fn slot_write_fault(path: &std::path::Path, offset: u64) -> std::io::Result<()> {
    let _ = (path, offset);
    fail::fail_point!("slot-write-eio", |armed: Option<String>| {
        let hit = armed
            .as_deref()
            .and_then(|a| a.rsplit_once('@'))
            .is_some_and(|(p, at)| {
                std::path::Path::new(p) == path && at.parse::<u64>().is_ok_and(|at| offset >= at)
            });
        if hit {
            // 5 is EIO on Linux.
            Err(std::io::Error::from_raw_os_error(5))
        } else {
            Ok(())
        }
    });
    Ok(())
}

/// Writes `batch` at `offset` with vectored writes; returns the bytes written.
fn write_batch(mut file: &std::fs::File, offset: u64, batch: &[Bytes]) -> std::io::Result<u64> {
    use std::io::{IoSlice, Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    let mut total = 0u64;
    while !rest.is_empty() {
        let n = file.write_vectored(rest)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(total)
}

/// The verifier thread: re-reads the slot from the start, up to each offset the writer announces
/// after a write returned, so that the check before the boot selection flips overlaps the
/// download instead of following it. The bytes come back through the page cache, which is what
/// the kernel writes back: the check proves the engine wrote what it meant to write; the
/// writer's fsyncs (each checkpoint, and all of the slot before the download returns) make it
/// durable. The digest is only used once both are done.
fn reread_slot(path: PathBuf, rx: Receiver<u64>) -> Result<(u64, Sha256Digest)> {
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut buf = vec![0u8; VERIFY_BUF];
    while let Ok(upto) = rx.recv() {
        while done < upto {
            let want = (upto - done).min(buf.len() as u64) as usize;
            let n = file
                .read_at(&mut buf[..want], done)
                .map_err(|e| Error::io(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            done += n as u64;
        }
    }
    Ok((done, Sha256Digest::from_hasher(hasher)))
}

/// Re-reads `len` bytes of the slot at `path` and returns their SHA-256 (the check before the
/// boot selection flips).
pub fn digest_slot(path: &std::path::Path, len: u64) -> Result<Sha256Digest> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = file.take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WRITE_BUF];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != len {
        return Err(Error::Verify {
            slot: path.display().to_string(),
            reason: format!("slot holds {total} bytes, {len} were written"),
        });
    }
    Ok(Sha256Digest::from_hasher(hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_state_round_trips_mid_stream() {
        let mut h = Sha256::new();
        h.update(b"hello ");
        let saved = hash_state(&h);
        let mut again = restore_hash(&saved).unwrap();
        h.update(b"world");
        again.update(b"world");
        assert_eq!(h.finalize(), again.finalize());
        assert!(restore_hash("zz").is_none());
    }

    #[test]
    fn a_batch_of_many_small_pieces_is_written_whole_at_its_offset() {
        // More pieces than one writev takes (IOV_MAX is 1024), of uneven sizes.
        let pieces: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 1 + (i as usize * 7) % 300]))
            .collect();
        let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, vec![0xeeu8; 100]).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let n = write_batch(&file, 40, &pieces).unwrap();
        assert_eq!(n, expected.len() as u64);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(
            &back[..40],
            &[0xeeu8; 40][..],
            "bytes before the offset are kept"
        );
        assert_eq!(&back[40..], &expected[..]);
    }
}
