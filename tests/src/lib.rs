//! Paddock's integration-test support: tiny guests assembled in Rust, the KVM test host (an L1 Linux
//! with kvm-amd under QEMU TCG) for real Linux guests, and helpers shared by `paddock-bench`.

pub mod bench;
pub mod net_integrity;
pub mod testhost;
pub mod tinyguest;
pub mod virtiofs;
pub mod workspace;
