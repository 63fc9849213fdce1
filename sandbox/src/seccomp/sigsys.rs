//! The SIGSYS reporter: a denied call traps here, in the thread that made it. The handler names
//! the thread, its category and the call, then ends the process. It only uses write(2) and
//! _exit(2), which every filter allows, and formats into a stack buffer (no allocation, no locks).

use super::syscall_names;
use std::cell::Cell;
use vmm::threads::ThreadCategory;

/// Exit status after a denied call (128 + SIGSYS, as a shell reports a death by SIGSYS).
pub const EXIT_SECCOMP_DENIED: i32 = 128 + libc::SIGSYS;

const NAME_LEN: usize = 16;

thread_local! {
    // Const-initialised and without destructors: reading them is a plain TLS load, safe in a
    // signal handler.
    static THREAD_NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
    static CATEGORY: Cell<Option<ThreadCategory>> = const { Cell::new(None) };
}

/// Records the calling thread's name and category for reports; call before its filter goes on.
pub fn remember_thread(category: ThreadCategory) {
    let mut name = [0u8; NAME_LEN];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into the buffer, which is 16
    // bytes long and lives across the call.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    if rc != 0 {
        name = [0; NAME_LEN];
        name[..1].copy_from_slice(b"?");
    }
    THREAD_NAME.with(|n| n.set(name));
    CATEGORY.with(|c| c.set(Some(category)));
}

/// Index + 1 in `ThreadCategory::ALL` of the filter every thread of this process inherits
/// (0: none); for threads a library starts, which never call [`remember_thread`].
static INHERITED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records that threads started from now on inherit `category`'s filter.
pub fn remember_inherited(category: ThreadCategory) {
    if let Some(i) = ThreadCategory::ALL.iter().position(|&c| c == category) {
        INHERITED.store(i + 1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn inherited_category() -> Option<ThreadCategory> {
    // A plain atomic load: safe in the signal handler.
    match INHERITED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        i => ThreadCategory::ALL.get(i - 1).copied(),
    }
}

/// The SIGSYS part of siginfo_t on x86_64 (`_sigsys` in the kernel's union at offset 16).
#[repr(C)]
struct SigsysInfo {
    _signo: i32,
    _errno: i32,
    _code: i32,
    _pad: i32,
    _call_addr: *mut libc::c_void,
    syscall: i32,
    _arch: u32,
}

/// A fixed buffer that drops what does not fit.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report for a denied call, built without allocating.
fn report(nr: i64, thread: &[u8; NAME_LEN], category: Option<ThreadCategory>) -> Line {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    line.push(b"paddock: seccomp: thread `");
    let end = thread.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    line.push(&thread[..end]);
    line.push(b"` (");
    line.push(
        category
            .map_or("unfiltered", ThreadCategory::name)
            .as_bytes(),
    );
    line.push(b") made system call ");
    line.push(syscall_names::name(nr).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_number(nr.unsigned_abs());
    line.push(b"), which its filter forbids; paddock stops. Report it; `--seccomp log` lets such calls through and logs them.\n");
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler, and for SIGSYS from
    // seccomp its union holds `_sigsys`, laid out as SigsysInfo.
    let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
    let name = THREAD_NAME.with(Cell::get);
    let category = CATEGORY.with(Cell::get).or_else(inherited_category);
    let line = report(i64::from(nr), &name, category);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid for `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_SECCOMP_DENIED);
    }
}

/// Installs the reporter as the process's SIGSYS handler.
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler has the SA_SIGINFO
    // signature, and sigaction only reads the struct during the call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_thread_category_and_call() {
        let mut name = [0u8; NAME_LEN];
        name[..9].copy_from_slice(b"CPU 0/KVM");
        let line = report(libc::SYS_openat, &name, Some(ThreadCategory::Vcpu));
        let text = String::from_utf8_lossy(&line.buf[..line.len]);
        assert!(
            text.starts_with(
                "paddock: seccomp: thread `CPU 0/KVM` (vcpu) made system call openat (257),"
            ),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let line = report(9999, &[0; NAME_LEN], None);
        let text = String::from_utf8_lossy(&line.buf[..line.len]);
        assert!(
            text.contains("`` (unfiltered) made system call unknown (9999)"),
            "{text}"
        );
    }
}
