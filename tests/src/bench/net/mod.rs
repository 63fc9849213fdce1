//! `paddock-bench net`: virtio-net throughput. `worker` drives Paddock's net worker with a
//! synthetic driver on a real tap, against a plain loop on the same tap; `guest` runs iperf3
//! between the host and a guest under Paddock and peer VMMs.

pub mod cli;
pub mod cpus;
pub mod frames;
pub mod guest;
pub mod netns;
pub mod rig;
pub mod ring;
pub mod worker;
