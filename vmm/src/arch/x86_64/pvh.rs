//! The PVH start info (`hvm_start_info`), its module list (the initramfs) and memory map.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::e820::MemoryMapEntry;
use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error(
        "the memory map has {count} entries but room is left for {max}: use fewer memory regions"
    )]
    TooManyMemmapEntries { count: usize, max: usize },
    #[error("cannot write the PVH start info at {addr:#x}: {source}")]
    Write {
        addr: u64,
        source: linux_loader::configurator::Error,
    },
}

/// hvm_start_info.magic ("xEn3" with the high bit of each byte flipped, as Xen defines it).
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
pub const START_INFO_VERSION: u32 = 1;

/// Writes start info, module list and memory map at their `layout` addresses.
pub fn write(
    mem: &GuestMemoryMmap,
    cmdline: GuestAddress,
    initramfs: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
    map: &[MemoryMapEntry],
) -> Result<GuestAddress, PvhError> {
    let max = ((layout::ZERO_PAGE_START - layout::PVH_MEMMAP) as usize)
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if map.len() > max {
        return Err(PvhError::TooManyMemmapEntries {
            count: map.len(),
            max,
        });
    }
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();

    let (nr_modules, modlist_paddr) = match initramfs {
        Some(_) => (1, layout::PVH_MODLIST),
        None => (0, 0),
    };
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        nr_modules,
        modlist_paddr,
        cmdline_paddr: cmdline.0,
        rsdp_paddr: rsdp.0,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let addr = GuestAddress(layout::PVH_START_INFO);
    let mut params = BootParams::new(&start_info, addr);
    if let Some((paddr, size)) = initramfs {
        let module = hvm_modlist_entry {
            paddr: paddr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST));
    }
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|source| PvhError::Write {
        addr: addr.0,
        source,
    })?;
    Ok(addr)
}
