//! Tiny guests assembled in Rust.
