//! [`Precision`]: the number format of a backbone's weights, the one precision value every
//! command, config and binding takes (training accepts `f32` and `bf16`, inference all three).

use serde::{Deserialize, Serialize};

/// The number format of the backbone's linear weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights (trainable).
    #[default]
    F32,
    /// bf16 weights, f32 arithmetic (inference only).
    Bf16,
    /// int8 weights and activations, i32 accumulation (inference only).
    Int8,
}

impl Precision {
    /// All precisions.
    pub const ALL: [Precision; 3] = [Self::F32, Self::Bf16, Self::Int8];

    /// Parses `f32` (or `none`), `bf16`, `int8`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "f32" | "fp32" | "none" => Self::F32,
            "bf16" | "bfloat16" => Self::Bf16,
            "int8" => Self::Int8,
            _ => return None,
        })
    }

    /// `f32`, `bf16` or `int8`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("unknown precision {s:?}: f32, bf16 or int8"))
    }
}

impl Precision {
    /// Whether training can run at this precision (`f32`, or `bf16` mixed precision; int8 is
    /// inference-only).
    pub fn trainable(self) -> bool {
        self != Self::Int8
    }
}
