//! memfd-backed RAM: with `MFD_HUGETLB` for hugepages without a hugetlbfs mount, or plain for
//! `shared=on`, so that another process (a vhost-user backend) can map the same pages.

use super::config::human_size;
use std::fs::File;
use std::os::fd::FromRawFd;

#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    #[error("memfd_create for guest RAM{pages} failed: {source}: {hint}")]
    Create {
        pages: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot size the guest RAM memfd to {size} bytes: {source}: lower --memory")]
    Resize { size: u64, source: std::io::Error },
}

/// `MFD_HUGETLB` with the page size encoded as its log2 in the flag's upper bits.
fn flags(hugepages: Option<u64>) -> libc::c_uint {
    let base = libc::MFD_CLOEXEC;
    match hugepages {
        Some(page) => base | libc::MFD_HUGETLB | (page.trailing_zeros() << libc::MFD_HUGE_SHIFT),
        None => base,
    }
}

/// An anonymous file of `size` bytes; its pages are allocated when first touched or prefaulted.
pub fn create(size: u64, hugepages: Option<u64>) -> Result<File, MemfdError> {
    let name = c"paddock-guest-ram";
    // SAFETY: `name` is NUL-terminated and the call only returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags(hugepages)) };
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        let hint = match (hugepages, source.raw_os_error()) {
            (Some(_), Some(libc::EINVAL)) => {
                "the kernel does not offer that hugepage size to memfds: use another hugepages= size"
            }
            (_, Some(libc::EMFILE | libc::ENFILE)) => "raise the open file limit",
            _ => "the host kernel needs memfd support (Linux 3.17, 4.14 for hugetlb)",
        };
        return Err(MemfdError::Create {
            pages: hugepages
                .map(|p| format!(" with {} hugepages", human_size(p)))
                .unwrap_or_default(),
            source,
            hint,
        });
    }
    // SAFETY: `fd` is a descriptor this call just created and nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemfdError::Resize { size, source })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlb_flags_encode_the_page_size() {
        assert_eq!(
            flags(Some(2 << 20)),
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB
        );
        assert_eq!(
            flags(Some(1 << 30)),
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_1GB
        );
        assert_eq!(flags(None), libc::MFD_CLOEXEC);
    }

    #[test]
    fn plain_memfd_has_the_size() {
        let f = create(1 << 20, None).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    }
}
