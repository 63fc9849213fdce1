//! The virtio-net device model: features, configuration space, activation of one worker per
//! queue pair.

use std::sync::Arc;

use virtio_queue::QueueT;

use super::ctrl::CtrlContext;
use super::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
use super::worker::{PairShared, ReportedOnce, TapSetup, Worker, WorkerSetup};
use super::VNET_HDR_LEN;
use crate::virtio::{
    feature, pci, ActivateError, Activation, JoinWorker, QueueActivation, VirtioDevice,
    WorkerSpawner, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_NET,
};

/// Feature bits (virtio 1.2, 5.1.3).
pub const F_CSUM: u32 = 0;
pub const F_GUEST_CSUM: u32 = 1;
pub const F_MAC: u32 = 5;
pub const F_GUEST_TSO4: u32 = 7;
pub const F_GUEST_TSO6: u32 = 8;
pub const F_GUEST_ECN: u32 = 9;
pub const F_HOST_TSO4: u32 = 11;
pub const F_HOST_TSO6: u32 = 12;
pub const F_MRG_RXBUF: u32 = 15;
pub const F_STATUS: u32 = 16;
pub const F_CTRL_VQ: u32 = 17;
pub const F_MQ: u32 = 22;

/// Configuration space: mac[6], status (le16), max_virtqueue_pairs (le16).
pub const CONFIG_LEN: usize = 10;
pub const STATUS_LINK_UP: u16 = 1;
/// Most queue pairs the spec allows, and that fit the transport (two queues each + control).
pub const MAX_QUEUE_PAIRS: usize = (pci::MAX_QUEUES - 1) / 2;
pub const CTRL_QUEUE_SIZE: u16 = 64;
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest frame without guest TSO: Ethernet MTU 1500 + header + VLAN tag.
const MAX_PLAIN_FRAME: usize = 1518;
/// Largest GSO frame a tap hands over with guest TSO.
const MAX_GSO_FRAME: usize = 65550;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("a net device needs at least one tap queue")]
    NoTaps,
    #[error("{0} queue pairs requested: at most {MAX_QUEUE_PAIRS} are supported")]
    TooManyPairs(usize),
    #[error("queue size {0} is not a power of two from 2 to 32768")]
    QueueSize(u16),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the wake-up eventfd of a net worker: {0}")]
    EventFd(std::io::Error),
}

/// How the device looks to the guest and how its threads are named.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub queue_size: u16,
    /// Worker threads are named `{name}-qp{N}`.
    pub name: String,
}

pub struct Net {
    config: NetConfig,
    pairs: Vec<Arc<PairShared>>,
    spawner: Arc<dyn WorkerSpawner>,
    workers: Vec<JoinWorker>,
    /// Guest errors this device has logged (once each, for its lifetime).
    reported: Arc<ReportedOnce>,
}

impl Net {
    /// A device with one queue pair per tap queue (see [`Tap::open_queues`]).
    pub fn new(
        config: NetConfig,
        taps: Vec<Tap>,
        spawner: Arc<dyn WorkerSpawner>,
    ) -> Result<Self, NetError> {
        if taps.is_empty() {
            return Err(NetError::NoTaps);
        }
        if taps.len() > MAX_QUEUE_PAIRS {
            return Err(NetError::TooManyPairs(taps.len()));
        }
        if !config.queue_size.is_power_of_two() || config.queue_size < 2 {
            return Err(NetError::QueueSize(config.queue_size));
        }
        let mut pairs = Vec::with_capacity(taps.len());
        for tap in taps {
            tap.set_vnet_hdr_size(VNET_HDR_LEN as i32)?;
            pairs.push(Arc::new(PairShared::new(tap).map_err(NetError::EventFd)?));
        }
        Ok(Self {
            config,
            pairs,
            spawner,
            workers: Vec::new(),
            reported: Arc::default(),
        })
    }

    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    fn stop_workers(&mut self) {
        for pair in &self.pairs {
            pair.stop();
        }
        for join in self.workers.drain(..) {
            join();
        }
    }

