//! Where things live in guest-physical memory on x86_64.
//!
//! The low 1 MiB follows the PC conventions Linux expects (real-mode area, EBDA
//! with the MP table, legacy holes); the kernel goes at 1 MiB (bzImage) or at the
//! physical addresses of its ELF segments (vmlinux, normally 16 MiB).

/// Global descriptor table used for the boot vCPU state.
pub const GDT_START: u64 = 0x500;
/// An empty IDT: interrupts stay disabled until the kernel installs its own.
/// After the GDT's five slots (0x500–0x527).
pub const IDT_START: u64 = 0x540;
/// PVH `hvm_start_info`, followed by its module list and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux `boot_params` ("zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot page tables: one PML4, one PDPT and four PDs (0xb000–0xefff)
/// identity-map the first 4 GiB with 2 MiB pages, MMIO gap included.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Kernel command line (NUL-terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we pass (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The MP table lives in the last KiB of base memory (the EBDA), where Linux scans for it.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of conventional memory; 0xa0000–0xfffff is the legacy VGA/BIOS hole.
pub const BASE_MEMORY_END: u64 = 0xa0000;
/// Start of "high" memory: where a bzImage's protected-mode kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO hole below 4 GiB (IOAPIC, LAPIC, our MMIO devices). RAM skips it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// KVM needs three pages for the TSS of real-mode emulation, inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The IOAPIC and local APIC default addresses (MP table and kernel agree on them).
pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
pub const APIC_ADDRESS: u32 = 0xfee0_0000;
/// The highest address Linux accepts for an initrd when the header does not say.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// Bytes identity-mapped by the boot page tables.
pub const IDENTITY_MAPPED_BYTES: u64 = 4 << 30;
/// Bare programs: vCPU `i` gets the 4 KiB stack ending at `BARE_STACK_TOP - i * 4 KiB`
/// (the area between the command line and the EBDA holds one per MP-table vCPU).
pub const BARE_STACK_TOP: u64 = 0x7_0000;
pub const BARE_STACK_SIZE: u64 = 0x1000;

pub fn bare_stack_top(index: usize) -> u64 {
    BARE_STACK_TOP - index as u64 * BARE_STACK_SIZE
}
