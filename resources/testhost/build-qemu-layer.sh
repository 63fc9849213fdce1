#!/usr/bin/env bash
# build-qemu-layer.sh OUT_DIR: an optional extra layer for the KVM test host (L1) holding QEMU, so that
# `paddock-bench boot --peer qemu=/usr/bin/qemu-system-x86_64` can run the peer inside L1:
#   OUT_DIR/qemu-layer.cpio  uncompressed newc cpio: /usr/bin/qemu-system-x86_64 (stripped), the shared
#                            libraries it loads (stripped), and the firmware that `-M microvm` (qboot)
#                            and `-M pc` (SeaBIOS + the direct-kernel-boot option ROMs) read.
# Append it after l1-base.cpio (and before or after the harness payload) for benchmark runs only:
#   cat l1-base.cpio qemu-layer.cpio payload.cpio > initrd.cpio
# Built from Debian bookworm packages with resources/lib/debian.sh; nothing is installed on the host.
# The output is reused while this script and the package versions are unchanged.
# Environment: PADDOCK_DEB_CACHE (default target/debian) holds downloaded and unpacked packages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/debian.sh
. "$repo/resources/lib/debian.sh"

[ $# -eq 1 ] || deb_die "usage: build-qemu-layer.sh OUT_DIR"
mkdir -p "$1"
out=$(cd "$1" && pwd)
DEB_WORK=${PADDOCK_DEB_CACHE:-$repo/target/debian}
started=$(date +%s.%N)

# Only the x86 system emulator and the firmware for direct kernel boot: no GUI, no block extras, no
# network boot ROMs (benchmark guests have no NIC and no disk).
packages_wanted=(qemu-system-x86 qemu-system-data seabios)
# microvm: qboot (bios-microvm.bin -> qboot.rom). pc: SeaBIOS, the bzImage and PVH loader option ROMs,
# and the kvmvapic ROM every pc machine loads.
firmware=(
    usr/share/qemu/bios-microvm.bin
    usr/share/qemu/qboot.rom
    usr/share/seabios/bios-256k.bin
    usr/share/qemu/linuxboot_dma.bin
    usr/share/qemu/pvh.bin
    usr/share/qemu/kvmvapic.bin
)

closure=$(deb_memo deb_closure "${packages_wanted[@]}")
mapfile -t packages <<<"$closure"
versions=$(deb_memo deb_versions "${packages[@]}")
key=$(inputs_hash "$here/build-qemu-layer.sh" "$repo/resources/lib/debian.sh" -- "$versions" "${firmware[@]}")
stamp=$out/.qemu-layer.stamp

report() {
    echo "QEMU layer for the KVM test host in $out:"
    (cd "$out" && ls -l qemu-layer.cpio | awk '{ printf "  %-16s %6.1f MiB\n", $NF, $5 / 1048576 }')
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -f "$out/qemu-layer.cpio" ]; then
    echo "QEMU layer is up to date"
    report
    exit 0
fi

deb_use "${packages[@]}"
rm -f "$stamp"

root=$out/qemu-layer-rootfs
rm -rf "$root"
mkdir -p "$root"
# The layer lands on top of l1-base: libraries it already holds (libc, libgcc_s, ...) are rewritten
# with the same Debian files, which is harmless.
root_install_exec "$root" usr/bin/qemu-system-x86_64
for f in "${firmware[@]}"; do root_copy "$root" "$f" >/dev/null; done
# Nothing in the layer may be writable by the unprivileged benchmark user.
chmod -R go-w "$root"

# No /dev/console node here: l1-base.cpio already carries one.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out/qemu-layer.cpio.tmp"
mv "$out/qemu-layer.cpio.tmp" "$out/qemu-layer.cpio"
rm -rf "$root"
echo "$key" >"$stamp"
echo "built in $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
report
