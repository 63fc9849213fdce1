//! `paddock-bench net` works end to end. `worker`: on this machine's kernel (root: it makes a tap
//! in a private network namespace), briefly, every direction and frame size must move frames both
//! through the worker and in the plain loop. Not a timed test: no thresholds, only that the numbers
//! exist (see docs/benchmarks.md for the real runs).
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`, then
//! `cargo test -p paddock-tests --test bench_net --release -- --nocapture`.

use std::process::Command;

use serde_json::Value;

fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0)
}

#[test]
fn paddock_bench_net_worker_moves_frames_both_ways() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: paddock-bench net worker needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("net-worker.json");
    let out = Command::new(env!("CARGO_BIN_EXE_paddock-bench"))
        .args([
            "net",
            "worker",
            "--repeats",
            "1",
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
        ])
        .arg("--json")
        .arg(&json_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "paddock-bench net worker failed\n{text}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap())
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{text}"));
    assert_eq!(json["benchmark"], "net-worker");
    let results = json["results"].as_array().expect("results");
    // 3 frame sizes x 2 directions x (worker, plain).
    assert_eq!(results.len(), 12, "{json}");
    for r in results {
        let what = format!("{} {} B {}", r["direction"], r["frame_bytes"], r["mode"]);
        assert_eq!(
            r["failures"].as_array().map(Vec::len),
            Some(0),
            "{what}: {r}"
        );
        let sample = &r["samples"][0];
        assert!(
            positive(&sample["frames_per_s"]) && positive(&sample["gbit_per_s"]),
            "{what}: {sample}"
        );
        assert_eq!(sample["dropped"], 0, "{what}: frames dropped: {sample}");
        assert!(positive(&r["frames_per_s"]["median"]), "{what}: {r}");
    }
    for ratio in json["ratios"].as_array().expect("ratios") {
        assert!(positive(&ratio["worker_over_plain"]), "{ratio}");
    }
}
