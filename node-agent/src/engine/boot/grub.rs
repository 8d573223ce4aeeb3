//! GRUB backend: Slipway's slot variables in a GRUB environment block (`grubenv`), read and
//! written by our own code. The block's format is in [`super::grubenv`]; the grub.cfg script
//! that acts on these variables at power-on is in [`super::grubcfg`].
//!
//! Variables (ChromeOS-like):
//! - `SLIPWAY_ORDER`: `A B` or `B A`, preferred slot first.
//! - `SLIPWAY_A_GOOD`, `SLIPWAY_B_GOOD`: `1` or `0` (missing means `0`).
//! - `SLIPWAY_A_TRIES`, `SLIPWAY_B_TRIES`: trial boots left, `0` to [`MAX_TRIES`] (missing: `0`).
//!
//! Next boot: the first slot in ORDER that is good or has tries left. GRUB's script has no
//! arithmetic, so tries are a single decimal digit that the script decrements with a chain of
//! string comparisons.

use std::fs;
use std::path::{Path, PathBuf};

use super::durable::{io_err, replace_file};
use super::grubenv::EnvBlock;
use super::{BootBackend, BootError, BootStatus, SlotState};
use crate::engine::slot::Slot;

/// The backend's name in errors (the grub.cfg renderer reports under it too).
pub(super) const BACKEND: &str = "grub";

/// Most trial boots a slot can be given: the boot-loader script decrements tries with a chain of
/// comparisons (GRUB script has no arithmetic), and one digit keeps that chain short.
pub const MAX_TRIES: u32 = 9;

/// Preferred slot first: `A B` or `B A`.
pub const VAR_ORDER: &str = "SLIPWAY_ORDER";

/// Name of a slot's good flag (`1`/`0`).
pub fn var_good(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "SLIPWAY_A_GOOD",
        Slot::B => "SLIPWAY_B_GOOD",
    }
}

/// Name of a slot's remaining trial boots (decimal, `0`..=[`MAX_TRIES`]).
pub fn var_tries(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "SLIPWAY_A_TRIES",
        Slot::B => "SLIPWAY_B_TRIES",
    }
}

/// Slipway's variables, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Vars {
    /// Preferred slot first.
    pub(super) order: [Slot; 2],
    a: SlotState,
    b: SlotState,
}

impl Vars {
    fn slot(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    pub(super) fn slot_mut(&mut self, slot: Slot) -> &mut SlotState {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The rule the grub.cfg script implements.
    pub(super) fn next(&self) -> Option<Slot> {
        self.order.into_iter().find(|&s| {
            let st = self.slot(s);
            st.good || st.tries > 0
        })
    }

    pub(super) fn read(env: &EnvBlock) -> Result<Self, String> {
        let order = match env.get(VAR_ORDER) {
            Some(b"A B") => [Slot::A, Slot::B],
            Some(b"B A") => [Slot::B, Slot::A],
            Some(other) => {
                return Err(format!(
                    "{VAR_ORDER}={:?}: expected \"A B\" or \"B A\"",
                    String::from_utf8_lossy(other)
                ));
            }
            None => {
                return Err(format!(
                    "{VAR_ORDER} is not set: the block was never initialised for Slipway \
                     (GrubEnv::create)"
                ));
            }
        };
        let state = |slot: Slot| -> Result<SlotState, String> {
            let good = match env.get(var_good(slot)) {
                None | Some(b"0") => false,
                Some(b"1") => true,
                Some(other) => {
                    return Err(format!(
                        "{}={:?}: expected 1 or 0",
                        var_good(slot),
                        String::from_utf8_lossy(other)
                    ));
                }
            };
            let tries = match env.get(var_tries(slot)) {
                None => 0,
                Some(raw) => std::str::from_utf8(raw)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|&n| n <= MAX_TRIES)
                    .ok_or_else(|| {
                        format!(
                            "{}={:?}: expected a number from 0 to {MAX_TRIES} (the boot-loader \
                             script counts no higher)",
                            var_tries(slot),
                            String::from_utf8_lossy(raw)
                        )
                    })?,
            };
            Ok(SlotState { good, tries })
        };
        Ok(Self {
            order,
            a: state(Slot::A)?,
            b: state(Slot::B)?,
        })
    }

    fn write(&self, env: &mut EnvBlock) -> Result<(), String> {
        let order = format!("{} {}", self.order[0], self.order[1]);
        env.set(VAR_ORDER, order.as_bytes())?;
        for slot in Slot::BOTH {
            let st = self.slot(slot);
            env.set(var_good(slot), if st.good { b"1" } else { b"0" })?;
            env.set(var_tries(slot), st.tries.to_string().as_bytes())?;
        }
        Ok(())
    }
}

/// The GRUB backend: Slipway's variables in the environment block at `path`.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    path: PathBuf,
}

