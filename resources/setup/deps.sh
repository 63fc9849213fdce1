#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine with only the Rust toolchain lacks to build and test Paddock:
# QEMU (the KVM test host), iasl (ACPI table checks), cpio/zstd/xz (image builds), iproute2/iperf3.
set -euo pipefail
pkgs=(qemu-system-x86 acpica-tools cpio zstd xz-utils busybox-static iproute2 iperf3 ethtool binutils)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "deps.sh: cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
