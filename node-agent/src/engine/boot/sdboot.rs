//! systemd-boot backend: Boot Loader Specification type #1 entries `slipway-a.conf` and
//! `slipway-b.conf` in `<esp>/loader/entries/`, with boot counting in their file names.
//!
//! Counting (as systemd-boot and systemd-bless-boot do it): `slipway-b+3-0.conf` has 3 tries
//! left and 0 done; at each boot systemd-boot renames the entry it picks to `+LEFT-1-DONE+1`
//! before starting it. A good entry has no counter; a bad one has `+0-DONE`.
//!
//! Preference: systemd-boot (since v251) sorts entries, then boots the first one, or the first
//! one matching loader.conf's `default` glob; its sort is: entries with no tries left last, then
//! entries with a `sort-key` before those without, then by `sort-key` (ascending), `machine-id`,
//! `version` (newest first), and id (file name without counter, newest first). We rewrite a
//! `sort-key` line: the preferred slot's entry gets [`SORT_KEY_PREFERRED`], the other
//! [`SORT_KEY_FALLBACK`]. Why this and not the alternatives:
//! - loader.conf `default` picks its match even when that entry has no tries left, so pointing
//!   it at a trial slot would boot a failed trial forever; a `default slipway-*` glob that
//!   matches both entries, on the other hand, keeps the sort (and so the fallback) and only
//!   stops foreign entries from winning, which is what [`SdBoot::create`] writes.
//! - `version` is shown in the menu and belongs to the OS release; `sort-key` is ours to choose.
//! - File names carry the counters and are renamed by the boot loader; a second meaning there
//!   would race with it.
//!
//! Moving the preference rewrites two files. The order of the steps keeps every intermediate
//! state meaning either the old choice or the new one (see [`SdBoot::set_trial`]).
//! Not emulated: EFI variables (`LoaderEntryOneShot`, `LoaderEntryDefault` set by
//! `bootctl set-default`) that override loader.conf, and type #2 (UKI) entries in
//! `EFI/Linux/`; Slipway nodes must use neither.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use super::durable::{io_err, rename_durable, replace_file};
use super::{BootBackend, BootError, BootStatus, SlotState};
use crate::engine::slot::Slot;

const BACKEND: &str = "systemd-boot";

/// `sort-key` of the preferred slot's entry: sorts before [`SORT_KEY_FALLBACK`].
pub const SORT_KEY_PREFERRED: &str = "slipway-0-preferred";

/// `sort-key` of the other slot's entry.
pub const SORT_KEY_FALLBACK: &str = "slipway-1-fallback";

/// The loader.conf `default` glob [`SdBoot::create`] writes: matches both slots' entries and
/// nothing else, so the sort still decides between them.
pub const DEFAULT_GLOB: &str = "slipway-*";

/// File name of a slot's entry without counter or suffix.
pub fn entry_stem(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "slipway-a",
        Slot::B => "slipway-b",
    }
}

/// A boot counter from an entry's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

/// Splits an entry's file name like systemd-boot: the counter is after the last `+`, `LEFT` or
/// `LEFT-DONE`, directly before `.conf` (any case). Returns the name without counter and suffix,
/// and the counter; a malformed counter means no counter (the `+` is part of the name). A name
/// without the suffix has no counter.
pub fn split_counter(name: &str) -> (&str, Option<Counter>) {
    let cut = name.len().wrapping_sub(".conf".len());
    let Some(base) = name
        .get(cut..)
        .filter(|suffix| suffix.eq_ignore_ascii_case(".conf"))
        .map(|_| &name[..cut])
    else {
        return (name, None);
    };
    let Some(plus) = base.rfind('+') else {
        return (base, None);
    };
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n <= i32::MAX as u32)
    };
    let counter = &base[plus + 1..];
    let parsed = match counter.split_once('-') {
        None => digits(counter).map(|left| Counter { left, done: 0 }),
        Some((l, d)) => digits(l)
            .zip(digits(d))
            .map(|(left, done)| Counter { left, done }),
    };
    match parsed {
        Some(c) => (&base[..plus], Some(c)),
        None => (base, None),
    }
}

/// One type #1 entry as systemd-boot sees it.
#[derive(Debug, Clone)]
struct Entry {
    file: String,
    id: String,
    slot: Option<Slot>,
    counter: Option<Counter>,
    sort_key: Option<String>,
    machine_id: Option<String>,
    version: Option<String>,
    /// systemd-boot lists it: it names a loader (`linux`, `efi`, `uki`) that exists.
    usable: bool,
}

