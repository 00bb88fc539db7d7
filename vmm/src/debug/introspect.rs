//! The schedule engine's view of a kernel: breakpoint specs, `symbol+off` names and
//! where the current task is, all from one vmlinux's symbols and DWARF.

use super::Symbols;
use crate::arch::Arch;
use crate::sched::engine::{Introspect, PerCpuCurrent, TaskLayout};

pub struct KernelIntrospect<'a> {
    symbols: &'a Symbols,
    task: Option<TaskLayout>,
}

impl<'a> KernelIntrospect<'a> {
    pub fn new(symbols: &'a Symbols) -> KernelIntrospect<'a> {
        // Without DWARF there is no task layout: task conditions then fail loudly.
        let task = (|| {
            let per_cpu = match symbols.arch() {
                Arch::X86_64 => Some(PerCpuCurrent {
                    current_task: symbols.symbol("pcpu_hot").ok()?
                        + symbols.field_offset("pcpu_hot", "current_task").ok()?,
                    per_cpu_offset: symbols.symbol("__per_cpu_offset").ok()?,
                }),
                Arch::Arm64 => None,
            };
            Some(TaskLayout {
                per_cpu,
                pid: symbols.field_offset("task_struct", "pid").ok()?,
                tgid: symbols.field_offset("task_struct", "tgid").ok()?,
                comm: symbols.field_offset("task_struct", "comm").ok()?,
            })
        })();
        KernelIntrospect { symbols, task }
    }
}

impl Introspect for KernelIntrospect<'_> {
    fn resolve(&self, spec: &str) -> Result<u64, String> {
        self.symbols.resolve(spec).map_err(|e| e.to_string())
    }

    fn describe(&self, addr: u64) -> String {
        self.symbols.describe(addr)
    }

    fn task_layout(&self) -> Option<TaskLayout> {
        self.task
    }

    fn is_code(&self, addr: u64) -> bool {
        self.symbols.is_code(addr)
    }
}
