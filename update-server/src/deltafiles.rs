//! The files a release needs for delta updates, made at signing time from the OS payload: the
//! block index of the uncompressed image and, when the payload is compressed, the uncompressed
//! image itself (nodes fetch the blocks they lack from it with `Range` requests; a compressed
//! stream cannot be entered at an arbitrary block).
//!
//! They are written beside the payload: `FILE.blockidx` and, for a compressed `FILE`,
//! `FILE.raw`; `slipway publish --os FILE` uploads them from there.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use slipway_api::Sha256Digest;
use slipway_api::blockindex::BlockIndex;
use slipway_api::manifest::PayloadFormat;

use crate::magic::Magic;
use crate::release::PayloadFile;

/// The default block size: 4 KiB, the file system's block. Measured on the vm-tests' slot
/// images (ext4 with 4 KiB blocks), 1.0.0 -> 2.0.0 with one Debian package added: 4 KiB blocks
/// fetch 2.26% of the image, 16 KiB 72.6%, 64 KiB 73.2%. Adding a file moves the files after it
/// by whole file-system blocks, and a larger index block straddling such a move matches nowhere.
/// The price is the index (16 bytes per 4 KiB, 0.39% of the image) and the node's memory while
/// applying (28 MiB for a 4 GiB image).
pub const DEFAULT_BLOCK_SIZE: u32 = 4 << 10;

/// The delta files of one OS payload.
#[derive(Debug, Clone)]
pub struct DeltaFiles {
    /// Bytes per block.
    pub block_size: u32,
    /// The block index file.
    pub index: PayloadFile,
    /// Where it was written.
    pub index_path: PathBuf,
    /// The uncompressed image (the payload itself when it is raw).
    pub image: PayloadFile,
    /// Where it is.
    pub image_path: PathBuf,
}

/// Where the block index of payload `file` is written.
pub fn index_path(file: &Path) -> PathBuf {
    with_suffix(file, ".blockidx")
}

/// Where the uncompressed image of compressed payload `file` is written.
pub fn raw_path(file: &Path) -> PathBuf {
    with_suffix(file, ".raw")
}

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads `payload` (of `format`), decompressing it if needed, indexes the image in blocks of
/// `block_size` and writes the index (and, for a compressed payload, the uncompressed image)
/// beside it.
pub fn make(
    payload: &PayloadFile,
    format: PayloadFormat,
    block_size: u32,
) -> io::Result<DeltaFiles> {
    let path = Path::new(&payload.name);
    let file = File::open(path)?;
    let (index, image, image_path) = match format {
        PayloadFormat::Raw => {
            let (index, digest) =
                BlockIndex::build(io::BufReader::with_capacity(1 << 20, file), block_size)?;
            if digest != payload.sha256 || index.image_size != payload.size {
                return Err(io::Error::other(format!(
                    "{} changed while it was read",
                    path.display()
                )));
            }
            (index, payload.clone(), path.to_path_buf())
        }
        PayloadFormat::Zstd | PayloadFormat::Xz => {
            let decoded: Box<dyn Read> = match format {
                PayloadFormat::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
                _ => Box::new(liblzma::read::XzDecoder::new_multi_decoder(
                    io::BufReader::with_capacity(1 << 20, file),
                )),
            };
            let out = raw_path(path);
            let tmp = with_suffix(&out, ".tmp");
            let mut tee = Tee {
                inner: decoded,
                out: BufWriter::with_capacity(1 << 20, File::create(&tmp)?),
            };
            let built = BlockIndex::build(&mut tee, block_size);
            let (index, digest) = match built.and_then(|b| {
                let f = tee.out.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                Ok(b)
            }) {
                Ok(b) => b,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("decompressing {}: {e}", path.display()),
                    ));
                }
            };
            std::fs::rename(&tmp, &out)?;
            let image = PayloadFile {
                name: out.display().to_string(),
                size: index.image_size,
                sha256: digest,
                magic: Magic::Format(PayloadFormat::Raw),
            };
            (index, image, out)
        }
    };
    if index.image_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds an empty image", path.display()),
        ));
    }
    let bytes = index.to_bytes();
    let index_path = index_path(path);
    crate::files::write_atomic(&index_path, &bytes, 0o644)?;
    Ok(DeltaFiles {
        block_size,
        index: PayloadFile {
            name: index_path.display().to_string(),
            size: bytes.len() as u64,
            sha256: Sha256Digest(Sha256::digest(&bytes).into()),
            magic: Magic::Unsupported("block index"),
        },
        index_path,
        image,
        image_path,
    })
}

/// Copies what is read through it into `out`.
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}
