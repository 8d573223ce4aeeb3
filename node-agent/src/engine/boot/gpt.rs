//! GPT backend: the ChromeOS/CoreOS partition-attribute scheme on a disk (image file or block
//! device), read and written with `gptman`.
//!
//! The slots are the partitions named `SLIPWAY_A` and `SLIPWAY_B`. In each one's 64 attribute
//! bits: 48–51 priority (0 = never boot), 52–55 tries remaining, 56 successful. The boot loader
//! (e.g. Flatcar's GRUB `gptprio.next`, ChromeOS's depthcharge) boots the highest-priority slot
//! that is successful or has tries left, spending a try when it is not successful; ties go to
//! the lower partition number. Other attribute bits, and every other partition, are preserved.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use gptman::GPT;

use super::durable::io_err;
use super::{BootBackend, BootError, BootStatus, SlotState};
use crate::engine::slot::Slot;

const BACKEND: &str = "gpt";

/// Lowest bit of the 4-bit priority field.
pub const PRIORITY_SHIFT: u32 = 48;
/// Lowest bit of the 4-bit tries-remaining field.
pub const TRIES_SHIFT: u32 = 52;
/// The successful bit.
pub const SUCCESSFUL_BIT: u32 = 56;
/// Most tries the 4-bit field holds.
pub const MAX_TRIES: u32 = 15;

/// Priority given to the preferred slot; the other gets 1 (or stays 0 if it was unbootable).
const PREFERRED: u8 = 2;
/// More partition entries than any real table has; a header claiming more is garbage (and
/// would make the reader allocate without bound).
const MAX_ENTRIES: u32 = 4096;

/// The scheme's three fields of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GptAttrs {
    /// 0–15; 0 means never boot.
    pub priority: u8,
    /// Trial boots left, 0–15.
    pub tries: u8,
    /// Booted successfully (marked good).
    pub successful: bool,
}

impl GptAttrs {
    /// Reads the fields from a partition's attribute bits.
    pub fn from_bits(bits: u64) -> Self {
        Self {
            priority: ((bits >> PRIORITY_SHIFT) & 0xf) as u8,
            tries: ((bits >> TRIES_SHIFT) & 0xf) as u8,
            successful: bits & (1 << SUCCESSFUL_BIT) != 0,
        }
    }

    /// `bits` with the fields replaced and every other bit kept.
    pub fn apply(self, bits: u64) -> u64 {
        let mask = (0xf << PRIORITY_SHIFT) | (0xf << TRIES_SHIFT) | (1 << SUCCESSFUL_BIT);
        (bits & !mask)
            | (u64::from(self.priority & 0xf) << PRIORITY_SHIFT)
            | (u64::from(self.tries & 0xf) << TRIES_SHIFT)
            | (u64::from(self.successful) << SUCCESSFUL_BIT)
    }

    /// The boot loader may pick it.
    pub fn bootable(self) -> bool {
        self.priority > 0 && (self.successful || self.tries > 0)
    }

    fn state(self) -> SlotState {
        SlotState {
            good: self.successful,
            tries: u32::from(self.tries),
        }
    }
}

/// An opened, validated table and where the slots are in it.
struct Table {
    file: File,
    gpt: GPT,
    /// Partition numbers of A and B.
    parts: [u32; 2],
}

impl Table {
    fn part(&self, slot: Slot) -> u32 {
        self.parts[slot as usize]
    }

    fn attrs(&self, slot: Slot) -> GptAttrs {
        GptAttrs::from_bits(self.gpt[self.part(slot)].attribute_bits)
    }

    fn set(&mut self, slot: Slot, attrs: GptAttrs) {
        let n = self.part(slot);
        let bits = &mut self.gpt[n].attribute_bits;
        *bits = attrs.apply(*bits);
    }

    /// Highest priority among bootable slots, the lower partition number on a tie.
    fn next(&self) -> Option<Slot> {
        let mut slots = Slot::BOTH;
        slots.sort_by_key(|&s| self.part(s));
        let mut best: Option<Slot> = None;
        for s in slots {
            let a = self.attrs(s);
            if a.bootable() && best.is_none_or(|b| a.priority > self.attrs(b).priority) {
                best = Some(s);
            }
        }
        best
    }
}

