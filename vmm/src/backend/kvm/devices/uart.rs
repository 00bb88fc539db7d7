//! 16550 UARTs (vm-superio): ttyS0 is the console, ttyS1 the control channel.
//! Output is split into lines and surfaced as `VmEvent`s; the console is also
//! appended to a log file when the VM has a run directory.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::Sender;

use control_proto::{parse_line, LineSplitter};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::backend::VmEvent;

/// What a UART's lines mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Free text (kernel log): `VmEvent::Console`.
    Console,
    /// The control protocol: `VmEvent::Control` or `VmEvent::BadControl`.
    Control,
}

/// Raises the UART's interrupt line through a KVM irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Receives the bytes the guest transmits.
pub struct LineSink {
    kind: LineKind,
    splitter: LineSplitter,
    events: Sender<VmEvent>,
    log: Option<File>,
}

impl LineSink {
    fn emit(&self, line: &[u8]) {
        let event = match self.kind {
            LineKind::Console => {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                VmEvent::Console(String::from_utf8_lossy(line).into_owned())
            }
            LineKind::Control => match parse_line(line) {
                Ok(msg) => VmEvent::Control(msg),
                Err(e) => VmEvent::BadControl {
                    line: String::from_utf8_lossy(&line[..line.len().min(256)]).into_owned(),
                    error: e.to_string(),
                },
            },
        };
        // A dropped receiver means nobody listens any more; the guest must not notice.
        let _ = self.events.send(event);
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(log) = &mut self.log {
            // Losing the log file must not stop the guest: the events still flow.
            let _ = log.write_all(buf);
        }
        for line in self.splitter.push(buf) {
            self.emit(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.log {
            Some(log) => log.flush(),
            None => Ok(()),
        }
    }
}

/// One 16550 on the port bus (8 registers).
pub struct Uart {
    serial: Serial<IrqLine, vm_superio::serial::NoEvents, LineSink>,
}

impl Uart {
    pub const REGISTERS: u64 = 8;

    pub fn new(kind: LineKind, irq: EventFd, events: Sender<VmEvent>, log: Option<File>) -> Self {
        let sink = LineSink {
            kind,
            splitter: LineSplitter::default(),
            events,
            log,
        };
        Uart {
            serial: Serial::new(IrqLine(irq), sink),
        }
    }
}

impl BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // A failed interrupt injection only delays the guest's driver (it polls too).
        let _ = self.serial.write(offset as u8, data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn transmit(uart: &mut Uart, text: &[u8]) {
        for &b in text {
            uart.write(0, &[b]);
        }
    }

    #[test]
    fn control_lines_are_parsed_and_bad_ones_reported() {
        let (tx, rx) = channel();
        let mut uart = Uart::new(
            LineKind::Control,
            EventFd::new(EFD_NONBLOCK).unwrap(),
            tx,
            None,
        );
        transmit(&mut uart, b"HELLO 1\nNONSENSE x\n");
        assert_eq!(
            rx.try_recv().unwrap(),
            VmEvent::Control(control_proto::Message::Hello { version: 1 })
        );
        assert!(matches!(rx.try_recv().unwrap(), VmEvent::BadControl { .. }));
    }

    #[test]
    fn console_lines_lose_their_carriage_return() {
        let (tx, rx) = channel();
        let mut uart = Uart::new(
            LineKind::Console,
            EventFd::new(EFD_NONBLOCK).unwrap(),
            tx,
            None,
        );
        transmit(&mut uart, b"Linux version 6.12\r\n");
        assert_eq!(
            rx.try_recv().unwrap(),
            VmEvent::Console("Linux version 6.12".into())
        );
    }
}
