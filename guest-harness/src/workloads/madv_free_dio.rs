//! `madv-free-dio` (scenarios §A.3): MADV_FREE lazyfree reclaim (MADV_PAGEOUT, thread
//! "reclaimer") racing an O_DIRECT read from /dev/ram0 into the same buffer (thread "reader").
//! Buggy kernels discard the page while the read holds it: the buffer then reads as zeros.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;
use std::time::Duration;

use control_proto::Outcome;

use super::race::{self, Action, Racer, StartMode};
use super::{Trial, Workload};
use crate::control;
use crate::error::{self, Res};
use crate::gate::Gate;
use crate::job::Params;
use crate::mem::{self, Mapping, PAGE};
use crate::pin;

const DEVICE: &str = "/dev/ram0";
const ON_DISK: u8 = 0x5A;
const STALE: u8 = 0xAA;

pub struct MadvFreeDio {
    pages: usize,
    reader_cpu: usize,
    reclaimer_cpu: usize,
    aio: bool,
    madv_free: bool,
    start: StartMode,
}

impl MadvFreeDio {
    pub fn new(params: &mut Params) -> Res<MadvFreeDio> {
        let pages = params.take_u64("pages", 1)? as usize;
        if pages == 0 || pages > 1024 {
            return Err(format!("param pages: {pages} not in 1..=1024"));
        }
        Ok(MadvFreeDio {
            pages,
            reader_cpu: params.take_cpu("reader_cpu", 1)?,
            reclaimer_cpu: params.take_cpu("reclaimer_cpu", 2)?,
            aio: params.take_choice("io", &["sync", "aio"])? == "aio",
            madv_free: params.take_bool("madv_free", true)?,
            start: StartMode::from_params(params)?,
        })
    }
}

fn open_direct(write: bool) -> Res<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(DEVICE)
        .map_err(|e| error::describe(&format!("open({DEVICE}, O_DIRECT)"), &e))
}

/// Fill the first `len` bytes of the device with the on-disk pattern, from an aligned buffer.
fn write_pattern(len: usize) -> Res<()> {
    let dev = open_direct(true)?;
    let src = Mapping::private(len)?;
    src.fill(ON_DISK);
    // SAFETY: `src` is a live mapping of `len` readable bytes.
    let n = unsafe { libc::pwrite(dev.as_raw_fd(), src.ptr().cast(), len, 0) };
    match error::check(n as libc::c_long, "pwrite")? as usize {
        n if n == len => Ok(()),
        n => Err(format!("pwrite: short write {n}")),
    }
}

/// `struct iocb` of <linux/aio_abi.h> (x86_64, little endian).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PREAD: u16 = 0;

/// One PREAD through the native AIO syscalls; bounded by a 30 s io_getevents timeout.
fn aio_read(fd: i32, buf: usize, len: usize) -> Res<i64> {
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: io_setup writes the context id through the valid pointer.
    let ret = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx) };
    error::check(ret, "io_setup")?;
    let iocb = Iocb {
        opcode: IOCB_CMD_PREAD,
        fildes: fd as u32,
        buf: buf as u64,
        nbytes: len as u64,
        ..Default::default()
    };
    let list = [&iocb as *const Iocb];
    let mut event = IoEvent::default();
    let timeout = libc::timespec {
        tv_sec: 30,
        tv_nsec: 0,
    };
    // SAFETY: `list` holds one valid iocb whose buffer (`buf`, `len`) is a live mapping.
    let ret = unsafe { libc::syscall(libc::SYS_io_submit, ctx, 1, list.as_ptr()) };
    let submitted = error::check(ret, "io_submit");
    let result = submitted.and_then(|_| {
        // SAFETY: room for exactly one event; `timeout` is a valid timespec. The iocb
        // outlives the call (the read completes or the context is destroyed below).
        let got = unsafe { libc::syscall(libc::SYS_io_getevents, ctx, 1, 1, &mut event, &timeout) };
        match error::check(got, "io_getevents")? {
            1 => Ok(event.res),
            _ => Err("io_getevents: timeout".into()),
        }
    });
    // SAFETY: destroys the context created above (and waits for any in-flight request).
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    result
}

impl Workload for MadvFreeDio {
    fn trial_timeout(&self) -> Duration {
        self.start.trial_timeout()
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        let len = self.pages * PAGE;
        let gate = if self.start.gated {
            Some(Gate::new()?)
        } else {
            None
        };
        let buf: OnceLock<Mapping> = OnceLock::new();
        let buf_ref = &buf;
        let madv_free = self.madv_free;
        let reclaimer = Racer {
            name: "reclaimer",
            cpu: self.reclaimer_cpu,
            setup: Box::new(move || -> Res<Action> {
                write_pattern(len)?;
                let b = Mapping::private(len)?;
                b.madvise(0, len, libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)")?;
                b.fill(STALE);
                if madv_free {
                    b.madvise(0, len, libc::MADV_FREE, "madvise(MADV_FREE)")?;
                }
                let b = buf_ref.get_or_init(|| b);
                Ok(Box::new(move || {
                    b.madvise(0, len, libc::MADV_PAGEOUT, "madvise(MADV_PAGEOUT)")?;
                    control::phase("pageout-done");
                    Ok(())
                }))
            }),
        };
        let aio = self.aio;
        let reader = Racer {
            name: "reader",
            cpu: self.reader_cpu,
            setup: Box::new(move || -> Res<Action> {
                let dev = open_direct(false)?;
                let target = buf_ref
                    .get()
                    .ok_or("reader set up before the buffer exists")?
                    .addr();
                Ok(Box::new(move || {
                    let n = if aio {
                        aio_read(dev.as_raw_fd(), target, len)?
                    } else {
                        // SAFETY: `target` is the start of the live `len`-byte buffer mapping,
                        // which nothing in Rust references while the read fills it.
                        let n = unsafe {
                            libc::pread(dev.as_raw_fd(), target as *mut libc::c_void, len, 0)
                        };
                        error::check(n as libc::c_long, "pread")?
                    };
                    if n as usize != len {
                        return Err(format!("read returned {n}, want {len}"));
                    }
                    control::phase("pread-done");
                    Ok(())
                }))
            }),
        };
        // READY order: reader (gate word 0) first; setup order: reclaimer first.
        race::race(self.start, gate.as_ref(), vec![reader, reclaimer], &[1, 0])?;
        // The oracle runs on the reclaimer's CPU, after MADV_PAGEOUT returned there.
        pin::pin_to(self.reclaimer_cpu)?;
        let b = buf.get().ok_or("no buffer after the race")?;
        // Present bits first: reading the buffer would fault in (zero) pages.
        let present: String = mem::pagemap(b.addr(), self.pages)?
            .iter()
            .map(|p| if p.present { '1' } else { '0' })
            .collect();
        // SAFETY: the racing threads are joined; the mapping is live and `len` bytes long.
        let data = unsafe { std::slice::from_raw_parts(b.ptr(), len) };
        match data.iter().position(|&v| v != ON_DISK) {
            None => trial.report(
                Outcome::Intact,
                &format!("all-{ON_DISK:#04x} present={present}"),
            ),
            Some(off) => trial.report(
                Outcome::Reproduced,
                &format!(
                    "offset={off:#x} value={:#04x} want={ON_DISK:#04x} present={present}",
                    data[off]
                ),
            ),
        }
        Ok(())
    }
}
