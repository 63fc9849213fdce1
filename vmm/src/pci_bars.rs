//! Where the guest sees PCI BARs: a window on the MMIO bus for each, and the KVM ioeventfds of
//! the queue notify addresses inside it, which follow the BAR when the guest moves it.
//!
//! The devices' attach code registers each notify eventfd at its first address; a guest that
//! reprograms the BAR (a configuration write, handled on a vCPU thread) makes
//! [`KvmBarMapper::moved`] deassign every one of them at the old address and assign it at the
//! new one. Without that, KVM would keep swallowing writes at the old address (whatever lives
//! there now) and notifications at the new one would take the slow MMIO-exit path.

use std::sync::{Arc, Mutex};

use devices::pci::{Bar, BarMapError, BarMapper, BarReprogram, MmioBarMapper, PciDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};

/// [`MmioBarMapper`] plus the ioeventfds of each BAR.
pub struct KvmBarMapper {
    windows: MmioBarMapper,
    vm: Arc<VmFd>,
}

impl KvmBarMapper {
    pub fn new(windows: MmioBarMapper, vm: Arc<VmFd>) -> Self {
        Self { windows, vm }
    }
}

impl BarMapper for KvmBarMapper {
    fn map(
        &self,
        slot: u8,
        device: &Arc<Mutex<dyn PciDevice>>,
        bar: Bar,
        addr: u64,
    ) -> Result<(), BarMapError> {
        self.windows.map(slot, device, bar, addr)
    }

