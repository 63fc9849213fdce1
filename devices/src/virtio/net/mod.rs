//! virtio-net over a multi-queue tap: one worker thread per queue pair, the control queue for
//! switching the number of active pairs, checksum/TSO offloads through the tap's vnet header.

pub mod ctrl;
pub mod device;
pub mod tap;
pub mod worker;

pub use device::{Net, NetConfig, NetError};
pub use tap::{Tap, TapError};

/// The virtio 1.x net header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const VNET_HDR_LEN: usize = 12;
