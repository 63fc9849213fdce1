//! Mapping guest RAM ranges, from anonymous memory or from one file at consecutive offsets.
//! Never `MAP_NORESERVE`: hugetlb pages are reserved by mmap itself, so a shortage is ENOMEM
//! here rather than a SIGBUS when the guest first touches a page.

use super::config::human_size;
use super::GuestMemoryMmap;
use std::fs::File;
use std::sync::Arc;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{FileOffset, GuestAddress, GuestRegionCollectionError, GuestRegionMmap};

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot map {mib} MiB of guest RAM at {start:#x}{pages}: {source}{hint}")]
    Mmap {
        mib: u64,
        start: u64,
        pages: String,
        source: MmapRegionError,
        hint: String,
    },
    #[error("guest RAM range at {0:#x} ends past the top of the address space: lower --memory")]
    Overflow(u64),
    #[error("guest RAM ranges do not fit together: {0}")]
    Layout(GuestRegionCollectionError),
}

/// How to map: which file (if any), shared or private, and which hugepage size the file has.
pub struct Mapping<'a> {
    pub file: Option<&'a Arc<File>>,
    pub shared: bool,
    pub hugepages: Option<u64>,
}

impl Mapping<'_> {
    fn flags(&self) -> i32 {
        let sharing = match self.shared {
            true => libc::MAP_SHARED,
            false => libc::MAP_PRIVATE,
        };
        match self.file {
            Some(_) => sharing,
            None => sharing | libc::MAP_ANONYMOUS,
        }
    }

    fn error(&self, start: u64, len: usize, source: MmapRegionError) -> MapError {
        let out_of_memory =
            matches!(&source, MmapRegionError::Mmap(e) if e.raw_os_error() == Some(libc::ENOMEM));
        let hint = match (self.hugepages, out_of_memory) {
            (Some(page), true) => format!(
                ": too few free {} hugepages (taken since the preflight check?): raise nr_hugepages or lower --memory",
                human_size(page)
            ),
            (None, true) => ": lower --memory".to_string(),
            _ => String::new(),
        };
        MapError::Mmap {
            mib: len as u64 >> 20,
            start,
            pages: self
                .hugepages
                .map(|p| format!(" with {} hugepages", human_size(p)))
                .unwrap_or_default(),
            source,
            hint,
        }
    }

    /// Maps every range; file-backed ranges take consecutive offsets from 0.
    pub fn map(&self, ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, MapError> {
        let mut regions = Vec::with_capacity(ranges.len());
        let mut offset = 0u64;
        for &(start, len) in ranges {
            let mut builder = MmapRegionBuilder::new(len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(self.flags())
                .with_hugetlbfs(self.hugepages.is_some());
            if let Some(file) = self.file {
                builder = builder.with_file_offset(FileOffset::from_arc(file.clone(), offset));
            }
            let mmap = builder.build().map_err(|e| self.error(start.0, len, e))?;
            let region = GuestRegionMmap::new(mmap, start).ok_or(MapError::Overflow(start.0))?;
            regions.push(region);
            offset += len as u64;
        }
        GuestMemoryMmap::from_regions(regions).map_err(MapError::Layout)
    }
}
