#!/usr/bin/env bash
# Builds the default Paddock guest from Debian bookworm packages, installing nothing on the host:
#   target/guest/vmlinuz            the Debian cloud kernel (bzImage)
#   target/guest/vmlinux            the ELF kernel inside it (PVH entry note reported)
#   target/guest/initramfs.cpio.gz  busybox, boot modules, iperf3, ethtool, coreutils' chroot as
#                                   /usr/lib/paddock/gnu-chroot, and /init (resources/guest/init)
# Outputs are reused while the scripts and the package versions they use are unchanged.
# Environment: PADDOCK_DEB_CACHE (default target/debian) holds downloaded and unpacked packages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/debian.sh
. "$repo/resources/lib/debian.sh"
DEB_WORK=${PADDOCK_DEB_CACHE:-$repo/target/debian}
out=$repo/target/guest
started=$(date +%s.%N)

kernel_meta=linux-image-cloud-amd64
user_packages=(busybox-static iperf3 ethtool coreutils)
# virtio-pci transport, network (with failover), virtiofs and vsock, and the ACPI power button with
# the input events busybox acpid reads; their dependencies are added.
modules=(virtio virtio_ring virtio_pci virtio_net virtiofs fuse vsock vmw_vsock_virtio_transport evdev button)
executables=(iperf3 ethtool)

kernel_pkg=$(deb_memo deb_kernel_package "$kernel_meta")
closure=$(deb_memo deb_closure "${user_packages[@]}")
mapfile -t packages <<<"$closure"
packages+=("$kernel_pkg")
versions=$(deb_memo deb_versions "${packages[@]}")
key=$(inputs_hash "$here/build.sh" "$here/init" "$here/power-button" "$repo/resources/lib/debian.sh" \
    "$repo/resources/lib/extract-vmlinux.sh" -- "$versions" "${modules[@]}" "${executables[@]}")

report() {
    echo "guest ($kernel_pkg) in $out:"
    (cd "$out" && ls -l vmlinuz vmlinux initramfs.cpio.gz | awk '{ printf "  %-20s %6.1f MiB\n", $NF, $5 / 1048576 }')
    echo "  vmlinux: $(cat "$out/vmlinux.pvh")"
    echo "  modules (load order): $(cat "$out/modules.txt")"
}

if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$key" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/modules.txt" ]; then
    echo "guest is up to date"
    report
    exit 0
fi

deb_use "${packages[@]}"
kdir=$(deb_pkg_dir "$kernel_pkg")
mkdir -p "$out"
rm -f "$out/.stamp"

cp "$(echo "$kdir"/boot/vmlinuz-*)" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
"$repo/resources/lib/extract-vmlinux.sh" "$out/vmlinuz" "$out/vmlinux" | sed 's/^vmlinux: [^ ]* //' >"$out/vmlinux.pvh"

root=$out/rootfs
rm -rf "$root"
mkdir -p "$root"/{dev,proc,sys,tmp,run,root,etc,mnt}
chmod 1777 "$root/tmp"
root_install_busybox "$root"
for e in "${executables[@]}"; do root_install_exec "$root" "$(deb_which "$e")"; done
# For --rootfs: busybox's chroot runs its own applet for any command name it knows (cat, sh, ls)
# instead of the tree's program; coreutils' chroot execs what the tree's PATH finds. Under its own
# name (root_install_exec drops busybox links of the same name), so busybox chroot stays as it was.
root_install_exec "$root" "$(deb_which chroot)" usr/lib/paddock/gnu-chroot
root_install_modules "$root" "$kdir" "${modules[@]}"
install -m 755 "$here/init" "$root/init"
install -D -m 755 "$here/power-button" "$root/etc/acpi/PWRF/00000080"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo paddock-guest >"$root/etc/hostname"

cpio_pack "$root" "$out/initramfs.cpio"
gzip -9 -n -f "$out/initramfs.cpio"
sed 's|.*/||; s|\.ko$||' "$root/etc/modules.paddock" | tr '\n' ' ' >"$out/modules.txt"
rm -rf "$root"
echo "$key" >"$out/.stamp"
echo "built in $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
report
