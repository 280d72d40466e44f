//! The CADA method: spec (codes + cases), case retrieval, judges, data, evaluation, the loop,
//! SFT and DPO.
pub mod corpus;
pub mod data;
pub mod eval;
pub mod judge;
pub mod plot;
pub mod retrieval;
pub mod sft;
pub mod dpo;
pub mod seqlogp;
pub mod spec;
