//! The part of the i8042 keyboard controller a guest without a keyboard needs: the command that
//! pulses the CPU reset line (how Linux reboots with `reboot=k`, and its fallback otherwise).
//!
//! Insert one [`I8042`] at `I8042_DATA_PORT` (0x60) with length [`I8042_PORT_SPAN`] (5): offset 0 is
//! the data port, offset 4 the command/status port 0x64. Offsets 1..=3 (0x61..=0x63) are not part of
//! the controller: they read as an empty port (all ones) and ignore writes. Port 0x61 (PC speaker /
//! PIT gate) is served by KVM's in-kernel PIT and never reaches this device.

use super::{I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_RESET_COMMAND};
use crate::bus::BusDevice;
use crate::exit::{ExitRequest, ExitSignal};

/// Bus length covering 0x60..=0x64.
pub const I8042_PORT_SPAN: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT) as u64 + 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT) as u64;

/// Status with both buffers empty (no data for the guest, ready for a command) and the system flag
/// set, as after a successful self-test.
pub const I8042_STATUS_IDLE: u8 = 0x04;

pub struct I8042 {
    exit: ExitSignal,
}

impl I8042 {
    pub fn new(exit: ExitSignal) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            COMMAND_OFFSET => I8042_STATUS_IDLE,
            // No keyboard: the output buffer never holds anything.
            DATA_OFFSET => 0,
            _ => 0xff,
        };
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&I8042_RESET_COMMAND) {
            log::info!("i8042: guest pulsed the CPU reset line");
            self.exit.request(ExitRequest::Reset);
        } else {
            log::debug!("i8042: ignoring write {data:02x?} at offset {offset}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let exit = ExitSignal::new().unwrap();
        let mut dev = I8042::new(exit.clone());
        dev.write(DATA_OFFSET, &[I8042_RESET_COMMAND]);
        dev.write(COMMAND_OFFSET, &[0x20]);
        assert_eq!(exit.requested(), None);
        dev.write(COMMAND_OFFSET, &[I8042_RESET_COMMAND]);
        assert_eq!(exit.requested(), Some(ExitRequest::Reset));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn status_says_no_data_and_ready() {
        let mut dev = I8042::new(ExitSignal::new().unwrap());
        let mut status = [0u8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x03, 0, "output and input buffers empty");
        assert_eq!(status[0], I8042_STATUS_IDLE);
        let mut gap = [0u8];
        dev.read(1, &mut gap);
        assert_eq!(gap[0], 0xff);
        assert_eq!(I8042_PORT_SPAN, 5);
    }
}
