//! How a device asks the VMM to end the run: guest power-off or reset.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    /// The guest powered off (ACPI S5): the run ends with status 0.
    PowerOff,
    /// The guest asked for a reset (i8042, ACPI reset register): Paddock has no reboot, the run ends.
    Reset,
}

/// Clonable handle: the first request wins, and its eventfd wakes whoever waits for the end of the run.
#[derive(Clone)]
pub struct ExitSignal {
    inner: Arc<Inner>,
}

struct Inner {
    reason: AtomicU8,
    evt: EventFd,
}

const NONE: u8 = 0;

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                reason: AtomicU8::new(NONE),
                evt: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    pub fn request(&self, req: ExitRequest) {
        let code = match req {
            ExitRequest::PowerOff => 1,
            ExitRequest::Reset => 2,
        };
        if self
            .inner
            .reason
            .compare_exchange(NONE, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // An eventfd write fails only on counter overflow, which one write cannot cause.
            let _ = self.inner.evt.write(1);
        }
    }

    pub fn requested(&self) -> Option<ExitRequest> {
        match self.inner.reason.load(Ordering::Acquire) {
            1 => Some(ExitRequest::PowerOff),
            2 => Some(ExitRequest::Reset),
            _ => None,
        }
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.inner.evt
    }
}
