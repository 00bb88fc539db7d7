//! The device model: a port-IO bus and an MMIO bus, and the few devices a
//! memrace guest needs (two 16550 UARTs, a power/exit device, an i8042 stub).
//!
//! Accesses nobody claims are answered with all-ones (reads) or dropped
//! (writes) and reported once per address, for the first `UNCLAIMED_LOGGED`
//! addresses; after that they are only counted, so a guest sweeping the address
//! space can neither crash the VMM nor flood its log or memory.

mod power;
mod uart;

pub use power::{ExitDevice, Lifecycle, PostCodeSink, StopReason, I8042};
pub use uart::{LineKind, Uart};

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::VmEvent;

/// ttyS0: the console.
pub const COM1: (u64, u32) = (0x3f8, 4);
/// ttyS1: the control channel.
pub const COM2: (u64, u32) = (0x2f8, 3);
/// The exit device's port (as QEMU's isa-debug-exit) and MMIO alias (in the 32-bit gap).
pub const EXIT_PORT: u64 = 0x501;
pub const EXIT_MMIO: u64 = 0xd000_0000;
const EXIT_LEN: u64 = 4;
const I8042_PORT: u64 = 0x60;
const POST_CODE_PORT: u64 = 0x80;
/// Distinct unclaimed addresses logged (and remembered) before the rest are only counted.
pub const UNCLAIMED_LOGGED: usize = 64;

/// A device on a bus; `offset` is relative to the start of its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device range {base:#x} (+{len:#x}) overlaps one already on the {bus} bus")]
    Overlap {
        bus: &'static str,
        base: u64,
        len: u64,
    },
    #[error("cannot create the interrupt eventfd for {what}: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("KVM refused the interrupt line {gsi} for {what}: {source}")]
    Irqfd {
        what: &'static str,
        gsi: u32,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create {path}: {source}")]
    Log {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Address ranges mapped to devices. Built once, then shared read-only by vCPU threads.
pub struct Bus {
    name: &'static str,
    ranges: Vec<Range>,
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: Vec::new(),
        }
    }

    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), DeviceError> {
        let overlaps = self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < base + len);
        if len == 0 || overlaps {
            return Err(DeviceError::Overlap {
                bus: self.name,
                base,
                len,
            });
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(MutexGuard<'_, dyn BusDevice + 'static>, u64)> {
        let range = self
            .ranges
            .iter()
            .find(|r| addr >= r.base && addr < r.base + r.len)?;
        // A device whose lock was poisoned by a panicking vCPU thread still has a
        // consistent register file (every access is a single call): keep using it.
        let guard = range.device.lock().unwrap_or_else(|e| e.into_inner());
        Some((guard, addr - range.base))
    }
}

/// Which address space an access went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    Pio,
    Mmio,
}

/// What the guest touched that no device claims: the first `UNCLAIMED_LOGGED`
/// distinct addresses, then a count of accesses to any other address.
#[derive(Default)]
struct Unclaimed {
    logged: BTreeSet<(Space, u64)>,
    unlogged: u64,
}

/// Both buses plus the record of unclaimed accesses.
pub struct Devices {
    pio: Bus,
    mmio: Bus,
    unclaimed: Mutex<Unclaimed>,
}

impl Devices {
    pub fn new(pio: Bus, mmio: Bus) -> Self {
        Devices {
            pio,
            mmio,
            unclaimed: Mutex::new(Unclaimed::default()),
        }
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.read(Space::Pio, u64::from(port), data);
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        self.write(Space::Pio, u64::from(port), data);
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.read(Space::Mmio, addr, data);
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.write(Space::Mmio, addr, data);
    }

    fn unclaimed_record(&self) -> MutexGuard<'_, Unclaimed> {
        self.unclaimed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The logged unclaimed (space, address) pairs the guest touched, in order.
    pub fn unclaimed(&self) -> Vec<(Space, u64)> {
        self.unclaimed_record().logged.iter().copied().collect()
    }

    /// Unclaimed accesses past the logged addresses (counted, not logged).
    pub fn unclaimed_unlogged(&self) -> u64 {
        self.unclaimed_record().unlogged
    }

    fn bus(&self, space: Space) -> &Bus {
        match space {
            Space::Pio => &self.pio,
            Space::Mmio => &self.mmio,
        }
    }

    fn read(&self, space: Space, addr: u64, data: &mut [u8]) {
        match self.bus(space).find(addr) {
            Some((mut dev, offset)) => dev.read(offset, data),
            None => {
                data.fill(0xff);
                self.note_unclaimed(space, addr, "read");
            }
        }
    }

    fn write(&self, space: Space, addr: u64, data: &[u8]) {
        match self.bus(space).find(addr) {
            Some((mut dev, offset)) => dev.write(offset, data),
            None => self.note_unclaimed(space, addr, "write"),
        }
    }

