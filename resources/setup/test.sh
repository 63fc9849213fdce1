#!/usr/bin/env bash
# Runs every Paddock test on this machine: formatting and lints, unit tests, tiny guests on /dev/kvm,
# and real Linux guests (directly on hardware KVM, else in the KVM test host under QEMU).
set -euo pipefail
cd "$(dirname "$0")/../.."
resources/setup/deps.sh
if [ "$(id -u)" -eq 0 ]; then resources/setup/kvm-access.sh; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --workspace --release
resources/guest/build.sh
# The standard virtiofsd, the vhost-user-fs backend tests/tests/virtiofs.rs runs against.
resources/setup/virtiofsd.sh
# Tests use target/release/paddock; --test-threads=1 keeps two-core machines from timing out QEMU.
cargo test --workspace --release -- --test-threads=1
