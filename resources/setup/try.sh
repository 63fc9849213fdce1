#!/usr/bin/env bash
# Builds everything and runs `paddock run -- uname -a` on the default guest: directly where /dev/kvm
# runs guests at hardware speed, else inside the KVM test host (docs/testing.md); the tool says which.
set -euo pipefail
cd "$(dirname "$0")/../.."
resources/setup/deps.sh
if [ "$(id -u)" -eq 0 ]; then resources/setup/kvm-access.sh; fi
cargo build --workspace --release
resources/guest/build.sh
exec target/release/paddock-testhost -- paddock run -- uname -a
