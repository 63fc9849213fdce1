//! Tiny guests booted by the real `paddock` binary on this machine's /dev/kvm, one VMM path each:
//! the three entry protocols, the serial console, and every way a run can end.
//!
//! Each boot is killed after `BOOT_TIMEOUT`; a VMM that misses a guest's ending shows up as a
//! timeout (the guest halts with interrupts off after its ending instruction).

use paddock_tests::tinyguest::{
    assemble_long_mode, boot, expected_serial, write_image, BootFormat, Ending, GuestRun,
    LongModeChecks, Program, BOOT_TIMEOUT, LOAD_ADDR, REPORT_WRONG_ENTRY,
};

fn run(format: BootFormat, program: &Program) -> GuestRun {
    let image = write_image(format, program).unwrap_or_else(|e| panic!("{e}"));
    boot(image.path(), BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// The guest printed exactly what a correct VMM makes it print, then powered off (status 0).
fn assert_clean_power_off(format: BootFormat, program: &Program) {
    let run = run(format, program);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        !stdout.contains(REPORT_WRONG_ENTRY.trim_end()),
        "{format:?}: the VMM entered the image at the wrong entry point\n{run}"
    );
    assert_eq!(
        run.stdout,
        expected_serial(format, program),
        "{format:?}: serial output differs (a BAD line names the boot-protocol field the VMM got wrong)\n{run}"
    );
    assert!(
        run.success(),
        "{format:?}: S5 must end the run with status 0\n{run}"
    );
}

/// The run failed (non-zero, not killed), its stderr names the cause, and says where the guest was.
fn assert_failure_named(run: &GuestRun, any_of: &[&str]) -> u64 {
    assert!(!run.timed_out(), "the VMM missed the guest's ending\n{run}");
    assert!(!run.success(), "the run must fail\n{run}");
    let stderr = run.stderr.to_lowercase();
    assert!(
        any_of.iter().any(|w| stderr.contains(&w.to_lowercase())),
        "stderr must name one of {any_of:?}\n{run}"
    );
    guest_rip(&run.stderr).unwrap_or_else(|| panic!("stderr must name the guest RIP\n{run}"))
}

/// The hex number after "RIP" in paddock's message.
fn guest_rip(stderr: &str) -> Option<u64> {
    let after = &stderr[stderr.find("RIP")? + 3..];
    let hex = after
        .trim_start_matches([' ', ':', '='])
        .strip_prefix("0x")?;
    let end = hex
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(hex.len());
    u64::from_str_radix(&hex[..end], 16).ok()
}

#[test]
fn elf64_entry_prints_marker_and_powers_off() {
    let program = Program::new(
        &b"PADDOCK-TINY elf64 long-mode entry\n"[..],
        Ending::AcpiPowerOff,
    )
    .with_post_code(0x64);
    assert_clean_power_off(BootFormat::Elf64, &program);
}

#[test]
fn pvh_entry_checks_start_info_magic_and_powers_off() {
    let program = Program::new(
        &b"PADDOCK-TINY pvh 32-bit entry\n"[..],
        Ending::AcpiPowerOff,
    )
    .with_post_code(0x32);
    assert_clean_power_off(BootFormat::PvhElf, &program);
}

#[test]
fn bzimage_64_bit_entry_prints_marker_and_powers_off() {
    let program = Program::new(
        &b"PADDOCK-TINY bzImage 64-bit entry\n"[..],
        Ending::AcpiPowerOff,
    )
    .with_post_code(0xb2);
    assert_clean_power_off(BootFormat::BzImage, &program);
}

#[test]
fn serial_output_arrives_byte_exact() {
    // Every byte value, including NUL, CR, escape and 0xff, plus a CR/LF mix.
    let mut message: Vec<u8> = (0..=255u8).collect();
    message.extend_from_slice(b"\r\n\n\rend\n");
    assert_clean_power_off(
        BootFormat::Elf64,
        &Program::new(message, Ending::AcpiPowerOff),
    );
}

#[test]
fn acpi_s5_exits_zero_after_the_guest_ran() {
    // Status 0 counts only with the guest's output before it: S5 is the guest's last act.
    let program = Program::new(&b"S5 next\n"[..], Ending::AcpiPowerOff);
    let run = run(BootFormat::Elf64, &program);
    assert!(run.success(), "ACPI S5 must exit 0\n{run}");
    assert!(
        run.stdout.starts_with(b"S5 next\n"),
        "the guest did not run\n{run}"
    );
}

#[test]
fn i8042_reset_fails_the_run_naming_reset() {
    let program = Program::new(&b"resetting via i8042\n"[..], Ending::I8042Reset);
    let run = run(BootFormat::Elf64, &program);
    assert!(
        !run.timed_out(),
        "the i8042 reset command was not handled\n{run}"
    );
    assert!(
        !run.success(),
        "a reset must end the run with non-zero status\n{run}"
    );
    assert!(
        run.stderr.to_lowercase().contains("reset"),
        "stderr must say reset\n{run}"
    );
    assert!(run.stdout.starts_with(b"resetting via i8042\n"), "{run}");
}

#[test]
fn acpi_reset_register_fails_the_run_naming_reset() {
    let run = run(
        BootFormat::Elf64,
        &Program::new(Vec::new(), Ending::AcpiReset),
    );
    assert!(
        !run.timed_out(),
        "the ACPI reset register write was not handled\n{run}"
    );
    assert!(
        !run.success(),
        "a reset must end the run with non-zero status\n{run}"
    );
    assert!(
        run.stderr.to_lowercase().contains("reset"),
        "stderr must say reset\n{run}"
    );
}

/// The bytes at `rip` in the Elf64 image of `program` (whose code starts at LOAD_ADDR).
fn code_at(program: &Program, rip: u64, len: usize, run: &GuestRun) -> Vec<u8> {
    let code = assemble_long_mode(program, LongModeChecks::BootParams, LOAD_ADDR).unwrap();
    let at = rip
        .checked_sub(LOAD_ADDR)
        .map(|o| o as usize)
        .filter(|&o| o + len <= code.len())
        .unwrap_or_else(|| panic!("RIP {rip:#x} is outside the guest's code\n{run}"));
    code[at..at + len].to_vec()
}

#[test]
fn triple_fault_names_shutdown_and_rip() {
    let program = Program::new(&b"triple fault next\n"[..], Ending::TripleFault);
    let run = run(BootFormat::Elf64, &program);
    let rip = assert_failure_named(&run, &["shutdown", "triple fault"]);
    // The #UD is a fault: the reported RIP is the ud2 itself.
    assert_eq!(
        code_at(&program, rip, 2, &run),
        [0x0f, 0x0b],
        "RIP {rip:#x} is not the ud2\n{run}"
    );
}

#[test]
fn int3_in_kernel_mode_names_the_exit_and_rip() {
    // kvm_pvm stops INT3 in guest kernel mode with an internal error; hardware KVM delivers it,
    // and with no IDT that ends in a triple fault. Either way the run fails, naming exit and RIP.
    let program = Program::new(&b"int3 next\n"[..], Ending::Int3);
    let run = run(BootFormat::Elf64, &program);
    let rip = assert_failure_named(&run, &["internal_error", "internal error", "shutdown"]);
    assert_eq!(
        code_at(&program, rip, 1, &run),
        [0xcc],
        "RIP {rip:#x} is not the int3\n{run}"
    );
}

#[test]
fn rip_is_parsed_from_paddock_messages() {
    assert_eq!(
        guest_rip("vCPU 0 stopped: KVM_EXIT_SHUTDOWN at guest RIP 0x100042"),
        Some(0x10_0042)
    );
    assert_eq!(guest_rip("RIP: 0xffff8000"), Some(0xffff_8000));
    assert_eq!(guest_rip("no rip here"), None);
}
