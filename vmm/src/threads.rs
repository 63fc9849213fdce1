//! The one way Paddock starts a thread: [`spawn`] runs the process-wide filter installer inside the
//! new thread before the thread's work, so no thread runs Paddock code without its seccomp filter.
//!
//! The binary sets the installer once ([`set_filter_installer`]); without one (library users, unit
//! tests) threads run unfiltered. A thread inherits the filter of the thread that clones it, and
//! filters only ever narrow, so a thread cloned by a vCPU thread could never do more than a vCPU.
//! Hence one service thread, the spawner, is started by [`set_filter_installer`] before any filter
//! exists; its own filter is the union of every category's list plus what starting a thread takes.
//! [`spawn`], called from any thread (a vCPU activating a device included), hands the work to the
//! spawner over a channel and waits for the new thread's filter result: every thread thus runs
//! under exactly its own category's list, and no other thread needs `clone`.

use crate::pinning::ThreadPin;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use vmm_sys_util::signal::Killable;

/// What a thread does, which decides the system calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadCategory {
    /// The main thread: builds the VM, waits for its end, tears it down; also console input.
    Vmm,
    /// The control API server.
    Api,
    /// A vCPU: KVM_RUN and the exits it dispatches to device models.
    Vcpu,
    /// A virtio-net queue-pair worker: tap reads/writes, eventfds.
    NetWorker,
    /// The vhost-user frontend talking to a virtiofsd.
    VhostUser,
    /// The bundled virtiofsd backend: a process of its own (`paddock virtiofsd`) whose threads
    /// vhost-user-backend starts; they inherit the filter its main thread installs, so this
    /// category is never spawned here.
    Virtiofsd,
    /// The one thread that clones every other (see the module docs); started by
    /// [`set_filter_installer`], never by [`spawn`].
    Spawner,
}

impl ThreadCategory {
    /// The categories a thread can be [`spawn`]ed with.
    pub const SPAWNABLE: [ThreadCategory; 5] = [
        ThreadCategory::Vmm,
        ThreadCategory::Api,
        ThreadCategory::Vcpu,
        ThreadCategory::NetWorker,
        ThreadCategory::VhostUser,
    ];

    /// Every category with a filter: the spawnable ones and the spawner.
    pub const ALL: [ThreadCategory; 7] = [
        ThreadCategory::Vmm,
        ThreadCategory::Api,
        ThreadCategory::Vcpu,
        ThreadCategory::NetWorker,
        ThreadCategory::VhostUser,
        ThreadCategory::Virtiofsd,
        ThreadCategory::Spawner,
    ];

    /// The name used on the command line, in `paddock policy seccomp` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ThreadCategory::Vmm => "vmm",
            ThreadCategory::Api => "api",
            ThreadCategory::Vcpu => "vcpu",
            ThreadCategory::NetWorker => "net-worker",
            ThreadCategory::VhostUser => "vhost-user",
            ThreadCategory::Virtiofsd => "virtiofsd",
            ThreadCategory::Spawner => "spawner",
        }
    }
}

impl std::fmt::Display for ThreadCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Installs the calling thread's filter for a category; the error text names what failed.
pub type FilterInstaller = fn(ThreadCategory) -> Result<(), String>;

static INSTALLER: OnceLock<FilterInstaller> = OnceLock::new();

/// Work for the spawner thread: start one thread and send its outcome to the caller.
type SpawnJob = Box<dyn FnOnce() + Send>;

/// The spawner thread's inbox; set together with the installer.
static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();

/// The spawner thread's name (also what SIGSYS reports call it).
pub const SPAWNER_THREAD_NAME: &str = "paddock-spawner";

#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("the seccomp filter installer is already set: set it once, at start-up")]
    InstallerAlreadySet,
    #[error("thread `{name}`: the spawner thread is gone (it panicked), so no thread can start")]
    SpawnerGone { name: String },
    #[error("thread `{name}`: the {category} category is not started here (spawner: the spawner thread's alone; virtiofsd: its own process); pick the category of the thread's work")]
    NotSpawnable {
        name: String,
        category: ThreadCategory,
    },
    #[error("thread `{name}`: the OS refused to start it: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("thread `{name}` ({category}): installing its seccomp filter failed, it did not run: {reason}")]
    Filter {
        name: String,
        category: ThreadCategory,
        reason: String,
    },
    #[error("thread `{name}`: placing it failed, it did not run: {reason}")]
    Pin { name: String, reason: String },
    #[error("thread `{name}` ended before reporting its seccomp filter (it panicked while installing it)")]
    Vanished { name: String },
    #[error("{category} seccomp filter for the calling thread: {reason}")]
    CurrentThread {
        category: ThreadCategory,
        reason: String,
    },
}

