//! COM1: the 16550A model of `vm-superio`, with its interrupt line wired to an eventfd that the VMM
//! registers as a KVM irqfd (IRQ 4), and its output sent to any `Write` (stdout, a file, a sink).

use crate::bus::BusDevice;
use std::io::Write;
use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Number of byte registers of the UART (0x3f8..0x400): insert the console with this length.
pub const SERIAL_PORT_SPAN: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial console: cannot raise the guest interrupt through its eventfd: {0}; check that the irqfd is still registered")]
    Interrupt(std::io::Error),
}

/// The UART's interrupt line: each assertion is one eventfd write, which KVM turns into an edge on
/// the GSI the eventfd is registered for.
pub struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

type Uart = Serial<IrqLine, NoEvents, Box<dyn Write + Send>>;

/// The guest's serial console.
pub struct SerialConsole {
    uart: Uart,
}

impl SerialConsole {
    /// `irq` is the eventfd to register as the IRQ 4 irqfd (keep a `try_clone` of it, or use
    /// [`SerialConsole::irq_eventfd`]); `out` receives every byte the guest transmits.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(IrqLine(irq), out),
        }
    }

    /// The eventfd the UART signals its interrupt on.
    pub fn irq_eventfd(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues guest console input. Takes as many bytes as the receive FIFO has room for and returns
    /// that count (0 when the FIFO is full or the guest put the UART in loopback mode); the caller
    /// keeps the rest and offers it again once the guest has read some.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(UartError::FullFifo) => Ok(0),
            Err(UartError::Trigger(e)) => Err(SerialError::Interrupt(e)),
            // Enqueueing never writes to the output; kept for exhaustiveness.
            Err(UartError::IOError(_)) => Ok(0),
        }
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        match self.uart.write(offset, value) {
            Ok(()) => {}
            // A closed or full host output loses the byte; the guest must not stall on it.
            Err(UartError::IOError(e)) => log::debug!("serial console: output byte lost: {e}"),
            Err(UartError::Trigger(e)) => {
                log::warn!("{}", SerialError::Interrupt(e))
            }
            Err(UartError::FullFifo) => {}
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wider access is a run of byte accesses to consecutive registers, as on an 8-bit bus.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match register(offset, i) {
                Some(reg) => self.uart.read(reg),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            if let Some(reg) = register(offset, i) {
                self.write_register(reg, byte);
            }
        }
    }
}

/// The UART register the `i`-th byte of an access at `offset` lands on, if it is inside the UART.
fn register(offset: u64, i: usize) -> Option<u8> {
    offset
        .checked_add(i as u64)
        .filter(|&r| r < SERIAL_PORT_SPAN)
        .map(|r| r as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// A `Write` whose bytes the test can read back after handing it to the console.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    fn console() -> (SerialConsole, Captured) {
        let out = Captured::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (SerialConsole::new(irq, Box::new(out.clone())), out)
    }

    #[test]
    fn transmitted_bytes_reach_the_output_exactly() {
        let (mut con, out) = console();
        let mut lsr = [0u8];
        con.read(LSR, &mut lsr);
        assert_ne!(
            lsr[0] & 0x20,
            0,
            "THR empty must be set so a polling guest can send"
        );
        for &b in b"hi\n\0\xff" {
            con.write(THR, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n\0\xff");
    }

    #[test]
    fn thr_empty_interrupt_goes_through_the_eventfd() {
        let (mut con, _out) = console();
        assert!(
            con.irq_eventfd().read().is_err(),
            "no interrupt before IER is set"
        );
        con.write(IER, &[0x02]);
        con.write(THR, b"x");
        assert!(con.irq_eventfd().read().unwrap() >= 1);
    }

    #[test]
    fn input_respects_fifo_capacity_and_is_read_back() {
        let (mut con, _out) = console();
        con.write(IER, &[0x01]);
        let cap = con.input_capacity();
        let big = vec![b'a'; cap + 10];
        assert_eq!(con.enqueue_input(&big).unwrap(), cap);
        assert_eq!(con.enqueue_input(b"more").unwrap(), 0);
        assert!(
            con.irq_eventfd().read().unwrap() >= 1,
            "received-data interrupt"
        );
        let mut lsr = [0u8];
        con.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut byte = [0u8];
        con.read(THR, &mut byte);
        assert_eq!(byte[0], b'a');
        assert_eq!(con.input_capacity(), 1);
        assert_eq!(con.enqueue_input(b"zz").unwrap(), 1);
    }

    #[test]
    fn accesses_past_the_uart_are_ignored() {
        let (mut con, out) = console();
        let mut wide = [0u8; 2];
        con.read(7, &mut wide);
        assert_eq!(wide[1], 0xff);
        con.write(8, b"x");
        assert!(out.0.lock().unwrap().is_empty());
    }
}
