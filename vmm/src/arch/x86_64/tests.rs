//! Tests of the boot path against in-memory guest RAM, synthetic kernel images, `iasl -d` for the
//! ACPI tables, and /dev/kvm for the vCPU state.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use linux_loader::loader::bootparam::{boot_params as ZeroPage, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MIB: u64 = 1 << 20;

fn guest_mem(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&ram_regions(size)).expect("map guest memory")
}

fn temp_file(bytes: &[u8]) -> std::fs::File {
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file
}

/// A bzImage with one setup sector and `payload` as its protected-mode code.
fn bzimage(payload: &[u8], init_size: u32) -> Vec<u8> {
    let hdr = setup_header {
        setup_sects: 1,
        boot_flag: 0xaa55,
        header: boot_params::HDRS_MAGIC,
        version: 0x020f,
        loadflags: boot_params::LOADED_HIGH,
        code32_start: 0x10_0000,
        initrd_addr_max: 0x7fff_ffff,
        kernel_alignment: 0x20_0000,
        relocatable_kernel: 1,
        xloadflags: 1,
        cmdline_size: 2047,
        pref_address: 0x100_0000,
        init_size,
        ..Default::default()
    };
    let mut image = vec![0u8; 1024];
    image[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
    image.extend_from_slice(payload);
    image
}

/// A minimal ELF64 x86_64 vmlinux: one PT_LOAD of `code` at 1 MiB, entry at 1 MiB, and when
/// `pvh_entry` is given a PT_NOTE with the Xen PHYS32_ENTRY note.
fn vmlinux(code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
    let mut note = Vec::new();
    if let Some(entry) = pvh_entry {
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
    }
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let code_off = 64 + 56 * u64::from(phnum);
    let note_off = code_off + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&0x10_0000u64.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, phnum, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |elf: &mut Vec<u8>, p_type: u32, off: u64, addr: u64, size: u64| {
        elf.extend_from_slice(&p_type.to_le_bytes());
        elf.extend_from_slice(&5u32.to_le_bytes());
        for v in [off, addr, addr, size, size, 0x1000] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut elf, 1, code_off, 0x10_0000, code.len() as u64);
    if pvh_entry.is_some() {
        phdr(&mut elf, 4, note_off, 0, note.len() as u64);
    }
    elf.extend_from_slice(code);
    elf.extend_from_slice(&note);
    elf
}

fn read_zero_page(mem: &GuestMemoryMmap, addr: GuestAddress) -> ZeroPage {
    mem.read_obj(addr).expect("read zero page")
}

fn read_cstr(mem: &GuestMemoryMmap, addr: u64) -> String {
    let mut buf = vec![0u8; 4096];
    mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
    let end = buf.iter().position(|&b| b == 0).expect("NUL");
    String::from_utf8(buf[..end].to_vec()).expect("utf8")
}

#[test]
fn ram_regions_split_at_the_hole() {
    assert_eq!(
        ram_regions(512 * MIB),
        vec![(GuestAddress(0), (512 * MIB) as usize)]
    );
    assert_eq!(
        ram_regions(layout::MMIO32_START),
        vec![(GuestAddress(0), layout::MMIO32_START as usize)]
    );
    assert_eq!(
        ram_regions(4096 * MIB),
        vec![
            (GuestAddress(0), layout::MMIO32_START as usize),
            (GuestAddress(layout::HIGH_RAM_START), (1024 * MIB) as usize)
        ]
    );
}

#[test]
fn bzimage_gets_zero_page_cmdline_initramfs_and_e820() {
    let mem = guest_mem(64 * MIB);
    let payload: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut kernel = temp_file(&bzimage(&payload, 4 * MIB as u32));
    let initrd_bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 13) as u8).collect();
    let mut initrd = temp_file(&initrd_bytes);
    let cmdline = "console=ttyS0 reboot=k panic=1 quiet";

    let entry = load_linux(&mem, &mut kernel, Some(&mut initrd), cmdline, 2).expect("load");
    assert_eq!(
        entry,
        EntryPoint::Linux64 {
            rip: GuestAddress(0x10_0200),
            boot_params: GuestAddress(layout::ZERO_PAGE_START)
        }
    );
    let mut loaded = vec![0u8; payload.len()];
    mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
        .expect("read kernel");
    assert_eq!(loaded, payload);

    let params = read_zero_page(&mem, GuestAddress(layout::ZERO_PAGE_START));
    let hdr = params.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, boot_params::HDRS_MAGIC);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(
        hdr.loadflags & boot_params::CAN_USE_HEAP,
        boot_params::CAN_USE_HEAP
    );
    assert_eq!({ hdr.heap_end_ptr }, boot_params::HEAP_END);
    assert_eq!({ hdr.cmd_line_ptr } as u64, layout::CMDLINE_START);
    assert_eq!(read_cstr(&mem, layout::CMDLINE_START), cmdline);
    assert_eq!({ params.acpi_rsdp_addr }, layout::RSDP_START);

    let (image, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!(size, initrd_bytes.len() as u64);
    assert_eq!(image % 4096, 0);
    assert!(
        image + size <= 64 * MIB && image + size > 64 * MIB - 4096,
        "{image:#x}"
    );
    // Above the decompressor's room: pref_address + init_size.
    assert!(image >= 0x100_0000 + 4 * MIB);
    let mut copied = vec![0u8; initrd_bytes.len()];
    mem.read_slice(&mut copied, GuestAddress(image))
        .expect("read initrd");
    assert_eq!(copied, initrd_bytes);

    let e820: Vec<_> = params.e820_table[..params.e820_entries as usize]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(e820[0], (0, layout::EBDA_START, e820::E820_RAM));
    assert_eq!(
        e820[1],
        (
            layout::EBDA_START,
            layout::HIGH_MEMORY_START - layout::EBDA_START,
            e820::E820_RESERVED
        )
    );
    assert_eq!(e820[2], (MIB, 63 * MIB, e820::E820_RAM));
    assert!(e820[3..].iter().all(|e| e.2 == e820::E820_RESERVED));

    let mut rsdp = [0u8; 8];
    mem.read_slice(&mut rsdp, GuestAddress(0xe_0000))
        .expect("read");
    assert_eq!(&rsdp, b"RSD PTR ");
}

