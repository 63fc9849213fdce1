#!/usr/bin/env bash
# extract-vmlinux.sh BZIMAGE OUT: writes the ELF vmlinux that an x86 bzImage carries to OUT, and prints
# whether it has a PVH entry point (ELF note "Xen", type 18 = XEN_ELFNOTE_PHYS32_ENTRY).
#
# The boot protocol (>= 2.08) header says where the compressed payload is: setup_sects at 0x1f1
# (the protected-mode part starts at (setup_sects + 1) * 512), payload_offset at 0x248 and
# payload_length at 0x24c (relative to that start). The payload ends with the uncompressed size as
# 4 little-endian bytes, which we also use to check the result.
set -euo pipefail

die() {
    echo "extract-vmlinux: $*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: extract-vmlinux.sh BZIMAGE OUT"
in=$1
out=$2
[ -f "$in" ] || die "$in: no such file"

u8() { od -A n -t u1 -j "$2" -N 1 "$1" | tr -d ' '; }
u32() { od -A n -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }

[ "$(od -A n -c -j 0x202 -N 4 "$in" | tr -d ' ')" = HdrS ] || die "$in is not a bzImage (no HdrS boot header at 0x202)"
version=$(od -A n -t u2 -j 0x206 -N 2 "$in" | tr -d ' ')
[ "$version" -ge $((0x208)) ] || die "$in: boot protocol $(printf %x "$version") predates payload fields (2.08)"
setup_sects=$(u8 "$in" $((0x1f1)))
[ "$setup_sects" -ne 0 ] || setup_sects=4
pm_start=$(((setup_sects + 1) * 512))
payload_offset=$((pm_start + $(u32 "$in" $((0x248)))))
payload_length=$(u32 "$in" $((0x24c)))
[ $((payload_offset + payload_length)) -le "$(stat -c %s "$in")" ] || die "$in: payload runs past the end of the file (truncated?)"
expected_size=$(u32 "$in" $((payload_offset + payload_length - 4)))

magic=$(od -A n -t x1 -j "$payload_offset" -N 6 "$in" | tr -d ' \n')
case "$magic" in
1f8b*) name=gzip decompress=(gzip -dc) ;;
fd377a585a00) name=xz decompress=(xz -dc --single-stream) ;;
28b52ffd*) name=zstd decompress=(zstd -qdc) ;;
02214c18*) name=lz4 decompress=(lz4 -qdc) ;;
5d0000*) name=lzma decompress=(xz -dc --format=lzma) ;;
425a68*) name=bzip2 decompress=(bzip2 -dc) ;;
*) die "$in: payload at $payload_offset has unknown compression (magic $magic)" ;;
esac
command -v "${decompress[0]}" >/dev/null || die "payload is $name-compressed and ${decompress[0]} is not installed"

tmp=$out.tmp.$$
trap 'rm -f "$tmp"' EXIT
# The trailing size word is not part of the compressed stream: leave it out.
tail -c +$((payload_offset + 1)) "$in" | head -c $((payload_length - 4)) | "${decompress[@]}" >"$tmp" 2>/dev/null ||
    [ "$(stat -c %s "$tmp")" -eq "$expected_size" ] || die "$in: $name decompression of the payload failed"
[ "$(od -A n -c -N 4 "$tmp" | tr -d ' ')" = 177ELF ] || die "$in: the decompressed payload is not an ELF file"
[ "$(stat -c %s "$tmp")" -eq "$expected_size" ] || die "$in: decompressed $(stat -c %s "$tmp") bytes, header says $expected_size"
mv "$tmp" "$out"
trap - EXIT

# readelf -W prints each note on one line, its description bytes after "description data:"; the PVH
# entry is a little-endian physical address.
pvh=$(readelf -W -n "$out" | awk '/^ +Xen .*\(0x00000012\)/ && /description data:/ {
    sub(/.*description data: */, ""); print; exit }')
if [ -n "$pvh" ]; then
    read -r -a bytes <<<"$pvh"
    addr=0
    for ((i = ${#bytes[@]} - 1; i >= 0; i--)); do addr=$((addr * 256 + 16#${bytes[i]})); done
    printf 'vmlinux: %s (%s payload), PVH entry (XEN_ELFNOTE_PHYS32_ENTRY) at 0x%x\n' "$out" "$name" "$addr"
else
    printf 'vmlinux: %s (%s payload), no PVH entry note\n' "$out" "$name"
fi
