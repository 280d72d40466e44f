//! Training glue: optimiser, advantages, generation, checkpoints.
pub mod advantages;
pub mod checkpoint;
pub mod generate;
pub mod optimizer;
