//! The scenario script (`/scenario/run.sh`) that runs the checks in order inside the KVM test host
//! (or on this host in direct mode) and reports them with `@@` markers on its stdout.
//!
//! Markers (one per line; everything else is free text kept in the logs):
//! `@@SCENARIO-BEGIN <scenario> checks=<n>`, `@@SCENARIO-ERROR <text>`,
//! `@@CHECK-BEGIN <name>`, `@@HEARTBEAT <name>` (every ~10 s while a check runs),
//! `@@OUT <name>|<stdout line>`, `@@ERR <name>|<stderr line>`,
//! `@@CHECK-END <name> rc=<status> cs=<centiseconds> timeout=<0|1>`,
//! `@@CHECK-NOTRUN <name> <reason>`, `@@SCENARIO-END`.
//! Output is printed only after a check ends, by the one script process, so lines never interleave.

use std::fmt::Write as _;

use super::check::{Check, RunAs};

/// How each [`RunAs`] becomes a command prefix in the current mode, or why it cannot.
#[derive(Debug, Clone)]
pub struct UserSwitch {
    pub root: Result<String, String>,
    pub user: Result<String, String>,
    pub user_without_kvm: Result<String, String>,
}

impl UserSwitch {
    /// Inside the KVM test host the script runs as root and user `paddock` is uid 1000 in group kvm.
    pub fn test_host() -> Self {
        UserSwitch {
            root: Ok(String::new()),
            user: Ok(r#""$SETPRIV" --reuid=1000 --regid=1000 --init-groups"#.into()),
            user_without_kvm: Ok(r#""$SETPRIV" --reuid=1001 --regid=1001 --clear-groups"#.into()),
        }
    }

    fn for_check(&self, run_as: RunAs) -> &Result<String, String> {
        match run_as {
            RunAs::Root => &self.root,
            RunAs::User => &self.user,
            RunAs::UserWithoutKvm => &self.user_without_kvm,
        }
    }
}

/// Quote `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The file (relative to `/scenario/checks/`) holding a check's command.
pub fn check_file_name(check: &Check) -> String {
    format!("{}.sh", check.name)
}

/// The body of a check's command file.
pub fn check_file(check: &Check) -> String {
    format!(
        "# check {} (run as {}, timeout {} s)\n{}\n",
        check.name,
        check.run_as,
        check.timeout_secs(),
        check.command
    )
}

const PRELUDE: &str = r#"# The layout: ROOT is empty in the KVM test host, the staging directory in direct mode.
ROOT="${PADDOCK_ROOT:-}"
SCEN="$ROOT/scenario"
BIN="$ROOT/opt/paddock/bin"
GUEST="$ROOT/opt/paddock/guest"
FILES="$ROOT/opt/paddock/files"
WORK="$(mktemp -d /tmp/paddock-scenario.XXXXXX)" || { echo "@@SCENARIO-ERROR mktemp failed"; exit 1; }
HOMEDIR="$WORK/home"
# mktemp made WORK 0700: unprivileged checks must reach their HOME inside it.
chmod 755 "$WORK" && mkdir -p "$HOMEDIR" && chmod 1777 "$HOMEDIR"
CHILD=""
# A TERM from the harness also ends the running check's process group.
trap '[ -n "$CHILD" ] && kill -9 -"$CHILD" 2>/dev/null; rm -rf "$WORK"; exit 143' TERM INT

# Centiseconds since boot, in $NOW, without forking.
now() { read -r NOW _ < /proc/uptime; NOW="${NOW%.*}${NOW#*.}"; }

# run_check NAME TIMEOUT_SECONDS [USER-SWITCH WORDS...]
run_check() {
    name="$1"; limit=$(( $2 * 100 )); shift 2
    echo "@@CHECK-BEGIN $name"
    now; start=$NOW; beat=$NOW
    ( cd "$HOMEDIR" && exec setsid "$@" env -i PATH="$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        HOME="$HOMEDIR" GUEST="$GUEST" FILES="$FILES" PADDOCK_GUEST_DIR="$GUEST" TERM=dumb LD_LIBRARY_PATH="$ROOT/opt/paddock/lib" \
        sh "$SCEN/checks/$name.sh" ) >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
    CHILD=$!
    timedout=0; nap=0.1; polls=0
    # Poll rather than wait: one process prints everything, and it can enforce the timeout.
    while kill -0 "$CHILD" 2>/dev/null; do
        now
        if [ $(( NOW - start )) -ge "$limit" ]; then
            kill -9 -"$CHILD" 2>/dev/null; timedout=1; break
        fi
        if [ $(( NOW - beat )) -ge 1000 ]; then echo "@@HEARTBEAT $name"; beat=$NOW; fi
        sleep "$nap"; polls=$(( polls + 1 )); [ "$polls" -lt 30 ] || nap=0.5
    done
    wait "$CHILD"; rc=$?
    now; CHILD=""
    awk -v p="@@OUT $name|" '{ print p $0 }' "$WORK/$name.out"
    awk -v p="@@ERR $name|" '{ print p $0 }' "$WORK/$name.err"
    echo "@@CHECK-END $name rc=$rc cs=$(( NOW - start )) timeout=$timedout"
}

"#;

/// util-linux's setpriv by absolute path: busybox applets (setsid, env) would otherwise run
/// busybox's own setpriv, which cannot change uids.
const FIND_SETPRIV: &str = r#"SETPRIV=""
for d in $(echo "$PATH" | tr ':' ' '); do
    if [ -x "$d/setpriv" ] && "$d/setpriv" --reuid=0 --regid=0 --clear-groups true 2>/dev/null; then
        SETPRIV="$d/setpriv"; break
    fi
done
if [ -z "$SETPRIV" ]; then
    echo "@@SCENARIO-ERROR no setpriv on PATH can switch users: util-linux setpriv is needed"
    exit 1
fi
"#;

/// The whole `run.sh` for `checks` under `switch`.
pub fn run_script(scenario: &str, checks: &[Check], switch: &UserSwitch) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/sh");
    let _ = writeln!(
        s,
        "# Generated by paddock-tests (tests/src/testhost/script.rs) for scenario {scenario}."
    );
    s.push_str(PRELUDE);
    let _ = writeln!(
        s,
        "echo \"@@SCENARIO-BEGIN {scenario} checks={}\"",
        checks.len()
    );
    // Context for whoever reads the logs: who we are and what /dev/kvm looks like.
    s.push_str("echo \"scenario: running as $(id), kernel $(uname -r)\"\n");
    s.push_str("ls -l /dev/kvm 2>&1 | sed 's/^/scenario: /'\n");
    let needs_setpriv = checks
        .iter()
        .any(|c| matches!(switch.for_check(c.run_as), Ok(p) if p.contains("$SETPRIV")));
    if needs_setpriv {
        s.push_str(FIND_SETPRIV);
    }
    for c in checks {
        match switch.for_check(c.run_as) {
            Ok(prefix) => {
                let _ = writeln!(s, "run_check {} {} {prefix}", c.name, c.timeout_secs());
            }
            Err(why) => {
                let why = why.replace(['\n', '"', '$', '`', '\\'], " ");
                let _ = writeln!(s, "echo \"@@CHECK-NOTRUN {} {why}\"", c.name);
            }
        }
    }
    s.push_str("rm -rf \"$WORK\"\necho \"@@SCENARIO-END\"\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn unsupported_identities_become_notrun_markers() {
        let checks = vec![
            Check::new("a", RunAs::User, Duration::from_secs(5), "true").unwrap(),
            Check::new("b", RunAs::Root, Duration::from_secs(5), "true").unwrap(),
        ];
        let switch = UserSwitch {
            root: Err("not root: \"x\"".into()),
            user: Ok(String::new()),
            user_without_kvm: Err("n/a".into()),
        };
        let s = run_script("demo", &checks, &switch);
        assert!(s.contains("run_check a 5 \n"), "{s}");
        assert!(s.contains("@@CHECK-NOTRUN b not root:  x "), "{s}");
        assert!(!s.contains(FIND_SETPRIV), "{s}");
        let s = run_script("demo", &checks, &UserSwitch::test_host());
        assert!(s.contains(r#"run_check a 5 "$SETPRIV" --reuid=1000 --regid=1000 --init-groups"#));
        assert!(s.contains(FIND_SETPRIV));
    }

    /// Runs the generated script for real under each available shell and parses its markers.
    #[test]
    fn script_runs_checks_reports_output_status_and_timeouts() {
        use crate::testhost::markers::Progress;
        use std::process::Command;
        use std::time::Instant;
        let checks = vec![
            Check::new(
                "talk",
                RunAs::User,
                Duration::from_secs(20),
                "echo \"out $GUEST\"; echo 'err line' >&2; printf 'no newline'; exit 7",
            )
            .unwrap(),
            Check::new(
                "slow",
                RunAs::User,
                Duration::from_secs(1),
                "sleep 30; echo never",
            )
            .unwrap(),
            Check::new("skipped", RunAs::Root, Duration::from_secs(5), "true").unwrap(),
            Check::new(
                "pathy",
                RunAs::User,
                Duration::from_secs(20),
                "command -v paddock",
            )
            .unwrap(),
        ];
        let switch = UserSwitch {
            root: Err("not root here".into()),
            user: Ok(String::new()),
            user_without_kvm: Err("n/a".into()),
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("scenario/checks")).unwrap();
        std::fs::create_dir_all(root.join("opt/paddock/bin")).unwrap();
        std::fs::write(root.join("opt/paddock/bin/paddock"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("opt/paddock/bin/paddock"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(
            root.join("scenario/run.sh"),
            run_script("t", &checks, &switch),
        )
        .unwrap();
        for c in &checks {
            std::fs::write(
                root.join("scenario/checks").join(check_file_name(c)),
                check_file(c),
            )
            .unwrap();
        }
        let mut shells = vec![vec!["sh"]];
        if crate::testhost::mode::find_on_path("busybox").is_some() {
            shells.push(vec!["busybox", "sh"]);
        }
        for shell in shells {
            let t0 = Instant::now();
            let out = Command::new(shell[0])
                .args(&shell[1..])
                .arg(root.join("scenario/run.sh"))
                .env("PADDOCK_ROOT", root)
                .output()
                .unwrap();
            let took = t0.elapsed();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut p = Progress::default();
            for l in text.lines() {
                p.feed(l, Instant::now());
            }
            assert!(p.scenario_begun && p.scenario_ended, "{shell:?}: {text}");
            let talk = p.result_of(&checks[0]).unwrap();
            assert_eq!(talk.status, 7, "{shell:?}: {text}");
            assert_eq!(
                talk.stdout,
                format!("out {}/opt/paddock/guest\nno newline\n", root.display())
            );
            assert_eq!(talk.stderr, "err line\n");
            let slow = p.result_of(&checks[1]).unwrap();
            assert!(
                slow.timed_out && slow.status == 137 && slow.stdout.is_empty(),
                "{text}"
            );
            assert!(slow.elapsed < Duration::from_secs(3), "{slow}");
            let skipped = p.result_of(&checks[2]).unwrap();
            assert_eq!(skipped.not_run.as_deref(), Some("not root here"));
            let pathy = p.result_of(&checks[3]).unwrap();
            assert_eq!(
                pathy.stdout.trim(),
                format!("{}/opt/paddock/bin/paddock", root.display())
            );
            assert!(took < Duration::from_secs(10), "{shell:?} took {took:?}");
        }
    }
}
