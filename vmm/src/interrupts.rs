//! MSI delivery on KVM: one GSI and one irqfd per MSI-X vector, and the VM's GSI routing table.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, including KVM's default entries that wire GSIs
//! 0..23 to the in-kernel IOAPIC (and 0..15 to the PICs). [`GsiRouting`] therefore always writes
//! those defaults along with the MSI routes, or legacy lines such as the serial port's IRQ 4 would
//! stop working the first time a guest programs an MSI-X vector.

use devices::interrupt::{InterruptError, MsiInterruptRoutes, MsiMessage};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// GSIs below this are the IOAPIC's pins; MSI routes get the numbers above.
pub const IOAPIC_PINS: u32 = 24;
/// The PICs' pins (GSIs 0..15), routed to both the PIC and the IOAPIC by default.
const PIC_PINS: u32 = 16;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES is 4096 on x86).
const MAX_ROUTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    #[error("no GSI left for {wanted} more MSI vectors (KVM allows {MAX_ROUTES} routes): use fewer queues or devices")]
    OutOfGsis { wanted: usize },
    #[error("creating the irqfd eventfd for GSI {gsi}: {source}")]
    EventFd { gsi: u32, source: std::io::Error },
    #[error("KVM_IRQFD for GSI {gsi}: {source} (does the VM have an in-kernel irqchip?)")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
}

/// The VM's GSI routing table: the default IOAPIC/PIC entries plus every MSI route.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    next_gsi: u32,
    /// Unmasked MSI routes by GSI; a masked vector has no entry, so nothing can reach the guest.
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouting {
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            state: Mutex::new(RoutingState {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        })
    }

    /// Allocates `count` GSIs with an irqfd each, for one device's MSI-X vectors.
    pub fn msi_vectors(self: &Arc<Self>, count: u16) -> Result<KvmMsiRoutes, InterruptsError> {
        let first = {
            let mut state = self.lock();
            let first = state.next_gsi;
            let end = first as usize + usize::from(count);
            if end > MAX_ROUTES {
                return Err(InterruptsError::OutOfGsis {
                    wanted: count.into(),
                });
            }
            state.next_gsi += u32::from(count);
            first
        };
        let mut vectors = Vec::with_capacity(count.into());
        for gsi in first..first + u32::from(count) {
            let irqfd = EventFd::new(EFD_NONBLOCK)
                .map_err(|source| InterruptsError::EventFd { gsi, source })?;
            self.vm
                .register_irqfd(&irqfd, gsi)
                .map_err(|source| InterruptsError::Irqfd { gsi, source })?;
            vectors.push(VectorRoute { gsi, irqfd });
        }
        Ok(KvmMsiRoutes {
            routing: self.clone(),
            vectors,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoutingState> {
        // The state is a map and a counter: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets or clears the route of `gsi` and writes the whole table to KVM.
    fn set(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), kvm_ioctls::Error> {
        let mut state = self.lock();
        match msg {
            Some(msg) => state.msi.insert(gsi, msg),
            None => state.msi.remove(&gsi),
        };
        let table = routing_entries(&state.msi);
        let routing =
            KvmIrqRouting::from_entries(&table).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.vm.set_gsi_routing(&routing)
    }
}

/// KVM's default entries for GSIs 0..23, then one MSI entry per unmasked route.
fn routing_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut out = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            out.push(irqchip(gsi, chip, gsi % 8));
        }
        out.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi = kvm_irq_routing_msi {
            address_lo: m.addr as u32,
            address_hi: (m.addr >> 32) as u32,
            data: m.data,
            ..Default::default()
        };
        out.push(e);
    }
    out
}

struct VectorRoute {
    gsi: u32,
    irqfd: EventFd,
}

/// One device's MSI-X vectors on KVM: what the PCI layer calls when the guest programs a vector
/// and when the device raises one.
pub struct KvmMsiRoutes {
    routing: Arc<GsiRouting>,
    vectors: Vec<VectorRoute>,
}

