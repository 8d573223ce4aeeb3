//! The two A/B slots.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two OS slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A (partition label `SLIPWAY_A`).
    A,
    /// Slot B (partition label `SLIPWAY_B`).
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"A"` or `"B"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// The GPT partition label of this slot (`SLIPWAY_A`).
    pub fn partition_label(self) -> &'static str {
        match self {
            Slot::A => "SLIPWAY_A",
            Slot::B => "SLIPWAY_B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            other => Err(format!("unknown slot {other:?}: expected A or B")),
        }
    }
}
