//! SIGTERM and SIGINT ask the guest to shut down instead of killing paddock: the Kubernetes way
//! to stop a pod, and Ctrl-C. Both are blocked before any thread starts (every thread inherits the
//! mask, so no vCPU or worker is interrupted) and read from a signalfd by the thread that waits
//! for the VM, which presses the guest's ACPI power button (`vmm::shutdown`).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd};

pub struct ShutdownSignals {
    fd: SignalFd,
    /// The last signal read, for the exit status of a run that had to be stopped.
    last: Cell<Option<i32>>,
}

impl ShutdownSignals {
    /// Call before any thread starts. Signals that arrive before the VM waits stay pending.
    pub fn block() -> nix::Result<Self> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self {
            fd,
            last: Cell::new(None),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every pending signal; returns how many there were.
    pub fn take(&self) -> usize {
        let mut count = 0;
        while let Ok(Some(info)) = self.fd.read_signal() {
            log::info!("received signal {}", info.ssi_signo);
            self.last.set(i32::try_from(info.ssi_signo).ok());
            count += 1;
        }
        count
    }

    /// 128 + the signal, the shell's convention for a process ended by it.
    pub fn exit_status(&self) -> u8 {
        let signal = self.last.get().unwrap_or(libc::SIGTERM);
        u8::try_from(128 + signal).unwrap_or(u8::MAX)
    }
}
