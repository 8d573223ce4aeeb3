//! The node side's decisions, pure: given what the engine reports, what the operator granted
//! and what the node side itself has done, what to do next. The runner reads the inputs (D-Bus,
//! the API server), calls `decide`, carries the action out and reports. Self-healing falls out of
//! the same table: a node cordoned by us with nothing in progress is uncordoned, whatever
//! crashed or rebooted in between.

use slipway_api::EnginePhase;

/// Everything `decide` looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The engine's phase.
    pub engine_phase: EnginePhase,
    /// The version the engine staged.
    pub staged_version: Option<String>,
    /// `NodeUpdate.spec.rebootGranted`.
    pub granted: bool,
    /// `NodeUpdate.spec.targetVersion`.
    pub target_version: Option<String>,
    /// The node carries our `slipway.dev/cordoned-by` annotation.
    pub cordoned_by_us: bool,
    /// The drain finished (this boot).
    pub drained: bool,
    /// A reboot was requested (this boot).
    pub reboot_requested: bool,
    /// The drain gave up (PDB) and the grant must go back: we wait for the operator to revoke.
    pub drain_blocked: bool,
    /// Result of the post-boot health check, once it ran.
    pub health: Option<Result<(), String>>,
    /// This is the first step of this process (nothing done yet since it started).
    pub fresh_start: bool,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do now.
    Wait,
    /// Cordon (claiming it) and drain.
    Drain,
    /// Ask logind to reboot (honouring inhibitors).
    Reboot,
    /// Run the health check for the trial boot.
    CheckHealth,
    /// Health passed: `MarkGood` on the engine, then uncordon, before reporting Healthy.
    MarkGood,
    /// Health failed: `Rollback(reason)` on the engine, then reboot into the old slot.
    Rollback(String),
    /// Lift our cordon (update finished, failed, given back, or nothing in progress).
    Uncordon,
    /// The agent restarted in the middle of a drain: lift our cordon and return the grant
    /// (report `GrantReturned`); the operator grants again when it sees fit.
    GiveBack,
}

impl Action {
    /// The action's name in metrics and logs (`None` for [`Action::Wait`]).
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Action::Wait => return None,
            Action::Drain => "drain",
            Action::Reboot => "reboot",
            Action::CheckHealth => "check-health",
            Action::MarkGood => "mark-good",
            Action::Rollback(_) => "rollback",
            Action::Uncordon => "uncordon",
            Action::GiveBack => "give-back",
        })
    }
}

