//! ACPI tables for a hardware-reduced PC: RSDP, XSDT, FADT, MADT and a DSDT with COM1 and `_S5_`.
//!
//! PCI goes through the two extension points of [`write_tables`]: the host bridge device
//! ([`PciHostBridge`], PNP0A08 with its `_CRS`) goes into `dsdt_devices`, and [`mcfg`] builds the
//! table that goes into `extra_tables`. [`write_platform_tables`] does both when given PCI windows.

use acpi_tables::sdt::{GenericAddress, Sdt};
use acpi_tables::{aml, rsdp::Rsdp, Aml, AmlSink};
use devices::legacy::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, COM1_IRQ, COM1_PORT, POWER_BUTTON_GSI, POWER_BUTTON_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {needed} bytes from {start:#x} but must end below {end:#x}: use fewer vCPUs")]
    TooLarge { needed: u64, start: u64, end: u64 },
    #[error("cannot write ACPI table {table} at {addr:#x}: {source} (guest RAM must cover the first MiB)")]
    Write {
        table: String,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

pub const OEM_ID: [u8; 6] = *b"PADDCK";
pub const OEM_TABLE_ID: [u8; 8] = *b"PADDOCK ";
pub const OEM_REVISION: u32 = 1;

/// FADT: revision 6, minor 5 (ACPI 6.5), 276 bytes.
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
const FADT_LEN: u32 = 276;
const FADT_IAPC_BOOT_ARCH: usize = 109;
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_MINOR_VERSION: usize = 131;
const FADT_X_DSDT: usize = 140;
const FADT_SLEEP_CONTROL_REG: usize = 244;
const FADT_SLEEP_STATUS_REG: usize = 256;
const FADT_HYPERVISOR_VENDOR: usize = 268;
/// FADT flags.
const FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IA-PC boot architecture flags: no VGA to probe, no CMOS RTC. LEGACY_DEVICES and 8042 stay 0.
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT structure types and flags.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_PCAT_COMPAT: u32 = 1;
const LOCAL_APIC_ENABLED: u32 = 1;
/// MPS INTI flags: active high (01), edge triggered (01 << 2).
const INTI_ACTIVE_HIGH_EDGE: u16 = 0x5;
/// ISA IRQ of the PIT. KVM's default routing sends GSI n to IOAPIC pin n (and PIC pin n for n < 16),
/// and its in-kernel PIT raises GSI 0: IRQ 0 is GSI 0, not the GSI 2 of a classic PC BIOS.
const PIT_ISA_IRQ: u8 = 0;
const PIT_GSI: u32 = 0;
/// The IOAPIC serves GSIs from 0.
const IOAPIC_ID: u8 = 0;
const IOAPIC_GSI_BASE: u32 = 0;
/// LINT1 of every processor (uid 0xff) is the NMI input.
const ALL_PROCESSORS: u8 = 0xff;
const NMI_LINT: u8 = 1;

fn header(signature: &[u8; 4], revision: u8) -> Sdt {
    Sdt::new(*signature, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION)
}

/// DSDT: `\_SB.COM1` (16550 at 0x3f8, IRQ 4), the power button with the event device that
/// presses it, `\_S5_` for soft-off through the sleep register, then `devices` (placed in `\_SB`).
pub fn dsdt(devices: &[&dyn Aml]) -> Sdt {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let resources = aml::ResourceTemplate::new(vec![&io, &irq]);
    let crs = aml::Name::new("_CRS".into(), &resources);
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    let power_button = PowerButton;
    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &power_button];
    sb_children.extend_from_slice(devices);
    let sb = aml::Scope::new("\\_SB_".into(), sb_children);

    let slp_typ = ACPI_S5_SLP_TYP;
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&slp_typ, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    );

    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    let mut table = header(b"DSDT", 2);
    table.append_slice(&body);
    table
}

