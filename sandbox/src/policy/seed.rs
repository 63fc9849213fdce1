//! Every line of the seed (the SELinux and SCC grants a KubeVirt virt-launcher pod gets) and what
//! Paddock does with it. `paddock policy selinux|scc` and docs/security.md follow this table.

/// One grant of the seed document.
pub struct SeedGrant {
    /// The grant as the seed writes it.
    pub seed: &'static str,
    /// The CIL statement Paddock's module carries for it; None when Paddock does not need it.
    pub cil: Option<&'static str>,
    /// What in Paddock uses it, or why it is not needed.
    pub why: &'static str,
}

pub const SELINUX: &[SeedGrant] = &[
    SeedGrant {
        seed: "allow process self (tun_socket (relabelfrom relabelto attach_queue))",
        cil: Some("(allow process self (tun_socket (relabelfrom relabelto attach_queue)))"),
        why: "net: each queue pair opens the node agent's multi-queue tap (TUNSETIFF on an existing tap: relabelfrom/relabelto) and VIRTIO_NET_CTRL_MQ attaches/detaches queues with TUNSETQUEUE (attach_queue) on the net-worker threads",
    },
    SeedGrant {
        seed: "allow process proc_type (file (getattr open read))",
        cil: Some("(allow process proc_type (file (getattr open read)))"),
        why: "start-up reads /proc/meminfo (memory preflight) and /proc/self/maps (std finds the main thread's stack); CPU placement reads the cgroup cpuset and /proc/cpuinfo; the API thread reads /proc/self for metrics (its filter allows read-only openat only)",
    },
    SeedGrant {
        seed: "allow process self (netlink_audit_socket (nlmsg_relay))",
        cil: None,
        why: "only libvirtd relays audit messages; Paddock has no libvirtd, and every seccomp filter denies socket(AF_NETLINK, ...)",
    },
    SeedGrant {
        seed: "allow process hugetlbfs_t (dir (add_name create write remove_name rmdir setattr))",
        cil: Some("(allow process hugetlbfs_t (dir (add_name create write remove_name rmdir)))"),
        why: "the hugetlbfs RAM backend makes a per-VM directory on the pod's mount and removes it once the file is mapped; setattr is left out: Paddock never chmods or chowns there",
    },
    SeedGrant {
        seed: "allow process hugetlbfs_t (file (create unlink))",
        cil: Some("(allow process hugetlbfs_t (file (create unlink)))"),
        why: "the hugetlbfs RAM backend creates the backing file, maps it, and unlinks it at once so nothing is left after a crash",
    },
    SeedGrant {
        seed: "allow process nfs_t (dir (mounton))",
        cil: None,
        why: "only a virtiofsd that sandboxes itself in a mount namespace mounts; Paddock's bundled virtiofsd runs without one (as KubeVirt runs virtiofsd with --sandbox=none) and its filter denies mount",
    },
    SeedGrant {
        seed: "allow process proc_t (dir (mounton))",
        cil: None,
        why: "as nfs_t mounton: no mount namespace sandbox, mount(2) denied by every filter",
    },
    SeedGrant {
        seed: "allow process proc_t (filesystem (mount unmount))",
        cil: None,
        why: "as nfs_t mounton: Paddock mounts nothing",
    },
];

pub const SCC: &[SeedGrant] = &[
    SeedGrant {
        seed: "scc.AllowHostDirVolumePlugin = true",
        cil: None,
        why: "hostPath volumes: the hugetlbfs mount, a virtiofs share directory, a tap fd socket from the node agent",
    },
    SeedGrant {
        seed: "scc.AllowPrivilegedContainer = false",
        cil: None,
        why: "kept: Paddock refuses to run privileged (privilege.rs refuses root without --user and drops everything else)",
    },
    SeedGrant {
        seed: "SYS_NICE",
        cil: None,
        why: "SCHED_FIFO vCPUs and pinning beyond the default CPU mask; kept only when the configuration asks for it",
    },
    SeedGrant {
        seed: "NET_BIND_SERVICE",
        cil: None,
        why: "the optional DHCP responder for the guest (port 67); kept only when configured",
    },
    SeedGrant {
        seed: "SYS_PTRACE",
        cil: None,
        why: "not needed: no libvirt looking for swtpm's PID; never kept, and ptrace(2) is denied by every filter",
    },
];
