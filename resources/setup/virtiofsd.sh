#!/usr/bin/env bash
# Installs the standard Rust virtiofsd (crates.io package `virtiofsd`, unchanged) into
# target/virtiofsd/bin/virtiofsd: the vhost-user-fs backend the virtiofs tests and
# `paddock-bench fs` run against. Skips the build when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=1.14.0
root=target/virtiofsd
bin=$root/bin/virtiofsd
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
    exit 0
fi
# Its build links libseccomp and libcap-ng.
pkgs=(libseccomp-dev libcap-ng-dev pkg-config)
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
cargo install --locked virtiofsd --version "$version" --root "$root"
"$bin" --version