#[test]
fn elf_with_pvh_note_gets_start_info() {
    let mem = guest_mem(64 * MIB);
    let mut kernel = temp_file(&vmlinux(&[0x90; 64], Some(0x10_0010)));
    let mut initrd = temp_file(&[7u8; 5000]);
    let entry = load_linux(&mem, &mut kernel, Some(&mut initrd), "quiet", 1).expect("load");
    assert_eq!(
        entry,
        EntryPoint::Pvh {
            eip: GuestAddress(0x10_0010),
            start_info: GuestAddress(layout::PVH_START_INFO)
        }
    );
    let info: hvm_start_info = mem
        .read_obj(GuestAddress(layout::PVH_START_INFO))
        .expect("read");
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(info.rsdp_paddr, layout::RSDP_START);
    assert_eq!(read_cstr(&mem, info.cmdline_paddr), "quiet");
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem
        .read_obj(GuestAddress(info.modlist_paddr))
        .expect("read");
    assert_eq!(module.size, 5000);
    assert_eq!(module.paddr % 4096, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(module.paddr + 4999))
            .expect("read"),
        7
    );
    assert!(info.memmap_entries >= 3);
    let first: hvm_memmap_table_entry =
        mem.read_obj(GuestAddress(info.memmap_paddr)).expect("read");
    assert_eq!(
        (first.addr, first.size, first.type_),
        (0, layout::EBDA_START, e820::E820_RAM)
    );
}

#[test]
fn elf_without_pvh_note_gets_a_built_setup_header() {
    let mem = guest_mem(32 * MIB);
    let mut kernel = temp_file(&vmlinux(&[0xf4; 16], None));
    let entry = load_linux(&mem, &mut kernel, None, "console=ttyS0", 1).expect("load");
    let EntryPoint::Linux64 { rip, boot_params } = entry else {
        panic!("expected the 64-bit entry, got {entry:?}");
    };
    assert_eq!(rip, GuestAddress(0x10_0000));
    let params = read_zero_page(&mem, boot_params);
    let hdr = params.hdr;
    assert_eq!(
        ({ hdr.boot_flag }, { hdr.header }, hdr.type_of_loader),
        (0xaa55, 0x5372_6448, 0xff)
    );
    assert_eq!({ hdr.cmdline_size }, boot_params::ELF_CMDLINE_SIZE);
    assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x10_0000)).expect("read"),
        0xf4
    );
}

