//! The control queue: each request is `class, command, data...` in device-readable buffers
//! followed by one device-writable ack byte.

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::worker::PairShared;

pub const CLASS_RX: u8 = 0;
pub const CLASS_ANNOUNCE: u8 = 3;
pub const CLASS_MQ: u8 = 4;
pub const MQ_VQ_PAIRS_SET: u8 = 0;
pub const ANNOUNCE_ACK: u8 = 0;
pub const ACK_OK: u8 = 0;
pub const ACK_ERR: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    #[error("control request {head} is not a valid chain: {reason}")]
    Chain { head: u16, reason: String },
    #[error("control request {head} is too short: {source}")]
    Short { head: u16, source: std::io::Error },
    #[error("control request {head} has no room for the ack byte: {source}")]
    NoAck { head: u16, source: std::io::Error },
}

/// What the control queue acts on.
pub struct CtrlContext {
    /// Every queue pair's tap, in pair order.
    pub pairs: Vec<Arc<PairShared>>,
    /// VIRTIO_NET_F_MQ was negotiated.
    pub mq: bool,
}

impl CtrlContext {
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: pairs below `count` get their tap queue attached, the
    /// others detached, so the host sends nothing to queues the guest does not serve.
    pub fn set_active_pairs(&self, count: u16) -> u8 {
        let count = usize::from(count);
        if !self.mq || count == 0 || count > self.pairs.len() {
            log::warn!(
                "net: guest asked for {count} queue pairs (1 to {} allowed, MQ negotiated: {})",
                self.pairs.len(),
                self.mq
            );
            return ACK_ERR;
        }
        for (index, pair) in self.pairs.iter().enumerate() {
            if let Err(e) = pair.set_attached(index < count) {
                log::warn!("net: cannot switch queue pair {index}: {e}");
                return ACK_ERR;
            }
        }
        ACK_OK
    }

    fn handle(&self, class: u8, command: u8, data: &[u8]) -> u8 {
        match (class, command) {
            (CLASS_MQ, MQ_VQ_PAIRS_SET) => match data {
                [lo, hi, ..] => self.set_active_pairs(u16::from_le_bytes([*lo, *hi])),
                _ => ACK_ERR,
            },
            // Sent after a config change with GUEST_ANNOUNCE; acknowledging it is harmless.
            (CLASS_ANNOUNCE, ANNOUNCE_ACK) => ACK_OK,
            // RX mode (CLASS_RX), MAC and VLAN filters and offload changes are features this
            // device does not offer: the driver should not send them, and gets an error if it
            // does.
            _ => {
                log::debug!("net: control class {class} command {command} not supported");
                ACK_ERR
            }
        }
    }
}

/// Serves one control request; returns the bytes written to the guest (the ack).
pub fn handle_ctrl_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    context: &CtrlContext,
) -> Result<u32, CtrlError> {
    use std::io::Read;
    let head = chain.head_index();
    let bad = |e: virtio_queue::Error| CtrlError::Chain {
        head,
        reason: e.to_string(),
    };
    let mut reader = chain.clone().reader(mem).map_err(bad)?;
    let mut writer = chain.writer(mem).map_err(bad)?;
    let mut request = vec![0u8; reader.available_bytes().min(64)];
    reader
        .read_exact(&mut request)
        .map_err(|source| CtrlError::Short { head, source })?;
    let ack = match request.as_slice() {
        [class, command, data @ ..] => context.handle(*class, *command, data),
        _ => {
            return Err(CtrlError::Short {
                head,
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            })
        }
    };
    writer
        .write_obj(ack)
        .map_err(|source| CtrlError::NoAck { head, source })?;
    Ok(1)
}
