//! Starting qemu-system-x86_64 or qemu-system-aarch64 and turning its outputs into events.
//!
//! memrace listens on unix sockets and QEMU connects to them as a client, so no
//! output can be produced before memrace is ready to read it. Reader threads feed
//! one channel; the waiter thread reports the exit only after both serial readers
//! reached end-of-file, so the final control lines always precede `Exited`.

use super::QemuError;
use crate::arch::Arch;
use crate::backend::{VmConfig, VmEvent, VmExit};
use control_proto::{parse_line, LineSplitter};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the backend's channel carries: VM events, and raw gdb packets for the client.
#[derive(Debug)]
pub enum Incoming {
    Event(VmEvent),
    GdbPacket(Vec<u8>),
    GdbClosed,
}

/// How long QEMU may take to connect to memrace's sockets after it starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Guest nanoseconds per instruction under `VmConfig::instruction_clock` are 2^this.
/// 3 (a 125 MHz guest) rather than 0: the kernel's time-based busy waits (udelay, boot
/// calibration) then cost 8 times fewer instructions, and icount's TCG executes only
/// about 30–50 million instructions per second here, so a boot takes 2 s instead of 15.
pub const ICOUNT_SHIFT: u32 = 3;

/// The frequency, in kHz, of the TSC that TCG guests read: without icount QEMU's TCG
/// `rdtsc` returns the host's TSC plus an offset, so it ticks at the host's rate. A
/// guest told this (`tsc_early_khz=`) skips calibrating against the emulated PIT, which
/// under TCG often fails and leaves it on a jiffies clocksource (tick resolution).
/// Measured against the host's monotonic clock over `window`.
pub fn tcg_guest_tsc_khz(window: Duration) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(window);
        let (c1, t1) = (tsc(), Instant::now());
        let ns = t1.duration_since(t0).as_nanos() as u64;
        (ns > 0 && c1 > c0).then(|| (c1 - c0).saturating_mul(1_000_000) / ns)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = window;
        None
    }
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// QEMU's system emulator for `arch`: the binary, the Debian package that has it, and
/// the variable that overrides it.
fn qemu_binary(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86", "MEMRACE_QEMU"),
        Arch::Arm64 => (
            "qemu-system-aarch64",
            "qemu-system-arm",
            "MEMRACE_QEMU_ARM64",
        ),
    }
}

/// Find the QEMU binary for an `arch` guest: `$MEMRACE_QEMU` (x86_64) or
/// `$MEMRACE_QEMU_ARM64`, else `qemu-system-x86_64` / `qemu-system-aarch64` on PATH.
pub fn find_qemu(arch: Arch) -> Result<PathBuf, QemuError> {
    let (binary, package, variable) = qemu_binary(arch);
    let missing = |path: String| QemuError::NotInstalled {
        path,
        package,
        variable,
    };
    if let Some(explicit) = std::env::var_os(variable) {
        let p = PathBuf::from(explicit);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(missing(p.display().to_string()))
        };
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(binary))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| missing(binary.into()))
}

/// The machine, CPU and serial ports of an `arch` guest. The console is the machine's
/// first serial port; the control channel is a second port the kernel never logs to.
fn machine_args(arch: Arch, accel: Accel, s: &dyn Fn(&str) -> String) -> Vec<String> {
    let console = [
        "-chardev".to_string(),
        format!("socket,id=con,path={}", s("console.sock")),
        "-serial".into(),
        "chardev:con".into(),
        "-chardev".into(),
        format!("socket,id=ctl,path={}", s("control.sock")),
    ];
    let cpu = |tcg: &str| match accel {
        Accel::Tcg => tcg.to_string(),
        Accel::Kvm => "host".to_string(),
    };
    match arch {
        // microvm + qboot is the fastest machine to boot here, and its firmware writes an
        // MP table for every vCPU (our kernels have no ACPI). ttyS0: the console; ttyS1
        // (0x2f8, IRQ 3): the control channel.
        Arch::X86_64 => [
            vec!["-M".into(), "microvm".into(), "-cpu".into(), cpu("max")],
            console.to_vec(),
            vec![
                "-device".into(),
                "isa-serial,chardev=ctl,iobase=0x2f8,irq=3,index=1".into(),
            ],
        ]
        .concat(),
        // virt: a GICv3, PSCI through QEMU itself (no firmware with -kernel), a device
        // tree that describes the vCPUs and memory. Its one PL011 (ttyAMA0) is the
        // console; the control channel is a virtio console (hvc0) on virtio-mmio.
        // Cortex-A72 under TCG: an ARMv8.0 core without pointer authentication, whose
        // emulation costs TCG a large share of its speed.
        Arch::Arm64 => [
            vec![
                "-M".into(),
                "virt,gic-version=3".into(),
                "-cpu".into(),
                cpu("cortex-a72"),
            ],
            console.to_vec(),
            vec![
                "-device".into(),
                "virtio-serial-device".into(),
                "-device".into(),
                "virtconsole,chardev=ctl".into(),
            ],
        ]
        .concat(),
    }
}