impl Entry {
    fn no_tries(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }

    fn state(&self) -> SlotState {
        match self.counter {
            None => SlotState {
                good: true,
                tries: 0,
            },
            Some(c) => SlotState {
                good: false,
                tries: c.left,
            },
        }
    }
}

/// systemd-boot's `boot_entry_compare`.
fn compare(a: &Entry, b: &Entry) -> Ordering {
    a.no_tries()
        .cmp(&b.no_tries())
        .then(a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(x), Some(y)) => x
                .cmp(y)
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| {
                    verscmp(
                        b.version.as_deref().unwrap_or(""),
                        a.version.as_deref().unwrap_or(""),
                    )
                }),
            _ => Ordering::Equal,
        })
        .then_with(|| verscmp(&b.id, &a.id))
        .then_with(|| match (a.counter, b.counter) {
            (Some(x), Some(y)) => y.left.cmp(&x.left).then(x.done.cmp(&y.done)),
            _ => Ordering::Equal,
        })
}

/// A close approximation of systemd's `strverscmp_improved`: digit runs compare as numbers and
/// sort above letters, letter runs compare as text, `~` sorts below everything (even the end),
/// other punctuation only separates. It only decides ties between equal sort keys.
pub fn verscmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let skip = |s: &[u8]| -> usize {
        s.iter()
            .position(|&c| c.is_ascii_alphanumeric() || c == b'~')
            .unwrap_or(s.len())
    };
    loop {
        a = &a[skip(a)..];
        b = &b[skip(b)..];
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let run = |s: &[u8], digit: bool| {
                    s.iter()
                        .position(|c| c.is_ascii_digit() != digit || !c.is_ascii_alphanumeric())
                        .unwrap_or(s.len())
                };
                match (x.is_ascii_digit(), y.is_ascii_digit()) {
                    (true, false) => return Ordering::Greater,
                    (false, true) => return Ordering::Less,
                    (digit, _) => {
                        let (ra, rb) = (&a[..run(a, digit)], &b[..run(b, digit)]);
                        let ord = if digit {
                            let trim = |r: &[u8]| {
                                let z = r.iter().position(|&c| c != b'0').unwrap_or(r.len());
                                r[z..].to_vec()
                            };
                            let (ta, tb) = (trim(ra), trim(rb));
                            ta.len().cmp(&tb.len()).then(ta.cmp(&tb))
                        } else {
                            ra.cmp(rb)
                        };
                        if ord != Ordering::Equal {
                            return ord;
                        }
                        a = &a[ra.len()..];
                        b = &b[rb.len()..];
                    }
                }
            }
        }
    }
}

/// A shell-style glob as systemd-boot's `efi_fnmatch` applies it: `*`, `?`, `[...]` sets with
/// ranges, `\` escapes. Every token but `*` matches exactly one character, so a star is retried
/// only from the last one seen: time is at most pattern × name, never exponential (loader.conf is
/// read on every status).
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // After the last `*`: where the pattern goes on, and where in `s` that try started.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                p += 1;
                star = Some((p, i));
                continue;
            }
            if let Some(n) = match_one(&pattern[p..], s[i]) {
                p += n;
                i += 1;
                continue;
            }
        }
        match star {
            Some((after, from)) => {
                p = after;
                i = from + 1;
                star = Some((after, i));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the token at the start of `pattern` (not `*`) matches `c`; how many pattern bytes it
/// spans if it does.
fn match_one(pattern: &[u8], c: u8) -> Option<usize> {
    match pattern {
        [b'?', ..] => Some(1),
        [b'[', rest @ ..] => {
            // `]` right after `[` is a member, not the end.
            let Some(close) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return (c == b'[').then_some(1);
            };
            let set = &rest[..close];
            let mut hit = false;
            let mut k = 0;
            while k < set.len() {
                if k + 2 < set.len() && set[k + 1] == b'-' {
                    hit |= (set[k]..=set[k + 2]).contains(&c);
                    k += 3;
                } else {
                    hit |= set[k] == c;
                    k += 1;
                }
            }
            hit.then_some(close + 2)
        }
        [b'\\', escaped, ..] => (*escaped == c).then_some(2),
        [literal, ..] => (*literal == c).then_some(1),
        [] => None,
    }
}

/// `key value` lines as systemd-boot reads entry files and loader.conf.
fn key_values(content: &str) -> impl Iterator<Item = (&str, &str)> {
    content.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (k, v) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        Some((k, v.trim()))
    })
}

