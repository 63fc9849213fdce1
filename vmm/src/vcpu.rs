//! vCPU threads: each runs KVM_RUN in a loop and dispatches port-I/O and MMIO exits to the buses.

use crate::pinning::ThreadPin;
use crate::threads::{self, ThreadCategory, ThreadHandle};
use devices::{Bus, ExitRequest, ExitSignal};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Why a vCPU stopped the VM on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuFault {
    pub cpu: u8,
    /// The exit or error, named as KVM names it.
    pub what: String,
    pub rip: Option<u64>,
}

impl std::fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {} stopped: {}", self.cpu, self.what)?;
        match self.rip {
            Some(rip) => write!(f, " at guest RIP {rip:#x}"),
            None => write!(f, " (guest RIP unreadable)"),
        }
    }
}

/// State shared by the vCPU threads and the thread that waits for the end of the run.
pub struct RunControl {
    stop: AtomicBool,
    fault: Mutex<Option<VcpuFault>>,
    fault_evt: EventFd,
    pub exit: ExitSignal,
}

impl RunControl {
    pub fn new(exit: ExitSignal) -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            fault: Mutex::new(None),
            fault_evt: EventFd::new(EFD_NONBLOCK)?,
            exit,
        })
    }

    fn report_fault(&self, fault: VcpuFault) {
        let mut slot = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(fault);
            // Overflow of the eventfd counter is the only failure and needs 2^64 writes.
            let _ = self.fault_evt.write(1);
        }
    }

    pub fn fault(&self) -> Option<VcpuFault> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn fault_eventfd(&self) -> &EventFd {
        &self.fault_evt
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<RunControl>,
    /// Its CPUs and scheduling policy, set in its thread before it first enters KVM_RUN.
    pub pin: Option<ThreadPin>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: ThreadHandle<()>,
}

impl VcpuHandle {
    /// Interrupts KVM_RUN so the thread sees the stop flag.
    pub fn kick(&self) {
        // ESRCH once the thread has ended is expected and harmless.
        let _ = self.thread.kill(kick_signal());
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) {
        // A vCPU thread never panics on guest input; if it did, the fault is already reported.
        let _ = self.thread.join();
    }
}

impl Vcpu {
    /// Starts the vCPU on a thread named `CPU N/KVM`, as QEMU names them, placed by its pin.
    pub fn start(mut self) -> std::io::Result<VcpuHandle> {
        install_kick_handler()?;
        let pin = self.pin.take();
        let thread = threads::spawn_pinned(
            ThreadCategory::Vcpu,
            format!("CPU {}/KVM", self.id),
            pin,
            move || self.run_loop(),
        )
        .map_err(std::io::Error::other)?;
        Ok(VcpuHandle { thread })
    }

    fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    fn fault(&self, what: impl Into<String>) {
        self.control.report_fault(VcpuFault {
            cpu: self.id,
            what: what.into(),
            rip: self.rip(),
        });
    }

    fn run_loop(mut self) {
        // A guest that asked for power-off or reset must not run on: after writing the reset
        // register Linux would go on to other reset methods, down to a real-mode jump.
        while !self.control.stopping() && self.control.exit.requested().is_none() {
            if let Some(what) = self.run_once() {
                self.fault(what);
                break;
            }
        }
    }

    /// One KVM_RUN and the handling of its exit; returns what went wrong if the vCPU cannot go on.
    fn run_once(&mut self) -> Option<String> {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                    self.control.exit.request(ExitRequest::PowerOff)
                }
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    self.control.exit.request(ExitRequest::Reset)
                }
                other => return Some(format!("KVM_EXIT_SYSTEM_EVENT type {other}")),
            },
            Ok(VcpuExit::Shutdown) => return Some("KVM_EXIT_SHUTDOWN (triple fault)".into()),
            Ok(VcpuExit::InternalError) => return Some("KVM_EXIT_INTERNAL_ERROR".into()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(format!(
                "KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x} on host cpu {cpu})"
            ))
            }
            Ok(VcpuExit::Hlt) => {
                return Some("KVM_EXIT_HLT (halted with no in-kernel LAPIC to wake it)".into())
            }
            Ok(other) => return Some(format!("unhandled exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Some(format!("KVM_RUN failed: {e}")),
        }
        None
    }
}