/// Sets the hook that installs a category's filter in the calling thread, and starts the spawner
/// thread under its [`ThreadCategory::Spawner`] filter. Once per process, before the calling thread
/// (or any other) installs a filter: the spawner inherits the caller's.
pub fn set_filter_installer(installer: FilterInstaller) -> Result<(), ThreadError> {
    INSTALLER
        .set(installer)
        .map_err(|_| ThreadError::InstallerAlreadySet)?;
    let (jobs, inbox) = mpsc::channel::<SpawnJob>();
    // The spawner itself starts like any other thread: its filter first, then its loop.
    let _detached = spawn_here(
        ThreadCategory::Spawner,
        SPAWNER_THREAD_NAME.into(),
        None,
        move || {
            // Ends when every sender is gone, i.e. never while the process runs.
            for job in inbox {
                job();
            }
        },
    )?;
    SPAWNER
        .set(jobs)
        .map_err(|_| ThreadError::InstallerAlreadySet)
}

fn run_installer(category: ThreadCategory) -> Result<(), String> {
    match INSTALLER.get() {
        Some(install) => install(category),
        None => Ok(()),
    }
}

/// Installs `category`'s filter on the calling thread (the main thread, once its helpers run).
pub fn install_for_current_thread(category: ThreadCategory) -> Result<(), ThreadError> {
    run_installer(category).map_err(|reason| ThreadError::CurrentThread { category, reason })
}

/// A thread started by [`spawn`]: its work started only after its filter was in place.
pub struct ThreadHandle<T> {
    // None only if the work did not run, which `spawn` reports as an error instead of a handle.
    inner: JoinHandle<Option<T>>,
}

impl<T> ThreadHandle<T> {
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }

    /// Waits for the thread; `Err` carries its panic payload.
    pub fn join(self) -> std::thread::Result<T> {
        self.inner
            .join()
            .and_then(|done| done.ok_or_else(|| Box::new("the thread's work never ran") as Box<_>))
    }

    /// Sends `signal` to the thread (e.g. to interrupt a blocking call).
    pub fn kill(&self, signal: i32) -> std::io::Result<()> {
        self.inner
            .kill(signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Starts `f` on a new thread named `name`, after the `category` filter is installed in it.
/// Returns only once the filter is in place; if it cannot be, `f` never runs and the error says why.
/// Callable from any thread: once filters are set up, the spawner thread does the cloning.
pub fn spawn<F, T>(
    category: ThreadCategory,
    name: impl Into<String>,
    f: F,
) -> Result<ThreadHandle<T>, ThreadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    spawn_pinned(category, name, None, f)
}

/// [`spawn`], with the new thread first placed by `pin` (its CPUs, SCHED_FIFO): inside the thread,
/// before its filter, so it never runs its work, nor guest code, anywhere else.
pub fn spawn_pinned<F, T>(
    category: ThreadCategory,
    name: impl Into<String>,
    pin: Option<ThreadPin>,
    f: F,
) -> Result<ThreadHandle<T>, ThreadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.into();
    if !ThreadCategory::SPAWNABLE.contains(&category) {
        // The spawner's list is the union of all others: no worker may run under it; virtiofsd
        // threads live in a process of their own.
        return Err(ThreadError::NotSpawnable { name, category });
    }
    let Some(spawner) = SPAWNER.get() else {
        // No filters in this process: nothing narrows, the caller can clone directly.
        return spawn_here(category, name, pin, f);
    };
    let (reply, outcome) = mpsc::sync_channel(1);
    let job_name = name.clone();
    let job: SpawnJob = Box::new(move || {
        // The caller waits on this; if it is gone, the thread still runs detached.
        let _ = reply.send(spawn_here(category, job_name, pin, f));
    });
    spawner
        .send(job)
        .map_err(|_| ThreadError::SpawnerGone { name: name.clone() })?;
    outcome
        .recv()
        .map_err(|_| ThreadError::SpawnerGone { name })?
}

/// How a new thread's set-up went, reported to the thread that asked for it.
enum Startup {
    Ready,
    Pin(String),
    Filter(String),
}

