//! Where the worker benchmark's threads run. The side being measured (Paddock's worker, or the
//! plain loop that stands for it) gets one CPU of its own; the synthetic driver and the RX
//! injector, which stand for the guest and the network, get the others. Left to itself the
//! scheduler puts the driver on the worker's CPU (the worker wakes it), which charges guest work
//! to the worker that a real guest does on its own vCPU.

use std::io;
use std::time::{Duration, Instant};

/// The CPU of the measured side and the rest of the process's CPUs.
#[derive(Clone, Copy)]
pub struct CpuSplit {
    measured: libc::cpu_set_t,
    others: libc::cpu_set_t,
    all: libc::cpu_set_t,
}

/// Which side of the split a thread belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The worker or the plain loop.
    Measured,
    /// The driver and the injector.
    Others,
    /// Every CPU the process had (undoes a pin).
    All,
}

fn empty_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

impl CpuSplit {
    /// Splits the calling thread's CPUs: the first for the measured side, the rest for the
    /// others. None when the thread may run on one CPU only (nothing to split).
    pub fn of_current_thread() -> io::Result<Option<Self>> {
        let mut all = empty_set();
        // SAFETY: reads this thread's mask into `all`, whose size is passed.
        let ret =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut all) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `cpu` is below CPU_SETSIZE, the size of the set.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &all) })
            .collect();
        if cpus.len() < 2 {
            return Ok(None);
        }
        let (mut measured, mut others) = (empty_set(), empty_set());
        // SAFETY: every index comes from the set above, so is below CPU_SETSIZE.
        unsafe {
            libc::CPU_SET(cpus[0], &mut measured);
            for &cpu in &cpus[1..] {
                libc::CPU_SET(cpu, &mut others);
            }
        }
        Ok(Some(Self {
            measured,
            others,
            all,
        }))
    }

    /// Moves the calling thread to `side`; threads it spawns from now on start there too.
    pub fn pin_current_thread(&self, side: Side) -> io::Result<()> {
        let set = match side {
            Side::Measured => &self.measured,
            Side::Others => &self.others,
            Side::All => &self.all,
        };
        // SAFETY: applies a valid, non-empty mask of the right size to this thread only.
        let ret =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Pins the calling thread when there is a split; does nothing without one.
pub fn pin(split: Option<&CpuSplit>, side: Side) -> io::Result<()> {
    match split {
        Some(split) => split.pin_current_thread(side),
        None => Ok(()),
    }
}

/// The CPU time of one thread of this process, as the scheduler accounts it: what the measured
/// side spends per frame, whatever else the machine runs.
pub struct ThreadCpu {
    schedstat: std::path::PathBuf,
}

impl ThreadCpu {
    /// The calling thread.
    pub fn current() -> Self {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        Self::of_tid(tid)
    }

    fn of_tid(tid: libc::pid_t) -> Self {
        Self {
            schedstat: format!("/proc/self/task/{tid}/schedstat").into(),
        }
    }

    /// The thread of this process named `name`, waiting up to a second for it: a new thread
    /// names itself once it runs.
    pub fn named(name: &str) -> io::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            for entry in std::fs::read_dir("/proc/self/task")? {
                let entry = entry?;
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                if comm.trim_end() == name {
                    if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
                        return Ok(Self::of_tid(tid));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no thread named {name} in this process"),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Nanoseconds the thread has run so far.
    pub fn ns(&self) -> io::Result<u64> {
        let text = std::fs::read_to_string(&self.schedstat)?;
        text.split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no run time in {text:?}", self.schedstat.display()),
                )
            })
    }
}
