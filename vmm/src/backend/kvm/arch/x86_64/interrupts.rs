//! Interrupt controllers: the in-kernel irqchip (PIC, IOAPIC, one LAPIC per
//! vCPU) and PIT, created before any vCPU, and each LAPIC's wiring at boot:
//! LINT0 delivers the PIC's interrupts (ExtINT), LINT1 delivers NMIs, as on a PC.

use kvm_bindings::{kvm_lapic_state, kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuFd, VmFd};

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("KVM refused to {what}: {source}")]
    Irqchip {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused to {what} the local APIC of vCPU {vcpu}: {source}")]
    Lapic {
        what: &'static str,
        vcpu: usize,
        source: kvm_ioctls::Error,
    },
}

/// The in-kernel PIC/IOAPIC/LAPICs and the PIT. Irqchip before vCPUs: this
/// must run before the first vCPU is created.
pub fn create_irqchip(vm: &VmFd) -> Result<(), InterruptError> {
    let irqchip = |what| move |source| InterruptError::Irqchip { what, source };
    vm.create_irq_chip()
        .map_err(irqchip("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(irqchip("create the PIT"))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE_MASK: u32 = 0x7 << DELIVERY_MODE_SHIFT;
const DELIVERY_NMI: u32 = 0x4;
const DELIVERY_EXTINT: u32 = 0x7;

fn read_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !DELIVERY_MODE_MASK) | (mode << DELIVERY_MODE_SHIFT)
}

/// Program LINT0/LINT1 of vCPU `index`. Needs the in-kernel irqchip, and comes
/// after `KVM_SET_CPUID2` (the APIC id comes from CPUID).
pub fn set_lint(vcpu: &VcpuFd, index: usize) -> Result<(), InterruptError> {
    let mut lapic = vcpu.get_lapic().map_err(|source| InterruptError::Lapic {
        what: "read",
        vcpu: index,
        source,
    })?;
    let lvt0 = read_reg(&lapic, APIC_LVT0);
    write_reg(
        &mut lapic,
        APIC_LVT0,
        with_delivery_mode(lvt0, DELIVERY_EXTINT),
    );
    let lvt1 = read_reg(&lapic, APIC_LVT1);
    write_reg(
        &mut lapic,
        APIC_LVT1,
        with_delivery_mode(lvt1, DELIVERY_NMI),
    );
    vcpu.set_lapic(&lapic)
        .map_err(|source| InterruptError::Lapic {
            what: "write",
            vcpu: index,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_its_bits() {
        assert_eq!(with_delivery_mode(0x0001_0700, DELIVERY_NMI), 0x0001_0400);
        let mut lapic = kvm_lapic_state { regs: [0; 1024] };
        write_reg(&mut lapic, APIC_LVT0, 0xdead_beef);
        assert_eq!(read_reg(&lapic, APIC_LVT0), 0xdead_beef);
    }
}
