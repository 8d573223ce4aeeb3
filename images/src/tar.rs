//! A deterministic tar writer for image layers: POSIX ustar headers, entries in path order, every
//! timestamp the same and no host user names, so the same files always make the same bytes.
//! Only what a layer needs: directories, regular files and symbolic links.

use std::collections::BTreeMap;

use thiserror::Error;

const BLOCK: usize = 512;

/// A layer entry that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TarError {
    /// Paths are relative, `/`-separated, without `.` or `..` components.
    #[error("tar entry {0:?}: not a clean relative path")]
    BadPath(String),
    /// Longer than ustar's 100-byte name plus 155-byte prefix can hold.
    #[error("tar entry {0:?}: path too long for a ustar header")]
    PathTooLong(String),
    /// A symlink target over 100 bytes.
    #[error("tar entry {0:?}: link target too long for a ustar header")]
    LinkTooLong(String),
    /// Two entries at one path.
    #[error("tar entry {0:?}: added twice")]
    Duplicate(String),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
}

/// One entry's metadata and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Directory, file or link.
    pub kind: Kind,
}

/// Entries by path, written in path order; parent directories are added as needed.
#[derive(Debug, Clone, Default)]
pub struct Tar {
    entries: BTreeMap<String, Entry>,
    /// Modification time of every entry (seconds since the epoch).
    mtime: u64,
}

fn clean(path: &str) -> Result<String, TarError> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(TarError::BadPath(path.to_string()));
    }
    Ok(p.to_string())
}

impl Tar {
    /// An empty archive whose entries all carry `mtime`.
    pub fn new(mtime: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            mtime,
        }
    }

    /// Adds a directory (and its missing parents, root-owned, 0755). Adding one that exists
    /// as a directory (a parent added before) sets its mode and owner.
    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<(), TarError> {
        let p = clean(path)?;
        self.parents(&p)?;
        if self.entries.get(&p).is_some_and(|e| e.kind != Kind::Dir) {
            return Err(TarError::Duplicate(p));
        }
        self.entries.insert(
            p,
            Entry {
                mode,
                uid,
                gid,
                kind: Kind::Dir,
            },
        );
        Ok(())
    }

    /// Adds a regular file.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        data: Vec<u8>,
    ) -> Result<(), TarError> {
        self.add(path, mode, uid, gid, Kind::File(data))
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), TarError> {
        if target.len() > 100 {
            return Err(TarError::LinkTooLong(path.to_string()));
        }
        self.add(path, 0o777, 0, 0, Kind::Symlink(target.to_string()))
    }

    /// The entries, by path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    fn add(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        kind: Kind,
    ) -> Result<(), TarError> {
        let p = clean(path)?;
        self.parents(&p)?;
        if self.entries.contains_key(&p) {
            return Err(TarError::Duplicate(p));
        }
        split_name(&p)?;
        self.entries.insert(
            p,
            Entry {
                mode,
                uid,
                gid,
                kind,
            },
        );
        Ok(())
    }

    fn parents(&mut self, p: &str) -> Result<(), TarError> {
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            let parent = &p[..at + i];
            match self.entries.get(parent) {
                Some(e) if e.kind != Kind::Dir => return Err(TarError::Duplicate(parent.into())),
                Some(_) => {}
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            kind: Kind::Dir,
                        },
                    );
                }
            }
            at += i + 1;
        }
        Ok(())
    }

    /// The archive's bytes.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, e) in &self.entries {
            let name = match e.kind {
                Kind::Dir => format!("{path}/"),
                _ => path.clone(),
            };
            let (prefix, name) = split_name(&name).expect("checked when added");
            let mut h = [0u8; BLOCK];
            h[..name.len()].copy_from_slice(name.as_bytes());
            octal(&mut h[100..108], u64::from(e.mode));
            octal(&mut h[108..116], u64::from(e.uid));
            octal(&mut h[116..124], u64::from(e.gid));
            let size = match &e.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            };
            octal(&mut h[124..136], size);
            octal(&mut h[136..148], self.mtime);
            h[156] = match e.kind {
                Kind::File(_) => b'0',
                Kind::Symlink(_) => b'2',
                Kind::Dir => b'5',
            };
            if let Kind::Symlink(t) = &e.kind {
                h[157..157 + t.len()].copy_from_slice(t.as_bytes());
            }
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            octal(&mut h[329..337], 0);
            octal(&mut h[337..345], 0);
            h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
            // The checksum is computed with its own field as spaces.
            h[148..156].fill(b' ');
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            let field = format!("{sum:06o}\0 ");
            h[148..156].copy_from_slice(field.as_bytes());
            out.extend_from_slice(&h);
            if let Kind::File(d) = &e.kind {
                out.extend_from_slice(d);
                out.resize(out.len().next_multiple_of(BLOCK), 0);
            }
        }
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }
}

/// (prefix, name) for a ustar header.
fn split_name(path: &str) -> Result<(&str, &str), TarError> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    // Split at a '/' so that the name fits in 100 bytes and the prefix in 155.
    let trimmed = path.trim_end_matches('/');
    for (i, _) in trimmed.match_indices('/') {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
            return Ok((prefix, name));
        }
    }
    Err(TarError::PathTooLong(path.to_string()))
}

