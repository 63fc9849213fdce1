use super::allowed::{discover_with, Allowed, Cpuset};
use super::options::{Affinity, CpuOptions};
use super::plan::{resolve, Plan};
use super::*;
use std::path::PathBuf;
use vmm::memory::hugepages::HostPaths;
use vmm::pinning::{CpuSet, ThreadPin};

fn set(text: &str) -> CpuSet {
    CpuSet::parse(text).expect("cpu list")
}

fn parse(text: &str) -> CpuOptions {
    CpuOptions::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn parse_err(text: &str) -> String {
    match CpuOptions::parse(text) {
        Ok(o) => panic!("{text} parsed as {o:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn plain_counts_keep_working() {
    for (text, boot) in [("2", 2), ("boot=4", 4), ("0", 0)] {
        let o = parse(text);
        assert_eq!(o.boot, boot);
        assert_eq!(o.affinity, Affinity::Inherit);
        assert!(o.emulator.is_none() && o.realtime.is_none());
        assert!(!o.places_threads());
    }
    assert!(parse_err("4096").contains("boot=`4096`"));
    assert!(parse_err("two").contains("whole number of vCPUs"));
    assert!(parse_err("boot=2,color=red").contains("unknown key `color`"));
    assert!(parse_err("boot=2,boot=3").contains("given twice"));
}

#[test]
fn full_syntax() {
    let o = parse("boot=3,affinity=0@[2],1@[3-4],2@[5,7],emulator=0-1,realtime=fifo:10");
    assert_eq!(o.boot, 3);
    assert_eq!(
        o.affinity,
        Affinity::Explicit(vec![(0, set("2")), (1, set("3-4")), (2, set("5,7"))])
    );
    assert_eq!(o.emulator, Some(set("0-1")));
    assert_eq!(o.realtime, Some(10));
    assert!(o.places_threads());

    // Keys in any order; a list with commas continues the key before it; brackets optional.
    let o = parse("2,emulator=0,3,affinity=1@2,0@[1]");
    assert_eq!(o.emulator, Some(set("0,3")));
    assert_eq!(
        o.affinity,
        Affinity::Explicit(vec![(0, set("1")), (1, set("2"))])
    );
    assert_eq!(parse("boot=2,affinity=auto").affinity, Affinity::Auto);
}

#[test]
fn syntax_errors_say_what_is_wrong() {
    for (text, needle) in [
        (
            "boot=2,affinity=2@[0]",
            "names vCPU 2 but boot=2 has vCPUs 0 to 1",
        ),
        ("boot=2,affinity=0@[0],0@[1]", "gives vCPU 0 twice"),
        ("boot=2,affinity=0@[1", "leaves a `[` open"),
        ("boot=2,affinity=0@1]", "closes a `]`"),
        ("boot=2,affinity=x@[1]", "`x` is not a vCPU number"),
        ("boot=2,affinity=0@[]", "the CPU list is empty"),
        ("boot=2,affinity=0@[a]", "is not a CPU list"),
        ("boot=2,affinity=0@[1]x", "follows a `]`"),
        ("boot=2,affinity=first", "write auto or VCPU@[CPUS]"),
        ("boot=2,emulator=", "emulator: the CPU list is empty"),
        ("boot=2,realtime=rr:5", "write realtime=fifo:PRIO"),
        ("boot=2,realtime=fifo:0", "from 1 to 99"),
        ("boot=2,realtime=fifo:100", "from 1 to 99"),
        ("boot=2,3", "`3` is not key=value"),
    ] {
        let err = parse_err(text);
        assert!(err.contains(needle), "{text}: {err}");
        assert!(err.starts_with("--cpus: "), "{text}: {err}");
    }
}

fn allowed(cpus: &str) -> Allowed {
    Allowed {
        cpus: set(cpus),
        mask: set(cpus),
        cpuset: None,
    }
}

fn pins(plan: &Plan) -> Vec<(Option<String>, Option<u8>)> {
    plan.placement
        .vcpus
        .iter()
        .map(|p| (p.cpus.as_ref().map(ToString::to_string), p.fifo))
        .collect()
}

#[test]
fn auto_pins_one_to_one_and_the_emulator_takes_the_last_cpu() {
    let plan = resolve(&parse("boot=2,affinity=auto"), &allowed("4-7")).unwrap();
    assert_eq!(
        pins(&plan),
        vec![(Some("4".into()), None), (Some("5".into()), None)]
    );
    assert_eq!(plan.emulator, Some(set("7")));
    assert_eq!(plan.describe(), "vCPU 0 -> 4, vCPU 1 -> 5, emulator -> 7");
    // Net worker i follows vCPU i.
    assert_eq!(
        plan.placement.net_worker(1),
        Some(ThreadPin {
            cpus: Some(set("5")),
            fifo: None
        })
    );
    // An explicit emulator wins over the last CPU.
    let plan = resolve(&parse("boot=2,affinity=auto,emulator=6"), &allowed("4-7")).unwrap();
    assert_eq!(plan.emulator, Some(set("6")));
}

#[test]
fn auto_refuses_more_vcpus_than_cpus() {
    let err = resolve(&parse("boot=3,affinity=auto"), &allowed("0-1")).unwrap_err();
    assert!(matches!(
        err,
        PlacementError::AutoTooFew {
            vcpus: 3,
            count: 2,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains("lower boot= to 2"), "{msg}");
    assert!(msg.contains("may use 2 CPUs: 0-1 (affinity mask"), "{msg}");
}

#[test]
fn explicit_affinity_inside_the_allowed_set() {
    let plan = resolve(&parse("boot=2,affinity=0@[1],1@[0]"), &allowed("0-1")).unwrap();
    assert_eq!(
        pins(&plan),
        vec![(Some("1".into()), None), (Some("0".into()), None)]
    );
    assert_eq!(plan.emulator, None);
    // A vCPU left out keeps its inherited mask when no emulator set is asked...
    let plan = resolve(&parse("boot=2,affinity=1@[0]"), &allowed("0-3")).unwrap();
    assert_eq!(pins(&plan), vec![(None, None), (Some("0".into()), None)]);
    // ...and is set back to the allowed set when the main thread moves to the emulator CPUs.
    let plan = resolve(&parse("boot=2,affinity=1@[0],emulator=3"), &allowed("0-3")).unwrap();
    assert_eq!(
        pins(&plan),
        vec![(Some("0-3".into()), None), (Some("0".into()), None)]
    );
    let plan = resolve(&parse("boot=2,emulator=3"), &allowed("0-3")).unwrap();
    assert_eq!(
        pins(&plan),
        vec![(Some("0-3".into()), None), (Some("0-3".into()), None)]
    );
}

#[test]
fn cpus_outside_the_allowed_set_are_refused_with_the_set_and_its_source() {
    let limited = Allowed {
        cpus: set("0"),
        mask: set("0"),
        cpuset: Some(Cpuset {
            file: PathBuf::from("/sys/fs/cgroup/pod/cpuset.cpus.effective"),
            cpus: set("0-1"),
        }),
    };
    let err = resolve(&parse("boot=2,affinity=0@[0],1@[1]"), &limited).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--cpus: CPU 1 for vCPU 1 is outside the CPUs paddock may use: 0 (affinity mask 0, \
         cgroup cpuset 0-1 in /sys/fs/cgroup/pod/cpuset.cpus.effective): pick CPUs from that set, \
         or start paddock with CPU 1 in its cpuset and affinity mask"
    );
    let err = resolve(&parse("boot=1,emulator=0-2"), &limited).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("--cpus: CPU 1-2 for the emulator threads is outside"));
    assert!(matches!(
        resolve(&parse("boot=1,affinity=auto"), &allowed("")),
        Err(PlacementError::NoCpus(_))
    ));
}

#[test]
fn realtime_goes_on_every_vcpu_and_needs_sys_nice_kept() {
    let o = parse("boot=2,realtime=fifo:10");
    let plan = resolve(&o, &allowed("0-1")).unwrap();
    assert_eq!(pins(&plan), vec![(None, Some(10)), (None, Some(10))]);
    assert_eq!(plan.placement.net_worker(0), None);
    assert!(needed_caps(&o).contains(&caps::Capability::CAP_SYS_NICE));
    assert!(needed_caps(&parse("boot=2,affinity=auto,emulator=1")).is_empty());
    assert_eq!(
        resolve(&parse("2"), &allowed("0-1")).unwrap(),
        Plan::default()
    );
}

/// A cgroup tree with `cpus` in `cpuset.cpus.effective` of `holder` and the process in `own`.
fn fake_cgroup(holder: &str, cpus: &str, own: &str) -> (tempfile::TempDir, HostPaths) {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("cgroup");
    let own_dir = mount.join(own.trim_start_matches('/'));
    std::fs::create_dir_all(&own_dir).unwrap();
    let holder_dir = mount.join(holder.trim_start_matches('/'));
    std::fs::write(
        holder_dir.join("cpuset.cpus.effective"),
        format!("{cpus}\n"),
    )
    .unwrap();
    std::fs::write(root.path().join("self-cgroup"), format!("0::{own}\n")).unwrap();
    let paths = HostPaths {
        pools: root.path().join("pools"),
        own_cgroup: root.path().join("self-cgroup"),
        cgroup2_mount: Some(mount),
    };
    (root, paths)
}

#[test]
fn the_cpuset_of_the_own_cgroup_or_the_nearest_parent_limits_the_mask() {
    let (_root, paths) = fake_cgroup("/kubepods/pod1", "2-3", "/kubepods/pod1");
    let a = discover_with(&paths, set("0-7")).unwrap();
    assert_eq!(a.cpus, set("2-3"));
    assert_eq!(a.mask, set("0-7"));
    let file = a.cpuset.as_ref().unwrap().file.clone();
    assert!(file.ends_with("kubepods/pod1/cpuset.cpus.effective"));
    assert!(a
        .describe()
        .starts_with("2-3 (affinity mask 0-7, cgroup cpuset 2-3 in "));

    // A container cgroup without the cpuset controller uses its pod's CPUs.
    let (_root, paths) = fake_cgroup("/kubepods/pod1", "1-2", "/kubepods/pod1/ctr");
    let a = discover_with(&paths, set("0-1")).unwrap();
    assert_eq!(a.cpus, set("1"));

    // No cgroup v2: the mask alone.
    let (_root, mut paths) = fake_cgroup("/", "0-3", "/x");
    paths.cgroup2_mount = None;
    let a = discover_with(&paths, set("0-1")).unwrap();
    assert_eq!((a.cpus, a.cpuset), (set("0-1"), None));
}

#[test]
fn this_process_may_use_at_least_its_own_cpu() {
    let a = allowed::discover().expect("discover");
    assert!(!a.cpus.is_empty());
    assert!(a.cpus.outside(&a.mask).is_empty());
}
