//! `paddock policy seccomp [--summary]`: the allow list of every thread category.

use crate::seccomp::rules::{allow_list, syscall_count};
use vmm::threads::ThreadCategory;

/// Category, system call, argument condition and reason, one entry a line, tab-separated.
pub fn table() -> String {
    let mut out = String::from("# category\tsyscall\tcondition\treason\n");
    for category in ThreadCategory::ALL {
        for allow in allow_list(category) {
            out.push_str(&format!(
                "{category}\t{}\t{}\t{}\n",
                allow.call, allow.when, allow.reason
            ));
        }
    }
    out.push_str("# everything else: SIGSYS report naming the thread and call, then exit 159 (--seccomp log: allowed and logged by the kernel)\n");
    out
}

/// The number of distinct system calls each category may make.
pub fn summary() -> String {
    let mut out = String::from("# category\tsyscalls\tentries\n");
    for category in ThreadCategory::ALL {
        out.push_str(&format!(
            "{category}\t{}\t{}\n",
            syscall_count(category),
            allow_list(category).len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_kvm_run_for_vcpus_with_a_reason() {
        let t = table();
        assert!(
            t.lines()
                .any(|l| l.starts_with("vcpu\tioctl\targ1 == KVM_RUN (0xae80)\trun the vCPU")),
            "{t}"
        );
        assert!(t
            .lines()
            .skip(1)
            .all(|l| l.starts_with('#') || l.split('\t').count() == 4));
    }

    #[test]
    fn summary_has_one_line_per_category() {
        let s = summary();
        assert_eq!(s.lines().count(), 1 + ThreadCategory::ALL.len());
        assert!(s.contains("\nvcpu\t"));
    }
}
