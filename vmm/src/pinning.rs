//! CPU sets, and placing the calling thread on one (affinity, SCHED_FIFO). Which thread goes where is
//! decided by the binary (sandbox/src/placement); `threads::spawn_pinned` applies a [`ThreadPin`]
//! inside the new thread before its seccomp filter goes on, so no thread category's own filter needs
//! sched_setaffinity or sched_setscheduler.

use std::collections::BTreeSet;
use std::fmt;

/// Highest CPU number a `cpu_set_t` can name.
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    #[error("`{text}` is not a CPU list: write CPU numbers and ranges such as 2 or 0-3,6")]
    BadList { text: String },
    #[error("CPU {cpu} is beyond the {MAX_CPUS} CPUs Linux can name in an affinity mask")]
    TooHigh { cpu: usize },
    #[error("sched_getaffinity failed: {0}")]
    GetAffinity(String),
    #[error("sched_setaffinity to CPUs {cpus} failed: {reason}")]
    SetAffinity { cpus: CpuSet, reason: String },
    #[error("sched_setscheduler(SCHED_FIFO, priority {prio}) failed: {reason}: it needs CAP_SYS_NICE or RLIMIT_RTPRIO >= {prio}")]
    SetFifo { prio: u8, reason: String },
}

/// A set of host CPU numbers, written as Linux writes them (`0-3,6`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(BTreeSet<usize>);

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(cpu: usize) -> Self {
        Self(BTreeSet::from([cpu]))
    }

    /// Parses a Linux CPU list (`cpuset.cpus`, `Cpus_allowed_list`, `taskset -c`): numbers and
    /// `a-b` ranges separated by commas. An empty or blank text is the empty set (an empty cpuset
    /// file reads that way).
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let bad = || PinError::BadList {
            text: text.to_string(),
        };
        let mut set = BTreeSet::new();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(Self(set));
        }
        for item in trimmed.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (item, item),
            };
            let lo: usize = lo.parse().map_err(|_| bad())?;
            let hi: usize = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            if hi >= MAX_CPUS {
                return Err(PinError::TooHigh { cpu: hi });
            }
            set.extend(lo..=hi);
        }
        Ok(Self(set))
    }

    pub fn insert(&mut self, cpu: usize) {
        self.0.insert(cpu);
    }

    pub fn contains(&self, cpu: usize) -> bool {
        self.0.contains(&cpu)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().copied()
    }

    pub fn last(&self) -> Option<usize> {
        self.0.last().copied()
    }

    /// The CPUs of `self` that `other` lacks.
    pub fn outside(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.difference(&other.0).copied().collect())
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.intersection(&other.0).copied().collect())
    }

    fn to_cpu_set_t(&self) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut raw: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // Larger numbers cannot be named in a mask (parse refuses them).
        for cpu in self.iter().filter(|&c| c < MAX_CPUS) {
            // SAFETY: `cpu` < MAX_CPUS, so the bit is inside `raw`.
            unsafe { libc::CPU_SET(cpu, &mut raw) };
        }
        raw
    }

    fn from_cpu_set_t(raw: &libc::cpu_set_t) -> Self {
        // SAFETY: every `c` < MAX_CPUS, the number of bits in a cpu_set_t.
        Self(
            (0..MAX_CPUS)
                .filter(|&c| unsafe { libc::CPU_ISSET(c, raw) })
                .collect(),
        )
    }
}

impl FromIterator<usize> for CpuSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for CpuSet {
    /// Ranges as Linux prints them: `0-3,6`; the empty set prints as `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        let mut cpus = self.iter().peekable();
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match end == start {
                true => write!(f, "{start}")?,
                false => write!(f, "{start}-{end}")?,
            }
        }
        Ok(())
    }
}