    fn note_unclaimed(&self, space: Space, addr: u64, what: &str) {
        let mut record = self.unclaimed_record();
        if record.logged.contains(&(space, addr)) {
            return;
        }
        if record.logged.len() < UNCLAIMED_LOGGED {
            record.logged.insert((space, addr));
            eprintln!("memrace kvm: guest {what} of unemulated {space:?} address {addr:#x} ignored (reported once)");
            return;
        }
        if record.unlogged == 0 {
            eprintln!("memrace kvm: more than {UNCLAIMED_LOGGED} distinct unemulated addresses; further ones are ignored and only counted");
        }
        record.unlogged += 1;
    }
}

impl Drop for Devices {
    /// The count the log promised, once, when the VM's devices go away.
    fn drop(&mut self) {
        let unlogged = self.unclaimed_record().unlogged;
        if unlogged > 0 {
            eprintln!(
                "memrace kvm: {unlogged} further unemulated accesses were ignored without logging"
            );
        }
    }
}

fn uart(
    vm: &VmFd,
    (port, gsi): (u64, u32),
    kind: LineKind,
    events: &Sender<VmEvent>,
    log: Option<File>,
) -> Result<(u64, SharedDevice), DeviceError> {
    let what = match kind {
        LineKind::Console => "the console UART",
        LineKind::Control => "the control UART",
    };
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::EventFd { what, source })?;
    vm.register_irqfd(&irq, gsi)
        .map_err(|source| DeviceError::Irqfd { what, gsi, source })?;
    Ok((
        port,
        Arc::new(Mutex::new(Uart::new(kind, irq, events.clone(), log))),
    ))
}

/// The PC devices every memrace VM has. `console_log` receives ttyS0's raw output.
/// Needs the in-kernel irqchip (the UARTs interrupt through irqfds).
pub fn pc_devices(
    vm: &VmFd,
    events: &Sender<VmEvent>,
    lifecycle: &Arc<Lifecycle>,
    console_log: Option<File>,
) -> Result<Devices, DeviceError> {
    let mut pio = Bus::new("port");
    let mut mmio = Bus::new("MMIO");
    for (port, device) in [
        uart(vm, COM1, LineKind::Console, events, console_log)?,
        uart(vm, COM2, LineKind::Control, events, None)?,
    ] {
        pio.insert(port, Uart::REGISTERS, device)?;
    }
    let exit: SharedDevice = Arc::new(Mutex::new(ExitDevice::new(lifecycle.clone())));
    pio.insert(EXIT_PORT, EXIT_LEN, exit.clone())?;
    mmio.insert(EXIT_MMIO, EXIT_LEN, exit)?;
    pio.insert(
        I8042_PORT,
        I8042::COMMAND_OFFSET + 1,
        Arc::new(Mutex::new(I8042::new(lifecycle.clone()))),
    )?;
    pio.insert(POST_CODE_PORT, 1, Arc::new(Mutex::new(PostCodeSink)))?;
    Ok(Devices::new(pio, mmio))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_reports_unclaimed_once() {
        let mut pio = Bus::new("pio");
        pio.insert(0x10, 4, Arc::new(Mutex::new(Echo(0)))).unwrap();
        assert!(pio.insert(0x12, 4, Arc::new(Mutex::new(Echo(0)))).is_err());
        let devices = Devices::new(pio, Bus::new("mmio"));
        devices.pio_write(0x10, &[7]);
        let mut byte = [0];
        devices.pio_read(0x12, &mut byte);
        assert_eq!(byte, [9]);
        devices.pio_read(0x99, &mut byte);
        devices.pio_read(0x99, &mut byte);
        devices.mmio_write(0x1000, &[1]);
        assert_eq!(byte, [0xff]);
        assert_eq!(
            devices.unclaimed(),
            vec![(Space::Pio, 0x99), (Space::Mmio, 0x1000)]
        );
        assert_eq!(devices.unclaimed_unlogged(), 0);
    }

    #[test]
    fn a_guest_sweeping_addresses_is_logged_up_to_the_cap_then_counted() {
        let devices = Devices::new(Bus::new("pio"), Bus::new("mmio"));
        let mut byte = [0];
        for addr in 0..1000u64 {
            devices.mmio_read(0x1000 + addr, &mut byte);
        }
        // Logged addresses stay silent, however often they are touched.
        devices.mmio_read(0x1000, &mut byte);
        let logged = devices.unclaimed();
        assert_eq!(logged.len(), UNCLAIMED_LOGGED);
        assert_eq!(logged[UNCLAIMED_LOGGED - 1], (Space::Mmio, 0x1000 + 63));
        assert_eq!(devices.unclaimed_unlogged(), 1000 - UNCLAIMED_LOGGED as u64);
    }
}
