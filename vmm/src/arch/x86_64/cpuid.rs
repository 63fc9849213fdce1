//! CPUID for one vCPU: what KVM supports on this host, with the topology of a single package of
//! `ncpus` cores (one thread each) and the APIC ids the MADT announces (APIC id = vCPU index).

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0} (is /dev/kvm a working KVM?)")]
    GetSupported(kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2 failed: {0}")]
    Set(kvm_ioctls::Error),
    #[error("CPUID table is full ({KVM_MAX_CPUID_ENTRIES} entries) while adding leaf {leaf:#x}: this host reports too many leaves")]
    TableFull { leaf: u32 },
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: EBX[23:16] holds the logical processor count of the package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0x8000_0001 ECX (AMD): the HTT bit counts cores, not threads.
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// Leaf 0xb / 0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Reads KVM's supported CPUID, adapts it to vCPU `id` of `ncpus` and sets it on `vcpu`.
pub fn configure(kvm: &Kvm, vcpu: &VcpuFd, id: u8, ncpus: u8) -> Result<(), CpuidError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::GetSupported)?;
    adjust(&mut cpuid, id, ncpus)?;
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::Set)
}

/// Bits of an APIC id taken by the core number (one package of `ncpus` cores).
pub fn core_id_bits(ncpus: u8) -> u32 {
    u32::from(ncpus.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites the topology and identity leaves of `cpuid` for vCPU `id` of `ncpus`.
pub fn adjust(cpuid: &mut CpuId, id: u8, ncpus: u8) -> Result<(), CpuidError> {
    let ncpus = ncpus.max(1);
    let apic_id = u32::from(id);
    let core_bits = core_id_bits(ncpus);
    // IDs the package can address, as leaf 1 and leaf 4 count them (a power of two).
    let addressable = (1u32 << core_bits).min(255);
    let amd = is_amd(cpuid);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (addressable << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if ncpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if !amd => {
                // EAX[31:26]: core ids in the package - 1; EAX[25:14]: threads sharing this cache - 1.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { addressable - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff)
                    | ((addressable - 1).min(63) << 26)
                    | ((sharing & 0xfff) << 14);
            }
            LEAF_EXT_FEATURES if amd => {
                if ncpus > 1 {
                    entry.ecx |= ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !ECX_CMP_LEGACY;
                }
            }
            LEAF_EXT_ADDR_SIZES if amd => {
                // ECX[7:0]: cores in the package - 1; ECX[15:12]: APIC id bits for the core number.
                entry.ecx = (entry.ecx & !0xf0ff) | (u32::from(ncpus) - 1) | (core_bits << 12);
            }
            LEAF_EXT_APIC_ID if amd => {
                // Extended APIC id; compute unit = core (1 thread each); node 0, one node.
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }

    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if cpuid.as_slice().iter().any(|e| e.function == leaf) {
            cpuid.retain(|e| e.function != leaf);
            for entry in topology_subleaves(leaf, apic_id, u32::from(ncpus), core_bits) {
                cpuid
                    .push(entry)
                    .map_err(|_| CpuidError::TableFull { leaf })?;
            }
        }
    }
    Ok(())
}

/// Leaf 0xb / 0x1f: an SMT level of one thread, a core level of `ncpus`, then the invalid level
/// that ends the enumeration. EDX is the x2APIC id at every sub-leaf.
fn topology_subleaves(
    leaf: u32,
    apic_id: u32,
    ncpus: u32,
    core_bits: u32,
) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, count: u32, level: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        subleaf(0, 0, 1, LEVEL_SMT),
        subleaf(1, core_bits, ncpus, LEVEL_CORE),
        subleaf(2, 0, 0, 0),
    ]
}

fn is_amd(cpuid: &CpuId) -> bool {
    cpuid.as_slice().iter().any(|e| {
        e.function == 0 && [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn intel_topology_for_vcpu_2_of_4() {
        let mut vendor = leaf(0, 0);
        // "GenuineIntel"
        (vendor.ebx, vendor.edx, vendor.ecx) = (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
        let mut l3 = leaf(4, 3);
        l3.eax = (3 << 5) | 3;
        let mut cpuid = CpuId::from_entries(&[
            vendor,
            leaf(1, 0),
            l3,
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0xb, 3),
        ])
        .expect("cpuid");
        adjust(&mut cpuid, 2, 4).expect("adjust");
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let l3 = find(&cpuid, 4, 3);
        assert_eq!(l3.eax >> 26, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(l3.eax & 0x3fff, (3 << 5) | 3);
        let smt = find(&cpuid, 0xb, 0);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
        assert_eq!(find(&cpuid, 0xb, 2).ecx, 2);
        assert!(!cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 0xb && e.index == 3));
    }

    #[test]
    fn amd_core_count_and_extended_apic_id() {
        let mut vendor = leaf(0, 0);
        (vendor.ebx, vendor.edx, vendor.ecx) = (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let mut sizes = leaf(0x8000_0008, 0);
        sizes.ecx = 0x0001_f00f;
        let mut cpuid = CpuId::from_entries(&[
            vendor,
            leaf(1, 0),
            leaf(0x8000_0001, 0),
            sizes,
            leaf(0x8000_001e, 0),
        ])
        .expect("cpuid");
        adjust(&mut cpuid, 5, 6).expect("adjust");
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 5);
        assert_eq!((sizes.ecx >> 12) & 0xf, 3);
        assert_eq!(
            sizes.ecx >> 16,
            1,
            "bits above the topology fields are kept"
        );
        assert_eq!(find(&cpuid, 0x8000_001e, 0).eax, 5);
        assert_ne!(find(&cpuid, 0x8000_0001, 0).ecx & ECX_CMP_LEGACY, 0);
        assert_eq!(find(&cpuid, 1, 0).ebx >> 24, 5);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut l1 = leaf(1, 0);
        l1.edx = EDX_HTT;
        let mut cpuid = CpuId::from_entries(&[l1]).expect("cpuid");
        adjust(&mut cpuid, 0, 1).expect("adjust");
        assert_eq!(find(&cpuid, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(3), 2);
    }
}
