//! Test support, never called by the agent: a model of what the boot loader itself does at
//! power-on, so that tests, benchmarks and VM-less demos can "reboot" a machine whose boot
//! state is a file. Public because the integration tests (`tests/it`) reboot their test machine
//! through it; only the GRUB model is here because nothing outside a backend's own unit tests
//! simulates systemd-boot or GPT boots (those models live in `sdboot.rs`'s and `gpt.rs`'s
//! test modules).

use super::BootError;
use super::grub::{GrubEnv, Vars, var_tries};
use crate::engine::slot::Slot;

/// The boot loader's half of a boot backend.
pub trait SimulateBoot {
    /// Does what the boot loader does at power-on to this state and returns the slot it boots.
    fn simulate_boot(&self) -> Result<Option<Slot>, BootError>;
}

impl SimulateBoot for GrubEnv {
    /// What the grub.cfg script from [`super::grubcfg::render_grub_cfg`] does at power-on.
    /// Picks the first slot in ORDER that is good or has tries; for a trial (not good) it spends
    /// one try and saves the block before booting. Returns the slot booted. When no slot
    /// qualifies the script boots ORDER's first slot as a last resort (`slipway.lastresort=1`,
    /// nothing counted), and so does this.
    fn simulate_boot(&self) -> Result<Option<Slot>, BootError> {
        let mut block = self.load()?;
        let mut vars = Vars::read(&block).map_err(|r| self.corrupt(r))?;
        let Some(slot) = vars.next() else {
            return Ok(Some(vars.order[0]));
        };
        let st = vars.slot_mut(slot);
        if !st.good {
            st.tries -= 1;
            // Like the script, which saves only the one variable it changed.
            block
                .set(var_tries(slot), st.tries.to_string().as_bytes())
                .map_err(|r| self.invalid(r))?;
            self.store(&block)?;
        }
        Ok(Some(slot))
    }
}