    fn moved(
        &self,
        slot: u8,
        device: &Arc<Mutex<dyn PciDevice>>,
        moved: BarReprogram,
    ) -> Result<(), BarMapError> {
        self.windows.moved(slot, device, moved)?;
        let device = device.lock().unwrap_or_else(|e| e.into_inner());
        device.visit_ioevents(moved.bar, &mut |offset, event| {
            let old = IoEventAddress::Mmio(moved.old + offset);
            let new = IoEventAddress::Mmio(moved.new + offset);
            if let Err(e) = self.vm.unregister_ioevent(event, &old, NoDatamatch) {
                log::warn!(
                    "PCI device {slot:02x}: ioeventfd at {:#x} not removed: {e}",
                    moved.old + offset
                );
            }
            // Should this fail, the notify still arrives as an MMIO write, which the device
            // forwards to the same eventfd: slower, not lost.
            if let Err(e) = self.vm.register_ioevent(event, &new, NoDatamatch) {
                log::warn!(
                    "PCI device {slot:02x}: ioeventfd at {:#x} not placed: {e}; notifications take the MMIO exit",
                    moved.new + offset
                );
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::Bus;
    use devices::interrupt::RecordingInterrupts;
    use devices::pci::{BarAllocator, PciConfigIo, PciRoot, Window};
    use devices::virtio::pci::notify_offset;
    use devices::virtio::{
        feature, ActivateError, Activation, VirtioDevice, VirtioPciDevice, F_VERSION_1,
    };
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    /// Two queues and nothing behind them: only the transport matters here.
    struct Idle;

    impl VirtioDevice for Idle {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn features(&self) -> u64 {
            feature(F_VERSION_1)
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, _activation: Activation) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
    }

    /// A type-1 configuration write of a dword to register `reg` of device `slot`.
    fn config_write(pio: &Bus, slot: u8, reg: u8, value: u32) {
        let addr = (1u32 << 31) | (u32::from(slot) << 11) | u32::from(reg);
        pio.write(0xcf8, &addr.to_le_bytes());
        pio.write(0xcfc, &value.to_le_bytes());
    }

    /// Whether KVM holds an ioeventfd at `addr`: assigning another one there (4 bytes, no
    /// datamatch) collides with it (EEXIST); when it does not, the probe is removed again.
    fn registered_at(vm: &VmFd, addr: u64) -> bool {
        let probe = EventFd::new(0).expect("eventfd");
        let at = IoEventAddress::Mmio(addr);
        match vm.register_ioevent(&probe, &at, NoDatamatch) {
            Ok(()) => {
                vm.unregister_ioevent(&probe, &at, NoDatamatch)
                    .expect("remove the probe");
                false
            }
            Err(e) if e.errno() == libc::EEXIST => true,
            Err(e) => panic!("KVM_IOEVENTFD at {addr:#x}: {e}"),
        }
    }

    /// On the machine's /dev/kvm: the guest moves BAR 0 (low dword, then high dword, as Linux
    /// writes a 64-bit BAR) and every queue's ioeventfd leaves the old address for the new one.
    #[test]
    fn ioeventfds_follow_a_moved_bar() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        let mmio = Arc::new(Bus::new());
        let mapper = KvmBarMapper::new(MmioBarMapper::new(mmio.clone()), vm.clone());
        let root = Arc::new(PciRoot::new(Arc::new(mapper)));
        let pio = Bus::new();
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            0xcf8,
            8,
        )
        .expect("config ports");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("RAM");
        let device =
            VirtioPciDevice::new(Box::new(Idle), mem, Arc::new(RecordingInterrupts::new()))
                .expect("device");
        let device = Arc::new(Mutex::new(device));
        let mut allocator = BarAllocator::new(
            Window {
                base: 0xc000_0000,
                size: 0x1000_0000,
            },
            Window {
                base: 0x1_0000_0000,
                size: 0x1_0000_0000,
            },
        )
        .expect("allocator");
        let slot = root
            .add_device(device.clone(), &mut allocator)
            .expect("plug");
        // What vmm::net::attach does once the BAR is placed.
        let notifiers = device.lock().unwrap().queue_notifiers().expect("notifiers");
        let old_base = notifiers[0].addr.expect("placed") - notify_offset(0);
        for n in &notifiers {
            vm.register_ioevent(
                &n.event,
                &IoEventAddress::Mmio(n.addr.unwrap()),
                NoDatamatch,
            )
            .expect("KVM_IOEVENTFD");
        }
        for queue in 0..2u16 {
            assert!(registered_at(&vm, old_base + notify_offset(queue)));
        }

        // Memory decoding on, then the two halves one at a time: two moves, through an
        // address made of the new low and the old high dword.
        config_write(&pio, slot, 0x04, 0x2);
        let new_base: u64 = 0x2_4000_0000;
        assert_ne!(new_base, old_base);
        config_write(&pio, slot, 0x10, new_base as u32 | 0x4); // 64-bit memory BAR
        config_write(&pio, slot, 0x14, (new_base >> 32) as u32);
        let follows = |base: u64, left: &[u64]| {
            assert_eq!(
                device.lock().unwrap().queue_notifiers().unwrap()[1].addr,
                Some(base + notify_offset(1))
            );
            for queue in 0..2u16 {
                assert!(
                    registered_at(&vm, base + notify_offset(queue)),
                    "queue {queue}: no ioeventfd at {base:#x}"
                );
                for &old in left {
                    assert!(
                        !registered_at(&vm, old + notify_offset(queue)),
                        "queue {queue}: ioeventfd left at {old:#x}"
                    );
                }
            }
        };
        let between = (old_base & !0xffff_ffff) | (new_base & 0xffff_ffff);
        follows(new_base, &[old_base, between]);

        // As Linux reassigns: decoding off, both halves, decoding on: one move.
        let last_base: u64 = 0x1_8000_0000;
        config_write(&pio, slot, 0x04, 0x0);
        config_write(&pio, slot, 0x10, last_base as u32 | 0x4);
        config_write(&pio, slot, 0x14, (last_base >> 32) as u32);
        config_write(&pio, slot, 0x04, 0x2);
        follows(last_base, &[old_base, between, new_base]);
        // And the BAR window moved on the MMIO bus: common configuration readable there.
        let mut num_queues = [0u8; 2];
        assert!(mmio.read(last_base + 0x12, &mut num_queues));
        assert_eq!(u16::from_le_bytes(num_queues), 2);
    }
}