/// Everything systemd-boot would consider, sorted as it sorts.
struct Scan {
    entries: Vec<Entry>,
    default_glob: Option<String>,
}

impl Scan {
    fn ours(&self, slot: Slot) -> &Entry {
        // `scan` guarantees exactly one entry per slot.
        self.entries
            .iter()
            .find(|e| e.slot == Some(slot))
            .unwrap_or_else(|| unreachable!("scan checked both slots have an entry"))
    }

    /// The entry systemd-boot starts: the first match of the `default` glob, else the first.
    fn selected(&self) -> Option<&Entry> {
        let mut usable = self.entries.iter().filter(|e| e.usable);
        match &self.default_glob {
            Some(glob) => {
                let first = usable.clone().next();
                usable
                    .find(|e| glob_match(glob.as_bytes(), e.id.as_bytes()))
                    .or(first)
            }
            None => usable.next(),
        }
    }
}

/// What an image builder puts into one slot's entry for [`SdBoot::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdEntry {
    /// Kernel path on the ESP (`linux` line), e.g. `/slipway/a/vmlinuz`.
    pub linux: String,
    /// Initrd paths on the ESP.
    pub initrd: Vec<String>,
    /// Kernel command line; `slipway.slot=A|B` is appended.
    pub options: String,
}

/// The systemd-boot backend over the ESP mounted at `esp`.
#[derive(Debug, Clone)]
pub struct SdBoot {
    esp: PathBuf,
}

impl SdBoot {
    /// The ESP at `esp` (e.g. `/efi` or `/boot`). No I/O until a method is called.
    pub fn new(esp: impl Into<PathBuf>) -> Self {
        Self { esp: esp.into() }
    }

    /// For image builders: writes `slipway-a.conf` (good, preferred) and `slipway-b+0-0.conf`
    /// (nothing installed yet: bad, sorted last), and, if there is no `loader/loader.conf`, one
    /// with `default slipway-*` so that no foreign entry can win. Refuses an ESP that already
    /// has Slipway entries.
    pub fn create(esp: impl Into<PathBuf>, a: &SdEntry, b: &SdEntry) -> Result<Self, BootError> {
        let sd = Self::new(esp);
        let dir = sd.entries_dir();
        fs::create_dir_all(&dir).map_err(io_err(BACKEND, &dir))?;
        for e in fs::read_dir(&dir).map_err(io_err(BACKEND, &dir))? {
            let name = e.map_err(io_err(BACKEND, &dir))?.file_name();
            if name
                .to_string_lossy()
                .to_ascii_lowercase()
                .starts_with("slipway-")
            {
                return Err(BootError::Invalid {
                    backend: BACKEND,
                    reason: format!(
                        "{}: already has Slipway entries ({})",
                        dir.display(),
                        name.to_string_lossy()
                    ),
                });
            }
        }
        for (slot, spec, file, key) in [
            (Slot::A, a, "slipway-a.conf", SORT_KEY_PREFERRED),
            (Slot::B, b, "slipway-b+0-0.conf", SORT_KEY_FALLBACK),
        ] {
            let mut text = format!(
                "title Slipway (slot {slot})\nsort-key {key}\nlinux {}\n",
                spec.linux
            );
            for initrd in &spec.initrd {
                text.push_str(&format!("initrd {initrd}\n"));
            }
            text.push_str(&format!(
                "options {}{}slipway.slot={slot}\n",
                spec.options,
                if spec.options.is_empty() { "" } else { " " }
            ));
            replace_file(BACKEND, &dir.join(file), text.as_bytes())?;
        }
        let conf = sd.loader_conf();
        if !conf.exists() {
            replace_file(
                BACKEND,
                &conf,
                format!("default {DEFAULT_GLOB}\n").as_bytes(),
            )?;
        }
        Ok(sd)
    }

    /// `<esp>/loader/entries`.
    pub fn entries_dir(&self) -> PathBuf {
        self.esp.join("loader").join("entries")
    }

    fn loader_conf(&self) -> PathBuf {
        self.esp.join("loader").join("loader.conf")
    }

    fn corrupt(&self, path: &Path, reason: String) -> BootError {
        BootError::Corrupt {
            backend: BACKEND,
            path: path.to_path_buf(),
            reason,
        }
    }

