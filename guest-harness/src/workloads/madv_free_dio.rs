//! `madv-free-dio` (docs/scenario-source-notes.md §A): MADV_FREE lazyfree reclaim
//! (MADV_PAGEOUT, thread "reclaimer") racing an O_DIRECT read from /dev/ram0 into the same
//! buffer (thread "reader"). Buggy kernels discard the page while the read holds it: the
//! data lands in an orphaned page and the buffer then reads as zeros, its PTE gone.
//!
//! Parameters: `pages` (buffer size in pages, default 1), `read_bytes` (length of the
//! O_DIRECT read, a multiple of 512, default the whole buffer), `io` (`sync` pread, or
//! `aio`: io_submit, whose blkdev path dirties the pages before submitting), `madv_free`
//! (default 1), the CPUs of both threads, and the start mode (race.rs).

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
/// What the buffer holds before the read (then it is MADV_FREE'd).
const STALE: u8 = 0xAA;
const SECTOR: usize = 512;

/// The device's contents at byte `i`: a per-sector value, never 0 (a discarded page) nor
/// `STALE` (a read that never landed), so the oracle can tell the three apart.
fn on_disk(i: usize) -> u8 {
    0x50 + (i / SECTOR % 16) as u8
}

pub struct MadvFreeDio {
    pages: usize,
    read_bytes: usize,
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
        let read_bytes = params.take_u64("read_bytes", (pages * PAGE) as u64)? as usize;
        if read_bytes == 0 || !read_bytes.is_multiple_of(SECTOR) || read_bytes > pages * PAGE {
            return Err(format!(
                "param read_bytes: {read_bytes} must be a multiple of {SECTOR} in {SECTOR}..={} (pages * {PAGE})",
                pages * PAGE
            ));
        }
        Ok(MadvFreeDio {
            pages,
            read_bytes,
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
    // SAFETY: `src` is a live, writable mapping of `len` bytes that nothing else references.
    let bytes = unsafe { std::slice::from_raw_parts_mut(src.ptr(), len) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = on_disk(i);
    }
    // SAFETY: `src` is a live mapping of `len` readable bytes.
    let n = unsafe { libc::pwrite(dev.as_raw_fd(), src.ptr().cast(), len, 0) };
    match error::check(n as libc::c_long, "pwrite")? as usize {
        n if n == len => Ok(()),
        n => Err(format!("pwrite: short write {n}")),
    }
}

/// The first `len` bytes of the device as it is now, read back with O_DIRECT into a
/// fresh aligned buffer: what the racing read should have delivered.
fn read_back(len: usize) -> Res<Vec<u8>> {
    let dev = open_direct(false)?;
    let dst = Mapping::private(len.next_multiple_of(PAGE))?;
    // SAFETY: `dst` is a live mapping of at least `len` writable bytes.
    let n = unsafe { libc::pread(dev.as_raw_fd(), dst.ptr().cast(), len, 0) };
    match error::check(n as libc::c_long, "pread (read-back)")? as usize {
        // SAFETY: the read filled `len` bytes of the live mapping.
        n if n == len => Ok(unsafe { std::slice::from_raw_parts(dst.ptr(), len) }.to_vec()),
        n => Err(format!("pread (read-back): short read {n}")),
    }
}

/// What one buffer page shows after the race.
#[derive(Debug, PartialEq)]
enum PageState {
    /// The read's bytes are the device's (the rest of the page: stale or discarded).
    Delivered,
    /// All zeros and no PTE: the page was discarded while the read held it, and the data
    /// went to an orphaned page. The bug.
    Lost,
    /// Anything else, with the first differing offset.
    Unexpected(usize),
}

fn page_state(page: &[u8], expected: &[u8], present: bool) -> PageState {
    if page[..expected.len()] == *expected {
        return PageState::Delivered;
    }
    if !present && page.iter().all(|&b| b == 0) {
        return PageState::Lost;
    }
    let off = page.iter().zip(expected).position(|(a, b)| a != b);
    PageState::Unexpected(off.unwrap_or(expected.len()))
}

/// `struct iocb` of <linux/aio_abi.h>. The header has one layout for every 64-bit
/// architecture (all fields fixed-size, naturally aligned); only the order of `key` and
/// `rw_flags` depends on byte order, and x86_64 and arm64 Linux are both little endian.
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

/// `struct io_event` (fixed-size fields: the same on x86_64 and arm64).
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PREAD: u16 = 0;

/// A native AIO context. It is created before the race and destroyed only after the
/// reader reported `pread-done`: io_destroy waits for an RCU grace period, which cannot
/// end while the reclaimer's vCPU is parked in the kernel (docs/schedules.md,
/// deadlock rule R1).
struct AioContext(libc::c_ulong);

impl AioContext {
    fn new() -> Res<AioContext> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the context id through the valid pointer.
        let ret = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx) };
        error::check(ret, "io_setup")?;
        Ok(AioContext(ctx))
    }

    /// One PREAD; bounded by a 30 s io_getevents timeout.
    fn read(&self, fd: i32, buf: usize, len: usize) -> Res<i64> {
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
        let ret = unsafe { libc::syscall(libc::SYS_io_submit, self.0, 1, list.as_ptr()) };
        error::check(ret, "io_submit")?;
        // SAFETY: room for exactly one event; `timeout` is a valid timespec. The iocb
        // outlives the request: it completes here, or `Drop` destroys the context (which
        // waits for it) before the caller's buffer goes away.
        let got =
            unsafe { libc::syscall(libc::SYS_io_getevents, self.0, 1, 1, &mut event, &timeout) };
        match error::check(got, "io_getevents")? {
            1 => Ok(event.res),
            _ => Err("io_getevents: timeout".into()),
        }
    }
}

