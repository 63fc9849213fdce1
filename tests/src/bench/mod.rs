//! `paddock-bench`: measurements of real guests, with peers run in the same invocation.

pub mod boot;
pub mod first_byte;
pub mod fs;
pub mod memory;
pub mod net;
pub mod probe;
pub mod stats;
pub mod vmms;
