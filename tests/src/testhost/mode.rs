//! Chooses where Linux guests run: directly on this host's /dev/kvm when it is hardware-backed, or
//! inside the KVM test host (an L1 Linux under QEMU TCG) when it is not.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Where the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On this host, against its hardware-backed /dev/kvm.
    Direct,
    /// Inside an L1 Linux booted under `qemu-system-x86_64 -accel tcg`, on its kvm-amd.
    TestHost,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::TestHost => "testhost",
        })
    }
}

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Run {
        mode: Mode,
        why: String,
    },
    /// Neither mode is possible and PADDOCK_SKIP_LINUX_TESTS=1 allows skipping.
    Skip {
        why: String,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModeError {
    #[error("PADDOCK_TEST_MODE={0:?} is not a mode: use `direct` or `testhost`, or unset it")]
    BadOverride(String),
    #[error("cannot run Linux guest tests: {0}; install what is missing (resources/setup/deps.sh) or set PADDOCK_SKIP_LINUX_TESTS=1 to skip them")]
    Impossible(String),
}

/// What the probe looks at; split out so the decision is testable without this host's state.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub override_mode: Option<String>,
    pub skip_allowed: bool,
    pub dev_kvm: bool,
    pub kvm_pvm_loaded: bool,
    /// `kvm_intel` or `kvm_amd` when loaded.
    pub hw_kvm_module: Option<String>,
    pub qemu: Option<PathBuf>,
    pub cpio: bool,
}

/// The first `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl HostFacts {
    pub fn gather() -> Self {
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        HostFacts {
            override_mode: std::env::var("PADDOCK_TEST_MODE")
                .ok()
                .filter(|v| !v.is_empty()),
            skip_allowed: std::env::var("PADDOCK_SKIP_LINUX_TESTS").as_deref() == Ok("1"),
            dev_kvm: Path::new("/dev/kvm").exists(),
            kvm_pvm_loaded: module("kvm_pvm"),
            hw_kvm_module: ["kvm_intel", "kvm_amd"]
                .into_iter()
                .find(|m| module(m))
                .map(String::from),
            qemu: find_on_path("qemu-system-x86_64"),
            cpio: find_on_path("cpio").is_some(),
        }
    }
}

fn direct_blocker(f: &HostFacts) -> Option<String> {
    if !f.dev_kvm {
        return Some("/dev/kvm does not exist".into());
    }
    if f.kvm_pvm_loaded {
        return Some(
            "/dev/kvm is served by kvm_pvm (guest kernel code is emulated; Linux cannot boot on it)"
                .into(),
        );
    }
    if f.hw_kvm_module.is_none() {
        return Some("neither kvm_intel nor kvm_amd is loaded".into());
    }
    None
}

fn testhost_blocker(f: &HostFacts) -> Option<String> {
    match (&f.qemu, f.cpio) {
        (None, _) => Some("qemu-system-x86_64 is not on PATH".into()),
        (_, false) => Some("cpio is not on PATH".into()),
        _ => None,
    }
}

/// Decides the mode from `facts`.
pub fn choose(facts: &HostFacts) -> Result<Choice, ModeError> {
    let forced = match facts.override_mode.as_deref() {
        None => None,
        Some("direct") => Some(Mode::Direct),
        Some("testhost") => Some(Mode::TestHost),
        Some(other) => return Err(ModeError::BadOverride(other.to_string())),
    };
    let direct = direct_blocker(facts);
    let testhost = testhost_blocker(facts);
    let unavailable = |why: String| {
        if facts.skip_allowed {
            Ok(Choice::Skip { why })
        } else {
            Err(ModeError::Impossible(why))
        }
    };
    match forced {
        Some(Mode::Direct) => match direct {
            None => Ok(Choice::Run {
                mode: Mode::Direct,
                why: "PADDOCK_TEST_MODE=direct".into(),
            }),
            Some(b) => unavailable(format!("PADDOCK_TEST_MODE=direct but {b}")),
        },
        Some(Mode::TestHost) => match testhost {
            None => Ok(Choice::Run {
                mode: Mode::TestHost,
                why: "PADDOCK_TEST_MODE=testhost".into(),
            }),
            Some(b) => unavailable(format!("PADDOCK_TEST_MODE=testhost but {b}")),
        },
        None => match (direct, testhost) {
            (None, _) => Ok(Choice::Run {
                mode: Mode::Direct,
                why: format!(
                    "/dev/kvm is hardware-backed ({} loaded, no kvm_pvm)",
                    facts.hw_kvm_module.as_deref().unwrap_or("?")
                ),
            }),
            (Some(d), None) => Ok(Choice::Run {
                mode: Mode::TestHost,
                why: format!("{d}; booting an L1 under QEMU TCG instead"),
            }),
            (Some(d), Some(t)) => unavailable(format!("direct mode: {d}; test host: {t}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvm_host() -> HostFacts {
        HostFacts {
            dev_kvm: true,
            kvm_pvm_loaded: true,
            qemu: Some("/usr/bin/qemu-system-x86_64".into()),
            cpio: true,
            ..HostFacts::default()
        }
    }

    #[test]
    fn kvm_pvm_means_test_host_and_hardware_kvm_means_direct() {
        let c = choose(&pvm_host()).unwrap();
        assert!(
            matches!(c, Choice::Run { mode: Mode::TestHost, ref why } if why.contains("kvm_pvm"))
        );
        let hw = HostFacts {
            kvm_pvm_loaded: false,
            hw_kvm_module: Some("kvm_amd".into()),
            ..pvm_host()
        };
        assert!(matches!(
            choose(&hw).unwrap(),
            Choice::Run {
                mode: Mode::Direct,
                ..
            }
        ));
    }

    #[test]
    fn overrides_are_obeyed_or_refused() {
        let f = HostFacts {
            override_mode: Some("direct".into()),
            ..pvm_host()
        };
        assert!(matches!(choose(&f), Err(ModeError::Impossible(ref w)) if w.contains("kvm_pvm")));
        let f = HostFacts {
            override_mode: Some("fast".into()),
            ..pvm_host()
        };
        assert_eq!(choose(&f), Err(ModeError::BadOverride("fast".into())));
    }

    #[test]
    fn nothing_possible_fails_unless_skipping_is_allowed() {
        let f = HostFacts {
            qemu: None,
            ..pvm_host()
        };
        assert!(matches!(choose(&f), Err(ModeError::Impossible(ref w)) if w.contains("qemu")));
        let f = HostFacts {
            skip_allowed: true,
            ..f
        };
        assert!(matches!(choose(&f), Ok(Choice::Skip { .. })));
    }
}
