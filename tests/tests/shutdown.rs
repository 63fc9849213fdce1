//! SIGTERM and SIGINT to `paddock run`, on this machine's /dev/kvm with a tiny guest that never
//! powers off: the run is stopped when the grace period after the power button ends, or at once
//! on a second signal, and paddock exits with 128 + the signal. (That a Linux guest shuts down
//! when its power button is pressed is checked in the KVM test host: tests/tests/linux_boot.rs.)

use paddock_tests::tinyguest::{write_image, BootFormat, Ending, Program};
use paddock_tests::workspace;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "halting-for-good\n";

/// Starts paddock on a guest that prints MARKER and halts; returns once MARKER is out.
fn start(image: &std::path::Path, grace_secs: u64) -> (Child, std::thread::JoinHandle<String>) {
    workspace::share_with_paddock(image).expect("chmod image");
    let mut child = Command::new(workspace::paddock_bin())
        .arg("run")
        .args(workspace::paddock_user_args())
        .arg("--kernel")
        .arg(image)
        .args(["--cpus", "1", "--memory", "64M"])
        .arg("--shutdown-timeout")
        .arg(grace_secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paddock");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(MARKER) {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "paddock ended before the guest printed its marker: {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Keep draining the console so paddock never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, errors)
}

fn signal(child: &Child, signal: i32) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) takes plain integers; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
}

/// Waits at most `limit`; kills it and fails past that.
fn wait(mut child: Child, limit: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("paddock did not end within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn halting_guest() -> tempfile::NamedTempFile {
    let program = Program::new(MARKER.as_bytes(), Ending::Halt);
    write_image(BootFormat::Elf64, &program).expect("image")
}

#[test]
fn sigterm_stops_a_guest_that_ignores_its_power_button_after_the_grace_period() {
    let image = halting_guest();
    let (child, errors) = start(image.path(), 2);
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let (code, _) = wait(child, Duration::from_secs(60));
    let waited = sent.elapsed();
    let stderr = errors.join().expect("stderr");
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("did not power off within 2 s"),
        "the reason must be named: {stderr}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "stopped after {waited:?}, before the 2 s grace period ended"
    );
}

#[test]
fn a_second_signal_stops_the_run_at_once_with_its_status() {
    let image = halting_guest();
    let (child, errors) = start(image.path(), 600);
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    // Far below the 600 s grace: the second signal ended it.
    let (code, _) = wait(child, Duration::from_secs(60));
    let stderr = errors.join().expect("stderr");
    assert_eq!(code, Some(128 + libc::SIGINT), "{stderr}");
    assert!(stderr.contains("asked to stop again"), "{stderr}");
}
