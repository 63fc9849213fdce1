//! KVM test host: see docs/testing.md.