/// The GPT backend on the disk at `path`.
#[derive(Debug, Clone)]
pub struct GptDisk {
    path: PathBuf,
}

impl GptDisk {
    /// The disk (image file or block device) at `path`. No I/O until a method is called.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The path of the disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw scheme fields of `slot`'s partition.
    pub fn attrs(&self, slot: Slot) -> Result<GptAttrs, BootError> {
        Ok(self.open(false)?.attrs(slot))
    }

    fn corrupt(&self, reason: impl Into<String>) -> BootError {
        BootError::Corrupt {
            backend: BACKEND,
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Finds the sector size: from the kernel for a block device, else where a GPT header is.
    fn sector_size(&self, file: &mut File, len: u64) -> Result<u64, BootError> {
        let meta = file.metadata().map_err(io_err(BACKEND, &self.path))?;
        if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            return gptman::linux::get_sector_size(file)
                .map_err(|e| self.corrupt(format!("cannot get the sector size: {e}")));
        }
        for ss in [512, 4096] {
            for lba in [1, (len / ss).saturating_sub(1)] {
                if lba > 0 && self.signature_at(file, lba * ss, len)? {
                    return Ok(ss);
                }
            }
        }
        Err(self
            .corrupt("no GPT header (neither at LBA 1 nor at the end, 512 or 4096-byte sectors)"))
    }

    fn signature_at(&self, file: &mut File, offset: u64, len: u64) -> Result<bool, BootError> {
        Ok(self
            .read_at(file, offset, len, 8)?
            .is_some_and(|b| b == b"EFI PART"))
    }

    fn read_at(
        &self,
        file: &mut File,
        offset: u64,
        len: u64,
        n: usize,
    ) -> Result<Option<Vec<u8>>, BootError> {
        if offset.checked_add(n as u64).is_none_or(|end| end > len) {
            return Ok(None);
        }
        let mut buf = vec![0; n];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(io_err(BACKEND, &self.path))?;
        Ok(Some(buf))
    }

    /// Refuses header fields that would make gptman allocate without bound or trip one of its
    /// assertions, before gptman sees them.
    fn precheck_header(
        &self,
        file: &mut File,
        lba: u64,
        ss: u64,
        len: u64,
    ) -> Result<(), BootError> {
        let Some(h) = self.read_at(file, lba * ss, len, 92)? else {
            return Ok(());
        };
        if &h[..8] != b"EFI PART" {
            return Ok(());
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let entries = u32_at(80);
        let entry_size = u32_at(84);
        if entry_size != 128 || entries > MAX_ENTRIES {
            return Err(self.corrupt(format!(
                "GPT header at LBA {lba}: {entries} partition entries of {entry_size} bytes \
                 (expected at most {MAX_ENTRIES} of 128)"
            )));
        }
        Ok(())
    }

    fn open(&self, write: bool) -> Result<Table, BootError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.path)
            .map_err(io_err(BACKEND, &self.path))?;
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(io_err(BACKEND, &self.path))?;
        let ss = self.sector_size(&mut file, len)?;
        let total = len / ss;
        for lba in [1, total.saturating_sub(1)] {
            self.precheck_header(&mut file, lba, ss, len)?;
        }
        // gptman has a few unwraps on hostile tables (e.g. a partition starting at LBA 0); a
        // daemon must report those, not die of them.
        let read = catch_unwind(AssertUnwindSafe(|| GPT::read_from(&mut file, ss)));
        let gpt = match read {
            Ok(Ok(gpt)) => gpt,
            Ok(Err(e)) => return Err(self.corrupt(format!("cannot read the GPT: {e}"))),
            Err(_) => return Err(self.corrupt("malformed GPT (the parser gave up)")),
        };
        self.check_layout(&gpt, total)?;

        let mut parts = [0u32; 2];
        for slot in Slot::BOTH {
            let found: Vec<u32> = gpt
                .iter()
                .filter(|(_, p)| p.is_used() && p.partition_name.as_str() == slot.partition_label())
                .map(|(n, _)| n)
                .collect();
            match found[..] {
                [n] => parts[slot as usize] = n,
                [] => {
                    return Err(
                        self.corrupt(format!("no partition named {}", slot.partition_label()))
                    );
                }
                _ => {
                    return Err(self.corrupt(format!(
                        "several partitions named {}: {found:?}",
                        slot.partition_label()
                    )));
                }
            }
        }
        Ok(Table { file, gpt, parts })
    }

