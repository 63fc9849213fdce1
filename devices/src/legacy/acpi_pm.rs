//! The ACPI hardware-reduced power-management registers the FADT announces: sleep control (S5 ends
//! the run with a power-off), sleep status, and the reset register.
//!
//! Insert one [`AcpiPm`] at `ACPI_SLEEP_CONTROL_PORT` (0x600) with length [`ACPI_PM_PORT_SPAN`] (3):
//! offset 0 sleep control, 1 sleep status, 2 reset.

use super::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_SLP_EN,
};
use crate::bus::BusDevice;
use crate::exit::{ExitRequest, ExitSignal};

/// Bus length covering the three one-byte registers.
pub const ACPI_PM_PORT_SPAN: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT) as u64 + 1;

const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = (ACPI_SLEEP_STATUS_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;
const RESET: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;

const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

pub struct AcpiPm {
    exit: ExitSignal,
}

impl AcpiPm {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }

    fn write_sleep_control(&self, value: u8) {
        if value & ACPI_SLP_EN == 0 {
            return;
        }
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if slp_typ == ACPI_S5_SLP_TYP {
            log::info!("ACPI: guest entered S5 (soft off)");
            self.exit.request(ExitRequest::PowerOff);
        } else {
            // Only S5 is announced in the DSDT; other sleep states are not supported.
            log::warn!("ACPI: guest asked for sleep type {slp_typ}, which Paddock does not support; ignored");
        }
    }
}

impl BusDevice for AcpiPm {
    /// Sleep control and reset read as 0; sleep status reads with WAK_STS clear (never woken).
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The registers are one byte wide; a wider write is one byte per register.
        for (i, &value) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(SLEEP_CONTROL) => self.write_sleep_control(value),
                // Write-one-to-clear of WAK_STS: nothing is ever set.
                Some(SLEEP_STATUS) => {}
                Some(RESET) if value == ACPI_RESET_VALUE => {
                    log::info!("ACPI: guest wrote the reset register");
                    self.exit.request(ExitRequest::Reset);
                }
                _ => log::debug!("ACPI PM: ignoring write {value:#04x} at offset {offset}+{i}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPm, ExitSignal) {
        let exit = ExitSignal::new().unwrap();
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut pm, exit) = device();
        pm.write(SLEEP_CONTROL, &[ACPI_S5_SLP_TYP << 2]);
        assert_eq!(exit.requested(), None, "SLP_EN clear: no transition");
        pm.write(SLEEP_CONTROL, &[(3 << 2) | ACPI_SLP_EN]);
        assert_eq!(exit.requested(), None, "S3 is ignored");
        pm.write(SLEEP_CONTROL, &[(ACPI_S5_SLP_TYP << 2) | ACPI_SLP_EN]);
        assert_eq!(exit.requested(), Some(ExitRequest::PowerOff));
    }

    #[test]
    fn reset_register_resets_only_with_the_reset_value() {
        let (mut pm, exit) = device();
        pm.write(RESET, &[ACPI_RESET_VALUE.wrapping_add(1)]);
        assert_eq!(exit.requested(), None);
        pm.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.requested(), Some(ExitRequest::Reset));
    }

    #[test]
    fn status_reads_wak_sts_clear() {
        let (mut pm, _exit) = device();
        let mut b = [0xffu8];
        pm.read(SLEEP_STATUS, &mut b);
        assert_eq!(b[0] & 0x80, 0);
        assert_eq!(ACPI_PM_PORT_SPAN, 3);
    }
}
