//! The virtio-fs check list, run against any vhost-user-fs backend that takes virtiofsd's flags
//! (`--socket-path S --shared-dir D --sandbox none [--readonly]`): the standard virtiofsd and
//! `paddock virtiofsd` run the same checks (tests/tests/virtiofs.rs).
//!
//! Everything runs as the unprivileged user in the KVM test host (or directly on hardware KVM):
//! the backend serves a directory under `$HOME`, `paddock run --fs tag=T,socket=S` boots the default
//! guest, which mounts the share and runs a script the host side put into the share. Host-side
//! results and guest-side results are printed as `key=value` lines and compared by [`failures`].

use std::path::PathBuf;
use std::time::Duration;

use crate::testhost::{CheckResult, Report, Scenario};

/// A backend under test.
#[derive(Clone, Debug)]
pub struct FsBackend {
    /// Short name, prefixed to the check names (`virtiofsd`, `paddock`).
    pub name: String,
    /// The shell words that start it, before the flags (e.g. `virtiofsd`, `paddock virtiofsd`).
    pub command: String,
    /// Programs to ship into the test host for it (e.g. target/virtiofsd/bin/virtiofsd).
    pub binaries: Vec<PathBuf>,
    /// Served by paddock itself (`--fs tag=T,path=DIR`, the bundled backend that `paddock run`
    /// starts and stops) instead of a backend the check starts (`--fs tag=T,socket=S`).
    pub bundled: bool,
}

/// The 256 MiB file is written and hashed under TCG in the test host: minutes, not seconds.
const FILES: Duration = Duration::from_secs(900);
const BOOT: Duration = Duration::from_secs(300);