    fn start(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let acked = activation.acked_features;
        let has = |bit: u32| acked & feature(bit) != 0;
        let mq = has(F_MQ);
        let pairs_used = if mq { self.pairs.len() } else { 1 };

        // The tap may hand the guest only what the guest said it can take.
        let mut offload = 0;
        if has(F_GUEST_CSUM) {
            offload |= TUN_F_CSUM;
            if has(F_GUEST_TSO4) {
                offload |= TUN_F_TSO4;
            }
            if has(F_GUEST_TSO6) {
                offload |= TUN_F_TSO6;
            }
            if has(F_GUEST_ECN) {
                offload |= TUN_F_TSO_ECN;
            }
        }
        let guest_tso = offload & (TUN_F_TSO4 | TUN_F_TSO6) != 0;
        let rx_frame_max = VNET_HDR_LEN
            + if guest_tso {
                MAX_GSO_FRAME
            } else {
                MAX_PLAIN_FRAME
            };
        for pair in &self.pairs {
            pair.clear_stop();
        }
        // Applied by worker 0 on its own thread. The driver starts with one pair;
        // VQ_PAIRS_SET attaches more.
        let mut tap_setup = Some(TapSetup {
            pairs: self.pairs.clone(),
            offload,
            attached: 1,
        });

        let mut queues: Vec<Option<QueueActivation>> =
            activation.queues.into_iter().map(Some).collect();
        let mut take_ready = |index: usize| {
            queues
                .get_mut(index)
                .and_then(Option::take)
                .filter(|q| q.queue.ready())
        };
        let mut ctrl = if has(F_CTRL_VQ) {
            take_ready(2 * pairs_used).map(|q| {
                (
                    q,
                    CtrlContext {
                        pairs: self.pairs.clone(),
                        mq,
                    },
                )
            })
        } else {
            None
        };
        for index in 0..pairs_used {
            let (Some(rx), Some(tx)) = (take_ready(2 * index), take_ready(2 * index + 1)) else {
                if index == 0 {
                    return Err(ActivateError::BadQueue {
                        index: 0,
                        reason: "the driver did not enable RX and TX queues 0 and 1".into(),
                    });
                }
                log::warn!("net: queue pair {index} not enabled by the driver: left idle");
                continue;
            };
            let name = format!("{}-qp{index}", self.config.name);
            let worker = Worker::new(WorkerSetup {
                name: name.clone(),
                mem: activation.mem.clone(),
                rx,
                tx,
                ctrl: if index == 0 { ctrl.take() } else { None },
                pair: self.pairs[index].clone(),
                interrupt: activation.interrupt.clone(),
                mergeable_rx: has(F_MRG_RXBUF),
                rx_frame_max,
                reported: self.reported.clone(),
                tap_setup: if index == 0 { tap_setup.take() } else { None },
            });
            let join = self
                .spawner
                .spawn_for_pair(index, name.clone(), Box::new(move || worker.run()))
                .map_err(|source| ActivateError::Spawn { name, source })?;
            self.workers.push(join);
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let mut sizes = vec![self.config.queue_size; 2 * self.pairs.len()];
        sizes.push(CTRL_QUEUE_SIZE);
        sizes
    }

    fn features(&self) -> u64 {
        let mut bits = vec![
            F_VERSION_1,
            F_RING_EVENT_IDX,
            // A TSO frame is up to 19 buffers: as direct chains, 13 of them fill a 256-entry
            // ring and the guest stops its queue; indirect, each takes one entry.
            F_RING_INDIRECT_DESC,
            F_CSUM,
            F_GUEST_CSUM,
            F_GUEST_TSO4,
            F_GUEST_TSO6,
            F_HOST_TSO4,
            F_HOST_TSO6,
            F_MRG_RXBUF,
            F_MAC,
            F_STATUS,
            F_CTRL_VQ,
        ];
        if self.pairs.len() > 1 {
            bits.push(F_MQ);
        }
        bits.into_iter().map(feature).fold(0, |a, b| a | b)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.config.mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        let start = offset as usize;
        match config.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is writable only through the legacy interface, which Paddock does not have.
        log::debug!("net: driver write to read-only config at {offset:#x} ignored");
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.stop_workers();
        let started = self.start(activation);
        if started.is_err() {
            self.stop_workers();
        }
        started
    }

    fn reset(&mut self) {
        self.stop_workers();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

#[cfg(test)]
mod tests;