/// Clones the thread from the calling thread and waits for its placement and filter result.
fn spawn_here<F, T>(
    category: ThreadCategory,
    name: String,
    pin: Option<ThreadPin>,
    f: F,
) -> Result<ThreadHandle<T>, ThreadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (report, installed) = mpsc::sync_channel::<Startup>(1);
    let inner = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Placement first: it runs under the filter inherited from the spawner, which allows
            // it, so the thread's own filter need not.
            let placed = pin.map_or(Ok(()), |p| p.apply());
            let result = match placed {
                Err(e) => Startup::Pin(e.to_string()),
                Ok(()) => match run_installer(category) {
                    Ok(()) => Startup::Ready,
                    Err(reason) => Startup::Filter(reason),
                },
            };
            let ok = matches!(result, Startup::Ready);
            // The spawner waits on this; if it is gone, nobody needs the outcome.
            let _ = report.send(result);
            drop(report);
            ok.then(f)
        })
        .map_err(|source| ThreadError::Spawn {
            name: name.clone(),
            source,
        })?;
    match installed.recv() {
        Ok(Startup::Ready) => Ok(ThreadHandle { inner }),
        Ok(Startup::Pin(reason)) => {
            let _ = inner.join();
            Err(ThreadError::Pin { name, reason })
        }
        Ok(Startup::Filter(reason)) => {
            // The thread ends by itself without running `f`; its result carries nothing.
            let _ = inner.join();
            Err(ThreadError::Filter {
                name,
                category,
                reason,
            })
        }
        Err(_) => {
            let _ = inner.join();
            Err(ThreadError::Vanished { name })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    // The installer is process-wide, so one test exercises every path in order.
    static REFUSE_API: AtomicBool = AtomicBool::new(false);
    static INSTALLED: std::sync::Mutex<Vec<(ThreadCategory, Option<String>)>> =
        std::sync::Mutex::new(Vec::new());

    fn installed() -> Vec<(ThreadCategory, Option<String>)> {
        INSTALLED.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn test_installer(category: ThreadCategory) -> Result<(), String> {
        let name = std::thread::current().name().map(str::to_owned);
        if let Ok(mut list) = INSTALLED.lock() {
            list.push((category, name.clone()));
        }
        if category == ThreadCategory::Api && REFUSE_API.load(Ordering::SeqCst) {
            return Err(format!("refused in {name:?}"));
        }
        Ok(())
    }

    #[test]
    fn installer_runs_in_the_new_thread_and_a_refusal_stops_the_work() {
        // Without an installer, threads run unfiltered.
        let h = spawn(ThreadCategory::Vcpu, "no-hook", || 7).expect("spawn");
        assert_eq!(h.join().expect("join"), 7);
        assert!(matches!(
            spawn(ThreadCategory::Spawner, "wide", || ()),
            Err(ThreadError::NotSpawnable { .. })
        ));

        set_filter_installer(test_installer).expect("first set");
        assert!(matches!(
            set_filter_installer(test_installer),
            Err(ThreadError::InstallerAlreadySet)
        ));
        // The spawner started with its own filter, in its own thread.
        assert_eq!(
            installed(),
            vec![(
                ThreadCategory::Spawner,
                Some(SPAWNER_THREAD_NAME.to_owned())
            )]
        );

        // A spawned thread spawns another: each gets its own category, in its own thread.
        let outer = spawn(ThreadCategory::Vcpu, "CPU 0/KVM", || {
            spawn(ThreadCategory::NetWorker, "net0-qp0", || 9)
                .map(|h| h.join().ok())
                .ok()
                .flatten()
        })
        .expect("spawn");
        assert_eq!(outer.join().expect("join"), Some(9));
        assert_eq!(
            installed()[1..],
            [
                (ThreadCategory::Vcpu, Some("CPU 0/KVM".to_owned())),
                (ThreadCategory::NetWorker, Some("net0-qp0".to_owned())),
            ]
        );

        let h = spawn(ThreadCategory::Api, "api-ok", || {
            std::thread::current().name().map(str::to_owned)
        })
        .expect("spawn");
        assert_eq!(h.join().expect("join").as_deref(), Some("api-ok"));

        REFUSE_API.store(true, Ordering::SeqCst);
        let ran = std::sync::Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let err = match spawn(ThreadCategory::Api, "api-refused", move || {
            flag.store(true, Ordering::SeqCst)
        }) {
            Ok(_) => panic!("a refused filter must fail the spawn"),
            Err(e) => e,
        };
        let text = err.to_string();
        // The installer ran inside the new thread: it saw the thread's name.
        assert!(text.contains("refused in Some(\"api-refused\")"), "{text}");
        assert!(
            !ran.load(Ordering::SeqCst),
            "the work ran without its filter"
        );
        assert!(install_for_current_thread(ThreadCategory::Api).is_err());
        assert!(install_for_current_thread(ThreadCategory::Vmm).is_ok());
    }
}
