//! x86_64 (System V ABI, as the kernel uses it).

use super::ForcedReturn;
use crate::backend::Regs;

/// At the first instruction of a function entered by `call`, return `value` without
/// running it: `rax = value`, then what `ret` does (`rip = [rsp]`, `rsp += 8`). Nothing
/// else changes, and at the entry the function has saved or clobbered nothing, so the
/// caller sees an ordinary return. `read_u64` reads guest memory at a virtual address.
pub fn forced_return<E>(
    regs: &Regs,
    value: i64,
    read_u64: impl FnOnce(u64) -> Result<u64, E>,
) -> Result<ForcedReturn, E> {
    let return_address = read_u64(regs.rsp)?;
    let mut after = *regs;
    after.rax = value as u64;
    after.rip = return_address;
    after.rsp = regs.rsp.wrapping_add(8);
    Ok(ForcedReturn {
        regs: after,
        return_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_return_pops_the_return_address_and_sets_rax() {
        let regs = Regs {
            rax: 1,
            rbx: 2,
            rsp: 0x1000,
            rip: 0xffff_ffff_8100_0000,
            ..Regs::default()
        };
        let forced = forced_return(&regs, -12, |at| {
            assert_eq!(at, 0x1000);
            Ok::<u64, ()>(0xffff_ffff_8123_4567)
        })
        .unwrap();
        assert_eq!(forced.return_address, 0xffff_ffff_8123_4567);
        assert_eq!(forced.regs.rip, 0xffff_ffff_8123_4567);
        assert_eq!(forced.regs.rsp, 0x1008);
        assert_eq!(forced.regs.rax as i64, -12);
        assert_eq!(
            forced.regs.rbx, 2,
            "callee-saved and other registers unchanged"
        );
    }
}
