//! Building and running a VM: Created -> Running -> Shutdown.

use crate::arch::x86_64 as arch;
use crate::fs::{self, FsAttachError, FsSpec};
use crate::interrupts::GsiRouting;
use crate::kvm::{self, KvmError};
use crate::memory::{self, GuestMemoryMmap, MemoryConfig, MemoryError};
use crate::net::{self, NetAttachError, NetContext, NetSpec};
use crate::pci_bars::KvmBarMapper;
use crate::pinning::Placement;
use crate::shutdown::{GracefulShutdown, PowerButton, StopReason};
use crate::vcpu::{RunControl, Vcpu, VcpuFault, VcpuHandle};
use crate::virtio_plug::PciContext;
use devices::legacy;
use devices::legacy::serial::{SerialConsole, SERIAL_PORT_SPAN};
use devices::pci::{BarAllocator, MmioBarMapper, PciConfigIo, PciConfigMmio, PciRoot, Window};
use devices::{Bus, BusDevice, ExitRequest, ExitSignal};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// PCI configuration mechanism #1: address port 0xcf8, data ports 0xcfc..=0xcff.
const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
const PCI_CONFIG_IO_SPAN: u64 = 8;

/// Address of the TSS KVM needs on Intel hosts (three pages just below the BIOS area at 4 GiB).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    /// Guest RAM: size and backend (`--memory`).
    pub memory: MemoryConfig,
    /// Where the guest's COM1 output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// Console input for the guest (the host's stdin), read on its own thread.
    pub serial_in: Option<Box<dyn Read + Send>>,
    /// One virtio-net device per entry (`--net`).
    pub nets: Vec<NetSpec>,
    /// One virtio-fs device per entry (`--fs`), each served by a vhost-user-fs backend.
    pub fses: Vec<FsSpec>,
    /// Where vCPU threads and net queue workers run (`--cpus affinity=,realtime=`).
    pub placement: Placement,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Net(#[from] NetAttachError),
    #[error(transparent)]
    Fs(#[from] FsAttachError),
    #[error("the PCI BAR windows: {0}")]
    BarWindows(#[from] devices::pci::AllocatorError),
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    #[error("--cpus {asked}: this host's KVM allows at most {max} vCPUs per VM")]
    TooManyVcpus { asked: usize, max: usize },
    #[error("kernel {path}: {source}: give --kernel the path of a bzImage or ELF vmlinux")]
    KernelFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {path}: {source}: give --initramfs the path of a cpio archive")]
    InitramfsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path}: {source}")]
    Boot {
        path: PathBuf,
        source: arch::BootError,
    },
    #[error("setting up vCPU {id}: {source}")]
    VcpuSetup {
        id: u8,
        source: arch::VcpuSetupError,
    },
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("placing a device on the I/O bus: {0}")]
    Bus(#[from] devices::BusError),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset (reboot, or a panic with `panic=N`); Paddock ends the run.
    Reset,
    /// A vCPU stopped with an exit Paddock cannot handle.
    Fault(VcpuFault),
    /// Stopped from outside without the guest powering off (see [`GracefulShutdown`]).
    Stopped(StopReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
}

pub struct Vm {
    state: VmState,
    // Field order matters for drop: vCPUs and the VM fd go before the memory they point into.
    vcpus: Vec<Vcpu>,
    handles: Vec<VcpuHandle>,
    control: Arc<RunControl>,
    power_button: PowerButton,
    _vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    _pio: Arc<Bus>,
    _mmio: Arc<Bus>,
    _pci: Arc<PciRoot>,
    _mem: GuestMemoryMmap,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

impl Vm {
    /// Validates the configuration, creates the VM, loads the kernel and sets up every vCPU.
    /// Nothing outside this process is created, so an error leaves nothing behind.
    pub fn create(mut cfg: VmConfig) -> Result<Self, VmError> {
        if cfg.vcpus == 0 {
            return Err(VmError::NoVcpus);
        }
        let mut kernel =
            std::fs::File::open(&cfg.kernel).map_err(|source| VmError::KernelFile {
                path: cfg.kernel.clone(),
                source,
            })?;
        arch::kernel::identify(&mut kernel).map_err(|source| VmError::Boot {
            path: cfg.kernel.clone(),
            source: source.into(),
        })?;
        let mut initramfs = match &cfg.initramfs {
            Some(path) => {
                Some(
                    std::fs::File::open(path).map_err(|source| VmError::InitramfsFile {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        fs::check_tags(&cfg.fses)?;
        // A vhost-user backend maps guest RAM itself: it must be a file, mapped shared.
        if !cfg.fses.is_empty() && !cfg.memory.shared {
            log::info!("guest RAM is mapped shared (shared=on): a vhost-user backend maps it too");
            cfg.memory.shared = true;
        }

        let kvm = kvm::open()?;
        let max = kvm::max_vcpus(&kvm);
        if usize::from(cfg.vcpus) > max {
            return Err(VmError::TooManyVcpus {
                asked: cfg.vcpus.into(),
                max,
            });
        }
        let vm_fd = Arc::new(kvm::create_vm(&kvm)?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;

        let mem = memory::create(&cfg.memory, &arch::ram_regions(cfg.memory.size))?;
        memory::register_with_kvm(&vm_fd, &mem)?;

        let entry = arch::load_linux(
            &mem,
            &mut kernel,
            initramfs.as_mut(),
            &cfg.cmdline,
            cfg.vcpus,
        )
        .map_err(|source| VmError::Boot {
            path: cfg.kernel.clone(),
            source,
        })?;

        let exit = ExitSignal::new().map_err(io("creating the exit eventfd"))?;
        let control = Arc::new(RunControl::new(exit.clone()).map_err(io("creating an eventfd"))?);
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let serial = add_legacy_devices(&vm_fd, &pio, exit, cfg.serial_out)?;
        let power_button = PowerButton::attach(&vm_fd)?;
        let pci = add_pci_root(&pio, &mmio, &vm_fd)?;
        let placement = Arc::new(cfg.placement);
        add_pci_devices(
            &vm_fd,
            &pci,
            &mem,
            cfg.nets,
            &cfg.fses,
            cfg.vcpus.into(),
            &placement,
        )?;
        if let Some(input) = cfg.serial_in {
            spawn_serial_input(serial, input).map_err(io("starting the serial input thread"))?;
        }

        let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
        for id in 0..cfg.vcpus {
            let fd = vm_fd
                .create_vcpu(id.into())
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            arch::configure_vcpu(&kvm, &fd, id, cfg.vcpus, &entry, &mem)
                .map_err(|source| VmError::VcpuSetup { id, source })?;
            vcpus.push(Vcpu {
                id,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: control.clone(),
                pin: placement.vcpu(id.into()).cloned(),
            });
        }

        Ok(Self {
            state: VmState::Created,
            vcpus,
            handles: Vec::new(),
            control,
            power_button,
            _vm_fd: vm_fd,
            _kvm: kvm,
            _pio: pio,
            _mmio: mmio,
            _pci: pci,
            _mem: mem,
        })
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    /// Starts every vCPU thread.
    pub fn start(&mut self) -> Result<(), VmError> {
        for vcpu in self.vcpus.drain(..) {
            let handle = vcpu.start().map_err(io("starting a vCPU thread"))?;
            self.handles.push(handle);
        }
        self.state = VmState::Running;
        Ok(())
    }

    /// Blocks until the guest powers off, resets, or a vCPU faults, or until `shutdown` stops it;
    /// then stops every vCPU. The first shutdown request presses the guest's power button; the
    /// run is stopped hard when the grace period ends or on the next request.
    pub fn wait(&mut self, mut shutdown: Option<GracefulShutdown<'_>>) -> Outcome {
        let exit_fd = self.control.exit.eventfd().as_raw_fd();
        let fault_fd = self.control.fault_eventfd().as_raw_fd();
        let request_fd = shutdown.as_ref().map(|s| s.requests.as_raw_fd());
        let mut deadline: Option<(Instant, Duration)> = None;
        let outcome = loop {
            let mut fds = [exit_fd, fault_fd, request_fd.unwrap_or(-1)].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            let timeout_ms = match deadline {
                None => -1,
                Some((at, _)) => {
                    let left = at.saturating_duration_since(Instant::now()).as_millis();
                    i32::try_from(left).unwrap_or(i32::MAX)
                }
            };
            // SAFETY: `fds` is a valid array of pollfd structs that lives across the call; a
            // negative fd (no shutdown source) is ignored by poll.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if let Some(fault) = self.control.fault() {
                break Outcome::Fault(fault);
            }
            match self.control.exit.requested() {
                Some(ExitRequest::PowerOff) => break Outcome::PowerOff,
                Some(ExitRequest::Reset) => break Outcome::Reset,
                None => {}
            }
            if let Some(s) = shutdown.as_mut() {
                if fds[2].revents & libc::POLLIN != 0 && (s.take)() > 0 {
                    if deadline.is_some() {
                        break Outcome::Stopped(StopReason::AskedAgain);
                    }
                    log::info!(
                        "shutdown asked: pressing the guest's power button ({} s to power off)",
                        s.grace.as_secs()
                    );
                    if let Err(e) = self.power_button.press() {
                        log::warn!("pressing the power button: {e}");
                    }
                    deadline = Some((Instant::now() + s.grace, s.grace));
                }
            }
            if let Some((at, grace)) = deadline {
                if Instant::now() >= at {
                    break Outcome::Stopped(StopReason::GraceExpired(grace));
                }
            }
        };
        self.stop_vcpus();
        // Device threads (net queue workers) end and are joined before the process exits.
        self._pci.stop_devices();
        outcome
    }

    fn stop_vcpus(&mut self) {
        self.control.request_stop();
        // Kick until every thread has left KVM_RUN: a kick sent just before a thread re-enters
        // KVM_RUN is lost, so one kick is not enough.
        for _ in 0..500 {
            if self.handles.iter().all(|h| h.is_finished()) {
                break;
            }
            self.handles.iter().for_each(VcpuHandle::kick);
            std::thread::sleep(Duration::from_millis(2));
        }
        for h in self.handles.drain(..) {
            if h.is_finished() {
                h.join();
            } else {
                log::error!("a vCPU thread did not stop; leaving it behind");
            }
        }
        self.state = VmState::Shutdown;
    }
}

/// Every `--net` and `--fs`, on one GSI routing table and one BAR allocator over the VM's PCI
/// windows.
fn add_pci_devices(
    vm: &Arc<VmFd>,
    pci: &PciRoot,
    mem: &GuestMemoryMmap,
    nets: Vec<NetSpec>,
    fses: &[FsSpec],
    vcpus: usize,
    placement: &Arc<Placement>,
) -> Result<(), VmError> {
    if nets.is_empty() && fses.is_empty() {
        return Ok(());
    }
    let windows = arch::pci_windows(mem);
    let mut allocator = BarAllocator::new(
        Window {
            base: windows.mmio32.0.into(),
            size: windows.mmio32.1.into(),
        },
        Window {
            base: windows.mmio64.0,
            size: windows.mmio64.1,
        },
    )?;
    let routing = GsiRouting::new(vm.clone());
    let mut bus = PciContext {
        vm,
        routing: &routing,
        pci,
        allocator: &mut allocator,
        mem,
    };
    let net_ctx = NetContext { vcpus, placement };
    for (index, spec) in nets.into_iter().enumerate() {
        net::attach(&mut bus, &net_ctx, index, spec)?;
    }
    for spec in fses {
        fs::attach(&mut bus, spec)?;
    }
    Ok(())
}

/// The PCI root bus with its host bridge, reachable through ports 0xcf8/0xcfc and ECAM (the window
/// the ACPI MCFG announces); BARs the guest moves are re-mapped on the MMIO bus, with their ioeventfds.
fn add_pci_root(pio: &Bus, mmio: &Arc<Bus>, vm: &Arc<VmFd>) -> Result<Arc<PciRoot>, VmError> {
    let mapper = KvmBarMapper::new(MmioBarMapper::new(mmio.clone()), vm.clone());
    let root = Arc::new(PciRoot::new(Arc::new(mapper)));
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        PCI_CONFIG_IO_PORT,
        PCI_CONFIG_IO_SPAN,
    )?;
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        arch::layout::PCI_ECAM_START,
        arch::layout::PCI_ECAM_SIZE,
    )?;
    Ok(root)
}

fn add_legacy_devices(
    vm_fd: &VmFd,
    pio: &Bus,
    exit: ExitSignal,
    serial_out: Box<dyn Write + Send>,
) -> Result<Arc<Mutex<SerialConsole>>, VmError> {
    let serial_irq = EventFd::new(0).map_err(io("creating the serial irq eventfd"))?;
    vm_fd
        .register_irqfd(&serial_irq, legacy::COM1_IRQ)
        .map_err(ioctl("KVM_IRQFD for COM1"))?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(serial_irq, serial_out)));
    pio.insert(serial.clone(), legacy::COM1_PORT.into(), SERIAL_PORT_SPAN)?;
    let i8042: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(legacy::i8042::I8042::new(exit.clone())));
    pio.insert(i8042, legacy::I8042_DATA_PORT.into(), 5)?;
    let post: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(legacy::debug_port::DebugPort::new()));
    pio.insert(post, legacy::DEBUG_PORT.into(), 1)?;
    let pm: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(legacy::acpi_pm::AcpiPm::new(exit)));
    pio.insert(pm, legacy::ACPI_SLEEP_CONTROL_PORT.into(), 3)?;
    Ok(serial)
}

/// Feeds host input to the guest console; waits while the guest has not drained the FIFO.
fn spawn_serial_input(
    serial: Arc<Mutex<SerialConsole>>,
    mut input: Box<dyn Read + Send>,
) -> std::io::Result<()> {
    crate::threads::spawn(
        crate::threads::ThreadCategory::Vmm,
        "serial-in",
        move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(pending);
                    match taken {
                        Ok(0) => std::thread::sleep(Duration::from_millis(5)),
                        Ok(k) => pending = &pending[k..],
                        Err(e) => {
                            log::warn!("{e}");
                            return;
                        }
                    }
                }
            }
        },
    )
    .map(|_| ())
    .map_err(std::io::Error::other)
}
