//! Guest-virtual to guest-physical translation by walking the guest's own
//! page tables (4-level, or 5-level with CR4.LA57), as the MMU would.

use crate::backend::kvm::memory::{GuestRam, MemoryError};

#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    #[error("virtual address {gva:#x} is not mapped (level-{level} entry not present)")]
    NotMapped { gva: u64, level: u32 },
    #[error("the vCPU uses 32-bit paging, which memrace does not walk")]
    Legacy32,
    #[error("page-table read failed: {0}")]
    Table(#[from] MemoryError),
}

/// The control registers that decide how addresses translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl From<&kvm_bindings::kvm_sregs> for PagingState {
    fn from(s: &kvm_bindings::kvm_sregs) -> Self {
        PagingState {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        }
    }
}

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Physical address of `gva` under `state`.
pub fn translate(ram: &GuestRam, state: &PagingState, gva: u64) -> Result<u64, PagingError> {
    if state.cr0 & CR0_PG == 0 {
        return Ok(gva);
    }
    if state.efer & EFER_LMA == 0 {
        return Err(PagingError::Legacy32);
    }
    let levels = if state.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let mut table = state.cr3 & ADDRESS_MASK;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (gva >> shift) & 0x1ff;
        let entry = ram.read_u64(table + index * 8)?;
        if entry & PRESENT == 0 {
            return Err(PagingError::NotMapped { gva, level });
        }
        // A PS bit at level 3 (1 GiB) or level 2 (2 MiB) ends the walk.
        if (level == 2 || level == 3) && entry & HUGE != 0 {
            let page_mask = (1u64 << shift) - 1;
            return Ok((entry & ADDRESS_MASK & !page_mask) | (gva & page_mask));
        }
        table = entry & ADDRESS_MASK;
    }
    Ok(table | (gva & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_MODE: PagingState = PagingState {
        cr0: CR0_PG,
        cr3: 0x1000,
        cr4: 0,
        efer: EFER_LMA,
    };

    #[test]
    fn walks_4k_and_2m_pages() {
        let ram = GuestRam::new(&[(0, 8 << 20)]).unwrap();
        let gva: u64 = 0xffff_8880_0040_2123;
        let idx = |level: u32| (gva >> (12 + 9 * (level - 1))) & 0x1ff;
        ram.write_u64(0x1000 + idx(4) * 8, 0x2000 | 3).unwrap();
        ram.write_u64(0x2000 + idx(3) * 8, 0x3000 | 3).unwrap();
        ram.write_u64(0x3000 + idx(2) * 8, 0x4000 | 3).unwrap();
        ram.write_u64(0x4000 + idx(1) * 8, 0x55_5000 | 3).unwrap();
        assert_eq!(translate(&ram, &LONG_MODE, gva).unwrap(), 0x55_5123);
        ram.write_u64(0x3000 + idx(2) * 8, 0x60_0000 | 0x83)
            .unwrap();
        assert_eq!(
            translate(&ram, &LONG_MODE, gva).unwrap(),
            0x60_0000 | (gva & 0x1f_ffff)
        );
        assert!(matches!(
            translate(&ram, &LONG_MODE, 0x1234),
            Err(PagingError::NotMapped { level: 4, .. })
        ));
    }

    #[test]
    fn paging_off_is_identity() {
        let ram = GuestRam::new(&[(0, 4 << 20)]).unwrap();
        assert_eq!(
            translate(&ram, &PagingState::default(), 0x1234).unwrap(),
            0x1234
        );
    }
}