#[test]
fn rejects_what_is_not_an_x86_64_kernel() {
    let mem = guest_mem(32 * MIB);
    let mut junk = temp_file(&[0x55; 4096]);
    let err = load_linux(&mem, &mut junk, None, "", 1).expect_err("junk");
    assert!(
        matches!(err, BootError::Kernel(KernelError::NotAKernel)),
        "{err}"
    );

    let mut arm = vmlinux(&[0; 16], None);
    arm[0x12] = 183; // EM_AARCH64
    let err = load_linux(&mem, &mut temp_file(&arm), None, "", 1).expect_err("aarch64");
    assert!(err.to_string().contains("not x86_64"), "{err}");

    let mut elf32 = vmlinux(&[0; 16], None);
    elf32[4] = 1; // ELFCLASS32
    let err = load_linux(&mem, &mut temp_file(&elf32), None, "", 1).expect_err("32-bit");
    assert!(err.to_string().contains("32-bit"), "{err}");
}

/// The check `Vm::create` makes before it creates anything: the same verdicts as loading.
#[test]
fn identify_tells_kernels_from_other_files_without_guest_memory() {
    use super::kernel::identify;
    identify(&mut temp_file(&bzimage(&[0; 512], 4 * MIB as u32))).expect("bzImage");
    identify(&mut temp_file(&vmlinux(&[0xf4], None))).expect("vmlinux");
    let err = identify(&mut temp_file(b"root:x:0:0:root:/root:/bin/bash\n")).expect_err("text");
    assert!(matches!(err, KernelError::NotAKernel), "{err}");
    let mut arm = vmlinux(&[0; 16], None);
    arm[0x12] = 183; // EM_AARCH64
    let err = identify(&mut temp_file(&arm)).expect_err("aarch64");
    assert!(err.to_string().contains("not x86_64"), "{err}");
    let mut old = bzimage(&[0; 512], 4 * MIB as u32);
    old[0x1f1 + std::mem::offset_of!(setup_header, xloadflags)] = 0;
    let err = identify(&mut temp_file(&old)).expect_err("no 64-bit entry");
    assert!(matches!(err, KernelError::No64BitEntry { .. }), "{err}");
}

#[test]
fn reports_what_does_not_fit() {
    let mem = guest_mem(32 * MIB);
    let mut kernel = temp_file(&bzimage(&[0; 512], 64 * MIB as u32));
    let err = load_linux(&mem, &mut kernel, None, "", 1).expect_err("too big");
    assert!(
        matches!(err, BootError::Kernel(KernelError::DoesNotFit { .. })),
        "{err}"
    );

    let mut kernel = temp_file(&bzimage(&[0; 512], 4 * MIB as u32));
    let mut initrd = temp_file(&vec![0u8; 20 * MIB as usize]);
    let err = load_linux(&mem, &mut kernel, Some(&mut initrd), "", 1).expect_err("initrd");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{} bytes", 20 * MIB)), "{msg}");
    assert!(
        msg.contains(&format!("only {} bytes", 32 * MIB - 0x140_0000)),
        "{msg}"
    );

    let long = "x".repeat(2048);
    let err = load_linux(&mem, &mut kernel, None, &long, 1).expect_err("cmdline");
    assert!(
        matches!(
            err,
            BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ),
        "{err}"
    );

    let err = load_linux(&mem, &mut kernel, None, "", 0).expect_err("no cpus");
    assert!(matches!(err, BootError::NoCpus(0)), "{err}");
}

/// Disassembles `table` with `iasl -d` and returns the .dsl text; fails on any iasl error.
fn iasl_disassemble(dir: &Path, name: &str, table: &[u8]) -> String {
    assert_eq!(
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "{name} checksum"
    );
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, table).expect("write table");
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&dat)
        .current_dir(dir)
        .output()
        .expect("run iasl (install acpica-tools)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "iasl -d {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("Error") && !stderr.contains("Error"),
        "{stdout}\n{stderr}"
    );
    std::fs::read_to_string(dir.join(format!("{name}.dsl"))).expect("read .dsl")
}