/// A hardware-reduced platform has no fixed power button: `\_SB.PWRB` is a control-method power
/// button (PNP0C0C), and `\_SB.GED0`, a Generic Event Device (ACPI0013), owns the interrupt the
/// VMM raises to press it; its `_EVT` notifies PWRB, which Linux turns into KEY_POWER.
struct PowerButton;

impl Aml for PowerButton {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        aml::Device::new("PWRB".into(), vec![&hid, &uid]).to_aml_bytes(sink);

        let hid = aml::Name::new("_HID".into(), &"ACPI0013");
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let irq = aml::Interrupt::new(true, true, false, false, POWER_BUTTON_GSI);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));
        let button = aml::Path::new("\\_SB_.PWRB");
        let notify = aml::Notify::new(&button, &POWER_BUTTON_NOTIFY);
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
        aml::Device::new("GED0".into(), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(sink);
    }
}

/// FADT of a hardware-reduced platform: sleep control/status registers, reset register.
pub fn fadt(dsdt_addr: u64) -> Sdt {
    let mut table = Sdt::new(
        *b"FACP",
        FADT_LEN,
        FADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.write_u16(
        FADT_IAPC_BOOT_ARCH,
        BOOT_ARCH_VGA_NOT_PRESENT | BOOT_ARCH_CMOS_RTC_NOT_PRESENT,
    );
    table.write_u32(FADT_FLAGS, FLAG_HW_REDUCED_ACPI | FLAG_RESET_REG_SUP);
    table.write(
        FADT_RESET_REG,
        GenericAddress::io_port_address::<u8>(ACPI_RESET_PORT),
    );
    table.write_u8(FADT_RESET_VALUE, ACPI_RESET_VALUE);
    table.write_u8(FADT_MINOR_VERSION, FADT_MINOR_REVISION);
    table.write_u64(FADT_X_DSDT, dsdt_addr);
    table.write(
        FADT_SLEEP_CONTROL_REG,
        GenericAddress::io_port_address::<u8>(ACPI_SLEEP_CONTROL_PORT),
    );
    table.write(
        FADT_SLEEP_STATUS_REG,
        GenericAddress::io_port_address::<u8>(ACPI_SLEEP_STATUS_PORT),
    );
    table.write_u64(FADT_HYPERVISOR_VENDOR, u64::from_le_bytes(*b"PADDOCK\0"));
    table
}

/// MADT: one enabled local APIC per vCPU (APIC id = processor uid = vCPU index), the IOAPIC,
/// the PIT's interrupt source override and LINT1 as NMI.
pub fn madt(ncpus: u8) -> Sdt {
    let mut body = Vec::new();
    body.extend_from_slice(&(layout::LAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..ncpus {
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, id, id]);
        body.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&IOAPIC_GSI_BASE.to_le_bytes());
    body.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, PIT_ISA_IRQ]);
    body.extend_from_slice(&PIT_GSI.to_le_bytes());
    body.extend_from_slice(&INTI_ACTIVE_HIGH_EDGE.to_le_bytes());
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    body.extend_from_slice(&INTI_ACTIVE_HIGH_EDGE.to_le_bytes());
    body.push(NMI_LINT);

    let mut table = header(b"APIC", 6);
    table.append_slice(&body);
    table
}

/// MCFG: one ECAM window for PCI segment 0, buses `start_bus..=end_bus`.
pub fn mcfg(ecam_base: u64, start_bus: u8, end_bus: u8) -> Sdt {
    let mut body = vec![0u8; 8];
    body.extend_from_slice(&ecam_base.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&[start_bus, end_bus, 0, 0, 0, 0]);
    let mut table = header(b"MCFG", 1);
    table.append_slice(&body);
    table
}

/// The address ranges the PCI host bridge decodes, from the memory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// ECAM base for segment 0; buses `0..=last_bus` take 1 MiB each from there.
    pub ecam_base: u64,
    pub last_bus: u8,
    /// Port range (inclusive) for I/O BARs behind the bridge.
    pub io: (u16, u16),
    /// 32-bit MMIO window for BARs: base and size (ends at or below 4 GiB).
    pub mmio32: (u32, u32),
    /// 64-bit MMIO window above RAM: base and size (size 0: none).
    pub mmio64: (u64, u64),
}

