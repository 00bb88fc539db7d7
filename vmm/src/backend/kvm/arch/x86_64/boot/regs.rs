//! Boot-time vCPU state: the GDT, identity page tables, segment registers,
//! control registers, general registers and FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::layout::{
    GDT_START, IDENTITY_MAPPED_BYTES, IDT_START, PDPT_START, PD_START, PML4_START,
};
use crate::backend::kvm::memory::{GuestRam, MemoryError};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot {what}: {source}")]
    Tables {
        what: &'static str,
        source: MemoryError,
    },
    #[error("KVM refused to {what} for vCPU {vcpu}: {source}")]
    Ioctl {
        what: &'static str,
        vcpu: usize,
        source: kvm_ioctls::Error,
    },
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// The CPU mode a vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 32-bit protected mode, paging off (PVH entry).
    Protected32,
    /// 64-bit long mode on the identity page tables.
    Long64,
}

/// GDT slots. The kernel loads its own GDT at once; these only seed the
/// hidden descriptor caches, so one table serves both entry modes. The 64-bit
/// boot protocol names the slots: CS must be `__BOOT_CS` (0x10) and DS/ES/SS
/// `__BOOT_DS` (0x18) (Documentation/arch/x86/boot.rst); PVH takes any flat
/// 32-bit segments.
const GDT: [u64; 5] = [
    0,                             // null
    gdt_entry(0xc09b, 0, 0xfffff), // 1: 32-bit code
    gdt_entry(0xa09b, 0, 0xfffff), // 2: 64-bit code, __BOOT_CS
    gdt_entry(0xc093, 0, 0xfffff), // 3: data, __BOOT_DS
    gdt_entry(0x808b, 0, 0xfffff), // 4: TSS
];
const CODE32: usize = 1;
const CODE64: usize = 2;
const DATA: usize = 3;
const TSS: usize = 4;
// The IDT is written after the GDT: it must not overwrite a GDT slot.
const _: () = assert!(GDT_START + GDT.len() as u64 * 8 <= IDT_START);
/// The selector of the 64-bit code segment every long-mode vCPU starts with
/// (interrupt gates of bare programs name it).
pub const LONG_MODE_CODE_SELECTOR: u16 = (CODE64 * 8) as u16;

/// Pack a segment descriptor from its flags (type, S, DPL, P, AVL, L, D/B, G), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The descriptor cache contents KVM wants for GDT slot `index`.
fn segment(index: usize) -> kvm_segment {
    let entry = GDT[index];
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55) == 1;
    kvm_segment {
        base,
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Write the GDT, an empty IDT and page tables identity-mapping the first
/// 4 GiB with 2 MiB pages. Shared by every vCPU.
pub fn write_boot_tables(ram: &GuestRam) -> Result<(), RegsError> {
    let tables = |what| move |source| RegsError::Tables { what, source };
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    ram.write(GDT_START, &gdt).map_err(tables("GDT"))?;
    ram.write_u64(IDT_START, 0).map_err(tables("IDT"))?;
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    ram.write_u64(PML4_START, PDPT_START | PRESENT_WRITABLE)
        .map_err(tables("PML4"))?;
    for gib in 0..IDENTITY_MAPPED_BYTES >> 30 {
        ram.write_u64(
            PDPT_START + gib * 8,
            (PD_START + gib * 0x1000) | PRESENT_WRITABLE,
        )
        .map_err(tables("PDPT"))?;
    }
    // The PDs are contiguous: 2 MiB page i has its entry at PD_START + 8i.
    for i in 0..IDENTITY_MAPPED_BYTES >> 21 {
        ram.write_u64(PD_START + i * 8, (i << 21) | PRESENT_WRITABLE | HUGE)
            .map_err(tables("PD"))?;
    }
    Ok(())
}

/// Segment, descriptor-table and control registers for `mode`.
pub fn set_sregs(vcpu: &VcpuFd, index: usize, mode: CpuMode) -> Result<(), RegsError> {
    let ioctl = |what| {
        move |source| RegsError::Ioctl {
            what,
            vcpu: index,
            source,
        }
    };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(ioctl("read sregs"))?;
    let code = match mode {
        CpuMode::Protected32 => segment(CODE32),
        CpuMode::Long64 => segment(CODE64),
    };
    let data = segment(DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    match mode {
        CpuMode::Protected32 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        CpuMode::Long64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs).map_err(ioctl("set sregs"))
}

/// General registers at the entry point: `rip`, a stack, and the boot argument
/// in the register the entry protocol names.
pub struct EntryRegs {
    pub rip: u64,
    pub rsp: u64,
    /// Linux 64-bit protocol: boot_params in RSI.
    pub rsi: u64,
    /// PVH: start_info in RBX.
    pub rbx: u64,
    /// Bare programs: the vCPU index in RDI.
    pub rdi: u64,
}

pub fn set_regs(vcpu: &VcpuFd, index: usize, entry: &EntryRegs) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rip: entry.rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rbx: entry.rbx,
        rdi: entry.rdi,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|source| RegsError::Ioctl {
        what: "set regs",
        vcpu: index,
        source,
    })
}

/// x87 control word and MXCSR at their reset values (all exceptions masked).
pub fn set_fpu(vcpu: &VcpuFd, index: usize) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Ioctl {
        what: "set FPU",
        vcpu: index,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segments_decode_to_the_expected_modes() {
        let code64 = segment(CODE64);
        assert_eq!(
            (code64.l, code64.db, code64.type_, code64.selector),
            (1, 0, 0xb, 0x10),
            "__BOOT_CS"
        );
        let code32 = segment(CODE32);
        assert_eq!((code32.l, code32.db, code32.limit), (0, 1, 0xffff_ffff));
        let data = segment(DATA);
        assert_eq!((data.type_, data.selector), (3, 0x18), "__BOOT_DS");
    }

    #[test]
    fn the_gdt_in_memory_is_the_one_the_segments_come_from() {
        let ram = GuestRam::new(&[(0, 16 << 20)]).unwrap();
        write_boot_tables(&ram).unwrap();
        for (slot, &entry) in GDT.iter().enumerate() {
            let at = GDT_START + slot as u64 * 8;
            assert_eq!(ram.read_u64(at).unwrap(), entry, "GDT slot {slot}");
        }
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        let ram = GuestRam::new(&[(0, 16 << 20)]).unwrap();
        write_boot_tables(&ram).unwrap();
        assert_eq!(ram.read_u64(PD_START + 8 * 3).unwrap(), (3 << 21) | 0x83);
        assert_eq!(
            ram.read_u64(PDPT_START + 8 * 3).unwrap(),
            (PD_START + 0x3000) | 3
        );
        let last = (4u64 << 30 >> 21) - 1;
        assert_eq!(
            ram.read_u64(PD_START + 8 * last).unwrap(),
            (last << 21) | 0x83
        );
    }
}