fn assert_has(dsl: &str, needles: &[&str]) {
    // Drop the "[074h 0116   1]" offset columns of data-table listings and squash whitespace.
    let squash = |text: &str| {
        text.lines()
            .map(|line| {
                let line = line.trim_start();
                match (line.starts_with('['), line.find(']')) {
                    (true, Some(end)) if line[..end].contains("h ") => &line[end + 1..],
                    _ => line,
                }
            })
            .flat_map(str::split_whitespace)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let text = squash(dsl);
    for needle in needles {
        assert!(
            text.contains(&squash(needle)),
            "missing {needle:?} in:\n{dsl}"
        );
    }
}

fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let len: u32 = mem
        .read_obj(GuestAddress(addr + 4))
        .expect("read table length");
    let mut table = vec![0u8; len as usize];
    mem.read_slice(&mut table, GuestAddress(addr))
        .expect("read table");
    table
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Follows RSDP -> XSDT -> FACP/APIC/MCFG -> DSDT in guest memory, as a guest's ACPI code does.
#[test]
fn acpi_tables_in_guest_memory_disassemble_with_the_fields_set() {
    let mem = guest_mem(64 * MIB);
    let mcfg = acpi::mcfg(layout::PCI_ECAM_START, 0, 255);
    let rsdp_addr = acpi::write_tables(&mem, 3, &[], &[mcfg]).expect("write tables");
    assert_eq!(rsdp_addr, GuestAddress(0xe_0000));

    let mut rsdp = [0u8; 36];
    mem.read_slice(&mut rsdp, rsdp_addr).expect("read rsdp");
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(&rsdp[9..15], b"PADDCK");

    let dir = tempfile::tempdir().expect("temp dir");
    let xsdt = read_table(&mem, u64_at(&rsdp, 24));
    let xsdt_dsl = iasl_disassemble(dir.path(), "xsdt", &xsdt);
    assert_has(&xsdt_dsl, &["Signature : \"XSDT\"", "ACPI Table Address 2"]);
    let mut tables = std::collections::HashMap::new();
    for entry in xsdt[36..].chunks_exact(8) {
        let table = read_table(&mem, u64_at(entry, 0));
        let signature = String::from_utf8(table[..4].to_vec()).expect("signature");
        tables.insert(signature, table);
    }

    let facp = &tables["FACP"];
    let facp_dsl = iasl_disassemble(dir.path(), "facp", facp);
    assert_has(
        &facp_dsl,
        &[
            "Revision : 06",
            "FADT Minor Revision : 05",
            "VGA Not Present (V4) : 1",
            "8042 Present on ports 60/64 (V2) : 0",
            "Legacy Devices Supported (V2) : 0",
            "CMOS RTC Not Present (V5) : 1",
            "Reset Register Supported (V2) : 1",
            "Hardware Reduced (V5) : 1",
            "Space ID : 01 [SystemIO] Bit Width : 08 Bit Offset : 00 Encoded Access Width : 01 \
             [Byte Access:8] Address : 0000000000000602 Value to cause reset : 01",
            "Sleep Control Register : [Generic Address Structure] Space ID : 01 \
             [SystemIO] Bit Width : 08 Bit Offset : 00 \
             Encoded Access Width : 01 [Byte Access:8] \
             Address : 0000000000000600",
            "Sleep Status Register : [Generic Address Structure] Space ID : 01 \
             [SystemIO] Bit Width : 08 Bit Offset : 00 \
             Encoded Access Width : 01 [Byte Access:8] \
             Address : 0000000000000601",
        ],
    );
    assert_eq!(devices::legacy::ACPI_SLEEP_CONTROL_PORT, 0x600);
    assert_eq!(devices::legacy::ACPI_SLEEP_STATUS_PORT, 0x601);
    assert_eq!(devices::legacy::ACPI_RESET_PORT, 0x602);

    let dsdt = read_table(&mem, u64_at(facp, 140));
    let dsdt_dsl = iasl_disassemble(dir.path(), "dsdt", &dsdt);
    assert_has(
        &dsdt_dsl,
        &[
            "DefinitionBlock (\"\", \"DSDT\", 2, \"PADDCK\", \"PADDOCK \", 0x00000001)",
            "Device (COM1)",
            "Name (_HID, EisaId (\"PNP0501\")",
            "IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x01, \
             // Alignment 0x08, // Length )",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
            &format!(
                "Name (_S5, Package (0x04) // _S5_: S5 System State {{ 0x{:02X}, Zero, Zero, Zero }})",
                devices::legacy::ACPI_S5_SLP_TYP
            ),
        ],
    );

    let madt_dsl = iasl_disassemble(dir.path(), "apic", &tables["APIC"]);
    assert_has(
        &madt_dsl,
        &[
            "Local Apic Address : FEE00000",
            "Processor ID : 02 Local Apic ID : 02 \
             Flags (decoded below) : 00000001 Processor Enabled : 1",
            "I/O Apic ID : 00 Reserved : 00 Address : FEC00000 \
             Interrupt : 00000000",
            "[Interrupt Source Override] Length : 0A Bus : 00 \
             Source : 00 Interrupt : 00000000",
            "[Local APIC NMI]",
            "Interrupt Input LINT : 01",
        ],
    );
    assert_eq!(madt_dsl.matches("[Processor Local APIC]").count(), 3);

    let mcfg_dsl = iasl_disassemble(dir.path(), "mcfg", &tables["MCFG"]);
    assert_has(
        &mcfg_dsl,
        &[
            "Base Address : 00000000E0000000",
            "Start Bus Number : 00",
            "End Bus Number : FF",
        ],
    );
}

#[test]
fn acpi_tables_that_do_not_fit_are_refused() {
    let mem = guest_mem(64 * MIB);
    let huge = acpi::xsdt(&vec![0u64; 20_000]);
    let err = acpi::write_tables(&mem, 1, &[], &[huge]).expect_err("too large");
    assert!(matches!(err, acpi::AcpiError::TooLarge { .. }), "{err}");
}

/// A VM with the in-kernel irqchip, or None (test skipped, said on stderr) without /dev/kvm.
fn kvm_vm() -> Option<(kvm_ioctls::Kvm, kvm_ioctls::VmFd)> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm on this machine");
        return None;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    Some((kvm, vm))
}