impl PciWindows {
    /// The layout's windows: ECAM for all 256 buses, I/O ports 0x1000..=0xffff (above the legacy
    /// and ACPI ports), the 32-bit hole below ECAM, and `mmio64` above RAM.
    pub fn from_layout(mmio64: (u64, u64)) -> Self {
        Self {
            ecam_base: layout::PCI_ECAM_START,
            last_bus: ((layout::PCI_ECAM_SIZE >> 20) - 1) as u8,
            io: (0x1000, 0xffff),
            mmio32: (
                layout::PCI_MMIO32_START as u32,
                layout::PCI_MMIO32_SIZE as u32,
            ),
            mmio64,
        }
    }

    fn ecam_size(&self) -> u64 {
        (u64::from(self.last_bus) + 1) << 20
    }
}

/// `\_SB.PCI0`, the PCI Express host bridge of segment 0, plus `\_SB.PRES`, a motherboard
/// resource (PNP0C02) that reserves the ECAM window: Linux uses MMCONFIG only when the MCFG
/// region is reserved there or in the e820 map.
pub struct PciHostBridge(pub PciWindows);

impl Aml for PciHostBridge {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let w = &self.0;
        let bus_numbers = aml::AddressSpace::<u16>::new_bus_number(0, u16::from(w.last_bus));
        let config_ports = aml::IO::new(
            devices::pci::CONFIG_IO_PORT,
            devices::pci::CONFIG_IO_PORT,
            1,
            devices::pci::CONFIG_IO_PORT_SPAN as u8,
        );
        let io = aml::AddressSpace::<u16>::new_io(w.io.0, w.io.1, None);
        let mmio32 = aml::AddressSpace::<u32>::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            w.mmio32.0,
            w.mmio32.0 + (w.mmio32.1 - 1),
            None,
        );
        let mmio64 = aml::AddressSpace::<u64>::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            w.mmio64.0,
            w.mmio64.0 + w.mmio64.1.saturating_sub(1),
            None,
        );
        let mut resources: Vec<&dyn Aml> = vec![&bus_numbers, &config_ports, &io, &mmio32];
        if w.mmio64.1 > 0 {
            resources.push(&mmio64);
        }
        let crs_template = aml::ResourceTemplate::new(resources);
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
        let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
        let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
        let crs = aml::Name::new("_CRS".into(), &crs_template);
        aml::Device::new("PCI0".into(), vec![&hid, &cid, &uid, &seg, &bbn, &crs])
            .to_aml_bytes(sink);

        let ecam = aml::Memory32Fixed::new(false, w.ecam_base as u32, w.ecam_size() as u32);
        let reserved = aml::ResourceTemplate::new(vec![&ecam]);
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
        let uid = aml::Name::new("_UID".into(), &aml::ONE);
        let crs = aml::Name::new("_CRS".into(), &reserved);
        aml::Device::new("PRES".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

/// Writes the tables of a VM with PCI (`pci` given: host bridge in the DSDT and an MCFG) or
/// without (the DSDT and table set of [`write_tables`] with no extensions).
pub fn write_platform_tables(
    mem: &GuestMemoryMmap,
    ncpus: u8,
    pci: Option<&PciWindows>,
) -> Result<GuestAddress, AcpiError> {
    match pci {
        Some(windows) => {
            let bridge = PciHostBridge(*windows);
            let mcfg = mcfg(windows.ecam_base, 0, windows.last_bus);
            write_tables(mem, ncpus, &[&bridge], &[mcfg])
        }
        None => write_tables(mem, ncpus, &[], &[]),
    }
}

/// XSDT listing the tables at `addrs`.
pub fn xsdt(addrs: &[u64]) -> Sdt {
    let body: Vec<u8> = addrs.iter().flat_map(|a| a.to_le_bytes()).collect();
    let mut table = header(b"XSDT", 1);
    table.append_slice(&body);
    table
}

pub fn rsdp_bytes(xsdt_addr: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut bytes);
    bytes
}