    fn scan(&self) -> Result<Scan, BootError> {
        let dir = self.entries_dir();
        let mut entries = Vec::new();
        for dirent in fs::read_dir(&dir).map_err(io_err(BACKEND, &dir))? {
            let dirent = dirent.map_err(io_err(BACKEND, &dir))?;
            let Some(file) = dirent.file_name().to_str().map(str::to_owned) else {
                continue; // systemd-boot reads UCS-2 names; a non-UTF-8 one is not ours
            };
            let lower = file.to_ascii_lowercase();
            if file.starts_with('.') || !lower.ends_with(".conf") || lower.starts_with("auto-") {
                continue;
            }
            let path = dir.join(&file);
            if !dirent
                .file_type()
                .map_err(io_err(BACKEND, &path))?
                .is_file()
            {
                continue;
            }
            let (stem, counter) = split_counter(&file);
            let slot = Slot::BOTH
                .into_iter()
                .find(|&s| stem.eq_ignore_ascii_case(entry_stem(s)));
            let looks_ours = Slot::BOTH.into_iter().any(|s| {
                lower.starts_with(&format!("{}+", entry_stem(s)))
                    || lower == format!("{}.conf", entry_stem(s))
            });
            if slot.is_none() && looks_ours {
                return Err(self.corrupt(
                    &path,
                    "malformed boot counter: expected +LEFT or +LEFT-DONE before .conf".into(),
                ));
            }
            let bytes = fs::read(&path).map_err(io_err(BACKEND, &path))?;
            let content = match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) if slot.is_some() => {
                    return Err(self.corrupt(&path, "entry is not UTF-8 text".into()));
                }
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            let mut e = Entry {
                id: format!("{stem}.conf").to_ascii_lowercase(),
                file,
                slot,
                counter,
                sort_key: None,
                machine_id: None,
                version: None,
                usable: false,
            };
            let mut loader = None;
            for (k, v) in key_values(&content) {
                match k {
                    "sort-key" => e.sort_key = Some(v.to_owned()),
                    "machine-id" => e.machine_id = Some(v.to_owned()),
                    "version" => e.version = Some(v.to_owned()),
                    "linux" | "efi" | "uki" => loader = Some(v.to_owned()),
                    _ => {}
                }
            }
            // systemd-boot drops entries whose loader file is missing.
            e.usable = loader.is_some_and(|l| {
                let rel = l.replace('\\', "/");
                self.esp.join(rel.trim_start_matches('/')).is_file()
            });
            entries.push(e);
        }
        for slot in Slot::BOTH {
            let mine: Vec<&str> = entries
                .iter()
                .filter(|e| e.slot == Some(slot))
                .map(|e| e.file.as_str())
                .collect();
            match mine.len() {
                1 => {}
                0 => {
                    return Err(self.corrupt(
                        &dir,
                        format!(
                            "no entry {}[+counter].conf for slot {slot}",
                            entry_stem(slot)
                        ),
                    ));
                }
                _ => {
                    return Err(self.corrupt(
                        &dir,
                        format!("slot {slot} has several entries: {}", mine.join(", ")),
                    ));
                }
            }
        }
        entries.sort_by(compare);

        let conf = self.loader_conf();
        let default_glob = match fs::read(&conf) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let glob = key_values(&text)
                    .filter(|(k, _)| *k == "default")
                    .last()
                    .map(|(_, v)| v.to_ascii_lowercase());
                if glob.as_deref() == Some("@saved") {
                    return Err(self.corrupt(
                        &conf,
                        "\"default @saved\" boots the last booted entry, even a failed trial: \
                         it defeats boot counting"
                            .into(),
                    ));
                }
                glob
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(BACKEND, &conf)(e)),
        };
        Ok(Scan {
            entries,
            default_glob,
        })
    }

    /// Renames `slot`'s entry to carry `counter` (or none), if it does not already.
    fn rename(&self, scan: &Scan, slot: Slot, counter: Option<Counter>) -> Result<(), BootError> {
        let stem = entry_stem(slot);
        let to = match counter {
            None => format!("{stem}.conf"),
            Some(c) => format!("{stem}+{}-{}.conf", c.left, c.done),
        };
        let from = &scan.ours(slot).file;
        if *from == to {
            return Ok(());
        }
        let dir = self.entries_dir();
        rename_durable(BACKEND, &dir.join(from), &dir.join(to))
    }

    /// Rewrites the `sort-key` line of the entry named `file` (atomically, by rename).
    fn set_sort_key(&self, file: &str, key: &str) -> Result<(), BootError> {
        let path = self.entries_dir().join(file);
        let bytes = fs::read(&path).map_err(io_err(BACKEND, &path))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| self.corrupt(&path, "entry is not UTF-8 text".into()))?;
        let mut out = String::with_capacity(text.len() + 32);
        let mut done = false;
        for line in text.lines() {
            if key_values(line)
                .next()
                .is_some_and(|(k, _)| k == "sort-key")
            {
                if !done {
                    out.push_str(&format!("sort-key {key}\n"));
                    done = true;
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
            // A new line goes right after the title, where people look for it.
            if !done && key_values(line).next().is_some_and(|(k, _)| k == "title") {
                out.push_str(&format!("sort-key {key}\n"));
                done = true;
            }
        }
        if !done {
            out.insert_str(0, &format!("sort-key {key}\n"));
        }
        if out == text {
            return Ok(());
        }
        replace_file(BACKEND, &path, out.as_bytes())
    }

    /// Makes `slot` the preferred entry: promotes it, then demotes the other. In between both
    /// carry the preferred key and the id order decides (`slipway-b` before `slipway-a`); the
    /// callers rename counters first, and with that order every intermediate state boots
    /// either the old choice or the new one.
    fn prefer(&self, slot: Slot) -> Result<(), BootError> {
        let scan = self.scan()?;
        self.set_sort_key(&scan.ours(slot).file, SORT_KEY_PREFERRED)?;
        self.set_sort_key(&scan.ours(slot.other()).file, SORT_KEY_FALLBACK)
    }
}