/// The calling thread's affinity mask.
pub fn current_affinity() -> Result<CpuSet, PinError> {
    // SAFETY: all zeroes is a valid empty cpu_set_t.
    let mut raw: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is a writable cpu_set_t of the size passed; pid 0 is the calling thread.
    let ret =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut raw) };
    if ret != 0 {
        return Err(PinError::GetAffinity(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(CpuSet::from_cpu_set_t(&raw))
}

/// Restricts the calling thread to `cpus`.
pub fn set_current_affinity(cpus: &CpuSet) -> Result<(), PinError> {
    let raw = cpus.to_cpu_set_t();
    // SAFETY: `raw` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw) };
    if ret != 0 {
        return Err(PinError::SetAffinity {
            cpus: cpus.clone(),
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// Puts the calling thread under SCHED_FIFO at `prio`.
pub fn set_current_fifo(prio: u8) -> Result<(), PinError> {
    let param = libc::sched_param {
        sched_priority: prio.into(),
    };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if ret != 0 {
        return Err(PinError::SetFifo {
            prio,
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// Where one thread runs: its CPUs (None: the mask it inherits) and, for vCPUs, SCHED_FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadPin {
    pub cpus: Option<CpuSet>,
    pub fifo: Option<u8>,
}

impl ThreadPin {
    /// Applies the pin to the calling thread.
    pub fn apply(&self) -> Result<(), PinError> {
        if let Some(cpus) = &self.cpus {
            set_current_affinity(cpus)?;
        }
        if let Some(prio) = self.fifo {
            set_current_fifo(prio)?;
        }
        Ok(())
    }
}

/// The VM's threads and where they go; empty (the default) leaves every thread where it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// One entry per vCPU, by index, when any vCPU placement was asked.
    pub vcpus: Vec<ThreadPin>,
}

impl Placement {
    pub fn vcpu(&self, index: usize) -> Option<&ThreadPin> {
        self.vcpus.get(index)
    }

    /// Net queue worker `pair` runs on vCPU `pair`'s CPUs (the queue's interrupt goes to that
    /// vCPU), never under SCHED_FIFO: it must not starve its own vCPU of that CPU.
    pub fn net_worker(&self, pair: usize) -> Option<ThreadPin> {
        let cpus = self.vcpu(pair)?.cpus.clone()?;
        Some(ThreadPin {
            cpus: Some(cpus),
            fifo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print_as_linux_writes_them() {
        let s = CpuSet::parse("0-3,6, 8-9").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(s.to_string(), "0-3,6,8-9");
        assert_eq!(CpuSet::parse("5").unwrap().to_string(), "5");
        assert_eq!(CpuSet::parse("1,0,2").unwrap().to_string(), "0-2");
        assert!(CpuSet::parse("\n").unwrap().is_empty());
        assert_eq!(CpuSet::new().to_string(), "none");
        for bad in ["a", "3-1", "1-", "-1", "1,,2", "0x3"] {
            assert!(
                matches!(CpuSet::parse(bad), Err(PinError::BadList { .. })),
                "{bad}"
            );
        }
        assert_eq!(CpuSet::parse("4096"), Err(PinError::TooHigh { cpu: 4096 }));
    }

    #[test]
    fn set_operations() {
        let a = CpuSet::parse("0-3").unwrap();
        let b = CpuSet::parse("2-5").unwrap();
        assert_eq!(a.outside(&b).to_string(), "0-1");
        assert_eq!(a.intersection(&b).to_string(), "2-3");
        assert_eq!(a.last(), Some(3));
    }

    #[test]
    fn a_thread_pins_itself_within_its_mask_and_reads_it_back() {
        // On a std thread, so the test runner's threads keep their masks.
        std::thread::spawn(|| {
            let mask = current_affinity().expect("affinity");
            let first = mask.iter().next().expect("some CPU");
            set_current_affinity(&CpuSet::single(first)).expect("pin");
            assert_eq!(current_affinity().unwrap(), CpuSet::single(first));
            // A CPU that does not exist is refused by the kernel, not silently ignored.
            let err = set_current_affinity(&CpuSet::single(MAX_CPUS - 1)).unwrap_err();
            assert!(matches!(err, PinError::SetAffinity { .. }));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn net_workers_follow_their_vcpu_without_fifo() {
        let p = Placement {
            vcpus: vec![
                ThreadPin {
                    cpus: Some(CpuSet::single(3)),
                    fifo: Some(10),
                },
                ThreadPin {
                    cpus: None,
                    fifo: Some(10),
                },
            ],
        };
        assert_eq!(
            p.net_worker(0),
            Some(ThreadPin {
                cpus: Some(CpuSet::single(3)),
                fifo: None
            })
        );
        assert_eq!(p.net_worker(1), None);
        assert_eq!(p.net_worker(2), None);
        assert_eq!(Placement::default().net_worker(0), None);
    }
}
