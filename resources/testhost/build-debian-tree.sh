#!/usr/bin/env bash
# build-debian-tree.sh OUT_DIR: a small Debian bookworm root tree for the `paddock run --rootfs`
# test (tests/tests/rootfs.rs), packed as
#   OUT_DIR/debian-tree.tar.gz   base-files, coreutils and dash with everything they depend on,
#                                unpacked as debootstrap's first stage does (dpkg -x of each package,
#                                no maintainer scripts; without documentation), a root-only
#                                /etc/passwd and /etc/group, and the directories a booted system
#                                mounts on.
# A few MiB instead of a debootstrap minbase (~200 MiB, minutes): enough to prove that a Debian
# userland runs from the tree with its own dynamic linker and libraries.
# Built from Debian bookworm packages with resources/lib/debian.sh; nothing is installed on the host.
# The output is reused while this script and the package versions are unchanged.
# Environment: PADDOCK_DEB_CACHE (default target/debian) holds downloaded and unpacked packages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/debian.sh
. "$repo/resources/lib/debian.sh"

[ $# -eq 1 ] || deb_die "usage: build-debian-tree.sh OUT_DIR"
mkdir -p "$1"
out=$(cd "$1" && pwd)
DEB_WORK=${PADDOCK_DEB_CACHE:-$repo/target/debian}
started=$(date +%s.%N)

packages_wanted=(base-files coreutils dash)
closure=$(deb_memo deb_closure "${packages_wanted[@]}")
mapfile -t packages <<<"$closure"
versions=$(deb_memo deb_versions "${packages[@]}")
key=$(inputs_hash "$here/build-debian-tree.sh" "$repo/resources/lib/debian.sh" -- "$versions")
stamp=$out/.debian-tree.stamp

report() {
    echo "Debian tree for the --rootfs test in $out ($(wc -l <<<"$closure") packages):"
    (cd "$out" && ls -l debian-tree.tar.gz | awk '{ printf "  %-20s %6.1f MiB\n", $NF, $5 / 1048576 }')
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -f "$out/debian-tree.tar.gz" ]; then
    echo "Debian tree is up to date"
    report
    exit 0
fi

deb_use "${packages[@]}"
rm -f "$stamp"

root=$out/debian-tree
rm -rf "$root"
mkdir -p "$root"
for d in "${DEB_DIRS[@]}"; do
    (cd "$d" && find . -mindepth 1 ! -name .unpacked ! -path './usr/share/doc*' ! -path './usr/share/man*' \
        ! -path './usr/share/locale*' ! -path './usr/share/info*' | LC_ALL=C sort | cpio -pdm --quiet "$root")
done
mkdir -p "$root"/{proc,sys,dev,tmp,run,root,etc}
chmod 1777 "$root/tmp"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
# dash's postinst makes /bin/sh; no maintainer script runs here.
[ -e "$root/bin/sh" ] || ln -s dash "$root/bin/sh"

tar -C "$root" --owner=0 --group=0 --sort=name -czf "$out/debian-tree.tar.gz.tmp" .
mv "$out/debian-tree.tar.gz.tmp" "$out/debian-tree.tar.gz"
rm -rf "$root"
echo "$key" >"$stamp"
echo "built in $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
report
