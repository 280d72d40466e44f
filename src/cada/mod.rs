//! The CADA method: spec (codes + cases), case retrieval, judges, data, evaluation, the loop,
//! SFT and DPO.
pub mod chat_data;
pub mod config;
pub mod corpus;
pub mod data;
pub mod default_model;
pub mod dpo;
pub mod eval;
pub mod evaluate;
pub mod judge;
pub mod model_judge;
pub mod plot;
pub mod retrieval;
pub mod run;
pub mod seqlogp;
pub mod sft;
pub mod spec;
pub mod trainer;
