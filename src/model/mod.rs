//! Model loading and the Llama-family layer stack.
pub mod chat;
pub mod config;
pub mod convert;
pub mod fused;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod init;
pub mod llama;
pub mod load;
pub mod save;
pub mod score;
pub mod tokenizer;
pub mod tokenizer_train;
pub mod weights;
