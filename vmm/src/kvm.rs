//! Opening `/dev/kvm` and checking that it offers what Paddock relies on.

use kvm_ioctls::{Cap, Kvm, VmFd};
use std::os::fd::FromRawFd;
use std::path::Path;

pub const KVM_PATH: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{KVM_PATH} does not exist: load the kvm module (kvm_intel or kvm_amd) or run on a host with virtualization")]
    Missing,
    #[error("{KVM_PATH}: permission denied for uid {uid}: add the user to the group owning {KVM_PATH} (usually `kvm`) or grant it read-write access")]
    PermissionDenied { uid: u32 },
    #[error("cannot open {KVM_PATH}: {0}")]
    Open(std::io::Error),
    #[error("KVM API version {0} is not the stable version 12")]
    ApiVersion(i32),
    #[error("this KVM lacks {0}, which Paddock needs: use a newer host kernel")]
    MissingCap(&'static str),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
}

/// Capabilities every Paddock VM relies on.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens `/dev/kvm` read-write and checks the API version and required capabilities.
pub fn open() -> Result<Kvm, KvmError> {
    if !Path::new(KVM_PATH).exists() {
        return Err(KvmError::Missing);
    }
    let fd = Kvm::open_with_cloexec(true).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied {
            // SAFETY: getuid has no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
        },
        _ => KvmError::Open(std::io::Error::from_raw_os_error(e.errno())),
    })?;
    // SAFETY: `fd` was just opened on /dev/kvm by us and is owned by nothing else.
    let kvm = unsafe { Kvm::from_raw_fd(fd) };
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Largest vCPU count this KVM accepts.
pub fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus()
}

pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    kvm.create_vm().map_err(KvmError::CreateVm)
}
