//! `paddock check` with `--fs`: each share gets a line saying whether the VM could use it, without
//! connecting to a backend's socket (a backend serves one VM). Runs on this host: nothing boots.

use paddock_tests::workspace;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The `ok`/`FAIL` line for `need`, as `paddock check` printed it.
fn line<'a>(stdout: &'a str, need: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l[5.min(l.len())..].starts_with(&format!("{need}: ")))
        .unwrap_or_else(|| panic!("no line for {need} in:\n{stdout}"))
}

#[test]
fn check_reports_each_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    mode(dir.path(), 0o755);
    let open = dir.path().join("open");
    let closed = dir.path().join("closed");
    let file = dir.path().join("file");
    let sock = dir.path().join("backend.sock");
    std::fs::create_dir(&open).unwrap();
    std::fs::create_dir(&closed).unwrap();
    std::fs::write(&file, b"not a socket").unwrap();
    mode(&open, 0o777);
    // No user but root can list it, and paddock never keeps root.
    mode(&closed, 0o000);
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    mode(&sock, 0o777);
    listener.set_nonblocking(true).unwrap();

    let fs = |spec: String| ["--fs".to_string(), spec];
    let mut args = workspace::paddock_user_args();
    args.push("check".into());
    args.extend(fs(format!("tag=rw,path={}", open.display())));
    args.extend(fs(format!("tag=ro,path={},ro", open.display())));
    args.extend(fs(format!("tag=closed,path={}", closed.display())));
    args.extend(fs(format!("tag=gone,path={}/nope", dir.path().display())));
    args.extend(fs(format!("tag=sock,socket={}", sock.display())));
    args.extend(fs(format!("tag=notsock,socket={}", file.display())));
    let out = Command::new(workspace::paddock_bin())
        .args(&args)
        .output()
        .expect("run paddock check");
    let stdout = String::from_utf8_lossy(&out.stdout);

    let rw = line(&stdout, "fs rw");
    assert!(rw.starts_with("ok") && rw.contains("read-write"), "{rw}");
    let ro = line(&stdout, "fs ro");
    assert!(ro.starts_with("ok") && ro.contains("read-only"), "{ro}");
    let closed_line = line(&stdout, "fs closed");
    assert!(
        closed_line.starts_with("FAIL") && closed_line.contains("cannot list it"),
        "{closed_line}"
    );
    let gone = line(&stdout, "fs gone");
    assert!(
        gone.starts_with("FAIL") && gone.contains("does not exist"),
        "{gone}"
    );
    let sock_line = line(&stdout, "fs sock");
    assert!(
        sock_line.starts_with("ok") && sock_line.contains("not connected"),
        "{sock_line}"
    );
    let notsock = line(&stdout, "fs notsock");
    assert!(
        notsock.starts_with("FAIL") && notsock.contains("is not a socket"),
        "{notsock}"
    );
    assert!(
        line(&stdout, "memory").contains("mapped shared"),
        "guest RAM must be reported shared for vhost-user:\n{stdout}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "paddock check must not connect to a backend's socket"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing share fails the check\n{stdout}"
    );
    mode(&closed, 0o755);
}
