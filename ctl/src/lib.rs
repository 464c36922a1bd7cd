//! rk3sctl as a library: a typed client for the rk3sd admin socket and the
//! table rendering of its answers. `main.rs` only parses flags.

pub mod cli;
pub mod client;
pub mod output;

pub use client::{Client, ClientError};
