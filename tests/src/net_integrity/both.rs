//! Both directions at once on one device: the RX driver on this thread, the TX driver on
//! another, so the worker interleaves tap reads into held RX buffers with TX batches, as it
//! does under TCP traffic (data one way, acknowledgements the other). Each driver has its own
//! half of guest memory and its own indirect tables, and checks it as it does alone.

use super::rx::{self, RxCase, RxDriver, RxReport};
use super::tx::{TxCase, TxDriver, TxReport};
use super::{rig_spec, IntegrityError, DATA, MAX_SLOTS, MEM_SIZE};
use crate::bench::net::rig::Rig;

/// Where the TX half of guest memory starts.
const TX_REGION: u64 = 8 << 20;

/// Runs both cases on one device on the tap `tap` (in this thread's private namespace). The
/// RX case decides the features acked; the TX case uses indirect descriptors only if they are.
pub fn run(
    tap: &str,
    rx_case: &RxCase,
    tx_case: &TxCase,
) -> Result<(RxReport, TxReport), IntegrityError> {
    let mut rig = Rig::new(tap, &rig_spec("integrity-both", rx::refused(rx_case)))?;
    let mut rx_driver = RxDriver::new(rx_case, &rig, DATA..TX_REGION, 0, tap)?;
    let tx_first_table = MAX_SLOTS / 2;
    let mut tx_driver = TxDriver::new(
        tx_case,
        &rig,
        TX_REGION..MEM_SIZE as u64,
        tx_first_table,
        tap,
    )?;
    let (rx_ring, tx_ring) = (&mut rig.rx, &mut rig.tx);
    let (rx_done, tx_done) = std::thread::scope(|s| {
        // A scoped thread shares this thread's network namespace, where the tap is.
        let tx = s.spawn(|| tx_driver.drive(tx_ring, tap));
        let rx_done = rx_driver.drive(rx_ring, tap);
        (rx_done, tx.join())
    });
    let tx_done = tx_done
        .map_err(|_| IntegrityError::Violation("the TX driver thread panicked".to_string()))?;
    // Stop the worker whatever happened, then report the first failure.
    rig.stop();
    rx_done?;
    tx_done?;
    Ok((rx_driver.finish(&rig.rx)?, tx_driver.finish()?))
}
