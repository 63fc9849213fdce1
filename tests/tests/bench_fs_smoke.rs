//! `paddock-bench fs` works end to end: in the KVM test host (or directly on hardware KVM) it boots
//! the default guest under Paddock once with `paddock virtiofsd` and once with the standard
//! virtiofsd, and writes JSON with a positive number for every measurement. Not a timed test: no
//! thresholds (see docs/benchmarks.md for real runs).
//!
//! Needs the release binaries (`cargo build --release -p sandbox -p paddock-tests`) and virtiofsd
//! (`resources/setup/virtiofsd.sh`).

use std::path::Path;
use std::time::Duration;

use paddock_tests::testhost::Scenario;
use paddock_tests::workspace;
use serde_json::Value;

/// Two guest boots in the test host with small sizes, with a wide margin.
const BENCH: Duration = Duration::from_secs(600);
const MEASURES: [&str; 5] = [
    "write_mib_s",
    "read_mib_s",
    "create_ops_s",
    "stat_ops_s",
    "unlink_ops_s",
];

#[test]
fn paddock_bench_fs_writes_numbers_for_both_backends() {
    let virtiofsd = workspace::target_dir().join("virtiofsd/bin/virtiofsd");
    assert!(
        virtiofsd.is_file(),
        "{} is missing: run resources/setup/virtiofsd.sh",
        virtiofsd.display()
    );
    let mut s = Scenario::new("bench_fs_smoke");
    // The table goes to stderr; stdout is exactly the JSON file.
    s.check_as_user(
        "bench-fs",
        BENCH,
        r#"paddock-bench fs --runs 1 --size 16 --files 100 --backend paddock --backend "virtiofsd=$(command -v virtiofsd)" --json "$HOME/fs.json" >&2 && cat "$HOME/fs.json""#,
    )
    .binary(&virtiofsd)
    .paddock_bench_bin(Path::new(env!("CARGO_BIN_EXE_paddock-bench")));
    let Some(report) = s.run().expect("bench_fs_smoke scenario") else {
        return;
    };
    let r = report.check("bench-fs");
    assert_eq!(r.status, 0, "paddock-bench fs must succeed\n{r}");
    let json: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("paddock-bench --json wrote no JSON ({e})\n{r}"));
    assert_eq!(json["benchmark"], "fs", "{json}");
    let results = json["results"].as_array().expect("results array");
    let backends: Vec<&str> = results
        .iter()
        .filter_map(|r| r["backend"].as_str())
        .collect();
    assert_eq!(backends, ["paddock-virtiofsd", "virtiofsd"], "{json}");
    for result in results {
        assert_eq!(result["vmm"], "paddock", "{json}");
        assert_eq!(
            result["failures"].as_array().map(Vec::len),
            Some(0),
            "{json}"
        );
        for m in MEASURES {
            let median = result[m]["median"].as_f64();
            assert!(
                median.is_some_and(|v| v > 0.0),
                "{} {m}: need a positive median, got {median:?}\n{json}",
                result["backend"]
            );
        }
    }
}