impl KvmMsiRoutes {
    fn vector(&self, vector: u16) -> Result<&VectorRoute, InterruptError> {
        self.vectors
            .get(usize::from(vector))
            .ok_or(InterruptError::NoSuchVector {
                vector,
                count: self.vectors.len() as u16,
            })
    }

    /// The GSI behind `vector` (for tests and reports).
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.vectors.get(usize::from(vector)).map(|v| v.gsi)
    }
}

impl MsiInterruptRoutes for KvmMsiRoutes {
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
        let gsi = self.vector(vector)?.gsi;
        self.routing
            .set(gsi, (!masked).then_some(msg))
            .map_err(|e| InterruptError::Route {
                vector,
                reason: format!("KVM_SET_GSI_ROUTING for GSI {gsi}: {e}"),
            })
    }

    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        self.vector(vector)?
            .irqfd
            .write(1)
            .map_err(|source| InterruptError::Signal { vector, source })
    }

    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        match self.vector(vector).map(|v| v.irqfd.try_clone()) {
            Ok(Ok(fd)) => Some(fd),
            Ok(Err(e)) => {
                log::warn!("cannot copy the irqfd of MSI-X vector {vector}: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_the_default_irqchip_entries() {
        let msi = BTreeMap::from([(
            30,
            MsiMessage {
                addr: 0x1_fee0_0000,
                data: 0x41,
            },
        )]);
        let table = routing_entries(&msi);
        // 16 PIC + 24 IOAPIC entries, then the MSI one.
        assert_eq!(table.len(), 41);
        let chip_pin = |e: &kvm_irq_routing_entry| {
            // SAFETY: reading the irqchip member of an entry whose type says it is one.
            unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) }
        };
        let serial: Vec<_> = table.iter().filter(|e| e.gsi == 4).map(chip_pin).collect();
        assert_eq!(
            serial,
            [(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
        let high: Vec<_> = table.iter().filter(|e| e.gsi == 10).map(chip_pin).collect();
        assert_eq!(high, [(KVM_IRQCHIP_PIC_SLAVE, 2), (KVM_IRQCHIP_IOAPIC, 10)]);
        let last = table.last().copied().unwrap_or_default();
        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry's type is MSI.
        let m = unsafe { last.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_0000, 1, 0x41));
    }

    /// On the machine's /dev/kvm: KVM accepts the table, and an MSI raised through a vector's
    /// irqfd lands in vCPU 0's local APIC (IRR bit of the vector in the message data).
    #[test]
    fn msi_through_the_irqfd_reaches_the_local_apic() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        // A software-disabled local APIC accepts nothing: set SVR's enable bit, as a guest does.
        let mut lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        lapic.regs[0xf1] |= 1;
        vcpu.set_lapic(&lapic).expect("KVM_SET_LAPIC");
        let routing = GsiRouting::new(vm.clone());
        let routes = routing.msi_vectors(2).expect("vectors");
        assert_eq!((routes.gsi(0), routes.gsi(1)), (Some(24), Some(25)));
        let vector = 0x45u32;
        let msg = MsiMessage {
            addr: 0xfee0_0000,
            data: vector,
        };
        let irr_bit = || {
            let lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
            // IRR: eight 32-bit registers from offset 0x200, 16 bytes apart.
            let reg = 0x200 + (vector as usize / 32) * 16;
            let word = u32::from_le_bytes(
                lapic.regs[reg..reg + 4]
                    .iter()
                    .map(|&b| b as u8)
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap_or_default(),
            );
            word & (1 << (vector % 32)) != 0
        };
        // Masked: no route, so the irqfd's signal goes nowhere.
        routes.update(1, msg, true).expect("masked route");
        routes.trigger(1).expect("trigger");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!irr_bit(), "a masked vector was delivered");
        routes.update(1, msg, false).expect("route");
        assert!(routes.update(2, msg, false).is_err());
        routes.trigger(1).expect("trigger");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !irr_bit() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(irr_bit(), "vector {vector:#x} not pending in the LAPIC IRR");
    }
}