/// Decides the next step.
pub fn decide(i: &Inputs) -> Action {
    match i.engine_phase {
        // Booted into the new slot on trial: verify it, then bless or roll back.
        EnginePhase::Trial => match &i.health {
            None => Action::CheckHealth,
            Some(Ok(())) => Action::MarkGood,
            Some(Err(reason)) => Action::Rollback(reason.clone()),
        },
        // The engine is taking the node back to the old slot: reboot to get there.
        EnginePhase::RollingBack => {
            if i.reboot_requested {
                Action::Wait
            } else {
                Action::Reboot
            }
        }
        EnginePhase::Staged => {
            let granted_for_this = i.granted
                && i.staged_version.is_some()
                && (i.target_version.is_none() || i.target_version == i.staged_version);
            if !granted_for_this {
                // No (more) grant: a drain that started must be undone.
                return if i.cordoned_by_us && !i.reboot_requested {
                    Action::Uncordon
                } else {
                    Action::Wait
                };
            }
            if i.drain_blocked {
                // Grant given back: uncordon and wait for the operator to take it.
                return if i.cordoned_by_us {
                    Action::Uncordon
                } else {
                    Action::Wait
                };
            }
            if i.fresh_start && i.cordoned_by_us && !i.reboot_requested {
                // Cordoned by an earlier run that never asked for the reboot: it crashed or
                // was restarted mid-drain. Heal instead of resuming blind.
                return Action::GiveBack;
            }
            if !i.drained {
                Action::Drain
            } else if !i.reboot_requested {
                Action::Reboot
            } else {
                Action::Wait
            }
        }
        // Nothing in progress that needs the node cordoned. Listed, not `_`: a new phase must
        // be placed here by whoever adds it.
        EnginePhase::Idle
        | EnginePhase::Checking
        | EnginePhase::Available
        | EnginePhase::Downloading
        | EnginePhase::Verifying
        | EnginePhase::Activating
        | EnginePhase::Failed
        | EnginePhase::RolledBack => {
            if i.cordoned_by_us {
                Action::Uncordon
            } else {
                Action::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(granted: bool) -> Inputs {
        Inputs {
            engine_phase: EnginePhase::Staged,
            staged_version: Some("2.0.0".into()),
            granted,
            target_version: Some("2.0.0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_granted_node_drains_then_reboots_once() {
        assert_eq!(decide(&staged(false)), Action::Wait, "no grant, nothing");
        let mut i = staged(true);
        assert_eq!(decide(&i), Action::Drain);
        i.cordoned_by_us = true;
        i.drained = true;
        assert_eq!(decide(&i), Action::Reboot);
        i.reboot_requested = true;
        assert_eq!(decide(&i), Action::Wait, "never a second reboot request");
    }

    #[test]
    fn a_grant_for_another_version_is_not_acted_on() {
        let mut i = staged(true);
        i.target_version = Some("3.0.0".into());
        assert_eq!(decide(&i), Action::Wait);
    }

    #[test]
    fn a_blocked_drain_or_a_revoked_grant_uncordons() {
        let mut i = staged(true);
        i.cordoned_by_us = true;
        i.drain_blocked = true;
        assert_eq!(decide(&i), Action::Uncordon);
        let mut revoked = staged(false);
        revoked.cordoned_by_us = true;
        assert_eq!(decide(&revoked), Action::Uncordon);
        // ...but not once the reboot is on its way.
        revoked.reboot_requested = true;
        assert_eq!(decide(&revoked), Action::Wait);
    }

    #[test]
    fn a_restart_mid_drain_gives_the_grant_back() {
        let mut i = staged(true);
        i.cordoned_by_us = true;
        i.fresh_start = true;
        assert_eq!(decide(&i), Action::GiveBack);
        // The same run that cordoned carries on.
        i.fresh_start = false;
        assert_eq!(decide(&i), Action::Drain);
    }

    #[test]
    fn a_trial_boot_is_checked_then_blessed_or_rolled_back() {
        let mut i = Inputs {
            engine_phase: EnginePhase::Trial,
            cordoned_by_us: true,
            ..Default::default()
        };
        assert_eq!(decide(&i), Action::CheckHealth);
        i.health = Some(Ok(()));
        assert_eq!(decide(&i), Action::MarkGood);
        i.health = Some(Err("unit kubelet.service is failed".into()));
        assert_eq!(
            decide(&i),
            Action::Rollback("unit kubelet.service is failed".into())
        );
        let mut back = Inputs {
            engine_phase: EnginePhase::RollingBack,
            ..Default::default()
        };
        assert_eq!(decide(&back), Action::Reboot);
        back.reboot_requested = true;
        assert_eq!(decide(&back), Action::Wait);
    }

    #[test]
    fn self_healing_uncordons_a_node_with_nothing_in_progress() {
        let at_rest = EnginePhase::ALL.iter().filter(|p| {
            !matches!(
                p,
                EnginePhase::Staged | EnginePhase::Trial | EnginePhase::RollingBack
            )
        });
        for &phase in at_rest {
            let i = Inputs {
                engine_phase: phase,
                cordoned_by_us: true,
                ..Default::default()
            };
            assert_eq!(decide(&i), Action::Uncordon, "{phase}");
            let admin = Inputs {
                engine_phase: phase,
                ..Default::default()
            };
            assert_eq!(
                decide(&admin),
                Action::Wait,
                "{phase}: an admin's cordon is not ours"
            );
        }
    }
}
