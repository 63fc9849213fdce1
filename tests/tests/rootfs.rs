//! `paddock run --rootfs DIR -- CMD` in the KVM test host (or on hardware KVM): the default guest
//! boots with host directory DIR as its root over virtio-fs (the bundled backend) and runs CMD
//! in it. The tree is built in L1 by uid 1000 from the guest's static busybox (one link per
//! applet) plus L1's dynamically linked dash with its ld.so and libc, so a program loaded through
//! the tree's own dynamic linker runs too. Checked: CMD's output and exit status are paddock's,
//! the guest's `/` is the tree (its listing, the virtio-fs root in /proc/mounts, proc and a tmpfs
//! /tmp mounted), a file written in the guest is in DIR on the host with the same content, `,ro`
//! refuses writes with EROFS, a command the tree lacks ends with 127 and chroot's message, without
//! CMD a shell on the console runs in the tree, an /init that ignores the protocol is reported, a
//! share that does not mount is one line and status 125, and bad `--rootfs` values are exit 2
//! with one line, leaving no backend process and no runtime directory behind (also when the VM
//! fails after the tree's backend started). Then a Debian bookworm tree (base-files, coreutils,
//! dash and their libraries, from resources/testhost/build-debian-tree.sh, unpacked in L1 by
//! uid 1000): `cat /etc/debian_version` prints the tree's version, GNU `ls` and dash run from it
//! and a write reaches the host.
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::process::Command;
use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario, Verdict};
use paddock_tests::workspace;

/// Five guest boots under nested emulation.
const BOOTS: Duration = Duration::from_secs(900);
const ERRORS: Duration = Duration::from_secs(120);

/// Builds `$T`, a root tree readable by uid 1000, and points paddock at the default guest.
const PREAMBLE: &str = r#"export PADDOCK_GUEST_DIR=$GUEST
T=$HOME/tree
rm -rf $T; mkdir -p $T/bin $T/etc $T/proc $T/sys $T/dev $T/tmp $T/run $T/root $T/lib/x86_64-linux-gnu $T/lib64
(cd $T && zcat $GUEST/initramfs.cpio.gz | cpio -id bin/busybox 2>/dev/null)
[ -x $T/bin/busybox ] || { echo "no busybox in $GUEST/initramfs.cpio.gz"; exit 10; }
for applet in $($T/bin/busybox --list); do [ -e $T/bin/$applet ] || ln -s busybox $T/bin/$applet; done
cp /bin/dash $T/bin/dash
cp /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 $T/lib/x86_64-linux-gnu/
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 $T/lib64/ld-linux-x86-64.so.2
echo marker-4f1c > $T/marker
"#;

const BOOTS_CHECK: &str = r#"cat > $T/check.sh <<'GUEST'
echo "root_listing=$(ls / | tr '\n' ' ')"
echo "root_mount=$(grep ' / ' /proc/mounts | cut -d' ' -f1,3)"
echo "proc_mounted=$(grep -c '^proc /proc proc' /proc/mounts)"
echo "tmp_fs=$(grep ' /tmp ' /proc/mounts | cut -d' ' -f3)"
echo "cwd=$(pwd) home=$HOME"
echo "dash=$(dash -c 'echo ran-from-tree')"
echo written-in-guest > /written.txt
exit 7
GUEST
cat > $T/ro-check.sh <<'GUEST'
echo "ro_marker=$(cat /marker)"
echo "ro_create=$(echo x 2>&1 > /ro-file)"
echo "ro_options=$(grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1)"
GUEST
paddock run --memory 512M --rootfs $T -- cat /marker
echo "cat_status=$?"
paddock run --memory 512M --rootfs $T -- sh /check.sh
echo "check_status=$?"
echo "host_written=$(cat $T/written.txt)"
paddock run --memory 512M --rootfs $T,ro -- sh /ro-check.sh
echo "ro_status=$?"
[ -e $T/ro-file ] && echo "host_ro_file=present" || echo "host_ro_file=absent"
paddock run --memory 512M --rootfs $T -- no-such-command > $HOME/missing.out 2>&1
echo "missing_status=$?"
echo "missing_says=$(grep -c "failed to run command 'no-such-command'" $HOME/missing.out)"
paddock run --memory 512M --cmdline "console=ttyS0 8250.nr_uarts=1 panic=1 reboot=acpi quiet paddock.rootfs=no-such-tag" -- true > $HOME/nomount.out 2>&1
echo "nomount_status=$?"
echo "nomount_line=$(grep -c '^paddock rootfs: cannot mount the virtio-fs share no-such-tag as the root' $HOME/nomount.out)"
# No CMD: a shell in the tree on the console, fed once the guest is ready.
mkfifo $HOME/in
paddock run --memory 512M --rootfs $T < $HOME/in > $HOME/shell.out 2>&1 &
P=$!
exec 3> $HOME/in
i=0; while ! grep -q PADDOCK-GUEST-READY $HOME/shell.out && [ $i -lt 1500 ]; do sleep 0.2; i=$((i + 1)); done
sleep 1
echo 'echo shell_says=$(cat /marker):$HOME:$(pwd)' >&3
echo 'exit' >&3
wait $P; echo "shell_status=$?"
exec 3>&-
grep '^shell_says=' $HOME/shell.out | tr -d '\r'
# An initramfs whose /init ignores paddock.rootfs= (the default one with an older /init on top).
mkdir -p $HOME/old
printf '#!/bin/sh\necho PADDOCK-GUEST-READY\necho PADDOCK-GUEST-EXIT 0\npoweroff -f\n' > $HOME/old/init
chmod 755 $HOME/old/init
# Compressed too: the kernel takes an uncompressed archive after a compressed one only when aligned.
(cd $HOME/old && echo init | cpio -o -H newc 2>/dev/null | gzip > $HOME/old.cpio.gz)
cat $GUEST/initramfs.cpio.gz $HOME/old.cpio.gz > $HOME/old-initramfs
paddock run --memory 512M --kernel $GUEST/vmlinuz --initramfs $HOME/old-initramfs --rootfs $T -- true 2> $HOME/ignored.err
echo "ignored_status=$?"
echo "ignored_says=$(grep -c 'paddock: --rootfs: the guest ran the command without mounting the tree' $HOME/ignored.err)"
"#;

