//! Seccomp filters per thread category (see `rules` for the allow lists and why each entry is
//! there), installed through `vmm::threads` so that no thread runs without its filter.

mod filter;
pub mod rules;
pub mod sigsys;
pub mod syscall_names;

pub use filter::{clone3_fallback, compile, OnDenied};

use seccompiler::BpfProgram;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use vmm::threads::{self, ThreadCategory};

/// `--seccomp`: what a thread's filter does with a call outside its allow list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Report the call (thread, syscall name and number) and end the process.
    Enforce,
    /// Let the call through and have the kernel log it (for finding a missing rule).
    Log,
    /// No filters at all (debugging only).
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the {category} seccomp filter: {source}")]
    Compile {
        category: ThreadCategory,
        source: seccompiler::BackendError,
    },
    #[error("installing the SIGSYS reporter: {0}")]
    Handler(std::io::Error),
    #[error("seccomp is already set up in this process")]
    AlreadyEnabled,
    #[error(transparent)]
    Threads(#[from] threads::ThreadError),
}

/// The compiled filters of every category, plus the clone3 fallback filter.
pub struct Filters {
    by_category: BTreeMap<ThreadCategory, BpfProgram>,
    clone3: BpfProgram,
}

impl Filters {
    pub fn compile(on_denied: OnDenied) -> Result<Self, SeccompError> {
        let mut by_category = BTreeMap::new();
        for category in ThreadCategory::ALL {
            by_category.insert(category, compile(category, on_denied)?);
        }
        Ok(Self {
            by_category,
            clone3: clone3_fallback()?,
        })
    }

    /// Puts `category`'s filter on the calling thread (and sets no_new_privs, which it needs).
    pub fn install(&self, category: ThreadCategory) -> Result<(), String> {
        sigsys::remember_thread(category);
        let program = self
            .by_category
            .get(&category)
            .ok_or_else(|| format!("no filter compiled for {category}"))?;
        // The clone3 filter first: it allows seccomp(2), which the category filter may not.
        seccompiler::apply_filter(&self.clone3)
            .and_then(|()| seccompiler::apply_filter(program))
            .map_err(|e| {
                format!("{e}: the kernel needs CONFIG_SECCOMP_FILTER; or run with --seccomp off")
            })
    }
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

fn install_compiled(category: ThreadCategory) -> Result<(), String> {
    match FILTERS.get() {
        Some(filters) => filters.install(category),
        None => Err("seccomp filters were not compiled before threads started".into()),
    }
}

/// Sets up `mode` for the process: compiles every filter, installs the SIGSYS reporter and makes
/// `vmm::threads::spawn` install each new thread's filter. Call once, before any thread starts.
pub fn enable(mode: Mode) -> Result<(), SeccompError> {
    let on_denied = match mode {
        Mode::Enforce => OnDenied::Trap,
        Mode::Log => OnDenied::Log,
        Mode::Off => {
            eprintln!(
                "paddock: WARNING: --seccomp off: no thread has a seccomp filter; a guest escape \
                 into this process can make any system call. Use it only to debug."
            );
            return Ok(());
        }
    };
    let filters = Filters::compile(on_denied)?;
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyEnabled)?;
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    threads::set_filter_installer(install_compiled)?;
    Ok(())
}

/// For a process whose threads are started by a library rather than `vmm::threads` (the bundled
/// virtiofsd): puts `category`'s filter on the calling thread, with the SIGSYS reporter, before
/// any other thread exists. Threads started afterwards inherit it, so the category's list must
/// allow thread start itself.
pub fn install_own(category: ThreadCategory, mode: Mode) -> Result<(), String> {
    let on_denied = match mode {
        Mode::Enforce => OnDenied::Trap,
        Mode::Log => OnDenied::Log,
        Mode::Off => return Ok(()),
    };
    let program = compile(category, on_denied).map_err(|e| e.to_string())?;
    let clone3 = clone3_fallback().map_err(|e| e.to_string())?;
    sigsys::install_handler().map_err(|e| format!("installing the SIGSYS reporter: {e}"))?;
    sigsys::remember_thread(category);
    sigsys::remember_inherited(category);
    seccompiler::apply_filter(&clone3)
        .and_then(|()| seccompiler::apply_filter(&program))
        .map_err(|e| format!("{e}: the kernel needs CONFIG_SECCOMP_FILTER; or pass --seccomp off"))
}

#[cfg(test)]
mod tests;