impl Drop for AioContext {
    fn drop(&mut self) {
        // SAFETY: destroys the context created in `new` (and waits for any in-flight request).
        unsafe { libc::syscall(libc::SYS_io_destroy, self.0) };
    }
}

impl Workload for MadvFreeDio {
    fn trial_timeout(&self) -> Duration {
        self.start.trial_timeout()
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        let len = self.pages * PAGE;
        let read_bytes = self.read_bytes;
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
                write_pattern(read_bytes)?;
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
                let aio = if aio { Some(AioContext::new()?) } else { None };
                Ok(Box::new(move || {
                    let n = if let Some(ctx) = &aio {
                        ctx.read(dev.as_raw_fd(), target, read_bytes)?
                    } else {
                        // SAFETY: `target` is the start of the live buffer mapping (at least
                        // `read_bytes` long), which nothing in Rust references while the read
                        // fills it.
                        let n = unsafe {
                            libc::pread(dev.as_raw_fd(), target as *mut libc::c_void, read_bytes, 0)
                        };
                        error::check(n as libc::c_long, "pread")?
                    };
                    if n as usize != read_bytes {
                        return Err(format!("read returned {n}, want {read_bytes}"));
                    }
                    control::phase("pread-done");
                    drop(aio);
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
        let present = mem::pagemap(b.addr(), self.pages)?;
        let bits: String = present
            .iter()
            .map(|p| if p.present { '1' } else { '0' })
            .collect();
        let device = read_back(read_bytes)?;
        // SAFETY: the racing threads are joined; the mapping is live and `len` bytes long.
        let data = unsafe { std::slice::from_raw_parts(b.ptr(), len) };
        let states: Vec<PageState> = data
            .chunks(PAGE)
            .zip(&present)
            .enumerate()
            .filter(|(i, _)| i * PAGE < read_bytes)
            .map(|(i, (page, p))| {
                let end = ((i + 1) * PAGE).min(read_bytes);
                page_state(page, &device[i * PAGE..end], p.present)
            })
            .collect();
        let lost: Vec<usize> = (0..states.len())
            .filter(|&i| states[i] == PageState::Lost)
            .collect();
        let odd = states.iter().enumerate().find_map(|(i, s)| match s {
            PageState::Unexpected(off) => Some((i, *off)),
            _ => None,
        });
        match (odd, lost.is_empty()) {
            (Some((page, off)), _) => {
                let at = page * PAGE + off;
                trial.report(
                    Outcome::Error,
                    &format!(
                        "unexpected-content page={page} offset={at:#x} value={:#04x} device={:#04x} present={bits}",
                        data[at],
                        device.get(at).copied().unwrap_or(0)
                    ),
                )
            }
            (None, true) => trial.report(
                Outcome::Intact,
                &format!("read-delivered bytes={read_bytes} present={bits}"),
            ),
            (None, false) => trial.report(
                Outcome::Reproduced,
                &format!(
                    "pages-lost={lost:?} (zeros, no PTE; the device has {:#04x}..) present={bits}",
                    device[0]
                ),
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_delivered_read_from_a_lost_page_and_from_anything_else() {
        let device: Vec<u8> = (0..PAGE).map(on_disk).collect();
        assert!(device.iter().all(|&b| b != 0 && b != STALE));
        assert_eq!(page_state(&device, &device, true), PageState::Delivered);
        // A sub-page read: the rest of the page may be stale or (discarded first) zero.
        let mut partial = vec![STALE; PAGE];
        partial[..SECTOR].copy_from_slice(&device[..SECTOR]);
        assert_eq!(
            page_state(&partial, &device[..SECTOR], true),
            PageState::Delivered
        );
        let zeros = vec![0u8; PAGE];
        assert_eq!(page_state(&zeros, &device, false), PageState::Lost);
        assert_eq!(
            page_state(&zeros, &device, true),
            PageState::Unexpected(0),
            "zeros behind a PTE are not the bug's signature"
        );
        assert_eq!(
            page_state(&vec![STALE; PAGE], &device, false),
            PageState::Unexpected(0),
            "a read that never landed is not a discarded page"
        );
        let mut torn = device.clone();
        torn[SECTOR] = 0;
        assert_eq!(
            page_state(&torn, &device, true),
            PageState::Unexpected(SECTOR)
        );
    }
}