/// Bad `--rootfs` values: exit 2 and one line; nothing is left behind.
const ERRORS_CHECK: &str = r#"touch $HOME/plain
try() {
    out=$(paddock run --memory 512M "$@" -- true 2>&1); st=$?
    echo "status=$st lines=$(printf '%s\n' "$out" | wc -l) $out"
}
echo "missing: $(try --rootfs $HOME/nope)"
echo "notdir: $(try --rootfs $HOME/plain)"
echo "reserved: $(try --rootfs $T --fs tag=paddock-rootfs,path=$T)"
echo "nokernelinit: $(try --kernel $GUEST/vmlinuz --rootfs $T)"
# Fails after the tree's backend started: it must be stopped and its directory removed.
echo "latefail: $(try --rootfs $T --fs tag=t,socket=$HOME/nope.sock)"
RT=${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}
echo "left_dirs=$(ls $RT | grep -c '^paddock-.*-fs-')"
echo "left_backends=$(grep -la 'virtiofs[d]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
echo "check_line=$(paddock check --memory 512M --rootfs $T,ro | grep rootfs)"
echo "check_missing=$(paddock check --memory 512M --rootfs $HOME/nope | grep rootfs)"
"#;

/// Two boots from the Debian tree.
const DEBIAN: Duration = Duration::from_secs(400);

const DEBIAN_CHECK: &str = r#"D=$HOME/debian; rm -rf $D; mkdir -p $D
tar -xzf $FILES/debian-tree.tar.gz -C $D || exit 11
echo "host_version=$(cat $D/etc/debian_version)"
paddock run --memory 512M --rootfs $D,ro -- cat /etc/debian_version
echo "deb_ro_status=$?"
paddock run --memory 512M --rootfs $D -- sh -c "echo shell=\$(readlink /proc/\$\$/exe); ls --version | head -n 1; echo user=\$(id -un); echo from-debian > /from-guest"
echo "deb_status=$?"
echo "host_from_guest=$(cat $D/from-guest)"
"#;

/// target/debian-tree/debian-tree.tar.gz, built (or found up to date) by its script.
fn debian_tree() -> std::path::PathBuf {
    let out = workspace::target_dir().join("debian-tree");
    let script = workspace::root().join("resources/testhost/build-debian-tree.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed ({status})", script.display());
    out.join("debian-tree.tar.gz")
}

/// The value of the first `key=value` line with this key.
fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(str::trim))
}

fn line<'a>(r: &'a CheckResult, key: &str) -> &'a str {
    let prefix = format!("{key}: ");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_default()
}

