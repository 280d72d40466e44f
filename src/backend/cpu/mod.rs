//! The f32 CPU reference backend (the oracle). In progress.