fn cpuid_leaf(
    vcpu: &kvm_ioctls::VcpuFd,
    function: u32,
    index: u32,
) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    let cpuid = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_CPUID2");
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .copied()
}

fn msr(vcpu: &kvm_ioctls::VcpuFd, index: u32) -> u64 {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .expect("msr list");
    assert_eq!(vcpu.get_msrs(&mut msrs).expect("KVM_GET_MSRS"), 1);
    msrs.as_slice()[0].data
}

#[test]
fn configure_vcpu_enters_long_mode_on_the_boot_vcpu_only() {
    let Some((kvm, vm)) = kvm_vm() else { return };
    let mem = guest_mem(64 * MIB);
    let entry = EntryPoint::Linux64 {
        rip: GuestAddress(0x10_0200),
        boot_params: GuestAddress(layout::ZERO_PAGE_START),
    };
    let bsp = vm.create_vcpu(0).expect("create vCPU 0");
    configure_vcpu(&kvm, &bsp, 0, 2, &entry, &mem).expect("configure vCPU 0");

    let sregs = bsp.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(sregs.cr0, regs::CR0_PE | regs::CR0_ET | regs::CR0_PG);
    assert_eq!(sregs.cr4 & regs::CR4_PAE, regs::CR4_PAE);
    assert_eq!(
        sregs.efer & (regs::EFER_LME | regs::EFER_LMA),
        regs::EFER_LME | regs::EFER_LMA
    );
    assert_eq!(sregs.cr3, layout::PML4_START);
    assert_eq!((sregs.gdt.base, sregs.gdt.limit), (layout::GDT_START, 47));
    assert_eq!(
        (sregs.cs.selector, sregs.cs.l, sregs.cs.db, sregs.cs.present),
        (0x10, 1, 0, 1)
    );
    assert_eq!(
        (sregs.ds.selector, sregs.ss.selector, sregs.es.selector),
        (0x18, 0x18, 0x18)
    );
    assert_eq!((sregs.tr.selector, sregs.tr.type_), (0x20, 0xb));
    let code: u64 = mem
        .read_obj(GuestAddress(layout::GDT_START + 0x10))
        .expect("read GDT");
    assert_eq!(code, 0x00af_9b00_0000_ffff);
    let regs = bsp.get_regs().expect("KVM_GET_REGS");
    assert_eq!(
        (regs.rip, regs.rsi, regs.rflags),
        (0x10_0200, layout::ZERO_PAGE_START, 2)
    );
    assert_eq!(regs.rsp, layout::BOOT_STACK_POINTER);

    let fpu = bsp.get_fpu().expect("KVM_GET_FPU");
    assert_eq!(fpu.fcw, regs::FPU_CONTROL_WORD);
    // kvm_pvm neither stores nor returns MXCSR through KVM_SET/GET_FPU (it reads back 0 whatever
    // was set); a real KVM returns what was set.
    if fpu.mxcsr != 0 {
        assert_eq!(fpu.mxcsr, regs::MXCSR_DEFAULT);
    }
    assert_eq!(msr(&bsp, msrs::MSR_MTRR_DEF_TYPE), 0x806);
    assert_eq!(msr(&bsp, msrs::MSR_IA32_MISC_ENABLE) & 1, 1);
    assert_eq!(msr(&bsp, msrs::MSR_IA32_SYSENTER_CS), 0);
    let lapic = bsp.get_lapic().expect("KVM_GET_LAPIC");
    assert_eq!(
        lapic::read_register(&lapic, lapic::APIC_LVT_LINT0) & 0x700,
        0x700
    );
    assert_eq!(
        lapic::read_register(&lapic, lapic::APIC_LVT_LINT1) & 0x700,
        0x400
    );

    let leaf1 = cpuid_leaf(&bsp, 1, 0).expect("leaf 1");
    assert_eq!(leaf1.ebx >> 24, 0);
    assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");

    let ap = vm.create_vcpu(1).expect("create vCPU 1");
    let reset_regs = ap.get_regs().expect("KVM_GET_REGS");
    configure_vcpu(&kvm, &ap, 1, 2, &entry, &mem).expect("configure vCPU 1");
    assert_eq!(cpuid_leaf(&ap, 1, 0).expect("leaf 1").ebx >> 24, 1);
    if let Some(core_level) = cpuid_leaf(&ap, 0xb, 1) {
        assert_eq!(
            (core_level.edx, core_level.ebx, (core_level.ecx >> 8) & 0xff),
            (1, 2, 2)
        );
    }
    let ap_regs = ap.get_regs().expect("KVM_GET_REGS");
    assert_eq!(
        (ap_regs.rip, ap_regs.rsi),
        (reset_regs.rip, reset_regs.rsi),
        "APs keep reset state"
    );
    assert_eq!(ap.get_sregs().expect("KVM_GET_SREGS").cr0 & regs::CR0_PE, 0);
}

