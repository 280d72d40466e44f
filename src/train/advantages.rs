//! Group-relative advantages (../shared/CADA.md, step 6). The reference lives with the other
//! CPU ops in `backend/cpu/grpo_advantages.rs` (its twin is `grpo_advantages` in
//! kernels/grpo_loss.cu); the trainer calls it through `Backend::grpo_advantages`.
pub use crate::backend::cpu::grpo_advantages::group_advantages;
pub use crate::backend::{AdvantageStats, RewardStd, ScaleRewards};
