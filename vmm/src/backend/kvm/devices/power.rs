//! How a guest ends: the exit device, the i8042 reset line, and the shared
//! lifecycle that turns the first stop request into one `VmEvent::Exited`.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use super::BusDevice;
use crate::backend::{VmEvent, VmExit};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote `code` to the exit device (port or MMIO).
    ExitDevice(u32),
    /// The guest pulsed the reset line through the i8042 (`0xfe` to port 0x64).
    KeyboardReset,
    /// The vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`): Linux's last-resort reboot.
    TripleFault,
    /// KVM reported a system event (PSCI-style shutdown/reset), with its type.
    SystemEvent(u32),
    /// The VMM could not continue (a KVM error, an emulation failure).
    Failed(String),
}

type Kick = Box<dyn Fn() + Send + Sync>;

struct State {
    reason: Option<StopReason>,
    kick_all: Option<Kick>,
}

/// Shared by the devices and the vCPU threads: the first stop wins, is reported
/// once on the event channel, and kicks every vCPU out of `KVM_RUN`.
pub struct Lifecycle {
    state: Mutex<State>,
    events: Sender<VmEvent>,
}

impl Lifecycle {
    pub fn new(events: Sender<VmEvent>) -> Arc<Self> {
        Arc::new(Lifecycle {
            state: Mutex::new(State {
                reason: None,
                kick_all: None,
            }),
            events,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installed once the vCPU threads exist.
    pub fn set_kick_all(&self, kick: Kick) {
        self.state().kick_all = Some(kick);
    }

    /// Called before the vCPU threads are joined: no kick may target a joined thread.
    pub fn disarm_kick_all(&self) {
        self.state().kick_all = None;
    }

    pub fn stop(&self, reason: StopReason) {
        let mut state = self.state();
        if state.reason.is_some() {
            return;
        }
        let exit = match &reason {
            StopReason::Failed(why) => VmExit::VmmFailed(why.clone()),
            _ => VmExit::GuestStopped,
        };
        state.reason = Some(reason);
        // The receiver is gone only when the VM is being dropped: nobody to tell.
        let _ = self.events.send(VmEvent::Exited(exit));
        // Kick under the lock, so `disarm_kick_all` cannot return while a kick is in flight.
        if let Some(kick) = &state.kick_all {
            kick();
        }
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.state().reason.clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.state().reason.is_some()
    }
}

/// Writing any value ends the VM with that value as exit code. Mapped at a port
/// (x86) and at an MMIO address (for guests, and future arches, without port IO).
pub struct ExitDevice {
    lifecycle: Arc<Lifecycle>,
}

impl ExitDevice {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        ExitDevice { lifecycle }
    }
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut code = [0u8; 4];
        let n = data.len().min(4);
        code[..n].copy_from_slice(&data[..n]);
        self.lifecycle
            .stop(StopReason::ExitDevice(u32::from_le_bytes(code)));
    }
}

/// Just enough of the keyboard controller for Linux's reboot path: the status
/// register reads "input buffer empty" and command `0xfe` resets the machine.
pub struct I8042 {
    lifecycle: Arc<Lifecycle>,
}

impl I8042 {
    /// The command port, relative to the data port at 0x60.
    pub const COMMAND_OFFSET: u64 = 4;
    const CMD_PULSE_RESET: u8 = 0xfe;

    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        I8042 { lifecycle }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == Self::COMMAND_OFFSET && data.first() == Some(&Self::CMD_PULSE_RESET) {
            self.lifecycle.stop(StopReason::KeyboardReset);
        }
    }
}

/// Port 0x80: POST codes and Linux's `io_delay`. Written often, meaning nothing.
pub struct PostCodeSink;

impl BusDevice for PostCodeSink {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn first_stop_wins_and_is_reported_once() {
        let (tx, rx) = channel();
        let life = Lifecycle::new(tx);
        let mut exit = ExitDevice::new(life.clone());
        exit.write(0, &[42]);
        I8042::new(life.clone()).write(I8042::COMMAND_OFFSET, &[0xfe]);
        assert_eq!(life.reason(), Some(StopReason::ExitDevice(42)));
        assert_eq!(
            rx.try_recv().unwrap(),
            VmEvent::Exited(VmExit::GuestStopped)
        );
        assert!(rx.try_recv().is_err());
    }
}
