//! How devices raise interrupts, independent of the transport and of KVM.
//!
//! A device model only sees [`VectorInterrupts`] (virtio: one vector per queue plus the config
//! vector) or an [`InterruptLine`]. Behind them, the PCI layer's MSI-X state decides whether the
//! vector is masked (pending bit) or delivered, and delivery goes through [`MsiInterruptRoutes`],
//! which the `vmm` crate implements with KVM GSI routing and one irqfd per vector.

use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("interrupt vector {vector} does not exist (the device has {count}): the device model asked for a vector it never configured")]
    NoSuchVector { vector: u16, count: u16 },
    #[error("cannot signal the interrupt eventfd of vector {vector}: {source} (is the irqfd still registered?)")]
    Signal { vector: u16, source: std::io::Error },
    #[error("cannot update the interrupt route of vector {vector}: {reason}")]
    Route { vector: u16, reason: String },
}

/// An MSI message as the guest programmed it: a write of `data` to `addr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// One interrupt line (a single irqfd, a legacy pin).
pub trait InterruptLine: Send + Sync {
    fn trigger(&self) -> Result<(), InterruptError>;
}

/// An eventfd registered as a KVM irqfd is an interrupt line: writing it raises the GSI.
impl InterruptLine for EventFd {
    fn trigger(&self) -> Result<(), InterruptError> {
        self.write(1)
            .map_err(|source| InterruptError::Signal { vector: 0, source })
    }
}

/// A set of numbered interrupt vectors (MSI-X vectors of a PCI function).
pub trait VectorInterrupts: Send + Sync {
    /// Raises `vector`. A vector that is masked right now is remembered and delivered on unmask.
    fn trigger(&self, vector: u16) -> Result<(), InterruptError>;
    /// An eventfd that raises `vector` when written, for another process to signal directly (a
    /// vhost-user backend's vring call fd); `None` when there is none. Writes to it bypass the
    /// pending bit, so the provider raises the vector once on every unmask instead.
    fn irqfd(&self, _vector: u16) -> Option<EventFd> {
        None
    }
}

/// The KVM side of MSI delivery, implemented by the VMM: keeps a GSI route per vector and fires it.
pub trait MsiInterruptRoutes: Send + Sync {
    /// The guest changed `vector`'s message or its effective mask (vector mask, function mask or
    /// MSI-X enable). A masked vector must not be delivered, but its route may be kept.
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError>;
    /// Delivers `vector` now (it is unmasked and enabled).
    fn trigger(&self, vector: u16) -> Result<(), InterruptError>;
    /// A copy of the eventfd that delivers `vector` (a KVM irqfd), when there is one.
    fn irqfd(&self, _vector: u16) -> Option<EventFd> {
        None
    }
}

/// What a [`RecordingInterrupts`] saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptEvent {
    Update {
        vector: u16,
        msg: MsiMessage,
        masked: bool,
    },
    Trigger {
        vector: u16,
    },
}

/// A fake for tests of device models: records every trigger and route update instead of
/// raising anything.
#[derive(Default)]
pub struct RecordingInterrupts {
    events: Mutex<Vec<InterruptEvent>>,
    irqfds: Vec<EventFd>,
}

impl RecordingInterrupts {
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder that also hands out an eventfd per vector (what KVM irqfds are), for devices
    /// whose interrupts are signalled from outside the VMM.
    pub fn with_irqfds(vectors: u16) -> std::io::Result<Self> {
        let irqfds = (0..vectors)
            .map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            events: Mutex::default(),
            irqfds,
        })
    }

    /// Returns the events recorded so far and forgets them.
    pub fn take(&self) -> Vec<InterruptEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The vectors triggered so far, in order (forgets nothing).
    pub fn triggered(&self) -> Vec<u16> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|e| match e {
                InterruptEvent::Trigger { vector } => Some(*vector),
                InterruptEvent::Update { .. } => None,
            })
            .collect()
    }

    fn push(&self, event: InterruptEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

impl VectorInterrupts for RecordingInterrupts {
    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        self.push(InterruptEvent::Trigger { vector });
        Ok(())
    }
}

impl MsiInterruptRoutes for RecordingInterrupts {
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
        self.push(InterruptEvent::Update {
            vector,
            msg,
            masked,
        });
        Ok(())
    }

    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        self.push(InterruptEvent::Trigger { vector });
        Ok(())
    }

    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        self.irqfds.get(usize::from(vector))?.try_clone().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn eventfd_line_counts_triggers() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        InterruptLine::trigger(&evt).unwrap();
        InterruptLine::trigger(&evt).unwrap();
        assert_eq!(evt.read().unwrap(), 2);
    }

    #[test]
    fn recorder_keeps_order() {
        let rec = RecordingInterrupts::new();
        let msg = MsiMessage {
            addr: 0xfee0_0000,
            data: 0x41,
        };
        MsiInterruptRoutes::update(&rec, 1, msg, false).unwrap();
        VectorInterrupts::trigger(&rec, 1).unwrap();
        assert_eq!(rec.triggered(), vec![1]);
        assert_eq!(
            rec.take(),
            vec![
                InterruptEvent::Update {
                    vector: 1,
                    msg,
                    masked: false
                },
                InterruptEvent::Trigger { vector: 1 }
            ]
        );
        assert!(rec.take().is_empty());
    }
}