impl BootBackend for SdBoot {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Emulates systemd-boot's choice. `next` is `None` when its pick is not a Slipway entry or
    /// has no tries left (it would still boot such an entry, as a last resort).
    fn status(&self) -> Result<BootStatus, BootError> {
        let scan = self.scan()?;
        let next = match scan.selected() {
            Some(e) if e.slot.is_some() && !e.no_tries() => e.slot,
            Some(e) => {
                tracing::warn!(
                    entry = %e.file,
                    "systemd-boot would boot an entry that is not a bootable Slipway slot"
                );
                None
            }
            None => None,
        };
        Ok(BootStatus {
            next,
            a: scan.ours(Slot::A).state(),
            b: scan.ours(Slot::B).state(),
        })
    }

    /// Renames the entry to `+tries-0`, then makes it preferred. A crash after the rename leaves
    /// the old preference (the trial entry sorts as fallback), after the first sort-key write
    /// both entries tie on the key and the id order decides, after the second the new
    /// preference holds; the trial is counted from the first boot that picks it.
    fn set_trial(&self, slot: Slot, tries: u32) -> Result<(), BootError> {
        if tries == 0 || tries > i32::MAX as u32 {
            return Err(BootError::Invalid {
                backend: BACKEND,
                reason: format!("cannot give slot {slot} {tries} trial boots"),
            });
        }
        let scan = self.scan()?;
        self.rename(
            &scan,
            slot,
            Some(Counter {
                left: tries,
                done: 0,
            }),
        )?;
        self.prefer(slot)
    }

