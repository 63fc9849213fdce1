#!/usr/bin/env bash
# build-l1.sh OUT_DIR: builds the base image of the KVM test host (L1) from Debian bookworm packages,
# installing nothing on the host:
#   OUT_DIR/vmlinuz       the Debian cloud kernel (it ships kvm.ko and kvm-amd.ko as modules)
#   OUT_DIR/l1-base.cpio  uncompressed newc initramfs (faster to unpack under TCG): busybox, modules,
#                         ip/bridge, iperf3, ethtool, curl, setpriv, capsh, dash as /bin/sh, users
#                         root and paddock
#                         (1000:1000, in group kvm), and /init (resources/testhost/init)
# The harness appends its own cpio (/scenario/run.sh, /opt/paddock/...) after l1-base.cpio.
# Outputs are reused while the scripts and the package versions they use are unchanged.
# Environment: PADDOCK_DEB_CACHE (default target/debian) holds downloaded and unpacked packages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/debian.sh
. "$repo/resources/lib/debian.sh"

[ $# -eq 1 ] || deb_die "usage: build-l1.sh OUT_DIR"
mkdir -p "$1"
out=$(cd "$1" && pwd)
DEB_WORK=${PADDOCK_DEB_CACHE:-$repo/target/debian}
started=$(date +%s.%N)

kernel_meta=linux-image-cloud-amd64
user_packages=(busybox-static dash iproute2 iperf3 ethtool curl util-linux libcap2-bin libgcc-s1)
# kvm_amd: TCG's -cpu max offers AMD SVM with NPT (no VMX). tun/veth/bridge: guest networking;
# fuse/virtiofs: virtiofsd. Their dependencies are added.
modules=(kvm kvm_amd tun fuse veth bridge virtiofs)
executables=(ip bridge iperf3 ethtool curl setpriv capsh)
kvm_gid=36 # the kvm group of RHEL/Fedora-based virt-launcher images
paddock_uid=1000

kernel_pkg=$(deb_memo deb_kernel_package "$kernel_meta")
closure=$(deb_memo deb_closure "${user_packages[@]}")
mapfile -t packages <<<"$closure"
packages+=("$kernel_pkg")
versions=$(deb_memo deb_versions "${packages[@]}")
key=$(inputs_hash "$here/build-l1.sh" "$here/init" "$repo/resources/lib/debian.sh" -- \
    "$versions" "${modules[@]}" "${executables[@]}")
stamp=$out/.l1-base.stamp

report() {
    echo "L1 test host ($kernel_pkg) in $out:"
    (cd "$out" && ls -l vmlinuz l1-base.cpio | awk '{ printf "  %-14s %6.1f MiB\n", $NF, $5 / 1048576 }')
    echo "  modules (load order): $(cat "$out/l1-modules.txt")"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/l1-base.cpio" ] && [ -f "$out/l1-modules.txt" ]; then
    echo "L1 base image is up to date"
    report
    exit 0
fi

deb_use "${packages[@]}"
kdir=$(deb_pkg_dir "$kernel_pkg")
for m in kvm kvm-amd; do
    [ -n "$(find "$kdir/lib/modules" -name "$m.ko*" -print -quit)" ] ||
        deb_die "$kernel_pkg ships no $m module: the L1 needs a kernel with KVM modules (try linux-image-amd64)"
done
rm -f "$stamp"

cp "$(echo "$kdir"/boot/vmlinuz-*)" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"

root=$out/l1-rootfs
rm -rf "$root"
mkdir -p "$root"/{dev,proc,sys,tmp,run,root,etc,mnt,opt,scenario,home/paddock}
chmod 1777 "$root/tmp"
root_install_busybox "$root"
for e in "${executables[@]}"; do root_install_exec "$root" "$(deb_which "$e")"; done
# /bin/sh is dash: busybox sh would run its own `ip`, `setpriv`, ... applets instead of the real ones.
root_install_exec "$root" "$(deb_which dash)"
ln -sfn dash "$root/bin/sh"
# Rust binaries (paddock, paddock-bench) link libgcc_s for unwinding.
mkdir -p "$root/lib/x86_64-linux-gnu"
cp "$(deb_pkg_dir libgcc-s1)/lib/x86_64-linux-gnu/libgcc_s.so.1" "$root/lib/x86_64-linux-gnu/"
root_install_modules "$root" "$kdir" "${modules[@]}"
# ip reads its name tables (rt_tables, ...) from here.
if [ -d "$(deb_pkg_dir iproute2)/etc/iproute2" ]; then cp -r "$(deb_pkg_dir iproute2)/etc/iproute2" "$root/etc/"; fi
install -m 755 "$here/init" "$root/init"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
paddock:x:$paddock_uid:$paddock_uid:paddock:/home/paddock:/bin/sh
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
kvm:x:$kvm_gid:paddock
paddock:x:$paddock_uid:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost l1\n::1 localhost\n' >"$root/etc/hosts"
echo l1 >"$root/etc/hostname"

cpio_pack "$root" "$out/l1-base.cpio.tmp"
mv "$out/l1-base.cpio.tmp" "$out/l1-base.cpio"
sed 's|.*/||; s|\.ko$||' "$root/etc/modules.paddock" | tr '\n' ' ' >"$out/l1-modules.txt"
rm -rf "$root"
echo "$key" >"$stamp"
echo "built in $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
report
