//! `thp-pmd` (docs/scenario-source-notes.md §D, D1): a read fault on a 2 MiB-aligned shared
//! anonymous (shmem) mapping with `shmem_enabled=always` must map a huge page by PMD. A D1
//! kernel allocates the huge page but maps it with PTEs (`ShmemPmdMapped: 0 kB`).

use std::fs;
use std::time::Duration;

use control_proto::Outcome;

use super::{Trial, Workload};
use crate::error::{self, Res};
use crate::mem::Mapping;
use crate::system;

const HPAGE: usize = 2 << 20;
const THP: &str = "/sys/kernel/mm/transparent_hugepage";

pub struct ThpPmd;

/// The `field` (e.g. `ShmemPmdMapped`) in kB of the /proc/<pid>/smaps VMA containing `addr`.
pub fn smaps_field(smaps: &str, addr: usize, field: &str) -> Option<u64> {
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
                return rest.split_whitespace().next()?.parse().ok();
            }
        }
    }
    None
}

/// A counter of /proc/vmstat.
pub fn vmstat_value(vmstat: &str, key: &str) -> Option<u64> {
    vmstat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Evidence of huge page allocation and PMD mapping, read around the fault.
struct Counters {
    /// /proc/meminfo ShmemHugePages (kB): always present with THP.
    shmem_huge_kb: u64,
    /// /proc/vmstat thp_file_alloc and thp_file_mapped: only with CONFIG_VM_EVENT_COUNTERS.
    events: Option<(u64, u64)>,
}

impl Counters {
    fn read() -> Res<Counters> {
        let read = |path: &str| {
            fs::read_to_string(path).map_err(|e| error::describe(&format!("read {path}"), &e))
        };
        let meminfo = read("/proc/meminfo")?;
        let shmem_huge_kb = system::meminfo_value(&meminfo, "ShmemHugePages")
            .ok_or("/proc/meminfo has no ShmemHugePages")?;
        let vmstat = read("/proc/vmstat")?;
        let events =
            vmstat_value(&vmstat, "thp_file_alloc").zip(vmstat_value(&vmstat, "thp_file_mapped"));
        Ok(Counters {
            shmem_huge_kb,
            events,
        })
    }

    /// Whether a huge page was allocated since `before`, and a detail text of the deltas.
    fn since(&self, before: &Counters) -> (bool, String) {
        let huge_kb = self.shmem_huge_kb.saturating_sub(before.shmem_huge_kb);
        let mut allocated = huge_kb >= 2048;
        let mut text = format!("ShmemHugePages=+{huge_kb}kB");
        match (before.events, self.events) {
            (Some((a0, m0)), Some((a1, m1))) => {
                allocated |= a1 > a0;
                text += &format!(" thp_file_alloc=+{} thp_file_mapped=+{}", a1 - a0, m1 - m0);
            }
            _ => text += " thp_file_alloc=n/a thp_file_mapped=n/a",
        }
        (allocated, text)
    }
}

/// A 2 MiB shmem mapping whose start is 2 MiB aligned *and* at file offset 0 (so a PMD can
/// map it): reserve 4 MiB, then place the real mapping at the aligned address inside it.
fn aligned_shmem() -> Res<Mapping> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let first = Mapping::anon(0, HPAGE, rw, libc::MAP_SHARED)?;
    if first.addr() % HPAGE == 0 {
        return Ok(first);
    }
    drop(first);
    let reserve = Mapping::anon(
        0,
        2 * HPAGE,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )?;
    let aligned = reserve.addr().next_multiple_of(HPAGE);
    drop(reserve);
    Mapping::anon(
        aligned,
        HPAGE,
        rw,
        libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
    )
}

impl Workload for ThpPmd {
    fn prepare(&self) -> Res<()> {
        let write = |path: &str, value: &str| {
            fs::write(format!("{THP}/{path}"), value)
                .map_err(|e| error::describe(&format!("write {path}"), &e))
        };
        write("shmem_enabled", "always")?;
        // Keep khugepaged from collapsing PTE-mapped huge pages behind the oracle's back.
        write("khugepaged/scan_sleep_millisecs", "3600000")
    }

    fn trial_timeout(&self) -> Duration {
        Duration::from_secs(120)
    }

    fn trial(&self, trial: &Trial) -> Res<()> {
        let p = aligned_shmem()?;
        let before = Counters::read()?;
        // SAFETY: the first byte of the live, readable mapping.
        let _ = unsafe { std::ptr::read_volatile(p.ptr()) };
        let smaps = fs::read_to_string("/proc/self/smaps")
            .map_err(|e| error::describe("read smaps", &e))?;
        let (allocated, counters) = Counters::read()?.since(&before);
        let pmd = smaps_field(&smaps, p.addr(), "ShmemPmdMapped")
            .ok_or("no ShmemPmdMapped for the mapping")?;
        if pmd >= 2048 {
            trial.report(
                Outcome::Intact,
                &format!("ShmemPmdMapped={pmd}kB {counters}"),
            );
        } else if pmd == 0 && allocated {
            trial.report(
                Outcome::Reproduced,
                &format!("ShmemPmdMapped=0kB-mapped-by-ptes {counters}"),
            );
        } else if pmd == 0 {
            trial.report(
                Outcome::Error,
                &format!("no-huge-page-allocated ShmemPmdMapped=0kB {counters}"),
            );
        } else {
            trial.report(
                Outcome::Error,
                &format!("unexpected ShmemPmdMapped={pmd}kB {counters}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0000200000 rw-s 00000000 00:01 1025                       /dev/zero (deleted)
Size:               2048 kB
ShmemPmdMapped:     2048 kB
FilePmdMapped:         0 kB
7f0000200000-7f0000400000 rw-s 00000000 00:01 1026                       /dev/zero (deleted)
Size:               2048 kB
ShmemPmdMapped:        0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
";

    #[test]
    fn finds_the_field_of_the_right_vma() {
        assert_eq!(
            smaps_field(SMAPS, 0x7f0000000000, "ShmemPmdMapped"),
            Some(2048)
        );
        assert_eq!(
            smaps_field(SMAPS, 0x7f00001fffff, "ShmemPmdMapped"),
            Some(2048)
        );
        assert_eq!(
            smaps_field(SMAPS, 0x7f0000200000, "ShmemPmdMapped"),
            Some(0)
        );
        assert_eq!(smaps_field(SMAPS, 0x7ffd00000000, "ShmemPmdMapped"), None);
        assert_eq!(smaps_field(SMAPS, 0x1000, "Size"), None);
        assert_eq!(smaps_field(SMAPS, 0x7ffd00000000, "Size"), Some(132));
    }

    #[test]
    fn reads_vmstat_counters() {
        let v = "nr_free_pages 1000\nthp_file_alloc 3\nthp_file_mapped 2\n";
        assert_eq!(vmstat_value(v, "thp_file_alloc"), Some(3));
        assert_eq!(vmstat_value(v, "thp_file_mapped"), Some(2));
        assert_eq!(vmstat_value(v, "thp_file"), None);
    }
}