impl GrubEnv {
    /// The block at `path` (usually `/boot/grub/grubenv`). No I/O until a method is called.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// For image builders: writes Slipway's initial state (A good and preferred, B neither good
    /// nor tried: `SLIPWAY_ORDER=A B`, `SLIPWAY_A_GOOD=1`, the rest `0`) to the block at
    /// `path`, creating it if missing and keeping other variables of an existing valid block
    /// (grub-install creates an empty one). Refuses a corrupt existing file.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, BootError> {
        let env = Self::new(path);
        let mut block = match fs::read(&env.path) {
            Ok(bytes) => EnvBlock::parse(&bytes).map_err(|r| env.corrupt(r))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EnvBlock::new(),
            Err(e) => return Err(io_err(BACKEND, &env.path)(e)),
        };
        let vars = Vars {
            order: [Slot::A, Slot::B],
            a: SlotState {
                good: true,
                tries: 0,
            },
            b: SlotState {
                good: false,
                tries: 0,
            },
        };
        vars.write(&mut block).map_err(|r| env.invalid(r))?;
        env.store(&block)?;
        Ok(env)
    }

    /// The path of the environment block.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the whole block.
    pub fn load(&self) -> Result<EnvBlock, BootError> {
        let bytes = fs::read(&self.path).map_err(io_err(BACKEND, &self.path))?;
        EnvBlock::parse(&bytes).map_err(|r| self.corrupt(r))
    }

    /// Replaces the block atomically and durably (by rename, see `boot::durable`). GRUB's own
    /// `save_env` rewrites the file's blocks in place, which suits a boot loader that cannot
    /// rename; we can, so a power cut never leaves a torn block.
    pub fn store(&self, block: &EnvBlock) -> Result<(), BootError> {
        let bytes = block.to_bytes().map_err(|r| self.invalid(r))?;
        replace_file(BACKEND, &self.path, &bytes)
    }

    fn update(&self, f: impl FnOnce(&mut Vars)) -> Result<(), BootError> {
        let mut block = self.load()?;
        let mut vars = Vars::read(&block).map_err(|r| self.corrupt(r))?;
        f(&mut vars);
        vars.write(&mut block).map_err(|r| self.invalid(r))?;
        self.store(&block)
    }

    pub(super) fn corrupt(&self, reason: String) -> BootError {
        BootError::Corrupt {
            backend: BACKEND,
            path: self.path.clone(),
            reason,
        }
    }

    pub(super) fn invalid(&self, reason: String) -> BootError {
        BootError::Invalid {
            backend: BACKEND,
            reason: format!("{}: {reason}", self.path.display()),
        }
    }
}

impl BootBackend for GrubEnv {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn status(&self) -> Result<BootStatus, BootError> {
        let vars = Vars::read(&self.load()?).map_err(|r| self.corrupt(r))?;
        Ok(BootStatus {
            next: vars.next(),
            a: vars.a,
            b: vars.b,
        })
    }

