//! The words that cross a process boundary, defined once: the engine's phase (engine → node
//! side over D-Bus) and the reasons a node waits (operator and agent → `NodeUpdate`, read back by
//! the operator, shown to admins). On the wire they stay strings (a D-Bus property, CRD fields);
//! each side parses them once where they arrive, and a word it does not know is an error there,
//! never a silent default further in: the node side refuses an engine phase it does not know
//! (and reports that), the operator logs an agent's reason it does not know and plans as if the
//! agent gave none.

use std::fmt;
use std::str::FromStr;

/// A phase string or waiting reason that no version of this code writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (known: {known})")]
pub struct UnknownWord {
    /// What was parsed (`engine phase`, `waiting reason`).
    pub what: &'static str,
    /// The string received.
    pub value: String,
    /// The accepted words, comma separated.
    pub known: String,
}

macro_rules! words {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err(UnknownWord {
                        what: $what,
                        value: s.to_string(),
                        known: Self::ALL
                            .iter()
                            .map(|w| w.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

words! {
    /// The update engine's phase: the `Phase` property on D-Bus and `slipway-agent status`.
    EnginePhase, "engine phase" {
        /// Nothing to do, or nothing found yet.
        Idle,
        /// Asking the update server.
        Checking,
        /// A newer release is known and admitted; not downloading yet.
        Available,
        /// Fetching and writing the inactive slot.
        Downloading,
        /// Re-reading the written slot against the signed digest.
        Verifying,
        /// A runtime-only release: installing its sysext images and restarting the runtime
        /// units, without touching the slots or rebooting.
        Activating,
        /// Written, verified and selected for the next boot; waiting for a reboot.
        Staged,
        /// Booted the new slot on trial; waiting for it to be marked good.
        Trial,
        /// The trial slot was marked bad; waiting for the reboot into the old slot.
        RollingBack,
        /// The last attempt failed (nothing was activated).
        Failed,
        /// The node fell back to the previous slot.
        RolledBack,
    }
}

words! {
    /// Why a node waits: `NodeUpdate.spec.waitingReason` (the operator's) and
    /// `NodeUpdate.status.waitingReason` (the agent's), also the operator's `waiting` metric
    /// label. `docs/operations.md` says what each means and what to do about it.
    WaitingReason, "waiting reason" {
        /// No reboot window is open.
        WindowClosed,
        /// A window is open but closes before a node's cycle would finish.
        WindowTooShort,
        /// The policy's maxUnavailable is used up.
        BudgetFull,
        /// The policy is paused.
        Paused,
        /// The policy halted after failures.
        Halted,
        /// No RolloutPolicy selects the node.
        NotSelected,
        /// The node runs the target version.
        UpToDate,
        /// The target is not staged on the node yet.
        WaitingForDownload,
        /// More than one policy selects the node.
        PolicyConflict,
        /// The policy's spec is unusable.
        InvalidPolicy,
        /// The node is not Ready.
        NodeNotReady,
        /// The node's update failed.
        Failed,
        /// Agent: the drain could not finish in time; the grant was given back.
        DrainBlocked,
        /// The node is draining, rebooting or verifying without a grant.
        UpdatingWithoutGrant,
        /// Agent: it restarted mid-drain, uncordoned and gave the grant back.
        GrantReturned,
        /// Agent: logind refused the reboot (an inhibitor lock); it retries.
        RebootInhibited,
        /// A Prometheus gate of the policy is closed (its query returns series, or it cannot
        /// be asked and fails closed).
        GateClosed,
        /// An Open Policy Agent gate denied this node.
        PolicyDenied,
        /// A pod matching the policy's blockingPodSelector runs on the node.
        BlockingPod,
        /// The node's topology domain has used up maxUnavailablePerTopology.
        TopologyBudgetFull,
        /// A node of the policy (or of this node's domain) became healthy less than
        /// minReadySeconds ago.
        Settling,
    }
}

/// A fresh engine (nothing persisted yet) is idle.
impl Default for EnginePhase {
    fn default() -> Self {
        Self::Idle
    }
}

impl EnginePhase {
    /// Whether an apply may start or continue (`ApplyUpdate` is accepted).
    pub fn accepts_apply(self) -> bool {
        matches!(self, Self::Available | Self::Downloading | Self::Verifying)
    }
}

impl WaitingReason {
    /// Reasons only the agent writes (in `NodeUpdate.status`): the node side gave the grant
    /// back, and the operator must not grant it again at once.
    pub fn returns_grant(self) -> bool {
        matches!(self, Self::DrainBlocked | Self::GrantReturned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_round_trips_through_its_string_and_json() {
        for p in EnginePhase::ALL {
            assert_eq!(p.as_str().parse::<EnginePhase>(), Ok(*p));
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<EnginePhase>(&json).unwrap(), *p);
        }
        for r in WaitingReason::ALL {
            assert_eq!(r.as_str().parse::<WaitingReason>(), Ok(*r));
            assert_eq!(
                serde_json::from_value::<WaitingReason>(serde_json::json!(r.as_str())).unwrap(),
                *r
            );
        }
        assert_eq!(EnginePhase::ALL.len(), 11);
        assert_eq!(WaitingReason::ALL.len(), 21);
    }

    #[test]
    fn an_unknown_word_is_an_error_that_names_it_and_the_known_ones() {
        let e = "Staging".parse::<EnginePhase>().unwrap_err();
        assert_eq!(e.value, "Staging");
        let text = e.to_string();
        assert!(text.contains("unknown engine phase \"Staging\""), "{text}");
        assert!(
            text.contains("Staged") && text.contains("RolledBack"),
            "{text}"
        );
        // Case matters on the wire: the engine writes exactly these words.
        assert!("staged".parse::<EnginePhase>().is_err());
        assert!("".parse::<WaitingReason>().is_err());
        assert!(serde_json::from_str::<WaitingReason>("\"DrainStuck\"").is_err());
    }

    #[test]
    fn the_agents_grant_returning_reasons_are_exactly_two() {
        let returning: Vec<_> = WaitingReason::ALL
            .iter()
            .filter(|r| r.returns_grant())
            .collect();
        assert_eq!(
            returning,
            [&WaitingReason::DrainBlocked, &WaitingReason::GrantReturned]
        );
        let applying: Vec<_> = EnginePhase::ALL
            .iter()
            .filter(|p| p.accepts_apply())
            .map(|p| p.as_str())
            .collect();
        assert_eq!(applying, ["Available", "Downloading", "Verifying"]);
    }
}