#[test]
fn rootfs_runs_the_command_in_the_host_tree() {
    let mut s = Scenario::new("rootfs");
    s.check_as_user("boots", BOOTS, &format!("{PREAMBLE}{BOOTS_CHECK}"))
        .check_as_user("errors", ERRORS, &format!("{PREAMBLE}{ERRORS_CHECK}"))
        .check_as_user("debian", DEBIAN, DEBIAN_CHECK)
        .file(&debian_tree());
    let Some(report) = s.run().expect("rootfs scenario") else {
        return;
    };
    let mut v = Verdict::default();

    let r = report.check("boots");
    let is = |key: &str, want: &str| field(r, key) == Some(want);
    v.expect(
        r.stdout.lines().any(|l| l.trim() == "marker-4f1c") && is("cat_status", "0"),
        "`--rootfs TREE -- cat /marker` prints the tree's marker and exits 0",
        r,
    );
    v.expect(
        is("check_status", "7"),
        "CMD's exit status (7) is paddock's",
        r,
    );
    let listing = field(r, "root_listing").unwrap_or_default();
    v.expect(
        ["bin", "check.sh", "marker", "proc", "tmp"]
            .iter()
            .all(|e| listing.split(' ').any(|l| l == *e)),
        "the guest's / lists the tree's entries",
        r,
    );
    v.expect(
        is("root_mount", "paddock-rootfs virtiofs"),
        "the guest's / is the virtio-fs share",
        r,
    );
    v.expect(is("proc_mounted", "1"), "/proc is mounted in the tree", r);
    v.expect(is("tmp_fs", "tmpfs"), "/tmp is a tmpfs in the tree", r);
    v.expect(
        is("cwd", "/ home=/root"),
        "CMD runs in / with HOME=/root",
        r,
    );
    v.expect(
        is("dash", "ran-from-tree"),
        "a dynamically linked program runs through the tree's own ld.so and libc",
        r,
    );
    v.expect(
        is("host_written", "written-in-guest"),
        "a file the guest wrote is in the host tree with the same content",
        r,
    );
    v.expect(
        is("ro_status", "0") && is("ro_marker", "marker-4f1c"),
        "a read-only tree reads",
        r,
    );
    v.expect(
        field(r, "ro_create").is_some_and(|v| v.contains("Read-only file system")),
        "a read-only tree refuses writes with EROFS",
        r,
    );
    v.expect(is("ro_options", "ro"), "a read-only tree is mounted ro", r);
    v.expect(
        is("host_ro_file", "absent"),
        "nothing was written to a read-only tree",
        r,
    );
    v.expect(
        is("missing_status", "127") && is("missing_says", "1"),
        "a command the tree lacks: status 127 and chroot's message naming it",
        r,
    );
    v.expect(
        is("nomount_status", "125") && is("nomount_line", "1"),
        "a root share that does not mount: one line and status 125",
        r,
    );
    v.expect(
        is("shell_status", "0") && is("shell_says", "marker-4f1c:/root:/"),
        "without CMD, a shell on the console runs in the tree (cwd /, HOME=/root)",
        r,
    );
    v.expect(
        is("ignored_status", "1") && is("ignored_says", "1"),
        "an initramfs that ignores --rootfs: paddock says so and exits 1, not with CMD's 0",
        r,
    );

    let r = report.check("errors");
    for (key, words) in [
        ("missing", "/nope does not exist"),
        ("notdir", "/plain is not a directory"),
        ("reserved", "reserved for --rootfs"),
        ("nokernelinit", "--rootfs needs an initramfs"),
        ("latefail", "nope.sock"),
    ] {
        let l = line(r, key);
        v.expect(
            l.starts_with("status=2 lines=1 paddock: ") && l.contains(words),
            &format!("{key}: exit 2 with one line saying `{words}`"),
            r,
        );
    }
    v.expect(
        field(r, "left_dirs") == Some("0"),
        "no runtime directory left behind",
        r,
    );
    v.expect(
        field(r, "left_backends") == Some("0"),
        "no backend process left behind",
        r,
    );
    v.expect(
        field(r, "check_line").is_some_and(|l| l.starts_with("ok") && l.contains("read-only")),
        "paddock check reports the tree as usable, read-only",
        r,
    );
    v.expect(
        field(r, "check_missing")
            .is_some_and(|l| l.starts_with("FAIL") && l.contains("does not exist")),
        "paddock check reports a missing tree",
        r,
    );
    let r = report.check("debian");
    let version = field(r, "host_version").filter(|v| v.starts_with("12."));
    v.expect(
        version.is_some_and(|v| r.stdout.lines().any(|l| l.trim() == v))
            && field(r, "deb_ro_status") == Some("0"),
        "`--rootfs DEBIAN,ro -- cat /etc/debian_version` prints the tree's Debian 12 version",
        r,
    );
    v.expect(
        r.stdout
            .lines()
            .any(|l| l.trim().starts_with("ls (GNU coreutils)"))
            && field(r, "user") == Some("root")
            && field(r, "shell").is_some_and(|s| s.ends_with("/dash"))
            && field(r, "deb_status") == Some("0"),
        "the command `sh` is the tree's dash, and GNU ls and id run from the tree",
        r,
    );
    v.expect(
        field(r, "host_from_guest") == Some("from-debian"),
        "a write in the Debian tree reaches the host",
        r,
    );
    v.assert_passed();
}
