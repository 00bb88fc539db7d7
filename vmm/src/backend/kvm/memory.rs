//! Guest RAM: anonymous host mappings registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Smallest guest we build: room for the boot structures and a little code.
pub const MIN_MEM_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {have_mib} MiB is too small: at least {need_mib} MiB are needed")]
    TooSmall { have_mib: u64, need_mib: u64 },
    #[error("cannot map {mib} MiB of guest memory: {why}")]
    Map { mib: u64, why: String },
    #[error("KVM refused memory slot {slot} at {gpa:#x}: {source}")]
    Slot {
        slot: u32,
        gpa: u64,
        source: kvm_ioctls::Error,
    },
    #[error("guest-physical range {gpa:#x} (+{len}) is not RAM")]
    OutOfRange { gpa: u64, len: usize },
}

/// The guest's RAM, shared by the VMM thread and every vCPU thread.
pub struct GuestRam {
    mem: GuestMemoryMmap,
}

impl GuestRam {
    /// Map `ranges` (guest-physical start, length) of anonymous memory.
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self, MemoryError> {
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        if total < MIN_MEM_BYTES {
            return Err(MemoryError::TooSmall {
                have_mib: total >> 20,
                need_mib: MIN_MEM_BYTES >> 20,
            });
        }
        let regions: Vec<(GuestAddress, usize)> = ranges
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Map {
            mib: total >> 20,
            why: e.to_string(),
        })?;
        Ok(GuestRam { mem })
    }

    /// Tell KVM about every region, one slot each.
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.mem.iter().enumerate() {
            let gpa = region.start_addr().0;
            let host = self
                .mem
                .get_host_address(region.start_addr())
                .map_err(|_| MemoryError::OutOfRange {
                    gpa,
                    len: region.len() as usize,
                })?;
            let slot = slot as u32;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` points at a live mapping of `region.len()` bytes owned by
            // `self.mem`; the VM fd is dropped before `self` (KvmVm field order), so KVM
            // never accesses the mapping after it is unmapped.
            unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::Slot {
                slot,
                gpa,
                source,
            })?;
        }
        Ok(())
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: data.len(),
            })
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut bytes = [0u8; 8];
        self.read(gpa, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<(), MemoryError> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// The vm-memory view, for linux-loader.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// (start, length) of every RAM region, in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    /// End of the first (lowest) RAM region: "low memory" for boot structures.
    pub fn low_end(&self) -> u64 {
        self.mem
            .iter()
            .next()
            .map(|r| r.start_addr().0 + r.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote_and_rejects_holes() {
        let ram = GuestRam::new(&[(0, 8 << 20), (16 << 20, 1 << 20)]).unwrap();
        ram.write_u64(0x1000, 0xdead_beef).unwrap();
        assert_eq!(ram.read_u64(0x1000).unwrap(), 0xdead_beef);
        assert!(matches!(
            ram.write(9 << 20, &[1]),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert_eq!(ram.low_end(), 8 << 20);
    }

    #[test]
    fn refuses_tiny_guests() {
        assert!(matches!(
            GuestRam::new(&[(0, 1 << 20)]),
            Err(MemoryError::TooSmall { .. })
        ));
    }
}
