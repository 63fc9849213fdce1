//! Compiles the allow lists into BPF programs with seccompiler.

use super::rules::{allow_list, When};
use super::SeccompError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use vmm::threads::ThreadCategory;

/// What a filter does with a call that is not on the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDenied {
    /// SIGSYS: the reporter names the call and ends the process.
    Trap,
    /// Let it through and have the kernel log it (audit type 1326 / kernel log).
    Log,
}

impl OnDenied {
    fn action(self) -> SeccompAction {
        match self {
            OnDenied::Trap => SeccompAction::Trap,
            OnDenied::Log => SeccompAction::Log,
        }
    }
}

fn condition(when: When) -> Result<Option<SeccompCondition>, seccompiler::BackendError> {
    match when {
        When::Always => Ok(None),
        When::ArgIs { arg, value, .. } => {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value).map(Some)
        }
        When::ArgLacks { arg, mask, .. } => SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )
        .map(Some),
    }
}

/// The filter for `category`: its allow list, everything else `on_denied`.
pub fn compile(category: ThreadCategory, on_denied: OnDenied) -> Result<BpfProgram, SeccompError> {
    let failed = |source| SeccompError::Compile { category, source };
    // A call with an unconditional entry matches on its number alone (an empty rule list).
    let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for allow in allow_list(category) {
        let entry = rules.entry(allow.nr).or_insert_with(|| Some(Vec::new()));
        match condition(allow.when).map_err(failed)? {
            None => *entry = None,
            Some(cond) => {
                if let Some(list) = entry {
                    list.push(SeccompRule::new(vec![cond]).map_err(failed)?);
                }
            }
        }
    }
    let rules = rules
        .into_iter()
        .map(|(nr, list)| (nr, list.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        on_denied.action(),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(failed)?;
    BpfProgram::try_from(filter).map_err(failed)
}

/// A second filter on every thread: clone3 fails with ENOSYS, so glibc falls back to clone(2),
/// whose flags (unlike clone3's, behind a pointer) a filter can check.
pub fn clone3_fallback() -> Result<BpfProgram, SeccompError> {
    let failed = |source| SeccompError::Compile {
        category: ThreadCategory::Vmm,
        source,
    };
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(failed)?;
    BpfProgram::try_from(filter).map_err(failed)
}