/// Places tables one after another from `start`, 16-byte aligned.
struct Placer<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
    start: u64,
}

impl Placer<'_> {
    fn place(&mut self, name: &str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr + bytes.len() as u64;
        if end > layout::ACPI_TABLES_END {
            return Err(AcpiError::TooLarge {
                needed: end - self.start,
                start: self.start,
                end: layout::ACPI_TABLES_END,
            });
        }
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write {
                table: name.to_string(),
                addr,
                source,
            })?;
        self.next = end.next_multiple_of(16);
        Ok(addr)
    }
}

/// Writes all tables (RSDP at `layout::RSDP_START`) and returns the RSDP's address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    ncpus: u8,
    dsdt_devices: &[&dyn Aml],
    extra_tables: &[Sdt],
) -> Result<GuestAddress, AcpiError> {
    let rsdp_len = Rsdp::len() as u64;
    let mut placer = Placer {
        mem,
        next: (layout::RSDP_START + rsdp_len).next_multiple_of(16),
        start: layout::RSDP_START,
    };
    let dsdt_addr = placer.place("DSDT", dsdt(dsdt_devices).as_slice())?;
    let mut listed = vec![
        placer.place("FACP", fadt(dsdt_addr).as_slice())?,
        placer.place("APIC", madt(ncpus).as_slice())?,
    ];
    for table in extra_tables {
        let name = String::from_utf8_lossy(&table.as_slice()[..4]).into_owned();
        listed.push(placer.place(&name, table.as_slice())?);
    }
    let xsdt_addr = placer.place("XSDT", xsdt(&listed).as_slice())?;
    placer.next = layout::RSDP_START;
    placer.place("RSDP", &rsdp_bytes(xsdt_addr))?;
    Ok(GuestAddress(layout::RSDP_START))
}

#[cfg(test)]
mod pci_tests {
    use super::*;
    use std::process::Command;

    const WINDOWS: PciWindows = PciWindows {
        ecam_base: 0xe000_0000,
        last_bus: 255,
        io: (0x1000, 0xffff),
        mmio32: (0xc000_0000, 0x2000_0000),
        mmio64: (0x1_4000_0000, 0x40_0000_0000),
    };

