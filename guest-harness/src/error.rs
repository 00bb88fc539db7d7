//! Errors as short strings fit for a `RESULT … error <detail>` line.

use std::io;

/// Harness result type: the error is a one-line human/bench-readable reason.
pub type Res<T> = Result<T, String>;

/// Symbolic name of the common errno values (the rest are printed as numbers).
fn errno_name(n: i32) -> Option<&'static str> {
    Some(match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return None,
    })
}

/// `"<what>: <ERRNO>"` for an `io::Error`, e.g. `madvise(MADV_PAGEOUT): EINVAL`.
pub fn describe(what: &str, err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(n) => match errno_name(n) {
            Some(name) => format!("{what}: {name}"),
            None => format!("{what}: errno-{n}"),
        },
        None => format!("{what}: {err}"),
    }
}

/// The error for the last failed libc call.
pub fn last(what: &str) -> String {
    describe(what, &io::Error::last_os_error())
}

/// Turn a libc return value into `Ok(value)` or the errno description.
pub fn check(ret: libc::c_long, what: &str) -> Res<libc::c_long> {
    if ret < 0 {
        Err(last(what))
    } else {
        Ok(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_errnos_and_numbers_the_rest() {
        let e = io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(describe("madvise", &e), "madvise: EINVAL");
        let e = io::Error::from_raw_os_error(133);
        assert_eq!(describe("x", &e), "x: errno-133");
    }
}
