//! The virtio-net worker moves frames intact: Paddock's real device and worker on a tap in a
//! private network namespace (root; no guest, no test host), driven by a synthetic driver in
//! guest memory filled with a known pattern. RX with mergeable buffers and in big-packet mode,
//! TX with malformed chains among good ones, each with and without indirect descriptors, and
//! both directions at once on one worker. Guest RAM is two mappings, and some chains span the
//! cut between them.
//! Every frame must arrive once, in order, byte for byte, with the right num_buffers and used
//! lengths; every head must come back once; no byte the device may not write may change.
//! See tests/src/net_integrity for what is checked and how.
//!
//! Seeds are fixed per case and printed with every failure; PADDOCK_INTEGRITY_SEED overrides
//! them to explore others.

use paddock_tests::bench::net::netns::{create_tap, enter_private_netns};
use paddock_tests::net_integrity::{both, rx, tx};

const TAP: &str = "pdk-integ0";

fn seed(default: u64) -> u64 {
    std::env::var("PADDOCK_INTEGRITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A private namespace with the tap for this test's thread; false (skip) when not root.
fn netns() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the worker integrity test needs root (a tap in a private netns)");
        return false;
    }
    enter_private_netns().expect("private network namespace");
    create_tap(TAP).expect("tap");
    true
}

fn rx_case(mergeable: bool, indirect: bool, frames: usize, default_seed: u64) {
    if !netns() {
        return;
    }
    let case = rx::RxCase {
        mergeable,
        indirect,
        frames,
        seed: seed(default_seed),
    };
    match rx::run(TAP, &case) {
        Ok(report) => {
            eprintln!("{case:?}: {report:?}");
            // With EVENT_IDX the driver kicks at its first publish, then only when the worker
            // ran dry and asked for a kick: more kicks mean the starve-and-refill path ran.
            assert!(
                report.kicks > 1 && report.starve_phases > 0,
                "{case:?}: the RX ring never ran dry: {report:?}"
            );
            assert!(
                report.across_cut > 0,
                "{case:?}: no frame landed across the cut in guest RAM: {report:?}"
            );
            if mergeable {
                assert!(
                    report.max_num_buffers > 1,
                    "{case:?}: no frame spanned buffers: {report:?}"
                );
            }
        }
        Err(e) => panic!("{case:?}: {e}"),
    }
}

fn tx_case(indirect: bool, frames: usize, default_seed: u64) {
    if !netns() {
        return;
    }
    let case = tx::TxCase {
        indirect,
        frames,
        malformed_percent: 6,
        seed: seed(default_seed),
    };
    match tx::run(TAP, &case) {
        Ok(report) => {
            eprintln!("{case:?}: {report:?}");
            assert!(
                report.malformed > 0,
                "{case:?}: no malformed chain was sent"
            );
            assert!(report.gso_frames > 0, "{case:?}: no GSO frame was sent");
            assert!(
                report.across_cut > 0,
                "{case:?}: no frame was sent across the cut in guest RAM: {report:?}"
            );
        }
        Err(e) => panic!("{case:?}: {e}"),
    }
}

#[test]
fn rx_mergeable_buffers() {
    rx_case(true, false, 4000, 1);
}

#[test]
fn rx_mergeable_buffers_indirect() {
    rx_case(true, true, 4000, 2);
}

#[test]
fn rx_big_packets_without_mergeable_buffers() {
    rx_case(false, false, 1500, 3);
}

#[test]
fn rx_big_packets_indirect() {
    rx_case(false, true, 1500, 4);
}

#[test]
fn tx_varied_chains_with_malformed_ones() {
    tx_case(false, 3000, 5);
}

#[test]
fn tx_varied_chains_indirect() {
    tx_case(true, 3000, 6);
}

#[test]
fn rx_and_tx_at_once_on_one_worker() {
    if !netns() {
        return;
    }
    let rx_case = rx::RxCase {
        mergeable: true,
        indirect: true,
        frames: 3000,
        seed: seed(7),
    };
    let tx_case = tx::TxCase {
        indirect: true,
        frames: 3000,
        malformed_percent: 6,
        seed: seed(8),
    };
    match both::run(TAP, &rx_case, &tx_case) {
        Ok((rx_report, tx_report)) => {
            eprintln!("{rx_case:?}: {rx_report:?}\n{tx_case:?}: {tx_report:?}")
        }
        Err(e) => panic!("{rx_case:?} with {tx_case:?}: {e}"),
    }
}
