//! The examples' stand-in for an LLM call, shared by `batch_agent`,
//! `fleet_agent` and `fleet_baseline` (each includes it with
//! `#[path = "support/model.rs"] mod model;`).
#![allow(dead_code)] // each example uses a part

use serde::{Deserialize, Serialize};

/// What the (fake) model answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReply {
    pub text: String,
    pub tokens: u64,
}

/// A deterministic stand-in for an LLM call: the same prompt always gives
/// the same text and token count.
pub fn fake_model(prompt: &str) -> ModelReply {
    // FNV-1a: stable across runs and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    ModelReply {
        text: format!("summary-{:08x}", h as u32),
        tokens: 50 + h % 200,
    }
}
