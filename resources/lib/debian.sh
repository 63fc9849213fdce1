# shellcheck shell=bash
# Functions shared by the image builds (resources/guest/build.sh, resources/testhost/build-l1.sh):
# fetch Debian packages with their dependencies, unpack them without installing anything on the host,
# and assemble a root tree for a cpio initramfs out of them. Source it; it defines functions only.
#
# Package cache: $DEB_WORK/debs/*.deb (apt-get download) and $DEB_WORK/x/<deb>/ (dpkg -x, one tree per
# .deb, so that an upgraded package never mixes with its old files). The set in use is DEB_DIRS.

DEB_WORK=${DEB_WORK:-}
DEB_DIRS=()
DEB_LIB_DIRS=(lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 usr/lib64 lib usr/lib)

deb_die() {
    echo "error: $*" >&2
    exit 1
}

# deb_require_lists PKG: make sure apt knows PKG; runs `apt-get update` once when it does not.
deb_require_lists() {
    if apt-cache show --no-all-versions "$1" >/dev/null 2>&1; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || deb_die "apt does not know package '$1' and its lists are stale: run 'sudo apt-get update' (Debian bookworm sources needed)"
    echo "apt-get update (package '$1' unknown)" >&2
    apt-get update -qq >&2 || deb_die "apt-get update failed: check the Debian sources in /etc/apt"
    apt-cache show --no-all-versions "$1" >/dev/null 2>&1 || deb_die "package '$1' is not in the configured Debian sources: add bookworm (main) to /etc/apt/sources.list"
}

# deb_kernel_package META: the versioned kernel package a meta package (linux-image-cloud-amd64) points to.
deb_kernel_package() {
    deb_require_lists "$1"
    local pkg
    pkg=$(apt-cache depends "$1" | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [ -n "$pkg" ] || deb_die "meta package '$1' depends on no linux-image-<version> package"
    echo "$pkg"
}

# Prints one package per dependency group (Depends and Pre-Depends) of the packages given: the first
# alternative of an `a | b` group, the first provider of a virtual package.
deb_direct_depends() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
        --no-enhances "$@" | awk '
        function close_group() { if (open && pick != "") print pick; open = 0; pick = "" }
        /^ [ |](Pre)?Depends: / {
            if (!prev_alt) close_group()
            open = 1
            name = $2; sub(/:.*/, "", name)
            virtual = (name ~ /^</)
            if (!virtual && pick == "") pick = name
            prev_alt = (substr($0, 2, 1) == "|")
            next
        }
        /^    / { if (virtual && pick == "") { name = $1; sub(/:.*/, "", name); pick = name } next }
        { virtual = 0; if (!prev_alt) close_group() }
        END { close_group() }'
}