#[test]
fn configure_vcpu_enters_32_bit_protected_mode_for_pvh() {
    let Some((kvm, vm)) = kvm_vm() else { return };
    let mem = guest_mem(64 * MIB);
    let entry = EntryPoint::Pvh {
        eip: GuestAddress(0x100_0000),
        start_info: GuestAddress(layout::PVH_START_INFO),
    };
    let bsp = vm.create_vcpu(0).expect("create vCPU 0");
    configure_vcpu(&kvm, &bsp, 0, 1, &entry, &mem).expect("configure vCPU 0");
    let sregs = bsp.get_sregs().expect("KVM_GET_SREGS");
    assert_eq!(sregs.cr0, regs::CR0_PE | regs::CR0_ET);
    assert_eq!((sregs.cr4, sregs.efer & regs::EFER_LME), (0, 0));
    assert_eq!(
        (sregs.cs.l, sregs.cs.db, sregs.cs.limit, sregs.cs.base),
        (0, 1, 0xffff_ffff, 0)
    );
    assert_eq!((sregs.ds.db, sregs.ds.limit), (1, 0xffff_ffff));
    assert_eq!((sregs.tr.type_, sregs.tr.limit), (0xb, 0x67));
    let regs = bsp.get_regs().expect("KVM_GET_REGS");
    assert_eq!(
        (regs.rip, regs.rbx, regs.rflags),
        (0x100_0000, layout::PVH_START_INFO, 2)
    );
}

#[test]
fn configure_vcpu_refuses_an_id_beyond_the_count() {
    let Some((kvm, vm)) = kvm_vm() else { return };
    let mem = guest_mem(16 * MIB);
    let entry = EntryPoint::Pvh {
        eip: GuestAddress(0x100_0000),
        start_info: GuestAddress(layout::PVH_START_INFO),
    };
    let vcpu = vm.create_vcpu(2).expect("create vCPU 2");
    let err = configure_vcpu(&kvm, &vcpu, 2, 2, &entry, &mem).expect_err("bad id");
    assert!(
        matches!(err, VcpuSetupError::BadId { id: 2, ncpus: 2 }),
        "{err}"
    );
}
