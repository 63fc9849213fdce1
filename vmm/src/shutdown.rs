//! Ending a running guest from outside: press its ACPI power button, and stop it hard when it has
//! not powered off in time or when asked again.

use devices::legacy::POWER_BUTTON_GSI;
use kvm_ioctls::VmFd;
use std::os::fd::BorrowedFd;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// The guest's power button: the interrupt of the ACPI Generic Event Device, whose `_EVT`
/// notifies the PNP0C0C button (see `arch::x86_64::acpi`).
pub struct PowerButton {
    irq: EventFd,
}

impl PowerButton {
    pub(crate) fn attach(vm: &VmFd) -> Result<Self, crate::vm::VmError> {
        let irq = EventFd::new(0).map_err(|source| crate::vm::VmError::Io {
            what: "creating the power button's irq eventfd",
            source,
        })?;
        vm.register_irqfd(&irq, POWER_BUTTON_GSI)
            .map_err(|source| crate::vm::VmError::Ioctl {
                what: "KVM_IRQFD for the power button",
                source,
            })?;
        Ok(Self { irq })
    }

    /// One press: an edge on the GED's interrupt line.
    pub fn press(&self) -> std::io::Result<()> {
        self.irq.write(1)
    }
}

/// Where shutdown requests come from (a signalfd for SIGTERM/SIGINT, say) and how long the guest
/// may take once its power button is pressed.
pub struct GracefulShutdown<'a> {
    /// Readable while a request is pending.
    pub requests: BorrowedFd<'a>,
    /// Consumes the pending requests and says how many there were.
    pub take: &'a mut dyn FnMut() -> usize,
    /// From the first press until the run is stopped hard.
    pub grace: Duration,
}

/// Why a run was stopped without the guest powering off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The power button was pressed and the guest did not power off within the grace period.
    GraceExpired(Duration),
    /// A second request came while the guest was shutting down.
    AskedAgain,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::GraceExpired(grace) => write!(
                f,
                "the guest did not power off within {} s of its power button being pressed; stopped it (a guest needs acpid or systemd-logind to act on the button; --shutdown-timeout sets the wait)",
                grace.as_secs()
            ),
            StopReason::AskedAgain => {
                write!(f, "asked to stop again during the guest's shutdown; stopped it")
            }
        }
    }
}