/// Writes `v` as zero-padded octal with a NUL terminator, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// Reads back what [`Tar::finish`] wrote (regular files, directories, symlinks): path, entry.
/// For tests and for checking a layer; refuses a bad checksum.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Entry)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + BLOCK <= bytes.len() {
        let h = &bytes[at..at + BLOCK];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).trim().to_string()
        };
        let num = |r: std::ops::Range<usize>| {
            u64::from_str_radix(&field(r), 8).map_err(|e| e.to_string())
        };
        let mut check = h.to_vec();
        check[148..156].fill(b' ');
        let sum: u64 = check.iter().map(|&b| u64::from(b)).sum();
        if sum != num(148..156)? {
            return Err(format!("header at byte {at}: bad checksum"));
        }
        let name = field(0..100);
        let prefix = field(345..500);
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = num(124..136)? as usize;
        let (mode, uid, gid) = (
            num(100..108)? as u32,
            num(108..116)? as u32,
            num(116..124)? as u32,
        );
        at += BLOCK;
        let kind = match h[156] {
            b'0' | 0 => {
                let data = bytes
                    .get(at..at + size)
                    .ok_or_else(|| format!("{path}: truncated"))?
                    .to_vec();
                at += size.next_multiple_of(BLOCK);
                Kind::File(data)
            }
            b'2' => Kind::Symlink(field(157..257)),
            b'5' => Kind::Dir,
            t => return Err(format!("{path}: unexpected type {:?}", t as char)),
        };
        out.push((
            path.trim_end_matches('/').to_string(),
            Entry {
                mode,
                uid,
                gid,
                kind,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_same_entries_in_any_order_make_the_same_bytes() {
        let mut a = Tar::new(1_700_000_000);
        a.file("usr/bin/x", 0o755, 0, 0, b"x".to_vec()).unwrap();
        a.dir("tmp", 0o1777, 0, 0).unwrap();
        a.symlink("lib64/ld.so", "/lib/ld.so").unwrap();
        let mut b = Tar::new(1_700_000_000);
        b.symlink("lib64/ld.so", "/lib/ld.so").unwrap();
        b.dir("tmp", 0o1777, 0, 0).unwrap();
        b.file("/usr/bin/x", 0o755, 0, 0, b"x".to_vec()).unwrap();
        assert_eq!(a.finish(), b.finish());
        let mut c = Tar::new(1_700_000_001);
        c.file("usr/bin/x", 0o755, 0, 0, b"x".to_vec()).unwrap();
        c.dir("tmp", 0o1777, 0, 0).unwrap();
        c.symlink("lib64/ld.so", "/lib/ld.so").unwrap();
        assert_ne!(a.finish(), c.finish(), "the mtime is part of the bytes");
    }

    #[test]
    fn gnu_tar_reads_what_we_write() {
        let mut t = Tar::new(0);
        t.file(
            "etc/passwd",
            0o644,
            0,
            0,
            b"root:x:0:0::/:/sbin/nologin\n".to_vec(),
        )
        .unwrap();
        t.dir("home/nonroot", 0o700, 65532, 65532).unwrap();
        t.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld.so")
            .unwrap();
        let long = format!("usr/share/{}/{}", "d".repeat(90), "f".repeat(60));
        t.file(&long, 0o600, 1, 2, vec![7; 1000]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer.tar");
        std::fs::write(&file, t.finish()).unwrap();
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.contains("drwx------ 65532/65532"), "{listing}");
        assert!(
            listing.contains("lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld.so"),
            "{listing}"
        );
        assert!(listing.contains(&long), "{listing}");
        let long_line = listing.lines().find(|l| l.ends_with(&long)).unwrap();
        assert!(
            long_line.starts_with("-rw------- 1/2") && long_line.contains(" 1000 "),
            "{long_line}"
        );
        // And our reader agrees, parents included.
        let back = read(&t.finish()).unwrap();
        let paths: Vec<&str> = back.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            paths.contains(&"usr/share") && paths.contains(&"home"),
            "{paths:?}"
        );
        assert_eq!(
            back.iter().find(|(p, _)| p == &long).unwrap().1.kind,
            Kind::File(vec![7; 1000])
        );
    }

    #[test]
    fn bad_paths_and_clashes_are_refused() {
        let mut t = Tar::new(0);
        for bad in ["", "/", "a/../b", "./a", "a//b"] {
            assert!(
                matches!(t.file(bad, 0o644, 0, 0, vec![]), Err(TarError::BadPath(_))),
                "{bad}"
            );
        }
        t.file("a/b", 0o644, 0, 0, vec![]).unwrap();
        assert_eq!(
            t.file("a/b", 0o644, 0, 0, vec![]),
            Err(TarError::Duplicate("a/b".into()))
        );
        assert_eq!(
            t.file("a/b/c", 0o644, 0, 0, vec![]),
            Err(TarError::Duplicate("a/b".into()))
        );
        assert!(matches!(
            t.symlink("l", &"x".repeat(101)),
            Err(TarError::LinkTooLong(_))
        ));
        assert!(matches!(
            t.file(&"x".repeat(300), 0o644, 0, 0, vec![]),
            Err(TarError::PathTooLong(_))
        ));
        let mut corrupt = t.finish();
        corrupt[0] ^= 1;
        assert!(read(&corrupt).unwrap_err().contains("bad checksum"));
    }
}
