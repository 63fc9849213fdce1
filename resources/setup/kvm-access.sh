#!/usr/bin/env bash
# Gives /dev/kvm the owner and mode Debian's udev rules give it (root:kvm 0660), so that Paddock can
# run as an unprivileged member of group kvm, as it does in a pod. Tests started as root switch
# paddock to uid 1000 with that group (`paddock --user 1000:<kvm gid>`). Needs root; changes nothing
# when /dev/kvm is already group-accessible.
set -euo pipefail
[ -e /dev/kvm ] || { echo "kvm-access.sh: /dev/kvm does not exist: load kvm_intel or kvm_amd" >&2; exit 1; }
mode=$(stat -c %a /dev/kvm)
group=$(stat -c %G /dev/kvm)
if [ "$group" != root ] && [ $(( 0$mode & 060 )) -eq $(( 060 )) ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "kvm-access.sh: /dev/kvm is $group mode $mode: run this as root to make it root:kvm 0660" >&2
    exit 1
fi
getent group kvm >/dev/null || groupadd --system kvm
chgrp kvm /dev/kvm
chmod 0660 /dev/kvm
echo "kvm-access.sh: /dev/kvm is now root:kvm 0660"
