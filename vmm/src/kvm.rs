//! KVM wrappers.
