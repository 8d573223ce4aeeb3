//! File helpers shared by the CLI and the server: streaming digests, bounded reads, atomic
//! writes, private files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use slipway_api::Sha256Digest;

/// Read buffer for streaming digests: large enough that syscalls don't dominate.
const CHUNK: usize = 1 << 20;

/// Size and SHA-256 of everything `reader` yields, streaming (memory is one buffer), reading
/// at most `limit` bytes plus one, so a caller can tell "larger than expected" apart.
pub fn digest_reader(mut reader: impl Read, limit: u64) -> io::Result<(u64, Sha256Digest)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut limited = (&mut reader).take(limit.saturating_add(1));
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, Sha256Digest::from_hasher(hasher)))
}

/// Size and SHA-256 of a file, streaming.
pub fn digest_file(path: &Path) -> io::Result<(u64, Sha256Digest)> {
    let f = File::open(path)?;
    digest_reader(f, u64::MAX - 1)
}

/// Size and SHA-256 of a file, streaming, and its first `head` bytes (fewer if it is
/// shorter), all from one open file.
pub fn digest_file_with_head(path: &Path, head: usize) -> io::Result<(u64, Sha256Digest, Vec<u8>)> {
    let mut f = File::open(path)?;
    let mut first = Vec::with_capacity(head);
    (&mut f).take(head as u64).read_to_end(&mut first)?;
    f.rewind()?;
    let (size, digest) = digest_reader(f, u64::MAX - 1)?;
    Ok((size, digest, first))
}

/// The first `len` bytes of a file (fewer if it is shorter).
pub fn read_head(path: &Path, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    File::open(path)?.take(len as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a small file whole, refusing files over `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the
/// directory. Readers see the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file with `mode` (never overwriting one) and writes `bytes` to it.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_reader_stops_one_byte_past_the_limit() {
        let data = vec![7u8; 1000];
        let (n, _) = digest_reader(&data[..], 10).unwrap();
        assert_eq!(n, 11);
        let (n, d) = digest_reader(&data[..], 1000).unwrap();
        assert_eq!((n, d), (1000, Sha256Digest::of(&data)));
    }

    #[test]
    fn digest_with_head_hashes_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..=255).cycle().take(3000).collect();
        fs::write(&path, &data).unwrap();
        let (n, d, head) = digest_file_with_head(&path, 6).unwrap();
        assert_eq!(
            (n, d, head.as_slice()),
            (3000, Sha256Digest::of(&data), &data[..6])
        );
        fs::write(&path, b"ab").unwrap();
        let (n, _, head) = digest_file_with_head(&path, 6).unwrap();
        assert_eq!((n, head.as_slice()), (2, &b"ab"[..]));
        assert_eq!(read_head(&path, 6).unwrap(), b"ab");
        assert_eq!(read_head(&path, 1).unwrap(), b"a");
    }
}
