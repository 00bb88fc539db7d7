//! The Intel MultiProcessor Specification table (v1.4): how Linux finds the
//! vCPUs, the IOAPIC and the ISA interrupt routing without ACPI.
//!
//! Layout at `MPTABLE_START`: the 16-byte floating pointer, then the
//! configuration table header and its entries. Both parts carry checksums
//! that make their bytes sum to zero.

use super::layout::{APIC_ADDRESS, BASE_MEMORY_END, IOAPIC_ADDRESS, MPTABLE_START};
use crate::backend::kvm::memory::{GuestRam, MemoryError};

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{cpus} vCPUs do not fit in the MP table area (at most {max})")]
    TooManyCpus { cpus: usize, max: usize },
    #[error("cannot write the MP table: {0}")]
    Write(#[from] MemoryError),
}

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const ISA_IRQS: u8 = 16;
const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6, model 0: only informational for Linux.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn fixed_len() -> usize {
    FLOATING_POINTER_LEN + HEADER_LEN + SMALL_ENTRY_LEN * (2 + usize::from(ISA_IRQS) + 2)
}

/// The most vCPUs whose entries fit below `BASE_MEMORY_END`.
pub fn max_cpus() -> usize {
    let room = (BASE_MEMORY_END - MPTABLE_START) as usize - fixed_len();
    (room / PROCESSOR_LEN).min(254)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// Configuration table entries, in the order the spec requires.
fn entries(cpus: usize) -> (Vec<u8>, u16) {
    let ioapic_id = cpus as u8;
    let mut out = Vec::new();
    let mut count = 0u16;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        out.extend([ENTRY_PROCESSOR, cpu as u8, APIC_VERSION, flags]);
        out.extend(CPU_SIGNATURE.to_le_bytes());
        out.extend(CPU_FEATURES.to_le_bytes());
        out.extend([0u8; 8]);
        count += 1;
    }
    out.extend([ENTRY_BUS, 0]);
    out.extend(*b"ISA   ");
    out.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    out.extend(IOAPIC_ADDRESS.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        // type, irq type, flags (bus-default polarity/trigger), bus, bus irq, IOAPIC, pin.
        out.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 of every local APIC is ExtINT, LINT1 is NMI (destination 0xff: all).
    out.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    out.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (out, count)
}

/// The whole table as it goes into guest memory at `MPTABLE_START`.
fn table(cpus: usize) -> Vec<u8> {
    let config_addr = MPTABLE_START as u32 + FLOATING_POINTER_LEN as u32;
    let mut pointer = Vec::with_capacity(FLOATING_POINTER_LEN);
    pointer.extend(*b"_MP_");
    pointer.extend(config_addr.to_le_bytes());
    pointer.extend([1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    pointer[10] = checksum(&pointer);

    let (body, count) = entries(cpus);
    let mut config = Vec::with_capacity(HEADER_LEN + body.len());
    config.extend(*b"PCMP");
    config.extend(((HEADER_LEN + body.len()) as u16).to_le_bytes());
    config.extend([SPEC_REVISION, 0]);
    config.extend(*b"MEMRACE ");
    config.extend(*b"KVM-VMM     ");
    config.extend(0u32.to_le_bytes()); // OEM table pointer
    config.extend(0u16.to_le_bytes()); // OEM table size
    config.extend(count.to_le_bytes());
    config.extend(APIC_ADDRESS.to_le_bytes());
    config.extend([0u8; 4]); // extended table length, checksum, reserved
    config.extend(body);
    config[7] = checksum(&config);

    pointer.extend(config);
    pointer
}

pub fn write_mptable(ram: &GuestRam, cpus: usize) -> Result<(), MptableError> {
    if cpus > max_cpus() {
        return Err(MptableError::TooManyCpus {
            cpus,
            max: max_cpus(),
        });
    }
    ram.write(MPTABLE_START, &table(cpus))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_are_consistent() {
        let t = table(3);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let config = &t[16..];
        let len = u16::from_le_bytes([config[4], config[5]]) as usize;
        assert_eq!(len, config.len());
        assert_eq!(config.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u16::from_le_bytes([config[34], config[35]]), 3 + 2 + 16 + 2);
        assert_eq!(config[HEADER_LEN + 3], CPU_ENABLED | CPU_BOOTSTRAP);
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        let ram = GuestRam::new(&[(0, 4 << 20)]).unwrap();
        assert!(matches!(
            write_mptable(&ram, max_cpus() + 1),
            Err(MptableError::TooManyCpus { .. })
        ));
        write_mptable(&ram, max_cpus()).unwrap();
    }
}
