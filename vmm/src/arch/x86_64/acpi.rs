//! ACPI tables for a hardware-reduced PC: RSDP, XSDT, FADT, MADT and a DSDT with COM1 and `_S5_`.
//!
//! PCI comes later through the two extension points of [`write_tables`]: the host bridge device
//! (PNP0A08 with its `_CRS`) goes into `dsdt_devices`, and [`mcfg`] builds the table that goes into
//! `extra_tables`.

use acpi_tables::sdt::{GenericAddress, Sdt};
use acpi_tables::{aml, rsdp::Rsdp, Aml};
use devices::legacy::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, COM1_IRQ, COM1_PORT,
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

/// DSDT: `\_SB.COM1` (16550 at 0x3f8, IRQ 4), `\_S5_` for soft-off through the sleep register,
/// then `devices` (placed in `\_SB`).
pub fn dsdt(devices: &[&dyn Aml]) -> Sdt {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let resources = aml::ResourceTemplate::new(vec![&io, &irq]);
    let crs = aml::Name::new("_CRS".into(), &resources);
    let com1 = aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]);
    let mut sb_children: Vec<&dyn Aml> = vec![&com1];
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
