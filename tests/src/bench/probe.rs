//! Watching a VMM process: when a marker appears on its stdout, what it says on stderr, and what it
//! holds in memory.

use std::io::Read;
use std::process::Child;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of a VMM's stderr is kept for failure messages.
const STDERR_KEPT: usize = 4096;
/// Sent instead of a marker index when stdout closes (the VMM exited): nothing more can come.
const STDOUT_CLOSED: usize = usize::MAX;

/// Reads the child's stdout on a thread and reports the instant each wanted marker first appears;
/// drains stderr on another thread (a VMM blocked on a full stderr pipe would stall the guest).
pub struct OutputWatch {
    rx: mpsc::Receiver<(usize, Instant)>,
    output: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last `n` characters of `bytes` as text.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let skip = text.chars().count().saturating_sub(n);
    text.chars().skip(skip).collect()
}

impl OutputWatch {
    /// `markers[i]` found on stdout -> `(i, when)` sent once. `None` when stdout is not piped.
    pub fn start(child: &mut Child, markers: Vec<Vec<u8>>) -> Option<Self> {
        let mut out = child.stdout.take()?;
        let (tx, rx) = mpsc::channel();
        let output = Arc::new(Mutex::new(Vec::new()));
        let buf_out = output.clone();
        std::thread::spawn(move || {
            let mut found = vec![false; markers.len()];
            let mut chunk = [0u8; 4096];
            loop {
                let n = match out.read(&mut chunk) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send((STDOUT_CLOSED, Instant::now()));
                        break;
                    }
                    Ok(n) => n,
                };
                let now = Instant::now();
                let mut all = locked(&buf_out);
                // Only the new bytes and the marker-length overlap before them need searching.
                let from = all.len();
                all.extend_from_slice(&chunk[..n]);
                for (i, m) in markers.iter().enumerate() {
                    let window = &all[from.saturating_sub(m.len())..];
                    if !found[i] && window.windows(m.len().max(1)).any(|w| w.starts_with(m)) {
                        found[i] = true;
                        let _ = tx.send((i, now));
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let buf_err = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut chunk) {
                    let mut kept = locked(&buf_err);
                    kept.extend_from_slice(&chunk[..n]);
                    let excess = kept.len().saturating_sub(STDERR_KEPT);
                    kept.drain(..excess);
                }
            });
        }
        Some(Self { rx, output, stderr })
    }

    /// Waits for marker `index` until `deadline`; `None` at the deadline or when stdout closes
    /// without it.
    pub fn wait_for(&self, index: usize, deadline: Instant) -> Option<Instant> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((i, t)) if i == index => return Some(t),
                Ok((STDOUT_CLOSED, _)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The last `n` characters of stdout and of stderr, for failure messages.
    pub fn tails(&self, n: usize) -> (String, String) {
        (
            tail(&locked(&self.output), n),
            tail(&locked(&self.stderr), n),
        )
    }
}

/// A VMM's resident memory split into guest RAM and everything else, from /proc/PID/smaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssSplit {
    /// Resident KiB of every mapping that is not guest RAM: the VMM's own cost.
    pub overhead_kib: u64,
    /// Resident KiB of the mappings taken for guest RAM.
    pub guest_kib: u64,
    /// Their total size (not only the resident part), in KiB.
    pub guest_mapped_kib: u64,
}

/// Splits `smaps` (the text of /proc/PID/smaps) into guest RAM and the rest, for a guest of
/// `guest_ram_kib`. Guest RAM is whatever the VMM mapped for it: the largest mappings, taken largest
/// first until they cover `guest_ram_kib` (one mapping, or several when RAM is split around the
/// 32-bit PCI hole). `None` when no such set exists (the VMM mapped less than the guest's RAM).
pub fn split_rss(smaps: &str, guest_ram_kib: u64) -> Option<RssSplit> {
    // (size, rss) per mapping; a mapping starts at a line whose first word is an address range.
    let mut maps: Vec<(u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(first), _) if first.contains('-') && !first.ends_with(':') => maps.push((0, 0)),
            (Some("Size:"), Some(v)) => {
                if let (Some(m), Ok(kib)) = (maps.last_mut(), v.parse()) {
                    m.0 = kib;
                }
            }
            (Some("Rss:"), Some(v)) => {
                if let (Some(m), Ok(kib)) = (maps.last_mut(), v.parse()) {
                    m.1 = kib;
                }
            }
            _ => {}
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.0));
    let mut split = RssSplit {
        overhead_kib: 0,
        guest_kib: 0,
        guest_mapped_kib: 0,
    };
    for (size, rss) in maps {
        if split.guest_mapped_kib < guest_ram_kib {
            split.guest_mapped_kib += size;
            split.guest_kib += rss;
        } else {
            split.overhead_kib += rss;
        }
    }
    (split.guest_mapped_kib >= guest_ram_kib).then_some(split)
}

/// [`split_rss`] of a live process.
pub fn rss_split(pid: u32, guest_ram_kib: u64) -> Result<RssSplit, String> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    split_rss(&smaps, guest_ram_kib)
        .ok_or_else(|| format!("{path}: no mappings cover the guest's {guest_ram_kib} KiB of RAM"))
}

/// The child's exit status if it ends within a moment (its stdout closing comes a little before).
pub fn exit_status_soon(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// Kills the child's process group (it was started as its own group) and reaps the child, waiting
/// at most a little for it to go.
pub fn stop(child: &mut Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory effects; the group is the one the child leads (process_group(0)).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(range: &str, size: u64, rss: u64) -> String {
        format!(
            "{range} rw-p 00000000 00:00 0 \nSize:           {size} kB\nKernelPageSize:        4 kB\nRss:            {rss} kB\nPss:            {rss} kB\nVmFlags: rd wr mr mw me ac sd\n"
        )
    }

    #[test]
    fn one_ram_mapping_is_left_out() {
        let smaps = [
            mapping("55d0c0000000-55d0c0100000", 1024, 900),
            mapping("7f0000000000-7f0010000000", 262144, 40000),
            mapping("7fff00000000-7fff00021000", 132, 12),
        ]
        .concat();
        let s = split_rss(&smaps, 262144).unwrap();
        assert_eq!(s.overhead_kib, 912);
        assert_eq!(s.guest_kib, 40000);
        assert_eq!(s.guest_mapped_kib, 262144);
    }

    #[test]
    fn ram_split_around_the_pci_hole_is_left_out_whole() {
        // 4 GiB guest: 3 GiB below the hole, 1 GiB above; an 8 MiB thread stack stays counted.
        let smaps = [
            mapping("7e0000000000-7e00c0000000", 3 << 20, 100),
            mapping("7e0100000000-7e0140000000", 1 << 20, 50),
            mapping("7f0000000000-7f0000800000", 8192, 16),
        ]
        .concat();
        let s = split_rss(&smaps, 4 << 20).unwrap();
        assert_eq!((s.overhead_kib, s.guest_kib), (16, 150));
    }

    #[test]
    fn too_little_mapped_is_not_a_split() {
        let smaps = mapping("7f0000000000-7f0000100000", 1024, 1024);
        assert_eq!(split_rss(&smaps, 262144), None);
    }

    #[test]
    fn own_smaps_parse() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let s = split_rss(&smaps, 1).unwrap();
        assert!(s.overhead_kib + s.guest_kib > 100, "{s:?}");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail(b"hello world", 5), "world");
        assert_eq!(tail(b"hi", 5), "hi");
    }
}
