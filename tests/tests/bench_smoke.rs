//! `paddock-bench boot` works end to end: in the KVM test host (or directly on hardware KVM) it boots
//! the first-instruction guest and the default guest under Paddock twice each and writes JSON with a
//! number for every measurement. Not a timed test: no thresholds, only that the numbers exist and
//! are consistent (see docs/benchmarks.md for the real runs).
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`, then
//! `cargo test -p paddock-tests --test bench_smoke --release -- --nocapture`.

use std::path::Path;
use std::time::Duration;

use paddock_tests::testhost::Scenario;
use serde_json::Value;

/// Two L2 boots of 5-8 s and two tiny boots in the test host, with a wide margin.
const BENCH: Duration = Duration::from_secs(400);
const RUNS: usize = 2;

/// A summary (`{runs, min, median, max}`) of `RUNS` positive numbers, or why not.
fn check_summary(result: &Value, key: &str) -> Result<(), String> {
    let s = &result[key];
    let num = |k: &str| {
        s[k].as_f64()
            .ok_or_else(|| format!("{key}.{k} is not a number in {s}"))
    };
    let (min, median, max) = (num("min")?, num("median")?, num("max")?);
    if s["runs"].as_u64() != Some(RUNS as u64) {
        return Err(format!("{key}.runs must be {RUNS}: {s}"));
    }
    if !(min > 0.0 && min <= median && median <= max) {
        return Err(format!("{key}: need 0 < min <= median <= max: {s}"));
    }
    let samples = result["samples"][key]
        .as_array()
        .ok_or_else(|| format!("samples.{key} missing"))?;
    if samples.len() != RUNS {
        return Err(format!(
            "samples.{key} must hold {RUNS} values: {samples:?}"
        ));
    }
    Ok(())
}

#[test]
fn paddock_bench_boot_writes_numbers_for_paddock() {
    let mut s = Scenario::new("bench_smoke");
    // The table goes to stderr; stdout is exactly the JSON file.
    s.check_as_user(
        "bench-boot",
        BENCH,
        &format!(
            r#"paddock-bench boot --runs {RUNS} --paddock "$(command -v paddock)" --kernel "$GUEST/vmlinuz" --initramfs "$GUEST/initramfs.cpio.gz" --json "$HOME/boot.json" >&2 && cat "$HOME/boot.json""#
        ),
    );
    s.paddock_bench_bin(Path::new(env!("CARGO_BIN_EXE_paddock-bench")));
    let Some(report) = s.run().expect("bench_smoke scenario") else {
        return;
    };
    let r = report.check("bench-boot");
    assert_eq!(r.status, 0, "paddock-bench must succeed\n{r}");
    let json: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("paddock-bench --json wrote no JSON ({e})\n{r}"));
    assert_eq!(json["benchmark"], "boot", "{json}");
    assert_eq!(json["runs"], RUNS, "{json}");
    let results = json["results"].as_array().expect("results array");
    assert_eq!(results.len(), 1, "only paddock was asked for: {json}");
    let paddock = &results[0];
    assert_eq!(paddock["vmm"], "paddock", "{json}");
    assert_eq!(
        paddock["failures"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );
    let problems: Vec<String> = [
        "first_instruction_ms",
        "ready_ms",
        "rss_overhead_kib",
        "rss_guest_kib",
    ]
    .iter()
    .filter_map(|k| {
        if *k == "rss_guest_kib" {
            // Only samples: the guest RAM it touched, which must be some.
            let ok = paddock["samples"][k]
                .as_array()
                .is_some_and(|v| v.len() == RUNS && v.iter().all(|x| x.as_f64() > Some(0.0)));
            (!ok).then(|| format!("samples.{k} must be {RUNS} positive numbers"))
        } else {
            check_summary(paddock, k).err()
        }
    })
    .collect();
    assert!(problems.is_empty(), "{problems:#?}\n{json}\n{r}");
    // The guest must reach its first instruction before it is ready.
    let first = paddock["first_instruction_ms"]["median"].as_f64();
    let ready = paddock["ready_ms"]["median"].as_f64();
    assert!(
        first < ready,
        "first instruction {first:?} ms must come before ready {ready:?} ms"
    );
}