    fn set_trial(&self, slot: Slot, tries: u32) -> Result<(), BootError> {
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(self.invalid(format!(
                "cannot give slot {slot} {tries} trial boots: the GRUB script counts 1 to \
                 {MAX_TRIES}"
            )));
        }
        self.update(|v| {
            *v.slot_mut(slot) = SlotState { good: false, tries };
            v.order = [slot, slot.other()];
        })
    }

    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        self.update(|v| {
            *v.slot_mut(slot) = SlotState {
                good: true,
                tries: 0,
            };
        })
    }

    fn mark_bad(&self, slot: Slot) -> Result<(), BootError> {
        self.update(|v| {
            *v.slot_mut(slot) = SlotState {
                good: false,
                tries: 0,
            };
            v.order = [slot.other(), slot];
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::boot::grubenv::{ENV_SIZE, SIGNATURE};
    use crate::engine::boot::testing::SimulateBoot;
    use std::process::Command;

    fn st(good: bool, tries: u32) -> SlotState {
        SlotState { good, tries }
    }

    fn fresh() -> (tempfile::TempDir, GrubEnv) {
        let dir = tempfile::tempdir().unwrap();
        let env = GrubEnv::create(dir.path().join("grubenv")).unwrap();
        (dir, env)
    }

    fn has_grub_editenv() -> bool {
        Command::new("grub-editenv")
            .arg("--version")
            .output()
            .is_ok()
    }

    fn editenv(path: &Path, args: &[&str]) -> String {
        let out = Command::new("grub-editenv")
            .arg(path)
            .args(args)
            .output()
            .expect("grub-editenv (Debian package grub-common; scripts/setup.sh installs it)");
        assert!(out.status.success(), "grub-editenv {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn transitions() {
        let (_d, env) = fresh();
        let s = env.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::A), st(true, 0), st(false, 0))
        );

        // Trial of B with 3 tries: B preferred, A still good.
        env.set_trial(Slot::B, 3).unwrap();
        let s = env.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(false, 3))
        );

        // Boot loader spends a try per boot.
        assert_eq!(env.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(env.status().unwrap().b, st(false, 2));

        // Marked good: stays preferred, no more counting.
        let good = tempfile::tempdir().unwrap();
        let good_path = good.path().join("grubenv");
        fs::copy(env.path(), &good_path).unwrap();
        let g = GrubEnv::new(&good_path);
        g.mark_good(Slot::B).unwrap();
        for _ in 0..3 {
            assert_eq!(g.simulate_boot().unwrap(), Some(Slot::B));
        }
        let s = g.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(true, 0))
        );

        // Marked bad: A preferred again at once.
        let bad = GrubEnv::new(good.path().join("bad"));
        fs::copy(env.path(), bad.path()).unwrap();
        bad.mark_bad(Slot::B).unwrap();
        let s = bad.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::A), st(true, 0), st(false, 0))
        );
        assert_eq!(bad.load().unwrap().get(VAR_ORDER), Some(&b"A B"[..]));

        // Never marked: tries run out and the boot loader falls back to A by itself.
        assert_eq!(env.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(env.simulate_boot().unwrap(), Some(Slot::B));
        let s = env.status().unwrap();
        assert_eq!((s.next, s.b), (Some(Slot::A), st(false, 0)));
        assert_eq!(env.simulate_boot().unwrap(), Some(Slot::A));
        assert_eq!(env.status().unwrap().a, st(true, 0));

        // And the other direction: A on trial from B good.
        g.set_trial(Slot::A, 1).unwrap();
        assert_eq!(g.status().unwrap().next, Some(Slot::A));
        assert_eq!(g.simulate_boot().unwrap(), Some(Slot::A));
        assert_eq!(g.status().unwrap().next, Some(Slot::B));
    }

    #[test]
    fn nothing_bootable_is_reported_and_last_resort_boots_order_first() {
        let (_d, env) = fresh();
        env.mark_bad(Slot::A).unwrap();
        let s = env.status().unwrap();
        assert_eq!(s.next, None);
        assert!(env.active_slot().is_err());
        let before = fs::read(env.path()).unwrap();
        assert_eq!(env.simulate_boot().unwrap(), Some(Slot::B));
        assert_eq!(
            fs::read(env.path()).unwrap(),
            before,
            "last resort counts nothing"
        );
    }

    #[test]
    fn tries_are_capped() {
        let (_d, env) = fresh();
        for bad in [0, MAX_TRIES + 1, u32::MAX] {
            let e = env.set_trial(Slot::B, bad).unwrap_err();
            assert!(matches!(e, BootError::Invalid { .. }), "{e}");
        }
        env.set_trial(Slot::B, MAX_TRIES).unwrap();
        assert_eq!(env.status().unwrap().b, st(false, MAX_TRIES));
    }

    #[test]
    fn preserves_unrelated_variables_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        let mut block = EnvBlock::new();
        block.set("saved_entry", b"gnulinux-advanced").unwrap();
        block.set("weird", b"back\\slash\nnew line").unwrap();
        let mut bytes = block.to_bytes().unwrap();
        // A comment line like grub-editenv's warning, right after the signature.
        let comment = b"# keep me\n";
        bytes.splice(SIGNATURE.len()..SIGNATURE.len(), comment.iter().copied());
        bytes.truncate(ENV_SIZE);
        fs::write(&path, &bytes).unwrap();

        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let env = GrubEnv::create(&path).unwrap();
        env.set_trial(Slot::B, 2).unwrap();
        env.mark_good(Slot::B).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the rewrite keeps the file's mode");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "grubenv")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
        let after = fs::read(&path).unwrap();
        assert_eq!(after.len(), ENV_SIZE);
        assert!(after[SIGNATURE.len()..].starts_with(comment));
        let block = env.load().unwrap();
        assert_eq!(block.get("saved_entry"), Some(&b"gnulinux-advanced"[..]));
        assert_eq!(block.get("weird"), Some(&b"back\\slash\nnew line"[..]));
    }

    #[test]
    fn corrupt_input_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        let valid = {
            let mut b = EnvBlock::new();
            let vars = Vars {
                order: [Slot::A, Slot::B],
                a: st(true, 0),
                b: st(false, 0),
            };
            vars.write(&mut b).unwrap();
            b.to_bytes().unwrap()
        };
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = valid.clone();
            f(&mut v);
            v
        };
        let replace = |from: &[u8], to: &[u8]| {
            let mut v = valid.clone();
            let at = v.windows(from.len()).position(|w| w == from).unwrap();
            v.splice(at..at + from.len(), to.iter().copied());
            v.resize(ENV_SIZE, b'#');
            v
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("short", valid[..1000].to_vec()),
            ("long", with(&|v| v.push(b'#'))),
            ("signature", with(&|v| v[2] = b'g')),
            ("zeroes", vec![0; ENV_SIZE]),
            ("nul", with(&|v| v[ENV_SIZE - 1] = 0)),
            ("padding", with(&|v| v[ENV_SIZE - 1] = b'x')),
            ("order", replace(b"A B", b"A A")),
            ("good", replace(b"SLIPWAY_A_GOOD=1", b"SLIPWAY_A_GOOD=yes")),
            (
                "tries",
                replace(b"SLIPWAY_B_TRIES=0", b"SLIPWAY_B_TRIES=12"),
            ),
            (
                "tries-neg",
                replace(b"SLIPWAY_B_TRIES=0", b"SLIPWAY_B_TRIES=-1"),
            ),
            ("no-order", replace(b"SLIPWAY_ORDER=A B\n", b"")),
            (
                "no-equals",
                replace(b"SLIPWAY_A_GOOD=1", b"SLIPWAY_A_GOOD 1"),
            ),
        ];
        for (what, bytes) in cases {
            fs::write(&path, &bytes).unwrap();
            let env = GrubEnv::new(&path);
            match env.status() {
                Err(BootError::Corrupt {
                    path: p, reason, ..
                }) => {
                    assert_eq!(p, path, "{what}");
                    let shown = env.status().unwrap_err().to_string();
                    assert!(shown.contains("grubenv"), "{what}: {shown}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
            // Nothing is written over a file we could not read.
            assert!(env.set_trial(Slot::B, 1).is_err(), "{what}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "{what}");
        }
        let missing = GrubEnv::new(dir.path().join("nope"));
        assert!(matches!(missing.status(), Err(BootError::Io { .. })));
    }

    #[test]
    fn full_block_is_refused_not_truncated() {
        let (_d, env) = fresh();
        let mut block = env.load().unwrap();
        block.set("big", &[b'x'; 1000]).unwrap();
        let e = env.store(&block).unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        assert_eq!(fs::read(env.path()).unwrap().len(), ENV_SIZE);
    }

    #[test]
    fn written_files_are_listed_by_grub_editenv() {
        if !has_grub_editenv() {
            panic!("grub-editenv missing: run scripts/setup.sh (Debian package grub-common)");
        }
        let (_d, env) = fresh();
        let mut block = env.load().unwrap();
        block.set("other", b"back\\slash").unwrap();
        env.store(&block).unwrap();
        env.set_trial(Slot::B, 3).unwrap();
        let listed = editenv(env.path(), &["list"]);
        let mut lines: Vec<&str> = listed.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "SLIPWAY_A_GOOD=1",
                "SLIPWAY_A_TRIES=0",
                "SLIPWAY_B_GOOD=0",
                "SLIPWAY_B_TRIES=3",
                "SLIPWAY_ORDER=B A",
                "other=back\\slash",
            ]
        );
        // grub-editenv can edit what we wrote, and keeps it 1024 bytes.
        editenv(env.path(), &["set", "saved_entry=1"]);
        assert_eq!(fs::metadata(env.path()).unwrap().len(), ENV_SIZE as u64);
        assert_eq!(env.status().unwrap().next, Some(Slot::B));
    }

    #[test]
    fn values_set_by_grub_editenv_are_read() {
        if !has_grub_editenv() {
            panic!("grub-editenv missing: run scripts/setup.sh (Debian package grub-common)");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        editenv(&path, &["create"]);
        editenv(
            &path,
            &[
                "set",
                "SLIPWAY_ORDER=B A",
                "SLIPWAY_A_GOOD=1",
                "SLIPWAY_B_TRIES=2",
                "path=C:\\boot\\x",
                "two=line1\nline2",
            ],
        );
        let env = GrubEnv::new(&path);
        let s = env.status().unwrap();
        assert_eq!(
            (s.next, s.a, s.b),
            (Some(Slot::B), st(true, 0), st(false, 2))
        );
        let block = env.load().unwrap();
        assert_eq!(block.get("path"), Some(&b"C:\\boot\\x"[..]));
        assert_eq!(block.get("two"), Some(&b"line1\nline2"[..]));

        // Our rewrite keeps grub-editenv's warning comment and its variables, byte-exact.
        env.simulate_boot().unwrap();
        let listed = editenv(&path, &["list"]);
        assert!(listed.contains("path=C:\\boot\\x\n"), "{listed}");
        assert!(listed.contains("two=line1\nline2\n"), "{listed}");
        assert!(listed.contains("SLIPWAY_B_TRIES=1\n"), "{listed}");
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), ENV_SIZE);
        assert!(
            bytes[SIGNATURE.len()..].starts_with(b"# WARNING"),
            "grub-editenv's comment kept"
        );

        editenv(&path, &["unset", "SLIPWAY_B_TRIES"]);
        assert_eq!(env.status().unwrap().b, st(false, 0));
    }

    proptest::proptest! {
        /// Whatever Slipway's variables hold, reading them never panics, a slot it would boot
        /// is bootable, and what reads writes back as the same state.
        #[test]
        fn vars_read_never_panics_and_round_trips(
            values in proptest::collection::vec(
                proptest::option::of(proptest::sample::select(vec![
                    "A B", "B A", "A A", "B", "", "0", "1", "2", "9", "10", "-1", "01", "yes", " 1",
                ])),
                5,
            )
        ) {
            let names = [
                VAR_ORDER,
                var_good(Slot::A),
                var_tries(Slot::A),
                var_good(Slot::B),
                var_tries(Slot::B),
            ];
            let mut block = EnvBlock::new();
            for (name, value) in names.into_iter().zip(&values) {
                if let Some(value) = value {
                    block.set(name, value.as_bytes()).unwrap();
                }
            }
            if let Ok(vars) = Vars::read(&block) {
                if let Some(next) = vars.next() {
                    let st = vars.slot(next);
                    proptest::prop_assert!(st.good || st.tries > 0);
                }
                let mut again = EnvBlock::new();
                vars.write(&mut again).unwrap();
                proptest::prop_assert_eq!(Vars::read(&again).unwrap(), vars);
            }
        }
    }
}