    /// The invariants gptman's writer relies on: both headers at the ends of the disk, entry
    /// arrays and partitions inside the disk. A disk grown after imaging fails the first one
    /// (its backup header sits at the old end, perhaps inside a partition now); we refuse
    /// rather than write a header there.
    fn check_layout(&self, gpt: &GPT, total: u64) -> Result<(), BootError> {
        let h = &gpt.header;
        let last = total.saturating_sub(1);
        let entry_sectors =
            (u64::from(h.number_of_partition_entries) * 128).div_ceil(gpt.sector_size);
        let (pri, bak) = (
            h.primary_lba.min(h.backup_lba),
            h.primary_lba.max(h.backup_lba),
        );
        if pri != 1 || bak != last {
            return Err(self.corrupt(format!(
                "GPT headers at LBA {pri} and {bak}, expected 1 and {last}: was the disk resized? \
                 (move the backup header to the end, e.g. `sgdisk -e`)"
            )));
        }
        let fits = 2 + entry_sectors <= h.first_usable_lba
            && h.first_usable_lba <= h.last_usable_lba
            && h.last_usable_lba
                .checked_add(1 + entry_sectors)
                .is_some_and(|e| e <= last)
            && (h.partition_entry_lba == 2 || h.partition_entry_lba == h.last_usable_lba + 1);
        if !fits {
            return Err(self.corrupt(format!(
                "inconsistent GPT header: usable LBAs {}..={}, entries at LBA {}, disk of {total} sectors",
                h.first_usable_lba, h.last_usable_lba, h.partition_entry_lba
            )));
        }
        for (n, p) in gpt.iter().filter(|(_, p)| p.is_used()) {
            if p.starting_lba < h.first_usable_lba
                || p.ending_lba < p.starting_lba
                || p.ending_lba > h.last_usable_lba
            {
                return Err(self.corrupt(format!(
                    "partition {n} spans LBA {}..={}, outside the usable {}..={}",
                    p.starting_lba, p.ending_lba, h.first_usable_lba, h.last_usable_lba
                )));
            }
        }
        Ok(())
    }

    /// Writes both headers and entry arrays (gptman writes the primary, then the backup; each
    /// carries CRCs, so a torn write leaves one intact copy that readers fall back to), then
    /// syncs the device.
    fn store(&self, table: &mut Table) -> Result<(), BootError> {
        let Table { file, gpt, .. } = table;
        match catch_unwind(AssertUnwindSafe(|| gpt.write_into(file))) {
            Ok(Ok(_)) => {}
            Ok(Err(gptman::Error::Io(e))) => return Err(io_err(BACKEND, &self.path)(e)),
            Ok(Err(e)) => return Err(self.corrupt(format!("cannot write the GPT: {e}"))),
            Err(_) => return Err(self.corrupt("malformed GPT (the writer gave up)")),
        }
        file.sync_all().map_err(io_err(BACKEND, &self.path))
    }

    fn update(&self, f: impl FnOnce(&mut Table)) -> Result<(), BootError> {
        let mut table = self.open(true)?;
        f(&mut table);
        self.store(&mut table)
    }
}

impl BootBackend for GptDisk {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn status(&self) -> Result<BootStatus, BootError> {
        let table = self.open(false)?;
        Ok(BootStatus {
            next: table.next(),
            a: table.attrs(Slot::A).state(),
            b: table.attrs(Slot::B).state(),
        })
    }

