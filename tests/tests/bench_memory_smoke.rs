//! `paddock-bench memory` works end to end: in the KVM test host (or directly on hardware KVM), as
//! root, it creates 64M of guest RAM with 4K and 2M pages through Paddock's own code (reserving the
//! hugepages itself and putting nr_hugepages back afterwards), boots the default guest once with
//! each backing, and writes JSON with a number for every measurement. Not a timed test: no
//! thresholds (see docs/benchmarks.md for the real runs).
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::path::Path;
use std::time::Duration;

use paddock_tests::testhost::Scenario;
use serde_json::Value;

const BENCH: Duration = Duration::from_secs(400);

fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(key))
}

#[test]
fn paddock_bench_memory_times_creation_and_boots_with_each_backing() {
    let mut s = Scenario::new("bench_memory_smoke");
    // The table goes to stderr; stdout is the pool sizes around the run and then the JSON.
    s.check_as_root(
        "bench-memory",
        BENCH,
        r#"echo "nr_before=$(cat /proc/sys/vm/nr_hugepages)"
paddock-bench memory --sizes 64M --pages 4K,2M --runs 2 --warmup 0 --boot-runs 1 --paddock "$(command -v paddock)" --kernel "$GUEST/vmlinuz" --initramfs "$GUEST/initramfs.cpio.gz" --json "$HOME/memory.json" >&2
echo "bench_status=$?"
echo "nr_after=$(cat /proc/sys/vm/nr_hugepages)"
cat "$HOME/memory.json""#,
    );
    s.paddock_bench_bin(Path::new(env!("CARGO_BIN_EXE_paddock-bench")));
    let Some(report) = s.run().expect("bench_memory_smoke scenario") else {
        return;
    };
    let r = report.check("bench-memory");
    assert_eq!(field(&r.stdout, "bench_status="), Some("0"), "{r}");
    assert_eq!(
        field(&r.stdout, "nr_after="),
        field(&r.stdout, "nr_before="),
        "nr_hugepages must be put back\n{r}"
    );
    let json_text: String = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n");
    let json: Value = serde_json::from_str(&json_text)
        .unwrap_or_else(|e| panic!("paddock-bench --json wrote no JSON ({e})\n{r}"));
    assert_eq!(json["benchmark"], "memory", "{json}");
    let create = json["create"].as_array().expect("create array");
    for page in ["4K", "2M"] {
        let c = create
            .iter()
            .find(|c| c["page"] == page && c["size"] == "64M")
            .unwrap_or_else(|| panic!("no 64M/{page} entry: {json}"));
        let s = &c["create_ms"];
        let (min, max) = (s["min"].as_f64(), s["max"].as_f64());
        assert!(
            s["runs"] == 2 && min.is_some_and(|m| m > 0.0) && min <= max,
            "64M with {page} pages: two positive timings expected: {c}"
        );
    }
    let boots = json["boot"].as_array().expect("boot array");
    for backing in ["4K anonymous", "2M memfd", "2M hugetlbfs"] {
        let b = boots
            .iter()
            .find(|b| b["backing"] == backing)
            .unwrap_or_else(|| panic!("no boot with {backing}: {json}"));
        assert!(
            b["ready_ms"]["runs"] == 1
                && b["ready_ms"]["min"].as_f64().is_some_and(|m| m > 0.0)
                && b["failures"].as_array().is_some_and(Vec::is_empty),
            "{backing}: one boot to ready expected: {b}"
        );
    }
}