/// The QEMU command line.
pub fn command_line(cfg: &VmConfig, accel: Accel, sockets: &Path, debug: bool) -> Vec<String> {
    let s = |name: &str| sockets.join(name).display().to_string();
    let mut args = machine_args(cfg.arch, accel, &s);
    args.extend([
        "-accel".into(),
        match accel {
            Accel::Tcg => "tcg".into(),
            Accel::Kvm => "kvm".into(),
        },
        "-smp".into(),
        cfg.cpus.to_string(),
        "-m".into(),
        format!("{}M", cfg.mem_mib),
        "-nographic".into(),
        "-no-reboot".into(),
        "-monitor".into(),
        "none".into(),
        "-kernel".into(),
        cfg.kernel.display().to_string(),
        "-initrd".into(),
        cfg.initramfs.display().to_string(),
        "-append".into(),
        cfg.cmdline.clone(),
    ]);
    if cfg.instruction_clock {
        // Every instruction advances guest time by 2^ICOUNT_SHIFT ns, and an idle guest
        // jumps to its next timer instead of waiting for the host's (sleep=off): guest
        // timings then depend only on what the guest executed.
        args.extend(["-icount".into(), format!("shift={ICOUNT_SHIFT},sleep=off")]);
    }
    if debug {
        // -S: no guest instruction runs before the debugger has armed its breakpoints.
        args.extend([
            "-S".into(),
            "-chardev".into(),
            format!("socket,id=gdb,path={}", s("gdb.sock")),
            "-gdb".into(),
            "chardev:gdb".into(),
        ]);
    }
    args
}

fn accept_within(listener: &UnixListener, what: &str) -> Result<UnixStream, QemuError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| QemuError::Io(format!("{what} socket: {e}")))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| QemuError::Io(e.to_string()))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(QemuError::Io(format!(
                    "QEMU did not connect its {what} socket: {e}"
                )))
            }
        }
    }
}

/// A started QEMU with its reader threads.
pub struct Process {
    child: Child,
    pub gdb: Option<UnixStream>,
    waiter: Option<JoinHandle<()>>,
}

/// Block until `pid` has exited, without reaping it: the pid stays ours (no reuse)
/// until `Process::kill` reaps it, so killing it later is always safe.
fn wait_exited_unreaped(pid: u32) -> Result<(), std::io::Error> {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid out-pointer; WNOWAIT leaves it unreaped.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn reader(
    mut stream: UnixStream,
    log_path: PathBuf,
    tx: Sender<Incoming>,
    control: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(&log_path).ok();
        let mut lines = LineSplitter::default();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(l) = log.as_mut() {
                let _ = l.write_all(&buf[..n]);
            }
            for line in lines.push(&buf[..n]) {
                let event = if control {
                    match parse_line(&line) {
                        Ok(msg) => VmEvent::Control(msg),
                        Err(e) => VmEvent::BadControl {
                            line: String::from_utf8_lossy(&line).chars().take(200).collect(),
                            error: e.to_string(),
                        },
                    }
                } else {
                    VmEvent::Console(
                        String::from_utf8_lossy(&line)
                            .trim_end_matches('\r')
                            .to_string(),
                    )
                };
                if tx.send(Incoming::Event(event)).is_err() {
                    return;
                }
            }
        }
    })
}

/// Reads gdb packets. Acknowledging them is the consumer's job (see `QemuVm::recv`).
fn gdb_reader(stream: UnixStream, tx: Sender<Incoming>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut decoder = super::gdb::PacketDecoder::default();
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            for packet in decoder.push(&buf[..n]) {
                if tx.send(Incoming::GdbPacket(packet)).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Incoming::GdbClosed);
    })
}

impl Process {
    /// Start QEMU for `cfg` and connect every channel. `sockets` must be a short path.
    pub fn start(
        qemu: &Path,
        args: &[String],
        cfg: &VmConfig,
        sockets: &Path,
        tx: Sender<Incoming>,
    ) -> Result<Process, QemuError> {
        let listen = |name: &str| {
            let p = sockets.join(name);
            let _ = std::fs::remove_file(&p);
            UnixListener::bind(&p).map_err(|e| QemuError::Io(format!("bind {}: {e}", p.display())))
        };
        let (con_l, ctl_l) = (listen("console.sock")?, listen("control.sock")?);
        let gdb_l = if cfg.debug {
            Some(listen("gdb.sock")?)
        } else {
            None
        };
        let stderr_path = cfg.run_dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| QemuError::Io(format!("{}: {e}", stderr_path.display())))?;
        let mut child: Child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| QemuError::Io(format!("cannot start {}: {e}", qemu.display())))?;
        let connected = (|| {
            let con = accept_within(&con_l, "console")?;
            let ctl = accept_within(&ctl_l, "control")?;
            let gdb = gdb_l
                .as_ref()
                .map(|l| accept_within(l, "gdb"))
                .transpose()?;
            Ok::<_, QemuError>((con, ctl, gdb))
        })();
        let (con, ctl, gdb) = match connected {
            Ok(streams) => streams,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let why = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(QemuError::Io(format!("{e}\nQEMU said: {}", why.trim())));
            }
        };
        let con_t = reader(con, cfg.run_dir.join("console.log"), tx.clone(), false);
        let ctl_t = reader(ctl, cfg.run_dir.join("control.log"), tx.clone(), true);
        let gdb_writer = match gdb {
            Some(g) => {
                let w = g.try_clone().map_err(|e| QemuError::Io(e.to_string()))?;
                gdb_reader(g, tx.clone());
                Some(w)
            }
            None => None,
        };
        let pid = child.id();
        let waiter = std::thread::spawn(move || {
            let status = wait_exited_unreaped(pid);
            let _ = con_t.join();
            let _ = ctl_t.join();
            let exit = match status {
                Ok(()) => VmExit::GuestStopped,
                Err(e) => VmExit::VmmFailed(e.to_string()),
            };
            let _ = tx.send(Incoming::Event(VmEvent::Exited(exit)));
        });
        Ok(Process {
            child,
            gdb: gdb_writer,
            waiter: Some(waiter),
        })
    }

    /// Kill QEMU (idempotent) and wait for the reader threads.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
    }

    /// QEMU's exit status once it has exited (reaps it).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
