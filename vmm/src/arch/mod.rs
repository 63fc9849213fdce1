//! Architecture-specific boot. Paddock supports x86_64 only.

pub mod x86_64;
