//! Checks of the emitters that need no VMM: every format assembles, the code lands where the
//! headers say, and (when QEMU is installed) the PVH guest runs under QEMU's own PVH loader.

use super::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ALL_FORMATS: [BootFormat; 3] = [BootFormat::Elf64, BootFormat::PvhElf, BootFormat::BzImage];
const ALL_ENDINGS: [Ending; 6] = [
    Ending::AcpiPowerOff,
    Ending::I8042Reset,
    Ending::AcpiReset,
    Ending::TripleFault,
    Ending::Int3,
    Ending::Halt,
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_format_and_ending_assembles_with_its_strings() {
    for format in ALL_FORMATS {
        for ending in ALL_ENDINGS {
            let program = Program::new(&b"marker\n"[..], ending).with_post_code(0x42);
            let img = build_image(format, &program).unwrap();
            assert!(contains(&img, b"marker\n"), "{format:?} {ending:?}");
            let expected = expected_serial(format, &program);
            assert!(expected.starts_with(b"marker\n"));
            for line in String::from_utf8(expected[7..].to_vec()).unwrap().lines() {
                assert!(contains(&img, line.as_bytes()), "{format:?}: {line}");
            }
        }
    }
}

#[test]
fn endings_contain_their_port_writes() {
    let code = |ending| {
        assemble_long_mode(
            &Program::new(Vec::new(), ending),
            LongModeChecks::BootParams,
            LOAD_ADDR,
        )
        .unwrap()
    };
    // mov dx, 0x600; mov al, 0x34; out dx, al
    assert!(contains(
        &code(Ending::AcpiPowerOff),
        &[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee]
    ));
    // mov al, 0xfe; out 0x64, al
    assert!(contains(
        &code(Ending::I8042Reset),
        &[0xb0, 0xfe, 0xe6, 0x64]
    ));
    // ud2
    assert!(contains(&code(Ending::TripleFault), &[0x0f, 0x0b]));
    // int3
    assert!(contains(&code(Ending::Int3), &[0xcc]));
    // Every program ends in cli; hlt; jmp back.
    assert!(contains(&code(Ending::Int3), &[0xfa, 0xf4, 0xeb, 0xfc]));
}

#[test]
fn post_code_goes_to_port_0x80() {
    let code = assemble_pvh(
        &Program::new(Vec::new(), Ending::Int3).with_post_code(0x5a),
        0x10_0000,
    )
    .unwrap();
    // cli; mov al, 0x5a; out 0x80, al
    assert!(code.starts_with(&[0xfa, 0xb0, 0x5a, 0xe6, 0x80]));
}

#[test]
fn bzimage_64_bit_entry_is_the_program() {
    let program = Program::new(&b"bz\n"[..], Ending::AcpiPowerOff);
    let img = build_image(BootFormat::BzImage, &program).unwrap();
    let entry64 = bzimage::PROTECTED_MODE_OFFSET + bzimage::ENTRY_64_OFFSET;
    let expected = assemble_long_mode(
        &program,
        LongModeChecks::BootParamsWithSetupHeader,
        LOAD_ADDR + 0x200,
    )
    .unwrap();
    assert_eq!(&img[entry64..], &expected[..]);
    // The program starts by saving RSI (boot_params): mov r15, rsi.
    assert_eq!(&img[entry64..entry64 + 3], &[0x49, 0x89, 0xf7]);
}

/// QEMU implements the PVH boot protocol itself: the 32-bit guest must print its message and
/// find the start_info magic there too. Skipped when qemu-system-x86_64 is not installed.
#[test]
fn pvh_guest_runs_under_qemu() {
    let program = Program::new(&b"PVH under QEMU\n"[..], Ending::AcpiPowerOff);
    let image = write_image(BootFormat::PvhElf, &program).unwrap();
    let spawned = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(image.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut qemu) = spawned else {
        eprintln!("qemu-system-x86_64 not installed: skipped");
        return;
    };
    let expected = expected_serial(BootFormat::PvhElf, &program);
    let mut stdout = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && seen.len() < expected.len() {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        (seen, expected)
    });
    // The guest halts forever after its (here unhandled) S5 write: stop QEMU once it printed,
    // or at the deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let (seen, expected) = reader.join().unwrap();
    let mut err = String::new();
    if let Some(mut e) = qemu.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(
        String::from_utf8_lossy(&seen),
        String::from_utf8_lossy(&expected),
        "qemu stderr: {err}"
    );
}
