use std::sync::atomic::AtomicUsize;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::interrupt::{InterruptEvent, RecordingInterrupts};
use crate::pci::config::CAPABILITIES_POINTER;
use crate::pci::msix::{CONTROL_ENABLE, MSIX_CAPABILITY_ID};
use crate::virtio::{ActivateError, F_RING_EVENT_IDX, STATUS_ACKNOWLEDGE, STATUS_DRIVER, TYPE_NET};

const F_MAC: u64 = 1 << 5;
const F_UNOFFERED: u64 = 1 << 6;

/// What the fake device saw at activation.
struct Seen {
    ready: Vec<bool>,
    vectors: Vec<u16>,
    event_idx: Vec<bool>,
    acked: u64,
    notify: Vec<EventFd>,
    interrupt: VirtioInterrupt,
}

#[derive(Default)]
struct Probe {
    activations: Mutex<Vec<Seen>>,
    resets: AtomicUsize,
}

struct FakeDevice {
    config: [u8; 8],
    probe: Arc<Probe>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 256, 64]
    }
    fn features(&self) -> u64 {
        feature(F_VERSION_1) | feature(F_RING_EVENT_IDX) | F_MAC
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let at = offset as usize;
        match self.config.get(at..at + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let at = offset as usize;
        if let Some(bytes) = self.config.get_mut(at..at + data.len()) {
            bytes.copy_from_slice(data);
        }
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let seen = Seen {
            ready: activation.queues.iter().map(|q| q.queue.ready()).collect(),
            vectors: activation.queues.iter().map(|q| q.vector).collect(),
            event_idx: activation
                .queues
                .iter()
                .map(|q| q.queue.event_idx_enabled())
                .collect(),
            acked: activation.acked_features,
            notify: activation.queues.into_iter().map(|q| q.notify).collect(),
            interrupt: activation.interrupt,
        };
        self.probe.activations.lock().unwrap().push(seen);
        Ok(())
    }
    fn reset(&mut self) {
        self.probe.resets.fetch_add(1, Ordering::SeqCst);
    }
}

struct Fixture {
    dev: VirtioPciDevice,
    probe: Arc<Probe>,
    rec: Arc<RecordingInterrupts>,
    mem: GuestMemoryMmap,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let probe = Arc::new(Probe::default());
    let rec = Arc::new(RecordingInterrupts::new());
    let dev = VirtioPciDevice::new(
        Box::new(FakeDevice {
            config: [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0],
            probe: probe.clone(),
        }),
        mem.clone(),
        rec.clone(),
    )
    .unwrap();
    Fixture {
        dev,
        probe,
        rec,
        mem,
    }
}