# deb_closure PKG...: the packages and everything they depend on, sorted, one per line.
deb_closure() {
    local -A seen=()
    local queue=("$@") next p
    for p in "$@"; do deb_require_lists "$p"; seen[$p]=1; done
    while [ ${#queue[@]} -gt 0 ]; do
        next=()
        while read -r p; do
            [ -n "$p" ] && [ -z "${seen[$p]:-}" ] || continue
            seen[$p]=1
            next+=("$p")
        done < <(deb_direct_depends "${queue[@]}")
        queue=("${next[@]}")
    done
    printf '%s\n' "${!seen[@]}" | LC_ALL=C sort
}

# deb_versions PKG...: "name_version_arch" of the candidate of each package (the .deb name without .deb,
# an epoch's ':' written '%3a' as apt-get download does).
deb_versions() {
    apt-cache show --no-all-versions "$@" | awk '
        /^Package: / { p = $2 } /^Version: / { v = $2 }
        /^Architecture: / { a = $2 }
        /^$/ { if (p != "") { gsub(/:/, "%3a", v); print p "_" v "_" a }; p = "" }
        END { if (p != "") { gsub(/:/, "%3a", v); print p "_" v "_" a } }'
}

# deb_memo COMMAND...: the output of COMMAND (an apt query), kept in $DEB_WORK/memo for as long as the
# apt lists and sources stay the same, because each apt-cache call costs about half a second.
deb_memo() {
    [ -n "$DEB_WORK" ] || deb_die "DEB_WORK is not set: set it to a cache directory before deb_memo"
    local key file
    key=$({
        stat -c '%n %s %Y' /var/lib/apt/lists/* /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-32)
    file=$DEB_WORK/memo/$key
    if [ ! -f "$file" ]; then
        mkdir -p "$DEB_WORK/memo"
        "$@" >"$file.tmp.$$" || { rm -f "$file.tmp.$$"; return 1; }
        mv "$file.tmp.$$" "$file"
    fi
    cat "$file"
}

# deb_use PKG...: download (once) and unpack (once) exactly these packages (no dependency added here:
# pass a deb_closure), and make them the set DEB_DIRS that the functions below search.
deb_use() {
    [ -n "$DEB_WORK" ] || deb_die "DEB_WORK is not set: set it to a cache directory before deb_use"
    mkdir -p "$DEB_WORK/debs" "$DEB_WORK/x"
    local names=() missing=() n list
    list=$(deb_memo deb_versions "$@")
    mapfile -t names <<<"$list"
    [ ${#names[@]} -eq $# ] || deb_die "apt-cache show found ${#names[@]} of the $# packages asked for ($*)"
    for n in "${names[@]}"; do
        [ -f "$DEB_WORK/debs/$n.deb" ] || missing+=("${n%%_*}=$(echo "$n" | cut -d_ -f2 | sed 's/%3a/:/')")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "downloading ${#missing[@]} packages" >&2
        (cd "$DEB_WORK/debs" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "${missing[@]}" >/dev/null) ||
            deb_die "apt-get download failed for: ${missing[*]} (check network access to the Debian mirror)"
    fi
    DEB_DIRS=()
    for n in "${names[@]}"; do
        if [ ! -f "$DEB_WORK/x/$n/.unpacked" ]; then
            rm -rf "$DEB_WORK/x/$n"
            dpkg -x "$DEB_WORK/debs/$n.deb" "$DEB_WORK/x/$n" || deb_die "dpkg -x failed on $DEB_WORK/debs/$n.deb: delete it and rerun"
            touch "$DEB_WORK/x/$n/.unpacked"
        fi
        DEB_DIRS+=("$DEB_WORK/x/$n")
    done
}

# deb_pkg_dir PKG: the unpacked tree of PKG in the current set.
deb_pkg_dir() {
    local d
    for d in "${DEB_DIRS[@]}"; do
        case "${d##*/}" in "$1"_*) echo "$d"; return 0 ;; esac
    done
    deb_die "package '$1' is not in the package set (deb_use it first)"
}

# deb_find REL: the unpacked tree of the current set that holds path REL (file or link), first wins.
deb_find() {
    local d
    for d in "${DEB_DIRS[@]}"; do
        if [ -e "$d/$1" ] || [ -L "$d/$1" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# root_copy DEST REL: copies /REL of the package set into DEST/REL. A symbolic link is copied as a link
# and its target (resolved as inside the image) copied too, so the chain works in the image.
root_copy() {
    local dest=$1 rel=${2#/} src target hops=0
    while :; do
        src=$(deb_find "$rel") || deb_die "/$rel is in none of the unpacked packages (${#DEB_DIRS[@]} searched)"
        mkdir -p "$dest/$(dirname "$rel")"
        if [ -L "$src/$rel" ]; then
            target=$(readlink "$src/$rel")
            [ -L "$dest/$rel" ] || [ -e "$dest/$rel" ] || ln -s "$target" "$dest/$rel"
            case "$target" in
            /*) rel=${target#/} ;;
            *) rel=$(dirname "$rel")/$target ;;
            esac
            rel=$(realpath -m -s "/$rel")
            rel=${rel#/}
            hops=$((hops + 1))
            [ $hops -lt 20 ] || deb_die "symbolic link loop at /$2 in the unpacked packages"
        else
            # Never write through a link: an absolute one would point into the host.
            [ -L "$dest/$rel" ] || [ -e "$dest/$rel" ] || cp -p "$src/$rel" "$dest/$rel"
            echo "$rel"
            return 0
        fi
    done
}

# elf_needed FILE: the DT_NEEDED sonames of an ELF file.
elf_needed() {
    readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
}

# elf_interp FILE: the program interpreter (dynamic loader) an ELF executable asks for, if any.
elf_interp() {
    readelf -l "$1" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p'
}

# root_install_libs DEST FILE: copies, recursively, the shared libraries FILE needs (as the dynamic
# loader would find them in the standard directories) and its loader into DEST, stripped.
root_install_libs() {
    local dest=$1 file=$2 interp soname dir found rel
    interp=$(elf_interp "$file")
    if [ -n "$interp" ] && [ ! -L "$dest$interp" ] && [ ! -e "$dest$interp" ]; then
        rel=$(root_copy "$dest" "$interp")
        strip --strip-unneeded "$dest/$rel" 2>/dev/null || true
    fi
    while read -r soname; do
        [ -n "$soname" ] || continue
        found=""
        for dir in "${DEB_LIB_DIRS[@]}"; do
            if [ -L "$dest/$dir/$soname" ] || [ -e "$dest/$dir/$soname" ]; then found=done; break; fi
            if deb_find "$dir/$soname" >/dev/null; then found=$dir; break; fi
        done
        [ -n "$found" ] || deb_die "library $soname (needed by ${file#"$dest"/}) is in none of the unpacked packages: add its package to the package list"
        [ "$found" = done ] && continue
        rel=$(root_copy "$dest" "$found/$soname")
        chmod u+w "$dest/$rel"
        strip --strip-unneeded "$dest/$rel" 2>/dev/null || true
        root_install_libs "$dest" "$dest/$rel"
    done < <(elf_needed "$file")
}

# deb_which NAME: the path (without leading /) of executable NAME in the package set, searched in
# usr/bin usr/sbin bin sbin.
deb_which() {
    local d
    for d in usr/bin usr/sbin bin sbin; do
        if deb_find "$d/$1" >/dev/null; then
            echo "$d/$1"
            return 0
        fi
    done
    deb_die "no executable '$1' in {usr/,}{bin,sbin} of the unpacked packages: add its package"
}

# root_install_exec DEST REL [AS]: copies executable /REL (from the package set) to DEST/AS (default
# /REL), stripped, with its libraries; removes busybox applet links of the same name so the real tool
# is the one found in PATH.
root_install_exec() {
    local dest=$1 rel=${2#/} as=${3:-$2} real name d
    as=${as#/}
    name=${as##*/}
    for d in bin sbin usr/bin usr/sbin; do
        if [ -L "$dest/$d/$name" ] && [ "$(readlink "$dest/$d/$name")" = /bin/busybox ]; then
            rm -f "$dest/$d/$name"
        fi
    done
    real=$(root_copy "$dest/.stage" "$rel")
    mkdir -p "$dest/$(dirname "$as")"
    rm -f "$dest/$as"
    cp "$dest/.stage/$real" "$dest/$as"
    rm -rf "$dest/.stage"
    chmod 755 "$dest/$as"
    strip "$dest/$as" 2>/dev/null || true
    root_install_libs "$dest" "$dest/$as"
}

# root_install_busybox DEST: the static busybox from busybox-static as /bin/busybox plus one symbolic
# link per applet (paths as busybox itself lists them). Debian's busybox sh runs its own applet for
# any command name it knows, whatever PATH says: a script that must reach a real tool installed by
# root_install_exec (ip, setpriv, ...) needs another /bin/sh (root_install_exec dash + link).
root_install_busybox() {
    local dest=$1 bb applet
    bb=$(deb_pkg_dir busybox-static)/bin/busybox
    [ -x "$bb" ] || deb_die "$bb missing: the busybox-static package did not unpack as expected"
    mkdir -p "$dest/bin"
    cp "$bb" "$dest/bin/busybox"
    while read -r applet; do
        [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
        mkdir -p "$dest/$(dirname "$applet")"
        [ -e "$dest/$applet" ] || [ -L "$dest/$applet" ] || ln -s /bin/busybox "$dest/$applet"
    done < <("$bb" --list-full)
}

# module_depends KO: the module names a .ko file depends on (its .modinfo "depends=" field).
module_depends() {
    objcopy -O binary --only-section=.modinfo "$1" /dev/stdout 2>/dev/null | tr '\0' '\n' |
        sed -n 's/^depends=//p' | tr ',' '\n' | sed '/^$/d'
}

# root_install_modules DEST KDIR NAME...: copies the named modules of the kernel tree KDIR
# (KDIR/lib/modules/<version>/) and, recursively, the modules they depend on, into DEST; writes
# DEST/etc/modules.paddock with their paths in load order (dependencies first). Modules built into that
# kernel (modules.builtin) are skipped; an unknown name is an error. Debian's package carries no
# modules.dep (depmod runs at install time), so dependencies come from each module's .modinfo.
root_install_modules() {
    local dest=$1 kdir=$2
    shift 2
    local moddir kver
    moddir=$(echo "$kdir"/lib/modules/*)
    [ -d "$moddir" ] || deb_die "no lib/modules/<version> in $kdir"
    kver=${moddir##*/}
    local -A path_of=() builtin=() state=()
    local f n order=()
    while read -r f; do
        n=${f##*/}; n=${n%.ko*}; n=${n//-/_}
        path_of[$n]=$f
    done < <(cd "$moddir" && find kernel -name '*.ko*')
    while read -r f; do
        n=${f##*/}; n=${n%.ko*}; n=${n//-/_}
        builtin[$n]=1
    done <"$moddir/modules.builtin"

    visit() {
        local m=${1//-/_} dep
        case "${state[$m]:-}" in done) return 0 ;; active) deb_die "module dependency loop at $m" ;; esac
        if [ -n "${builtin[$m]:-}" ]; then
            state[$m]=done
            echo "module $m: built into the kernel" >&2
            return 0
        fi
        [ -n "${path_of[$m]:-}" ] || deb_die "kernel $kver has no module '$m' (neither a .ko nor built in): fix the module list"
        state[$m]=active
        while read -r dep; do visit "$dep"; done < <(module_depends "$moddir/${path_of[$m]}")
        state[$m]=done
        order+=("${path_of[$m]}")
    }
    for n in "$@"; do visit "$n"; done

    mkdir -p "$dest/lib/modules/$kver" "$dest/etc"
    : >"$dest/etc/modules.paddock"
    for f in "${order[@]}"; do
        mkdir -p "$dest/lib/modules/$kver/$(dirname "$f")"
        case "$f" in
        *.ko) cp "$moddir/$f" "$dest/lib/modules/$kver/$f" ;;
        *.ko.xz) xz -dc "$moddir/$f" >"$dest/lib/modules/$kver/${f%.xz}"; f=${f%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$f" >"$dest/lib/modules/$kver/${f%.zst}"; f=${f%.zst} ;;
        *.ko.gz) gzip -dc "$moddir/$f" >"$dest/lib/modules/$kver/${f%.gz}"; f=${f%.gz} ;;
        *) deb_die "module $f: unknown compression" ;;
        esac
        echo "/lib/modules/$kver/$f" >>"$dest/etc/modules.paddock"
    done
}

# cpio_char_node NAME MODE_OCTAL MAJOR MINOR: a newc cpio archive (to stdout) holding one character
# device node, so that images can carry /dev/console without root rights to mknod.
cpio_char_node() {
    local name=$1 mode=$((0020000 | 8#$2)) major=$3 minor=$4 hdr pad
    cpio_entry() { # name mode nlink rdevmajor rdevminor
        local namesize=$((${#1} + 1))
        hdr=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
            0 "$2" 0 0 "$3" 0 0 0 0 "$4" "$5" "$namesize" 0)
        printf '%s%s\0' "$hdr" "$1"
        pad=$(((4 - (110 + namesize) % 4) % 4))
        head -c "$pad" /dev/zero
    }
    cpio_entry "$name" "$mode" 1 "$major" "$minor"
    cpio_entry "TRAILER!!!" 0 1 0 0
}

# cpio_pack DIR OUT: newc cpio of DIR (all entries owned by root) followed by a /dev/console node.
cpio_pack() {
    local dir=$1 out=$2
    (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
    cpio_char_node dev/console 600 5 1 >>"$out"
}

# inputs_hash FILE... -- WORD...: a hash of the files' contents and the words (package versions, ...),
# for the stamp that decides whether outputs are up to date.
inputs_hash() {
    {
        while [ $# -gt 0 ] && [ "$1" != -- ]; do
            echo "file $1"
            cat "$1"
            shift
        done
        [ $# -eq 0 ] || shift
        printf 'word %s\n' "$@"
    } | sha256sum | cut -d' ' -f1
}