    /// Drops the counter, as systemd-bless-boot does; the preference stays.
    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        let scan = self.scan()?;
        self.rename(&scan, slot, None)
    }

    /// Renames to `+0-DONE` (which alone already sorts it last), then prefers the other slot.
    fn mark_bad(&self, slot: Slot) -> Result<(), BootError> {
        let scan = self.scan()?;
        let done = scan.ours(slot).counter.map_or(0, |c| c.done);
        self.rename(&scan, slot, Some(Counter { left: 0, done }))?;
        self.prefer(slot.other())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SdBoot {
        /// The boot loader's half, for these tests: what systemd-boot does at power-on.
        /// Picks the entry as it would (sort, loader.conf `default`), and if that entry has a
        /// counter renames it to `+LEFT-1-DONE+1` (LEFT stays 0 at 0), as systemd-boot does before
        /// starting it. Returns the slot booted, `None` if the pick is not a Slipway entry. Like
        /// systemd-boot, it boots an entry with no tries left when nothing better is there.
        fn simulate_boot(&self) -> Result<Option<Slot>, BootError> {
            let scan = self.scan()?;
            let Some(e) = scan.selected() else {
                return Ok(None);
            };
            if let (Some(slot), Some(c)) = (e.slot, e.counter) {
                let next = Counter {
                    left: c.left.saturating_sub(1),
                    done: c.done.saturating_add(1),
                };
                self.rename(&scan, slot, Some(next))?;
            }
            Ok(e.slot)
        }
    }

    fn st(good: bool, tries: u32) -> SlotState {
        SlotState { good, tries }
    }

    fn spec(slot: &str) -> SdEntry {
        SdEntry {
            linux: format!("/slipway/{slot}/vmlinuz"),
            initrd: vec![format!("/slipway/{slot}/initrd.img")],
            options: "root=PARTLABEL=SLIPWAY ro".into(),
        }
    }

    fn fresh() -> (tempfile::TempDir, SdBoot) {
        let dir = tempfile::tempdir().unwrap();
        for s in ["a", "b"] {
            let k = dir.path().join("slipway").join(s);
            fs::create_dir_all(&k).unwrap();
            fs::write(k.join("vmlinuz"), b"kernel").unwrap();
        }
        let sd = SdBoot::create(dir.path(), &spec("a"), &spec("b")).unwrap();
        (dir, sd)
    }

    fn names(sd: &SdBoot) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(sd.entries_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn sort_key(sd: &SdBoot, slot: Slot) -> String {
        let scan = sd.scan().unwrap();
        scan.ours(slot).sort_key.clone().unwrap()
    }

    #[test]
    fn counters_parse_like_systemd_boot() {
        let c = |left, done| Some(Counter { left, done });
        assert_eq!(split_counter("x.conf"), ("x", None));
        assert_eq!(split_counter("x+3.conf"), ("x", c(3, 0)));
        assert_eq!(split_counter("x+3-1.conf"), ("x", c(3, 1)));
        assert_eq!(split_counter("a+b+0-4.conf"), ("a+b", c(0, 4)));
        assert_eq!(split_counter("x+.conf"), ("x+", None));
        assert_eq!(split_counter("x+3-.conf"), ("x+3-", None));
        assert_eq!(split_counter("x+-1.conf"), ("x+-1", None));
        assert_eq!(split_counter("x+99999999999.conf"), ("x+99999999999", None));
    }

    #[test]
    fn transitions() {
        let (_d, sd) = fresh();
        let s = sd.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::A), st(true, 0), st(false, 0))
        );
        assert_eq!(names(&sd), ["slipway-a.conf", "slipway-b+0-0.conf"]);

        sd.set_trial(Slot::B, 3).unwrap();
        assert_eq!(names(&sd), ["slipway-a.conf", "slipway-b+3-0.conf"]);
        assert_eq!(sort_key(&sd, Slot::B), SORT_KEY_PREFERRED);
        assert_eq!(sort_key(&sd, Slot::A), SORT_KEY_FALLBACK);
        let s = sd.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(false, 3))
        );

        assert_eq!(sd.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(names(&sd), ["slipway-a.conf", "slipway-b+2-1.conf"]);

        // mark_good: counter dropped, B stays preferred and is no longer counted.
        let good = tempfile::tempdir().unwrap();
        copy_esp(&_d, &good);
        let g = SdBoot::new(good.path());
        g.mark_good(Slot::B).unwrap();
        assert_eq!(names(&g), ["slipway-a.conf", "slipway-b.conf"]);
        for _ in 0..3 {
            assert_eq!(g.simulate_boot().unwrap(), Some(Slot::B));
        }
        let s = g.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(true, 0))
        );

        // mark_bad: +0-DONE and A preferred.
        let bad = tempfile::tempdir().unwrap();
        copy_esp(&_d, &bad);
        let b = SdBoot::new(bad.path());
        b.mark_bad(Slot::B).unwrap();
        assert_eq!(names(&b), ["slipway-a.conf", "slipway-b+0-1.conf"]);
        assert_eq!(sort_key(&b, Slot::A), SORT_KEY_PREFERRED);
        let s = b.status().unwrap();
        assert_eq!((s.next, s.b), (Some(Slot::A), st(false, 0)));

        // Never blessed: tries run out, the entry sorts last, A boots.
        assert_eq!(sd.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(sd.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(names(&sd), ["slipway-a.conf", "slipway-b+0-3.conf"]);
        let s = sd.status().unwrap();
        assert_eq!((s.next, s.b), (Some(Slot::A), st(false, 0)));
        assert_eq!(sd.simulate_boot().unwrap(), Some(Slot::A));
        assert_eq!(names(&sd), ["slipway-a.conf", "slipway-b+0-3.conf"]);

        // Other direction, from B good.
        g.set_trial(Slot::A, 1).unwrap();
        assert_eq!(g.status().unwrap().next, Some(Slot::A));
        assert_eq!(g.simulate_boot().unwrap(), Some(Slot::A));
        assert_eq!(names(&g), ["slipway-a+0-1.conf", "slipway-b.conf"]);
        assert_eq!(g.status().unwrap().next, Some(Slot::B));
    }

    fn copy_esp(from: &tempfile::TempDir, to: &tempfile::TempDir) {
        fn walk(from: &Path, to: &Path) {
            fs::create_dir_all(to).unwrap();
            for e in fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), &to.join(e.file_name()));
                } else {
                    fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        }
        walk(from.path(), to.path());
    }

    #[test]
    fn both_bad_reports_none_but_systemd_boot_still_boots_one() {
        let (_d, sd) = fresh();
        sd.mark_bad(Slot::A).unwrap();
        assert_eq!(sd.status().unwrap().next, None);
        // B (preferred after mark_bad(A)) sorts first among the two with no tries left.
        assert_eq!(sd.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(names(&sd), ["slipway-a+0-0.conf", "slipway-b+0-1.conf"]);
    }

    #[test]
    fn preserves_unrelated_state() {
        let (d, sd) = fresh();
        let dir = sd.entries_dir();
        let foreign = "title Debian\nsort-key debian\nlinux /vmlinuz-6.1\n";
        fs::write(dir.join("debian-6.1.conf"), foreign).unwrap();
        fs::write(d.path().join("vmlinuz-6.1"), b"k").unwrap();
        let a_before = fs::read_to_string(dir.join("slipway-a.conf")).unwrap();
        assert!(a_before.contains("initrd /slipway/a/initrd.img\n"));

        sd.set_trial(Slot::B, 2).unwrap();
        sd.mark_good(Slot::B).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("debian-6.1.conf")).unwrap(),
            foreign
        );
        let a_after = fs::read_to_string(dir.join("slipway-a.conf")).unwrap();
        assert_eq!(
            a_after,
            a_before.replace(SORT_KEY_PREFERRED, SORT_KEY_FALLBACK),
            "only the sort-key line changes"
        );
        // "debian" sorts before "slipway-*", but loader.conf's `default slipway-*` keeps ours.
        assert_eq!(sd.status().unwrap().next, Some(Slot::B));
        fs::remove_file(d.path().join("loader/loader.conf")).unwrap();
        assert_eq!(
            sd.status().unwrap().next,
            None,
            "the foreign entry would win"
        );
        assert_eq!(sd.simulate_boot().unwrap(), None);
        // No temp files left behind.
        assert!(
            names(&sd).iter().all(|n| !n.starts_with('.')),
            "{:?}",
            names(&sd)
        );
    }

    #[test]
    fn emulates_systemd_boot_ordering() {
        let (d, sd) = fresh();
        let dir = sd.entries_dir();
        // An entry without sort-key sorts after ours even without loader.conf.
        fs::write(dir.join("zzz.conf"), "linux /slipway/a/vmlinuz\n").unwrap();
        fs::remove_file(d.path().join("loader/loader.conf")).unwrap();
        assert_eq!(sd.status().unwrap().next, Some(Slot::A));
        // A missing kernel drops the entry, as systemd-boot does.
        sd.set_trial(Slot::B, 2).unwrap();
        fs::remove_file(d.path().join("slipway/b/vmlinuz")).unwrap();
        assert_eq!(sd.status().unwrap().next, Some(Slot::A));
        // A `default` naming one entry pins it, whatever its tries: reported, not hidden.
        fs::write(d.path().join("slipway/b/vmlinuz"), b"k").unwrap();
        fs::write(
            d.path().join("loader/loader.conf"),
            "timeout 3\ndefault slipway-a.conf\n",
        )
        .unwrap();
        sd.mark_bad(Slot::A).unwrap();
        assert_eq!(sd.status().unwrap().next, None);
        // Version ordering and globbing helpers.
        assert_eq!(verscmp("6.10", "6.9"), Ordering::Greater);
        assert_eq!(verscmp("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(
            verscmp("slipway-b.conf", "slipway-a.conf"),
            Ordering::Greater
        );
        assert!(glob_match(b"slipway-*", b"slipway-b.conf"));
        assert!(glob_match(b"slipway-[ab].c?nf", b"slipway-a.conf"));
        assert!(!glob_match(b"slipway-a*", b"slipway-b.conf"));
    }

    #[test]
    fn corrupt_input_is_refused_naming_the_file() {
        let (d, sd) = fresh();
        let dir = sd.entries_dir();
        // Two entries for one slot.
        fs::write(dir.join("slipway-a+2-0.conf"), "linux /slipway/a/vmlinuz\n").unwrap();
        match sd.status() {
            Err(BootError::Corrupt { path, reason, .. }) => {
                assert_eq!(path, dir);
                assert!(reason.contains("slipway-a+2-0.conf"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(dir.join("slipway-a+2-0.conf")).unwrap();
        // A malformed counter on our entry.
        fs::rename(dir.join("slipway-b+0-0.conf"), dir.join("slipway-b+x.conf")).unwrap();
        match sd.set_trial(Slot::B, 1) {
            Err(BootError::Corrupt { path, .. }) => assert_eq!(path, dir.join("slipway-b+x.conf")),
            other => panic!("{other:?}"),
        }
        // No entry at all.
        fs::remove_file(dir.join("slipway-b+x.conf")).unwrap();
        let e = sd.status().unwrap_err();
        assert!(e.to_string().contains("slot B"), "{e}");
        // Binary garbage in our entry.
        fs::write(dir.join("slipway-b.conf"), [0xff, 0xfe, 0, 1]).unwrap();
        assert!(matches!(sd.status(), Err(BootError::Corrupt { .. })));
        fs::write(dir.join("slipway-b.conf"), "linux /slipway/b/vmlinuz\n").unwrap();
        // loader.conf that defeats counting.
        fs::write(d.path().join("loader/loader.conf"), "default @saved\n").unwrap();
        match sd.status() {
            Err(BootError::Corrupt { path, .. }) => {
                assert_eq!(path, d.path().join("loader/loader.conf"));
            }
            other => panic!("{other:?}"),
        }
        // Missing ESP.
        assert!(matches!(
            SdBoot::new(d.path().join("nope")).status(),
            Err(BootError::Io { .. })
        ));
        assert!(matches!(
            SdBoot::create(d.path(), &spec("a"), &spec("b")),
            Err(BootError::Invalid { .. })
        ));
    }

    #[test]
    fn refuses_zero_tries() {
        let (_d, sd) = fresh();
        assert!(matches!(
            sd.set_trial(Slot::B, 0),
            Err(BootError::Invalid { .. })
        ));
    }

    /// The recursive matcher the linear one replaced: the reference for its results.
    fn glob_reference(pattern: &[u8], s: &[u8]) -> bool {
        match pattern.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| glob_reference(rest, &s[i..])),
            Some((_, _)) => s
                .first()
                .and_then(|&c| match_one(pattern, c))
                .is_some_and(|n| glob_reference(&pattern[n..], &s[1..])),
        }
    }

    #[test]
    fn a_glob_of_many_stars_takes_linear_time() {
        // Exponential for a backtracking matcher: 30 stars against 60 characters never ends.
        let pattern = "*a".repeat(30) + "b";
        let name = "a".repeat(60);
        assert!(!glob_match(pattern.as_bytes(), name.as_bytes()));
        assert!(glob_match(pattern.as_bytes(), (name + "b").as_bytes()));
        assert!(glob_match(b"[]x]*\\*", b"]abc*"));
        assert!(!glob_match(b"[]x]*\\*", b"]abc"));
        assert!(glob_match(b"a[", b"a["));
        assert!(glob_match(b"***", b""));
    }

    #[test]
    fn split_counter_of_a_name_without_the_suffix_is_no_counter() {
        assert_eq!(split_counter("x+3"), ("x+3", None));
        assert_eq!(split_counter("é"), ("é", None));
        assert_eq!(
            split_counter("x+1-2.CONF").1,
            Some(Counter { left: 1, done: 2 })
        );
    }

    proptest::proptest! {
        #[test]
        fn the_linear_glob_agrees_with_the_recursive_one(
            pattern in "[ab*?\\\\\\[\\]-]{0,10}",
            name in "[ab\\[\\]*?-]{0,10}",
        ) {
            proptest::prop_assert_eq!(
                glob_match(pattern.as_bytes(), name.as_bytes()),
                glob_reference(pattern.as_bytes(), name.as_bytes())
            );
        }

        #[test]
        fn entry_parsing_never_panics(
            name in "[a-zA-Z+0-9.-]{0,24}",
            content in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let (_d, sd) = fresh();
            let dir = sd.entries_dir();
            let _ = fs::write(dir.join(format!("{name}.conf")), &content);
            let _ = fs::write(dir.join("slipway-b+0-0.conf"), &content);
            let _ = sd.status();
            let _ = sd.simulate_boot();
            let _ = verscmp(&name, "1.2~x");
            let _ = glob_match(name.as_bytes(), b"slipway-a.conf");
        }
    }
}