    /// `iasl -d` of `table`, with whitespace squashed; fails on any iasl error.
    fn disassemble(name: &str, table: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let dat = dir.path().join(format!("{name}.dat"));
        std::fs::write(&dat, table).expect("write table");
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .current_dir(dir.path())
            .output()
            .expect("run iasl (install acpica-tools)");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && !log.contains("Error"), "{log}");
        let mut dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).expect("dsl");
        // Drop /* ... */ comments (iasl annotates ids and the header with them).
        while let Some(start) = dsl.find("/*") {
            let end = dsl[start..].find("*/").map_or(dsl.len(), |e| start + e + 2);
            dsl.replace_range(start..end, " ");
        }
        squash(&dsl)
    }

    /// One line, single spaces, no `//` comments, no space before `)`.
    fn squash(text: &str) -> String {
        text.lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .collect::<Vec<_>>()
            .join(" ")
            .replace(" )", ")")
    }

    fn tables_in(mem: &GuestMemoryMmap) -> Vec<(String, Vec<u8>)> {
        let read = |addr: u64| {
            let len: u32 = mem.read_obj(GuestAddress(addr + 4)).expect("length");
            let mut t = vec![0u8; len as usize];
            mem.read_slice(&mut t, GuestAddress(addr)).expect("table");
            t
        };
        let xsdt_addr: u64 = mem
            .read_obj(GuestAddress(layout::RSDP_START + 24))
            .expect("xsdt address");
        let xsdt = read(xsdt_addr);
        let mut tables: Vec<(String, Vec<u8>)> = xsdt[36..]
            .chunks_exact(8)
            .map(|e| read(u64::from_le_bytes(e.try_into().expect("8 bytes"))))
            .map(|t| (String::from_utf8_lossy(&t[..4]).into_owned(), t))
            .collect();
        let facp = tables[0].1.clone();
        let dsdt = read(u64::from_le_bytes(
            facp[FADT_X_DSDT..FADT_X_DSDT + 8].try_into().expect("8"),
        ));
        tables.push(("DSDT".into(), dsdt));
        tables
    }

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("guest memory")
    }

    #[test]
    fn host_bridge_and_mcfg_disassemble_with_the_windows() {
        let mem = guest_mem();
        write_platform_tables(&mem, 2, Some(&WINDOWS)).expect("tables");
        let tables = tables_in(&mem);
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["FACP", "APIC", "MCFG", "DSDT"]);

        let dsdt = disassemble("dsdt", &tables[3].1);
        for needle in [
            "Device (COM1)",
            "Device (PCI0) { Name (_HID, EisaId (\"PNP0A08\")) Name (_CID, EisaId (\"PNP0A03\")) \
             Name (_UID, Zero) Name (_SEG, Zero) Name (_BBN, Zero)",
            "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, 0x0000, \
             0x00FF, 0x0000, 0x0100,",
            "IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08, )",
            "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, \
             0x1000, 0xFFFF, 0x0000, 0xF000,",
            "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, \
             ReadWrite, 0x00000000, 0xC0000000, 0xDFFFFFFF, 0x00000000, 0x20000000,",
            "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, \
             ReadWrite, 0x0000000000000000, 0x0000000140000000, 0x000000413FFFFFFF, \
             0x0000000000000000, 0x0000004000000000,",
            "Device (PRES) { Name (_HID, EisaId (\"PNP0C02\"))",
            "Memory32Fixed (ReadOnly, 0xE0000000, 0x10000000, )",
        ] {
            assert!(
                dsdt.contains(&squash(needle)),
                "missing {needle:?} in:\n{dsdt}"
            );
        }

        let mcfg = disassemble("mcfg", &tables[2].1);
        for needle in [
            "Base Address : 00000000E0000000",
            "Segment Group Number : 0000",
            "Start Bus Number : 00",
            "End Bus Number : FF",
        ] {
            assert!(
                mcfg.contains(&squash(needle)),
                "missing {needle:?} in:\n{mcfg}"
            );
        }
    }

    #[test]
    fn without_pci_the_tables_stay_as_they_were() {
        let mem = guest_mem();
        write_platform_tables(&mem, 1, None).expect("tables");
        let tables = tables_in(&mem);
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["FACP", "APIC", "DSDT"]);
        assert_eq!(tables[2].1, dsdt(&[]).as_slice());
        let dsdt = disassemble("dsdt", &tables[2].1);
        assert!(!dsdt.contains("PCI0") && dsdt.contains("COM1"), "{dsdt}");
    }

    #[test]
    fn power_button_is_a_ged_event_that_notifies_pwrb() {
        let dsdt = disassemble("dsdt", dsdt(&[]).as_slice());
        for needle in [
            "Device (PWRB) { Name (_HID, EisaId (\"PNP0C0C\")) Name (_UID, Zero) }",
            "Device (GED0) { Name (_HID, \"ACPI0013\")",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
            "Method (_EVT, 1, Serialized) { Notify (\\_SB.PWRB, 0x80) }",
        ] {
            assert!(
                dsdt.contains(&squash(needle)),
                "missing {needle:?} in:\n{dsdt}"
            );
        }
    }

    #[test]
    fn no_64_bit_window_when_its_size_is_zero() {
        let windows = PciWindows {
            mmio64: (0, 0),
            ..PciWindows::from_layout((0, 0))
        };
        assert_eq!(windows.mmio32, (0xc000_0000, 0x2000_0000));
        let dsdt = disassemble("dsdt", dsdt(&[&PciHostBridge(windows)]).as_slice());
        assert!(dsdt.contains("Device (PCI0)"), "{dsdt}");
        assert!(!dsdt.contains("QWordMemory"), "{dsdt}");
    }
}