    /// Priority 2 for `slot`, tries `tries`, not successful; the other slot drops to priority 1
    /// (or stays 0 if it was unbootable), so it is the fallback when the tries run out.
    fn set_trial(&self, slot: Slot, tries: u32) -> Result<(), BootError> {
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(BootError::Invalid {
                backend: BACKEND,
                reason: format!(
                    "cannot give slot {slot} {tries} trial boots: the GPT field holds 1 to {MAX_TRIES}"
                ),
            });
        }
        self.update(|t| {
            let mut other = t.attrs(slot.other());
            other.priority = other.priority.min(1);
            t.set(slot.other(), other);
            t.set(
                slot,
                GptAttrs {
                    priority: PREFERRED,
                    tries: tries as u8,
                    successful: false,
                },
            );
        })
    }

    /// Successful, no tries; priority kept (raised to 1 if it was 0, so that a good slot is
    /// bootable).
    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        self.update(|t| {
            let a = t.attrs(slot);
            t.set(
                slot,
                GptAttrs {
                    priority: a.priority.max(1),
                    tries: 0,
                    successful: true,
                },
            );
        })
    }

    /// Priority 0, no tries, not successful; the other slot gets the preferred priority.
    fn mark_bad(&self, slot: Slot) -> Result<(), BootError> {
        self.update(|t| {
            t.set(slot, GptAttrs::default());
            let mut other = t.attrs(slot.other());
            other.priority = PREFERRED;
            t.set(slot.other(), other);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    impl GptDisk {
        /// The boot loader's half, for these tests: what `gptprio.next`-style loaders do
        /// at power-on. Picks the highest-priority bootable slot and, if it is not successful,
        /// spends one of its tries (written back to the disk) before booting it. Returns the slot
        /// booted, `None` if no slot is bootable.
        fn simulate_boot(&self) -> Result<Option<Slot>, BootError> {
            let mut table = self.open(true)?;
            let Some(slot) = table.next() else {
                return Ok(None);
            };
            let mut a = table.attrs(slot);
            if !a.successful {
                a.tries -= 1; // bootable() guarantees tries > 0 here
                table.set(slot, a);
                self.store(&mut table)?;
            }
            Ok(Some(slot))
        }
    }

    const LINUX_FS: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    /// Bits outside the scheme that must survive: required (0), legacy BIOS bootable (2), and a
    /// type-specific bit (60).
    const OTHER_BITS: u64 = 1 | (1 << 2) | (1 << 60);

    fn st(good: bool, tries: u32) -> SlotState {
        SlotState { good, tries }
    }

    /// A sparse disk image with a fresh GPT: 1 "ESP", 2 SLIPWAY_A, 3 SLIPWAY_B, 4 "data".
    /// A starts good with priority 1, as an image builder would leave it.
    fn image(dir: &Path, sectors: u64) -> PathBuf {
        let path = dir.join("disk.img");
        let mut f = File::create_new(&path).unwrap();
        f.set_len(sectors * 512).unwrap();
        let mut gpt = GPT::new_from(&mut f, 512, [7; 16]).unwrap();
        let first = gpt.header.first_usable_lba;
        let size = (gpt.header.last_usable_lba - first + 1) / 4;
        for (i, name) in ["ESP", "SLIPWAY_A", "SLIPWAY_B", "data"].iter().enumerate() {
            let i = i as u64;
            gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
                partition_type_guid: LINUX_FS,
                unique_partition_guid: [i as u8 + 1; 16],
                starting_lba: first + i * size,
                ending_lba: first + (i + 1) * size - 1,
                attribute_bits: OTHER_BITS,
                partition_name: (*name).into(),
            };
        }
        gpt[2].attribute_bits = GptAttrs {
            priority: 1,
            tries: 0,
            successful: true,
        }
        .apply(OTHER_BITS);
        GPT::write_protective_mbr_into(&mut f, 512).unwrap();
        gpt.write_into(&mut f).unwrap();
        f.sync_all().unwrap();
        path
    }

    fn fresh() -> (tempfile::TempDir, GptDisk) {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 64 * 2048); // 64 MiB, sparse
        (dir, GptDisk::new(path))
    }

    fn all_bits(disk: &GptDisk) -> Vec<u64> {
        let mut f = File::open(disk.path()).unwrap();
        let gpt = GPT::read_from(&mut f, 512).unwrap();
        (1..=4).map(|n| gpt[n].attribute_bits).collect()
    }

    /// Attribute bit numbers as util-linux's sfdisk reads them.
    fn sfdisk_bits(disk: &GptDisk, part: u32) -> Vec<u32> {
        let out = Command::new("sfdisk")
            .arg("--part-attrs")
            .arg(disk.path())
            .arg(part.to_string())
            .output()
            .expect("sfdisk (Debian package fdisk; scripts/setup.sh installs it)");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut bits = Vec::new();
        for word in text.split_whitespace() {
            match word {
                "RequiredPartition" => bits.push(0),
                "NoBlockIOProtocol" => bits.push(1),
                "LegacyBIOSBootable" => bits.push(2),
                w => {
                    let list = w.strip_prefix("GUID:").unwrap_or_else(|| panic!("{text}"));
                    bits.extend(list.split(',').map(|b| b.parse::<u32>().unwrap()));
                }
            }
        }
        bits.sort();
        bits
    }

    fn bit_list(bits: u64) -> Vec<u32> {
        (0..64).filter(|b| bits & (1 << b) != 0).collect()
    }

    #[test]
    fn transitions() {
        let (_d, disk) = fresh();
        let s = disk.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::A), st(true, 0), st(false, 0))
        );

        disk.set_trial(Slot::B, 3).unwrap();
        let s = disk.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(false, 3))
        );
        assert_eq!(
            (
                disk.attrs(Slot::A).unwrap().priority,
                disk.attrs(Slot::B).unwrap().priority
            ),
            (1, 2)
        );
        assert_eq!(disk.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(disk.status().unwrap().b, st(false, 2));

        let copy = |name: &str| {
            let p = disk.path().with_file_name(name);
            std::fs::copy(disk.path(), &p).unwrap();
            GptDisk::new(p)
        };
        let good = copy("good.img");
        good.mark_good(Slot::B).unwrap();
        for _ in 0..3 {
            assert_eq!(good.simulate_boot().unwrap(), Some(Slot::B));
        }
        let s = good.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(true, 0))
        );

        let bad = copy("bad.img");
        bad.mark_bad(Slot::B).unwrap();
        let s = bad.status().unwrap();
        assert_eq!((s.next, s.b), (Some(Slot::A), st(false, 0)));
        assert_eq!(bad.attrs(Slot::B).unwrap(), GptAttrs::default());
        assert_eq!(bad.attrs(Slot::A).unwrap().priority, PREFERRED);

        // Tries run out: the loader falls back to A by itself.
        assert_eq!(disk.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(disk.simulate_boot().unwrap(), Some(Slot::B));
        let s = disk.status().unwrap();
        assert_eq!((s.next, s.b), (Some(Slot::A), st(false, 0)));
        assert_eq!(disk.simulate_boot().unwrap(), Some(Slot::A));

        // Other direction.
        good.set_trial(Slot::A, 1).unwrap();
        assert_eq!(good.status().unwrap().next, Some(Slot::A));
        assert_eq!(good.simulate_boot().unwrap(), Some(Slot::A));
        assert_eq!(good.status().unwrap().next, Some(Slot::B));

        // Nothing bootable.
        good.mark_bad(Slot::B).unwrap();
        assert_eq!(good.status().unwrap().next, None);
        assert_eq!(good.simulate_boot().unwrap(), None);

        for bad_tries in [0, MAX_TRIES + 1] {
            assert!(matches!(
                disk.set_trial(Slot::B, bad_tries),
                Err(BootError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn preserves_other_bits_and_partitions() {
        let (_d, disk) = fresh();
        let before = all_bits(&disk);
        disk.set_trial(Slot::B, 5).unwrap();
        disk.simulate_boot().unwrap();
        disk.mark_good(Slot::B).unwrap();
        let after = all_bits(&disk);
        assert_eq!(
            (after[0], after[3]),
            (before[0], before[3]),
            "ESP and data untouched"
        );
        for bits in &after[1..3] {
            assert_eq!(
                bits & OTHER_BITS,
                OTHER_BITS,
                "non-scheme bits kept: {bits:#x}"
            );
        }
        let mut f = File::open(disk.path()).unwrap();
        let gpt = GPT::read_from(&mut f, 512).unwrap();
        assert_eq!(gpt[3].partition_name.as_str(), "SLIPWAY_B");
        assert_eq!(gpt[4].unique_partition_guid, [4; 16]);
    }

    #[test]
    fn sfdisk_reads_our_bits_and_we_read_its() {
        let (_d, disk) = fresh();
        disk.set_trial(Slot::B, 3).unwrap();
        let bits = all_bits(&disk);
        // B: priority 2 (bit 49), tries 3 (bits 52, 53), not successful; A: priority 1, successful.
        assert_eq!(bit_list(bits[2]), [0, 2, 49, 52, 53, 60]);
        assert_eq!(sfdisk_bits(&disk, 3), bit_list(bits[2]));
        assert_eq!(bit_list(bits[1]), [0, 2, 48, 56, 60]);
        assert_eq!(sfdisk_bits(&disk, 2), bit_list(bits[1]));

        // sfdisk verifies both headers and entry arrays (CRCs, backup placement).
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(disk.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("corrupt"), "{text}");

        // And the other way: sfdisk sets A to priority 3, tries 1, not successful.
        let out = Command::new("sfdisk")
            .args(["-q", "--part-attrs"])
            .arg(disk.path())
            .args(["2", "RequiredPartition,GUID:48,49,52"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            disk.attrs(Slot::A).unwrap(),
            GptAttrs {
                priority: 3,
                tries: 1,
                successful: false
            }
        );
        assert_eq!(disk.status().unwrap().next, Some(Slot::A));
    }

    #[test]
    fn damaged_primary_falls_back_to_backup_and_is_repaired() {
        let (_d, disk) = fresh();
        disk.set_trial(Slot::B, 2).unwrap();
        let mut f = OpenOptions::new().write(true).open(disk.path()).unwrap();
        f.seek(SeekFrom::Start(512 + 24)).unwrap();
        f.write_all(&[0xff; 8]).unwrap(); // breaks the primary header's CRC
        drop(f);
        assert_eq!(disk.status().unwrap().next, Some(Slot::B));
        disk.mark_good(Slot::B).unwrap();
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(disk.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut f = File::open(disk.path()).unwrap();
        f.seek(SeekFrom::Start(512)).unwrap();
        let header = gptman::GPTHeader::read_from(&mut f).expect("primary rewritten");
        assert!(header.is_primary());
    }

    fn expect_corrupt(disk: &GptDisk, what: &str) -> String {
        match disk.status() {
            Err(BootError::Corrupt { path, reason, .. }) => {
                assert_eq!(path, disk.path(), "{what}");
                let shown = disk.status().unwrap_err().to_string();
                assert!(
                    shown.contains(&disk.path().display().to_string()),
                    "{shown}"
                );
                reason
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_input_is_refused_naming_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.img");
        File::create(&zero).unwrap().set_len(1 << 20).unwrap();
        expect_corrupt(&GptDisk::new(&zero), "no table");
        let empty = dir.path().join("empty.img");
        File::create(&empty).unwrap();
        expect_corrupt(&GptDisk::new(&empty), "empty file");
        assert!(matches!(
            GptDisk::new(dir.path().join("nope")).status(),
            Err(BootError::Io { .. })
        ));

        // Both headers damaged.
        let (_d, disk) = fresh();
        let len = std::fs::metadata(disk.path()).unwrap().len();
        let mut f = OpenOptions::new().write(true).open(disk.path()).unwrap();
        for off in [512 + 16, len - 512 + 16] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&[0xde, 0xad]).unwrap();
        }
        drop(f);
        expect_corrupt(&disk, "both headers");

        // A slot partition missing, or twice.
        let (_d, disk) = fresh();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())
            .unwrap();
        let mut gpt = GPT::read_from(&mut f, 512).unwrap();
        gpt[3].partition_name = "OTHER".into();
        gpt.write_into(&mut f).unwrap();
        drop(f);
        assert!(expect_corrupt(&disk, "missing B").contains("SLIPWAY_B"));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())
            .unwrap();
        gpt[3].partition_name = "SLIPWAY_A".into();
        gpt.write_into(&mut f).unwrap();
        drop(f);
        assert!(expect_corrupt(&disk, "two A").contains("several"));

        // Disk grown after imaging: the backup header is no longer at the end.
        let (_d, disk) = fresh();
        let f = OpenOptions::new().write(true).open(disk.path()).unwrap();
        f.set_len(128 * 2048 * 512).unwrap();
        drop(f);
        assert!(expect_corrupt(&disk, "resized").contains("resized"));
        assert!(disk.set_trial(Slot::B, 1).is_err());
    }

    /// A header with a valid CRC that claims four billion entries must be refused, not make
    /// the reader try to allocate them (which would abort the process).
    #[test]
    fn hostile_header_is_refused_without_aborting() {
        let (_d, disk) = fresh();
        let len = std::fs::metadata(disk.path()).unwrap().len();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())
            .unwrap();
        for lba in [1, len / 512 - 1] {
            f.seek(SeekFrom::Start(lba * 512)).unwrap();
            let mut h = gptman::GPTHeader::read_from(&mut f).unwrap();
            h.number_of_partition_entries = u32::MAX;
            h.update_crc32_checksum();
            f.seek(SeekFrom::Start(lba * 512 + 16)).unwrap();
            f.write_all(&h.crc32_checksum.to_le_bytes()).unwrap();
            f.seek(SeekFrom::Start(lba * 512 + 80)).unwrap();
            f.write_all(&u32::MAX.to_le_bytes()).unwrap();
        }
        drop(f);
        assert!(expect_corrupt(&disk, "huge").contains("entries"));
    }

    /// A used partition starting at LBA 0 makes gptman's reader panic (an unwrap while it
    /// guesses the alignment); we must report it instead.
    #[test]
    fn parser_panic_becomes_corrupt() {
        let (_d, disk) = fresh();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.path())
            .unwrap();
        let mut gpt = GPT::read_from(&mut f, 512).unwrap();
        for n in 1..=4 {
            gpt[n].starting_lba = 0;
            gpt[n].ending_lba = 0;
        }
        // Write the entries and headers by hand: gptman's writer would refuse this table.
        for mut h in [gpt.header.clone(), {
            let mut b = gpt.header.clone();
            b.primary_lba = gpt.header.backup_lba;
            b.backup_lba = 1;
            b.partition_entry_lba = gpt.header.last_usable_lba + 1;
            b
        }] {
            let parts: Vec<_> = (1..=gpt.header.number_of_partition_entries)
                .map(|n| gpt[n].clone())
                .collect();
            h.write_into(&mut f, 512, &parts).unwrap();
        }
        drop(f);
        assert!(expect_corrupt(&disk, "lba 0").contains("gave up"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_in_the_table_never_panics(
            edits in proptest::collection::vec((0u64..(34 * 512), proptest::num::u8::ANY), 1..16),
            in_backup in proptest::bool::ANY,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = image(dir.path(), 2048);
            let len = std::fs::metadata(&path).unwrap().len();
            let mut f = OpenOptions::new().write(true).open(&path).unwrap();
            for (off, byte) in edits {
                // Headers and entry arrays: the first 34 sectors, or the last 33.
                let at = if in_backup { len - 33 * 512 + off % (33 * 512) } else { off };
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&[byte]).unwrap();
            }
            drop(f);
            let disk = GptDisk::new(&path);
            let _ = disk.status();
            let _ = disk.set_trial(Slot::B, 2);
            let _ = disk.simulate_boot();
        }
    }
}
