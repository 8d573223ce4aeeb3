//! Crash-safe file updates shared by the file-based boot backends: whole-file replacement by
//! rename, and directory fsyncs so that a rename survives a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::BootError;

/// Maps an I/O error to [`BootError::Io`] naming `path`.
pub(crate) fn io_err(
    backend: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> BootError {
    let path = path.to_path_buf();
    move |source| BootError::Io {
        backend,
        path,
        source,
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes the directory entry changes in `dir` (renames, creations) durable. Without this a
/// rename can be lost on power failure even though the file data was synced.
pub(crate) fn sync_dir(backend: &'static str, dir: &Path) -> Result<(), BootError> {
    let d = File::open(dir).map_err(io_err(backend, dir))?;
    d.sync_all().map_err(io_err(backend, dir))
}

/// Replaces `path` with `bytes`: write a temp file in the same directory (same file system, so
/// the rename is atomic), fsync it, rename it over `path`, fsync the directory. A crash leaves
/// either the old file or the new one, never a torn one. The temp name starts with a dot so that
/// no boot loader mistakes it for a config file (systemd-boot skips dot files; GRUB never looks).
pub(crate) fn replace_file(
    backend: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<(), BootError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BootError::Invalid {
            backend,
            reason: format!("{}: not a file path", path.display()),
        })?;
    let tmp = dir.join(format!(
        ".{name}.slipway-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(backend, &tmp))?;
        // Keep the old file's permissions: the replacement must not widen or narrow access.
        // Best effort: on FAT (the ESP) modes come from mount options and chmod fails with
        // EPERM, and there the new file gets the same fixed mode anyway.
        if let (Ok(old), Ok(new)) = (fs::metadata(path), f.metadata())
            && old.permissions() != new.permissions()
        {
            let _ = f.set_permissions(old.permissions());
        }
        f.write_all(bytes).map_err(io_err(backend, &tmp))?;
        f.sync_all().map_err(io_err(backend, &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err(backend, path))
    })();
    if result.is_err() {
        // Best effort: a stray temp file is harmless but untidy.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(backend, &dir)
}

/// Renames `from` to `to` (same directory) and makes the rename durable.
pub(crate) fn rename_durable(
    backend: &'static str,
    from: &Path,
    to: &Path,
) -> Result<(), BootError> {
    fs::rename(from, to).map_err(io_err(backend, from))?;
    sync_dir(backend, &parent_dir(to))
}
