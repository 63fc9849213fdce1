//! Watching a VMM process: when a marker appears on its stdout, and what it holds in memory then.

use std::io::Read;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Reads the child's stdout on a thread and reports the instant each wanted marker first appears.
pub struct OutputWatch {
    rx: mpsc::Receiver<(usize, Instant)>,
    pub output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl OutputWatch {
    /// `markers[i]` found -> `(i, when)` sent once. An empty marker matches the first byte.
    pub fn start(child: &mut Child, markers: Vec<Vec<u8>>) -> Option<Self> {
        let mut out = child.stdout.take()?;
        let (tx, rx) = mpsc::channel();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let buf_out = output.clone();
        std::thread::spawn(move || {
            let mut found = vec![false; markers.len()];
            let mut chunk = [0u8; 4096];
            loop {
                let n = match out.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                let mut all = buf_out.lock().unwrap_or_else(|e| e.into_inner());
                all.extend_from_slice(&chunk[..n]);
                for (i, m) in markers.iter().enumerate() {
                    if !found[i] && (m.is_empty() || all.windows(m.len()).any(|w| w == &m[..])) {
                        found[i] = true;
                        let _ = tx.send((i, now));
                    }
                }
            }
        });
        Some(Self { rx, output })
    }

    /// Waits for marker `index` until `deadline`.
    pub fn wait_for(&self, index: usize, deadline: Instant) -> Option<Instant> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((i, t)) if i == index => return Some(t),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Resident memory of `pid` in KiB, leaving out every mapping at least `guest_kib` large (guest RAM).
pub fn rss_without_guest_kib(pid: u32, guest_kib: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut total = 0;
    let mut size = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(v)) => size = v.parse::<u64>().unwrap_or(0),
            (Some("Rss:"), Some(v)) if size < guest_kib => total += v.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    Some(total)
}

/// Kills and reaps the child, waiting at most a little for it to go.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