/// Shell functions every check starts with: the guest arguments, `start_backend NAME DIR
/// [FLAGS]`, which serves DIR on `$HOME/NAME.sock` (log in `$HOME/NAME.log`, pid in
/// `$HOME/NAME.pid`) and waits for the socket, `serve NAME DIR [ro]`, which adds the share to
/// `$FS` (the `--fs` options), and `kill_backend NAME PADDOCK_PID`.
fn preamble(backend: &FsBackend) -> String {
    let serve = if backend.bundled {
        r#"serve() { FS="$FS --fs tag=$1,path=$2${3:+,$3}"; }
kill_backend() { kill -9 $(cat /proc/$2/task/*/children); }
"#
    } else {
        r#"serve() { if [ -n "$3" ]; then start_backend $1 $2 --readonly; else start_backend $1 $2; fi; FS="$FS --fs tag=$1,socket=$HOME/$1.sock"; }
kill_backend() { kill -9 $(cat $HOME/$1.pid); }
"#
    };
    format!(
        r#"GUEST_ARGS="--kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz --memory 512M"
FS=""
{serve}start_backend() {{
    name=$1; dir=$2; shift 2
    rm -f "$HOME/$name.sock"
    {command} --socket-path "$HOME/$name.sock" --shared-dir "$dir" --sandbox none "$@" > "$HOME/$name.log" 2>&1 &
    echo $! > "$HOME/$name.pid"
    i=0
    while [ ! -S "$HOME/$name.sock" ]; do
        i=$((i + 1))
        if [ $i -gt 600 ]; then echo "backend $name did not create its socket"; cat "$HOME/$name.log"; exit 90; fi
        sleep 0.1
    done
}}
fresh() {{ rm -rf "$1"; mkdir -p "$1"; }}
"#,
        command = backend.command
    )
}

/// Files, directories, links, modes and a 256 MiB file through one share, and the escapes.
const FILES_CHECK: &str = r#"S=$HOME/share; fresh $S; fresh $HOME/outside
echo secret > $HOME/outside/secret
echo from-host > $S/host.txt
echo 0123456789 > $S/write.txt
ln -s $HOME/outside/secret $S/abs-link
ln -s ../outside/secret $S/rel-link
dd if=/dev/urandom of=$S/big bs=1M count=256 2>/dev/null
mkdir $S/many; i=0; while [ $i -lt 300 ]; do echo $i > $S/many/f$i; i=$((i + 1)); done
serve data $S
cat > $S/check.sh <<'GUEST'
cd /mnt
echo "read=$(cat host.txt)"
echo one > new.txt; echo "create=$?"
echo two >> new.txt; echo "append=$?"
printf 'AB' | dd of=write.txt bs=1 seek=2 conv=notrunc 2>/dev/null; echo "write=$?"
mkdir dir; echo "mkdir=$?"
mv new.txt dir/moved.txt; echo "rename=$?"
echo bye > gone.txt && rm gone.txt; echo "unlink=$?"
rm -rf many; echo "rm_rf=$?"
ln -s dir/moved.txt sym; echo "symlink=$?"
chmod 640 dir/moved.txt; echo "chmod=$(stat -c %a dir/moved.txt)"
echo "big_guest_sha=$(sha256sum big | cut -d' ' -f1)"
dd if=big of=copy bs=1M 2>/dev/null; echo "copy=$?"
sync
echo "guest_listing=$(ls | tr '\n' ' ')"
[ "$(stat -c %i /mnt/..)" = "$(stat -c %i /)" ] && echo "dotdot=guest-root" || echo "dotdot=elsewhere"
ls /mnt/../outside > /dev/null 2>&1; echo "dotdot_outside=$?"
cat abs-link > /dev/null 2>&1; echo "abs_link=$?"
cat rel-link > /dev/null 2>&1; echo "rel_link=$?"
ln /init hard 2> /dev/null; echo "hardlink=$?"
GUEST
paddock run $GUEST_ARGS $FS -- sh -c "mount -t virtiofs data /mnt && sh /mnt/check.sh"
echo "paddock_status=$?"
echo "big_host_sha=$(sha256sum $S/big | cut -d' ' -f1)"
echo "copy_host_sha=$(sha256sum $S/copy | cut -d' ' -f1)"
echo "host_moved=$(cat $S/dir/moved.txt | tr '\n' ' ')"
echo "host_write=$(cat $S/write.txt)"
echo "host_mode=$(stat -c %a $S/dir/moved.txt)"
echo "host_sym=$(readlink $S/sym)"
[ -e $S/gone.txt ] && echo "host_gone=present" || echo "host_gone=absent"
[ -e $S/many ] && echo "host_many=present" || echo "host_many=absent"
[ -e $S/hard ] && echo "host_hard=present" || echo "host_hard=absent"
echo "host_secret=$(cat $HOME/outside/secret)"
echo "host_outside=$(ls $HOME/outside | tr '\n' ' ')"
"#;

/// A read-only share refuses writes with EROFS and still reads.
const READONLY_CHECK: &str = r#"R=$HOME/ro; fresh $R
echo ro-content > $R/file
cat > $R/check.sh <<'GUEST'
echo "ro_read=$(cat /mnt/file)"
echo "ro_create=$(echo x 2>&1 > /mnt/new)"
echo "ro_mkdir=$(mkdir /mnt/d 2>&1)"
echo "ro_unlink=$(rm /mnt/file 2>&1)"
# A driver reset (unbind) and a new activation (bind) of the device.
umount /mnt; echo "umount=$?"
d=$(ls /sys/bus/virtio/drivers/virtiofs | grep virtio)
echo $d > /sys/bus/virtio/drivers/virtiofs/unbind; echo $d > /sys/bus/virtio/drivers/virtiofs/bind
mount -t virtiofs ro /mnt; echo "remount=$?"
echo "rebind_read=$(cat /mnt/file)"
GUEST
serve ro $R ro
paddock run $GUEST_ARGS $FS -- sh -c "mount -t virtiofs ro /mnt && cp /mnt/check.sh /tmp && sh /tmp/check.sh"
echo "paddock_status=$?"
echo "host_ro=$(ls $R | tr '\n' ' ')"
"#;

/// Two shares at once; while the VM runs, every paddock thread is under its seccomp filter.
const TWO_SHARES_CHECK: &str = r#"A=$HOME/a; B=$HOME/b; fresh $A; fresh $B
echo in-a > $A/x; echo in-b > $B/y
cat > $A/check.sh <<'GUEST'
echo "a_read=$(cat /a/x)"; echo "b_read=$(cat /b/y)"
echo guest-a > /a/from-guest; echo guest-b > /b/from-guest
echo MOUNTED
i=0; while [ ! -e /a/sampled ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
GUEST
serve a $A; serve b $B
paddock run $GUEST_ARGS $FS -- sh -c "mkdir -p /a /b && mount -t virtiofs a /a && mount -t virtiofs b /b && sh /a/check.sh" > $HOME/two.out 2>&1 &
P=$!
i=0; while ! grep -q MOUNTED $HOME/two.out && [ $i -lt 1500 ]; do sleep 0.2; i=$((i + 1)); done
for t in /proc/$P/task/*; do echo "thread $(cat $t/comm | tr ' ' '_') $(grep Seccomp: $t/status | tr -d '\t')"; done
# Processes paddock started (the bundled backends), each thread of each.
for c in $(cat /proc/$P/task/*/children); do
    for t in /proc/$c/task/*; do echo "child $c $(cat $t/comm | tr ' ' '_') $(grep Seccomp: $t/status | tr -d '\t')"; done
done
touch $A/sampled
wait $P; echo "paddock_status=$?"
cat $HOME/two.out
echo "host_a=$(cat $A/from-guest)"; echo "host_b=$(cat $B/from-guest)"
"#;

/// The backend dies while the guest uses the share: the guest's requests fail with EIO, the VMM
/// logs it once and the VM still powers off with the guest's status.
const BACKEND_GONE_CHECK: &str = r#"G=$HOME/gone; fresh $G
echo alive > $G/file
cat > $G/check.sh <<'GUEST'
echo "before=$(cat /mnt/file)"
echo MOUNTED
i=0; while cat /mnt/file > /dev/null 2>&1 && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
echo "after=$(cat /mnt/file 2>&1)"
ls /mnt > /dev/null 2>&1; echo "ls_after=$?"
echo "still_running=yes"
exit 7
GUEST
serve gone $G
paddock run $GUEST_ARGS $FS -- sh -c "mount -t virtiofs gone /mnt && sh /mnt/check.sh" > $HOME/gone.out 2> $HOME/gone.err &
P=$!
i=0; while ! grep -q MOUNTED $HOME/gone.out && [ $i -lt 1500 ]; do sleep 0.2; i=$((i + 1)); done
kill_backend gone $P
# Bounded: a VMM that hangs is reported as such, with what it printed.
i=0; while kill -0 $P 2> /dev/null && [ $i -lt 900 ]; do sleep 0.2; i=$((i + 1)); done
if kill -0 $P 2> /dev/null; then echo "paddock_hung=yes"; kill -9 $P; fi
wait $P; echo "paddock_status=$?"
cat $HOME/gone.out
echo "hangup_lines=$(grep -c 'hung up' $HOME/gone.err)"
cat $HOME/gone.err >&2
"#;

/// Bad `--fs` values and backends: exit 2 and one line naming the socket and the fix.
const ERRORS_CHECK: &str = r#"E=$HOME/err; fresh $E
try() { out=$(paddock run $GUEST_ARGS "$@" -- true 2>&1); echo "status=$? $out"; }
echo "missing: $(try --fs tag=t,socket=$HOME/nope.sock)"
touch $HOME/plain
echo "notsock: $(try --fs tag=t,socket=$HOME/plain)"
start_backend stale $E; kill -9 $(cat $HOME/stale.pid); wait $(cat $HOME/stale.pid) 2> /dev/null
echo "refused: $(try --fs tag=t,socket=$HOME/stale.sock)"
echo "longtag: $(try --fs tag=0123456789012345678901234567890123456,socket=$HOME/stale.sock)"
echo "duptag: $(try --fs tag=t,socket=$HOME/stale.sock --fs tag=t,socket=$HOME/stale.sock)"
"#;

/// `--fs tag=T,path=DIR` errors: exit 2 and one line naming DIR; a failure after the backends
/// started (a tag given twice) leaves no backend process and no runtime directory behind.
const PATH_ERRORS_CHECK: &str = r#"E=$HOME/err; fresh $E; touch $HOME/plain
try() { out=$(paddock run $GUEST_ARGS "$@" -- true 2>&1); echo "status=$? $out"; }
echo "missing: $(try --fs tag=t,path=$HOME/nope)"
echo "notdir: $(try --fs tag=t,path=$HOME/plain)"
echo "duptag: $(try --fs tag=t,path=$E --fs tag=t,path=$E)"
RT=${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}
echo "left_dirs=$(ls $RT | grep -c '^paddock-.*-fs-')"
echo "left_backends=$(grep -la 'virtiofs[d]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
"#;

/// Registers the checks for `backend` (names prefixed with its name).
pub fn add_checks(s: &mut Scenario, backend: &FsBackend) {
    let pre = preamble(backend);
    let n = &backend.name;
    for b in &backend.binaries {
        s.binary(b);
    }
    s.check_as_user(&format!("{n}-files"), FILES, &format!("{pre}{FILES_CHECK}"))
        .check_as_user(
            &format!("{n}-readonly"),
            BOOT,
            &format!("{pre}{READONLY_CHECK}"),
        )
        .check_as_user(
            &format!("{n}-two-shares"),
            BOOT,
            &format!("{pre}{TWO_SHARES_CHECK}"),
        )
        .check_as_user(
            &format!("{n}-backend-gone"),
            BOOT,
            &format!("{pre}{BACKEND_GONE_CHECK}"),
        )
        .check_as_user(
            &format!("{n}-errors"),
            BOOT,
            &format!(
                "{pre}{}",
                if backend.bundled {
                    PATH_ERRORS_CHECK
                } else {
                    ERRORS_CHECK
                }
            ),
        );
}

/// Each `key: status=S paddock: MESSAGE` line of an errors check: exit 2, and the message says
/// `words`.
fn refusals(
    r: &CheckResult,
    cases: &[(&str, &str)],
    expect: &mut impl FnMut(&CheckResult, bool, &str),
) {
    for (key, words) in cases {
        let line = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_default();
        expect(
            r,
            line.starts_with("status=2 paddock: ") && line.contains(words),
            &format!("{key}: exit 2 with one line saying `{words}`"),
        );
    }
}

/// The `--fs path=` errors check.
fn path_error_failures(r: &CheckResult, expect: &mut impl FnMut(&CheckResult, bool, &str)) {
    let cases = [
        ("missing", "/nope does not exist"),
        ("notdir", "is not a directory"),
        ("duptag", "used by another --fs"),
    ];
    refusals(r, &cases, expect);
    expect(
        r,
        field(r, "left_dirs") == Some("0"),
        "no runtime directory left behind",
    );
    expect(
        r,
        field(r, "left_backends") == Some("0"),
        "no backend process left behind",
    );
}

/// The value of the first `key=value` line with this key.
fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(str::trim))
}

/// What went wrong in `backend`'s checks of `report`, one entry per failed expectation.
pub fn failures(report: &Report, backend: &FsBackend) -> Vec<String> {
    let n = &backend.name;
    let mut out = Vec::new();
    let mut expect = |r: &CheckResult, ok: bool, what: &str| {
        if !ok {
            out.push(format!("{n}: {what}\n{r}"));
        }
    };

    let r = report.check(&format!("{n}-files"));
    let is = |key: &str, want: &str| field(r, key) == Some(want);
    expect(
        r,
        is("paddock_status", "0"),
        "the guest must run the file checks and power off",
    );
    expect(r, is("read", "from-host"), "the guest reads a host file");
    for op in [
        "create", "append", "write", "mkdir", "rename", "unlink", "symlink", "copy",
    ] {
        expect(r, is(op, "0"), &format!("{op} must succeed in the guest"));
    }
    expect(r, is("chmod", "640"), "chmod 640 seen in the guest");
    expect(
        r,
        is("host_moved", "one two"),
        "created + appended + renamed file seen on the host",
    );
    expect(
        r,
        is("host_write", "01AB456789"),
        "a write in the middle of a file reaches the host",
    );
    expect(r, is("host_mode", "640"), "chmod reaches the host");
    expect(
        r,
        is("host_sym", "dir/moved.txt"),
        "the guest's symlink on the host",
    );
    expect(r, is("host_gone", "absent"), "unlink reaches the host");
    // `rm -rf` unlinks while it lists. The test host's shares are on tmpfs of Linux 6.1, whose
    // directory cookies are positions: virtiofsd 1.14 seeks to the cookie on every READDIR and
    // skips entries there ("Directory not empty"); the bundled backend continues its listing.
    if backend.bundled {
        expect(
            r,
            is("rm_rf", "0"),
            "rm -rf of a 300-file directory in the guest",
        );
        expect(r, is("host_many", "absent"), "rm -rf reaches the host");
    }
    let big_host = field(r, "big_host_sha");
    expect(
        r,
        big_host.is_some_and(|h| h.len() == 64) && field(r, "big_guest_sha") == big_host,
        "the 256 MiB file has the same SHA-256 in guest and host",
    );
    expect(
        r,
        field(r, "copy_host_sha") == big_host,
        "the guest's 256 MiB copy has the original's SHA-256 on the host",
    );
    expect(
        r,
        is("dotdot", "guest-root"),
        "`..` of the mount root is the guest's own root",
    );
    expect(
        r,
        !is("dotdot_outside", "0"),
        "no host directory outside the share through `..`",
    );
    expect(
        r,
        !is("abs_link", "0"),
        "an absolute symlink out of the share resolves in the guest, not on the host",
    );
    expect(
        r,
        !is("rel_link", "0"),
        "a relative symlink out of the share does not reach the host's file",
    );
    expect(
        r,
        !is("hardlink", "0"),
        "a hard link to a file outside the share is impossible",
    );
    expect(
        r,
        is("host_hard", "absent"),
        "no hard link appeared in the share",
    );
    expect(
        r,
        is("host_secret", "secret") && is("host_outside", "secret"),
        "the outside directory is untouched",
    );

    let r = report.check(&format!("{n}-readonly"));
    let has = |key: &str, want: &str| field(r, key).is_some_and(|v| v.contains(want));
    expect(
        r,
        field(r, "paddock_status") == Some("0"),
        "the read-only guest must run",
    );
    expect(
        r,
        field(r, "ro_read") == Some("ro-content"),
        "a read-only share reads",
    );
    for op in ["ro_create", "ro_mkdir", "ro_unlink"] {
        expect(
            r,
            has(op, "Read-only file system"),
            &format!("{op}: EROFS on a read-only share"),
        );
    }
    expect(
        r,
        field(r, "host_ro") == Some("check.sh file"),
        "nothing changed on the host",
    );

    let r = report.check(&format!("{n}-two-shares"));
    let is = |key: &str, want: &str| field(r, key) == Some(want);
    expect(r, is("paddock_status", "0"), "the two-share guest must run");
    expect(
        r,
        is("a_read", "in-a") && is("b_read", "in-b"),
        "both shares read in the guest",
    );
    expect(
        r,
        is("host_a", "guest-a") && is("host_b", "guest-b"),
        "both shares written from the guest",
    );
    let threads: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("thread "))
        .collect();
    expect(
        r,
        threads.iter().filter(|l| l.contains("vhost-user")).count() == 2,
        "one vhost-user thread per share",
    );
    expect(
        r,
        !threads.is_empty() && threads.iter().all(|l| l.ends_with("Seccomp:2")),
        "every paddock thread runs under its seccomp filter (Seccomp: 2)",
    );
    let children: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("child "))
        .collect();
    let child_pids: std::collections::BTreeSet<&str> = children
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    if backend.bundled {
        expect(
            r,
            child_pids.len() == 2,
            "paddock runs one bundled backend process per share",
        );
        expect(
            r,
            children.iter().all(|l| l.ends_with("Seccomp:2")),
            "every thread of every backend runs under its seccomp filter (Seccomp: 2)",
        );
    } else {
        expect(
            r,
            children.is_empty(),
            "paddock starts no process of its own",
        );
    }

    let r = report.check(&format!("{n}-backend-gone"));
    let is = |key: &str, want: &str| field(r, key) == Some(want);
    expect(
        r,
        is("before", "alive"),
        "the share works before the backend dies",
    );
    expect(
        r,
        field(r, "after").is_some_and(|v| v.contains("Input/output error")),
        "requests after the backend died fail with EIO in the guest",
    );
    expect(
        r,
        !is("ls_after", "0") && is("still_running", "yes"),
        "the guest goes on after the failure",
    );
    expect(
        r,
        is("paddock_status", "7"),
        "the VM powers off with the guest's status",
    );
    expect(
        r,
        is("hangup_lines", "1"),
        "the hang-up is logged exactly once",
    );

    let r = report.check(&format!("{n}-errors"));
    if backend.bundled {
        path_error_failures(r, &mut expect);
        return out;
    }
    let cases = [
        ("missing", "does not exist"),
        ("notsock", "is not a Unix socket"),
        ("refused", "connection refused"),
        ("longtag", "more than the 36"),
        ("duptag", "used by another --fs"),
    ];
    refusals(r, &cases, &mut expect);
    // One line each: nothing but the five answers on stdout.
    expect(
        r,
        r.stdout
            .lines()
            .all(|l| cases.iter().any(|(k, _)| l.starts_with(&format!("{k}: ")))),
        "each error is one line",
    );
    out
}
