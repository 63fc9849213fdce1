//! Puts a virtio device on the root PCI bus, the same way for every device: one MSI-X vector (GSI +
//! irqfd) per queue plus one for configuration changes, the virtio-pci transport with its BARs,
//! and a KVM ioeventfd at each queue's notify address.

use crate::interrupts::{GsiRouting, InterruptsError};
use crate::memory::GuestMemoryMmap;
use devices::pci::{BarAllocator, PciRoot};
use devices::virtio::{VirtioDevice, VirtioPciDevice, VirtioPciError};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    #[error(transparent)]
    Transport(#[from] VirtioPciError),
    #[error(transparent)]
    Interrupts(#[from] InterruptsError),
    #[error("plugging it into the PCI bus: {0}")]
    Bus(String),
    #[error("queue {0} has no notify address (its BAR was not placed)")]
    Unplaced(u16),
    #[error("KVM_IOEVENTFD for queue {queue}: {source}")]
    Ioeventfd {
        queue: u16,
        source: kvm_ioctls::Error,
    },
}

/// What plugging a device needs from the VM.
pub struct PciContext<'a> {
    pub vm: &'a VmFd,
    pub routing: &'a Arc<GsiRouting>,
    pub pci: &'a PciRoot,
    pub allocator: &'a mut BarAllocator,
    pub mem: &'a GuestMemoryMmap,
}

pub fn plug(ctx: &mut PciContext, device: Box<dyn VirtioDevice>) -> Result<(), PlugError> {
    // The transport gives every queue a vector plus one for configuration changes.
    let vectors = device.queue_max_sizes().len() as u16 + 1;
    let routes = ctx.routing.msi_vectors(vectors)?;
    let device = VirtioPciDevice::new(device, ctx.mem.clone(), Arc::new(routes))?;
    let device = Arc::new(Mutex::new(device));
    ctx.pci
        .add_device(device.clone(), ctx.allocator)
        .map_err(|e| PlugError::Bus(e.to_string()))?;
    let notifiers = device
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .queue_notifiers()?;
    for n in notifiers {
        let addr = n.addr.ok_or(PlugError::Unplaced(n.queue))?;
        // KVM keeps its own reference to the eventfd; the device keeps the other end.
        ctx.vm
            .register_ioevent(&n.event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|source| PlugError::Ioeventfd {
                queue: n.queue,
                source,
            })?;
    }
    Ok(())
}
