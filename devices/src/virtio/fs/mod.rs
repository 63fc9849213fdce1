//! virtio-fs (device type 26) whose queues a vhost-user-fs backend serves: Paddock owns the PCI
//! function, the configuration space (tag, request queue count) and the feature negotiation; the
//! backend (the standard virtiofsd, or `paddock virtiofsd`) reads the rings straight from shared
//! guest RAM, takes guest kicks straight from the queues' ioeventfds, and raises interrupts
//! straight through the vectors' irqfds. Paddock's data path is empty.
//!
//! One thread per device (`vhost-user` seccomp category, see [`link`]) owns the backend
//! connection: it performs the set-up and tear-down the driver's DRIVER_OK and reset ask for,
//! watches the socket, and when the backend hangs up marks the device DEVICE_NEEDS_RESET and
//! answers the requests left behind (and any later ones) with EIO, so only that mount fails.

pub mod backend;
pub mod device;
pub mod link;
pub mod orphans;

pub use backend::{Backend, BackendError};
pub use device::{Fs, FsConfig, FsError};

/// Bytes of the tag in the configuration space (NUL-padded, not NUL-terminated when full).
pub const TAG_LEN: usize = 36;
