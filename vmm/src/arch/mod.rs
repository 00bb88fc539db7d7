//! Guest-architecture facade: what the layers above the backends need to know about
//! an instruction set, with the same function names for every architecture (x86_64 now;
//! aarch64 gets a sibling module with the same functions).

mod x86_64;

pub use self::x86_64::forced_return;

use crate::backend::Regs;

/// A function made to return at once from its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForcedReturn {
    /// The registers after the return: the value in the return register, execution at
    /// the return address, the frame the call pushed popped.
    pub regs: Regs,
    /// Where the function returns to.
    pub return_address: u64,
}