fn cfg_read(dev: &mut VirtioPciDevice, offset: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(offset, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn bar_read(dev: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.read_bar(BAR_INDEX, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn bar_write(dev: &mut VirtioPciDevice, offset: u64, len: usize, value: u64) {
    dev.write_bar(BAR_INDEX, offset, &value.to_le_bytes()[..len]);
}

fn status(dev: &mut VirtioPciDevice) -> u8 {
    bar_read(dev, DEVICE_STATUS, 1) as u8
}

fn set_status(dev: &mut VirtioPciDevice, value: u8) {
    bar_write(dev, DEVICE_STATUS, 1, u64::from(value));
}

/// A vendor capability: cfg_type, bar, offset, length, notify multiplier (0 when absent).
type VirtioCap = (u8, u8, u32, u32, u32);

/// The vendor capabilities and the MSI-X capability offset, walking the list.
fn virtio_caps(dev: &mut VirtioPciDevice) -> (Vec<VirtioCap>, Option<u16>) {
    let mut caps = Vec::new();
    let mut msix = None;
    let mut at = cfg_read(dev, CAPABILITIES_POINTER, 1) as u16;
    while at != 0 {
        let id = cfg_read(dev, at, 1) as u8;
        if id == CAP_VENDOR {
            let cap_len = cfg_read(dev, at + 2, 1);
            let extra = if cap_len >= 20 {
                cfg_read(dev, at + 16, 4)
            } else {
                0
            };
            caps.push((
                cfg_read(dev, at + 3, 1) as u8,
                cfg_read(dev, at + 4, 1) as u8,
                cfg_read(dev, at + 8, 4),
                cfg_read(dev, at + 12, 4),
                extra,
            ));
        } else if id == MSIX_CAPABILITY_ID {
            msix = Some(at);
        }
        at = cfg_read(dev, at + 1, 1) as u16;
    }
    (caps, msix)
}

#[test]
fn identity_and_capabilities() {
    let mut f = fixture();
    assert_eq!(cfg_read(&mut f.dev, 0, 4), 0x1041_1af4);
    assert_eq!(
        cfg_read(&mut f.dev, 8, 4),
        0x0200_0001,
        "class net, revision 1"
    );
    assert_eq!(cfg_read(&mut f.dev, 0x2c, 4), 0x0041_1af4);
    let (caps, msix) = virtio_caps(&mut f.dev);
    assert_eq!(
        caps,
        vec![
            (CFG_TYPE_COMMON, 0, 0, 0x38, 0),
            (CFG_TYPE_ISR, 0, 0x1000, 4, 0),
            (CFG_TYPE_DEVICE, 0, 0x2000, 0x1000, 0),
            (CFG_TYPE_NOTIFY, 0, 0x3000, 12, 4),
        ]
    );
    let msix = msix.expect("MSI-X capability");
    assert_eq!(cfg_read(&mut f.dev, msix + 2, 2), 3, "4 vectors");
    assert_eq!(cfg_read(&mut f.dev, msix + 4, 4), 0x4000);
    assert_eq!(cfg_read(&mut f.dev, msix + 8, 4), 0x8000);
    // BAR 0 is a 64-bit memory BAR of 64 KiB.
    f.dev.write_config(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(cfg_read(&mut f.dev, 0x10, 4), 0xffff_0004);
    assert_eq!(bar_read(&mut f.dev, NUM_QUEUES, 2), 3);
}

/// Linux's virtio_pci_modern probe and virtio_dev_probe, in order.
fn driver_bring_up(f: &mut Fixture, queues: &[&MockSplitQueue<GuestMemoryMmap>]) {
    let dev = &mut f.dev;
    set_status(dev, 0);
    assert_eq!(status(dev), 0);
    set_status(dev, STATUS_ACKNOWLEDGE);
    set_status(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    bar_write(dev, DEVICE_FEATURE_SELECT, 4, 0);
    let low = bar_read(dev, DEVICE_FEATURE, 4);
    bar_write(dev, DEVICE_FEATURE_SELECT, 4, 1);
    let high = bar_read(dev, DEVICE_FEATURE, 4);
    let offered = low | (high << 32);
    assert_eq!(offered, (1 << 32) | (1 << 29) | F_MAC);
    for (select, word) in [(0u64, offered & 0xffff_ffff), (1, offered >> 32)] {
        bar_write(dev, DRIVER_FEATURE_SELECT, 4, select);
        bar_write(dev, DRIVER_FEATURE, 4, word);
    }
    set_status(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_ne!(status(dev) & STATUS_FEATURES_OK, 0, "features accepted");

    // MSI-X on, every vector unmasked with a message.
    let (_, msix) = virtio_caps(dev);
    let msix = msix.unwrap();
    dev.write_config(msix + 2, &CONTROL_ENABLE.to_le_bytes());
    for v in 0..4u64 {
        let entry = u64::from(MSIX_TABLE_OFFSET) + v * 16;
        bar_write(dev, entry, 8, 0xfee0_0000);
        bar_write(dev, entry + 8, 4, 0x40 + v);
        bar_write(dev, entry + 12, 4, 0);
    }
    bar_write(dev, CONFIG_MSIX_VECTOR, 2, 3);
    assert_eq!(bar_read(dev, CONFIG_MSIX_VECTOR, 2), 3);

    for (i, vq) in queues.iter().enumerate() {
        bar_write(dev, QUEUE_SELECT, 2, i as u64);
        assert_eq!(bar_read(dev, QUEUE_ENABLE, 2), 0);
        assert_eq!(bar_read(dev, QUEUE_NOTIFY_OFF, 2), i as u64);
        let max = bar_read(dev, QUEUE_SIZE, 2);
        assert!(max >= 16);
        bar_write(dev, QUEUE_SIZE, 2, 16);
        bar_write(dev, QUEUE_MSIX_VECTOR, 2, i as u64);
        assert_eq!(bar_read(dev, QUEUE_MSIX_VECTOR, 2), i as u64);
        // Linux writes the 64-bit addresses as two dwords.
        for (field, addr) in [
            (QUEUE_DESC, vq.desc_table_addr().0),
            (QUEUE_DRIVER, vq.avail_addr().0),
            (QUEUE_DEVICE, vq.used_addr().0),
        ] {
            bar_write(dev, field, 4, addr & 0xffff_ffff);
            bar_write(dev, field + 4, 4, addr >> 32);
            assert_eq!(bar_read(dev, field, 8), addr);
        }
        bar_write(dev, QUEUE_ENABLE, 2, 1);
        assert_eq!(bar_read(dev, QUEUE_ENABLE, 2), 1);
    }
    set_status(
        dev,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
}

#[test]
fn driver_sequence_activates_queues_and_delivers_interrupts() {
    let mut f = fixture();
    let mem = f.mem.clone();
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
    // Queue 2 (the control queue of a net device) is left disabled by this driver.
    driver_bring_up(&mut f, &[&q0, &q1]);
    assert_eq!(status(&mut f.dev) & STATUS_DRIVER_OK, STATUS_DRIVER_OK);

    let seen = f.probe.activations.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.ready, vec![true, true, false]);
    assert_eq!(seen.vectors, vec![0, 1, NO_VECTOR]);
    assert_eq!(seen.event_idx, vec![true, true, false]);
    assert_eq!(seen.acked, (1 << 32) | (1 << 29) | F_MAC);

    // A notify as a plain MMIO write reaches the queue's eventfd.
    bar_write(&mut f.dev, notify_offset(1), 2, 1);
    assert_eq!(seen.notify[1].read().unwrap(), 1);
    assert!(seen.notify[0].read().is_err(), "queue 0 not notified");

    // Used-buffer interrupt on queue 1's vector, ISR bit 0, read-to-clear.
    f.rec.take();
    seen.interrupt.signal_queue(1).unwrap();
    assert_eq!(f.rec.take(), vec![InterruptEvent::Trigger { vector: 1 }]);
    assert_eq!(bar_read(&mut f.dev, ISR_OFFSET, 1), 1);
    assert_eq!(bar_read(&mut f.dev, ISR_OFFSET, 1), 0);

    // Config change: generation moves, config vector fires.
    let generation = bar_read(&mut f.dev, CONFIG_GENERATION, 1);
    seen.interrupt.signal_config().unwrap();
    assert_eq!(f.rec.take(), vec![InterruptEvent::Trigger { vector: 3 }]);
    assert_eq!(bar_read(&mut f.dev, CONFIG_GENERATION, 1), generation + 1);
    assert_eq!(bar_read(&mut f.dev, ISR_OFFSET, 1), 2);

    // Device config through the BAR.
    assert_eq!(bar_read(&mut f.dev, DEVICE_CONFIG_OFFSET, 4), 0x1200_5452);
    assert_eq!(bar_read(&mut f.dev, DEVICE_CONFIG_OFFSET + 6, 2), 1);

    // Queue registers are frozen after DRIVER_OK.
    bar_write(&mut f.dev, QUEUE_SELECT, 2, 0);
    bar_write(&mut f.dev, QUEUE_SIZE, 2, 8);
    assert_eq!(bar_read(&mut f.dev, QUEUE_SIZE, 2), 16);
}

#[test]
fn reset_stops_the_device_and_clears_the_transport() {
    let mut f = fixture();
    let mem = f.mem.clone();
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    driver_bring_up(&mut f, &[&q0]);
    assert_eq!(f.probe.resets.load(Ordering::SeqCst), 0);
    set_status(&mut f.dev, 0);
    assert_eq!(f.probe.resets.load(Ordering::SeqCst), 1);
    assert_eq!(status(&mut f.dev), 0);
    bar_write(&mut f.dev, QUEUE_SELECT, 2, 0);
    assert_eq!(bar_read(&mut f.dev, QUEUE_ENABLE, 2), 0);
    assert_eq!(bar_read(&mut f.dev, QUEUE_SIZE, 2), 256);
    assert_eq!(
        bar_read(&mut f.dev, QUEUE_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    assert_eq!(bar_read(&mut f.dev, QUEUE_DESC, 8), 0);
    assert_eq!(
        bar_read(&mut f.dev, CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    bar_write(&mut f.dev, DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(bar_read(&mut f.dev, DRIVER_FEATURE, 4), 0);
    // A second bring-up activates again.
    driver_bring_up(&mut f, &[&q0]);
    assert_eq!(f.probe.activations.lock().unwrap().len(), 2);
    // Reset of a device that never activated does not call the device.
    set_status(&mut f.dev, 0);
    set_status(&mut f.dev, 0);
    assert_eq!(f.probe.resets.load(Ordering::SeqCst), 2);
}

#[test]
fn stop_resets_an_active_device_once() {
    let mut f = fixture();
    f.dev.stop();
    assert_eq!(f.probe.resets.load(Ordering::SeqCst), 0, "never activated");
    let mem = f.mem.clone();
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    driver_bring_up(&mut f, &[&q0]);
    f.dev.stop();
    f.dev.stop();
    assert_eq!(f.probe.resets.load(Ordering::SeqCst), 1);
}

#[test]
fn features_ok_needs_version_1_and_offered_bits() {
    let mut f = fixture();
    for bad in [F_MAC, feature(F_VERSION_1) | F_UNOFFERED] {
        set_status(&mut f.dev, 0);
        set_status(&mut f.dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        bar_write(&mut f.dev, DRIVER_FEATURE_SELECT, 4, 0);
        bar_write(&mut f.dev, DRIVER_FEATURE, 4, bad & 0xffff_ffff);
        bar_write(&mut f.dev, DRIVER_FEATURE_SELECT, 4, 1);
        bar_write(&mut f.dev, DRIVER_FEATURE, 4, bad >> 32);
        set_status(
            &mut f.dev,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(
            status(&mut f.dev),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            "{bad:#x}"
        );
        // DRIVER_OK without FEATURES_OK does not activate.
        set_status(
            &mut f.dev,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert!(f.probe.activations.lock().unwrap().is_empty());
    }
    // Features are frozen once FEATURES_OK is set.
    set_status(&mut f.dev, 0);
    bar_write(&mut f.dev, DRIVER_FEATURE_SELECT, 4, 1);
    bar_write(&mut f.dev, DRIVER_FEATURE, 4, 1);
    set_status(&mut f.dev, STATUS_FEATURES_OK);
    assert_eq!(status(&mut f.dev), STATUS_FEATURES_OK);
    bar_write(&mut f.dev, DRIVER_FEATURE, 4, 0);
    assert_eq!(bar_read(&mut f.dev, DRIVER_FEATURE, 4), 1);
    // Clearing a bit without a reset is ignored.
    set_status(&mut f.dev, STATUS_ACKNOWLEDGE);
    assert_eq!(status(&mut f.dev), STATUS_FEATURES_OK);
}

#[test]
fn rings_outside_ram_set_needs_reset() {
    let mut f = fixture();
    let mem = f.mem.clone();
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    driver_bring_up(&mut f, &[&q0]);
    set_status(&mut f.dev, 0);
    f.rec.take();
    // Same bring-up, then move queue 0's used ring outside guest RAM before DRIVER_OK.
    let dev = &mut f.dev;
    set_status(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    bar_write(dev, DRIVER_FEATURE_SELECT, 4, 1);
    bar_write(dev, DRIVER_FEATURE, 4, 1);
    set_status(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    bar_write(dev, CONFIG_MSIX_VECTOR, 2, 3);
    bar_write(dev, QUEUE_SELECT, 2, 0);
    bar_write(dev, QUEUE_SIZE, 2, 16);
    bar_write(dev, QUEUE_DESC, 8, 0x1_0000);
    bar_write(dev, QUEUE_DRIVER, 8, 0x1_1000);
    bar_write(dev, QUEUE_DEVICE, 8, 0x8000_0000);
    bar_write(dev, QUEUE_ENABLE, 2, 1);
    set_status(
        dev,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(
        f.probe.activations.lock().unwrap().len(),
        1,
        "not activated again"
    );
    assert_ne!(status(&mut f.dev) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(f.rec.triggered(), vec![3], "config interrupt");
    set_status(&mut f.dev, 0);
    assert_eq!(status(&mut f.dev), 0);
}

#[test]
fn bad_vectors_read_back_as_no_vector_and_notifiers_follow_the_bar() {
    let mut f = fixture();
    bar_write(&mut f.dev, CONFIG_MSIX_VECTOR, 2, 4);
    assert_eq!(
        bar_read(&mut f.dev, CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
    bar_write(&mut f.dev, QUEUE_SELECT, 2, 7);
    assert_eq!(bar_read(&mut f.dev, QUEUE_SIZE, 2), 0, "no queue 7");

    let notifiers = f.dev.queue_notifiers().unwrap();
    assert_eq!(notifiers.len(), 3);
    assert!(notifiers.iter().all(|n| n.addr.is_none()));
    f.dev
        .config_mut()
        .place_bar(BAR_INDEX, 0x2_0000_0000)
        .unwrap();
    let notifiers = f.dev.queue_notifiers().unwrap();
    assert_eq!(
        notifiers.iter().map(|n| n.addr).collect::<Vec<_>>(),
        vec![
            Some(0x2_0000_3000),
            Some(0x2_0000_3004),
            Some(0x2_0000_3008)
        ]
    );
    // The eventfd given to the VMM is the one the MMIO path writes.
    bar_write(&mut f.dev, notify_offset(2), 2, 2);
    assert_eq!(notifiers[2].event.read().unwrap(), 1);
}
