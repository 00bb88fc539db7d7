//! What a breakpoint condition sees at a hit: the registers, the current guest task,
//! the hit count, and what the guest reported in this trial (READY and FACT messages).

use super::cond::{CondError, Operand, Value};
use super::engine::TaskLayout;
use crate::arch::CurrentTask;
use crate::backend::{Backend, Regs, VcpuId};
use std::collections::HashMap;

/// The guest task a breakpoint hit in.
pub struct Task {
    pub tid: u64,
    pub tgid: u64,
    pub comm: String,
}

fn read_u64(vm: &mut dyn Backend, cpu: VcpuId, addr: u64) -> Result<u64, String> {
    let b = vm.read_virt(cpu, addr, 8).map_err(|e| e.to_string())?;
    let b: [u8; 8] = b
        .try_into()
        .map_err(|b: Vec<u8>| format!("short read at {addr:#x}: {} of 8 bytes", b.len()))?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(vm: &mut dyn Backend, cpu: VcpuId, addr: u64) -> Result<u64, String> {
    let b = vm.read_virt(cpu, addr, 4).map_err(|e| e.to_string())?;
    let b: [u8; 4] = b
        .try_into()
        .map_err(|b: Vec<u8>| format!("short read at {addr:#x}: {} of 4 bytes", b.len()))?;
    Ok(u32::from_le_bytes(b) as u64)
}

/// `base + offset`, where `base` came from guest memory or registers: untrusted, so
/// an overflow is an error naming what was being read, never a wrapped address.
fn guest_addr(what: &str, base: u64, offset: u64) -> Result<u64, String> {
    base.checked_add(offset).ok_or_else(|| {
        format!(
            "{what}: {base:#x} + {offset:#x} overflows the address space (corrupt guest pointer?)"
        )
    })
}

/// The current task on stopped `cpu`: the architecture's route to the task pointer
/// (x86_64's per-CPU `current_task`, arm64's SP_EL0), then `task_struct.pid`, `.tgid`
/// and `.comm` at their DWARF offsets.
pub fn read_task(
    vm: &mut dyn Backend,
    layout: Option<TaskLayout>,
    cpu: VcpuId,
    regs: &Regs,
) -> Result<Task, String> {
    let layout = layout.ok_or("no task layout (kernel symbols without DWARF?)")?;
    let current = match (regs.current_task(), layout.per_cpu) {
        (CurrentTask::Pointer(task), _) => task,
        (CurrentTask::Unknown(why), _) => return Err(why.to_string()),
        (CurrentTask::InPerCpuArea { .. }, None) => {
            return Err("the kernel's symbols have no per-CPU current_task (pcpu_hot)".into())
        }
        (CurrentTask::InPerCpuArea { base }, Some(per_cpu)) => {
            let base = match base {
                Some(base) => base,
                None => {
                    let slot = (cpu as u64)
                        .checked_mul(8)
                        .ok_or_else(|| format!("__per_cpu_offset[{cpu}] overflows"))?;
                    read_u64(
                        vm,
                        cpu,
                        guest_addr("__per_cpu_offset[cpu]", per_cpu.per_cpu_offset, slot)?,
                    )?
                }
            };
            read_u64(
                vm,
                cpu,
                guest_addr("the per-CPU current_task", base, per_cpu.current_task)?,
            )?
        }
    };
    // pid and tgid are neighbours in task_struct: one read (one gdb round trip on qemu).
    let (tid, tgid) = if layout.tgid == layout.pid + 4 {
        let both = read_u64(vm, cpu, guest_addr("task_struct.pid", current, layout.pid)?)?;
        (both & 0xffff_ffff, both >> 32)
    } else {
        (
            read_u32(vm, cpu, guest_addr("task_struct.pid", current, layout.pid)?)?,
            read_u32(
                vm,
                cpu,
                guest_addr("task_struct.tgid", current, layout.tgid)?,
            )?,
        )
    };
    let comm = vm
        .read_virt(
            cpu,
            guest_addr("task_struct.comm", current, layout.comm)?,
            16,
        )
        .map_err(|e| e.to_string())?;
    let comm = String::from_utf8_lossy(comm.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
    Ok(Task { tid, tgid, comm })
}

/// What the guest reported in the current trial, for `$name.tid` and `$fact.key`.
#[derive(Default)]
pub struct Bindings {
    /// `READY <name> <cpu> <tid>`: name → (cpu, tid).
    pub ready: HashMap<String, (u32, u32)>,
    /// `FACT <key> <value>`.
    pub facts: HashMap<String, String>,
}

impl Bindings {
    /// The value of one condition operand at a hit.
    pub fn lookup(
        &self,
        o: &Operand,
        regs: &Regs,
        task: &Result<Task, String>,
        hits: u64,
    ) -> Result<Value, CondError> {
        let task = || {
            task.as_ref().map_err(|e| CondError::Read {
                what: "the current task".into(),
                why: e.clone(),
            })
        };
        Ok(match o {
            Operand::Num(n) => Value::Num(*n),
            Operand::Str(s) => Value::Str(s.clone()),
            Operand::Ref(path) => {
                let (head, field) = path.split_once('.').expect("validated at parse time");
                let unbound = || CondError::UnboundRef(path.clone());
                if head == "fact" {
                    let v = self.facts.get(field).ok_or_else(unbound)?;
                    fact_value(v)
                } else {
                    let (cpu, tid) = self.ready.get(head).ok_or_else(unbound)?;
                    match field {
                        "tid" => Value::Num(*tid as u64),
                        "cpu" => Value::Num(*cpu as u64),
                        _ => return Err(unbound()),
                    }
                }
            }
            Operand::Var(v) => match v.as_str() {
                "tid" => Value::Num(task()?.tid),
                "tgid" => Value::Num(task()?.tgid),
                "comm" => Value::Str(task()?.comm.clone()),
                "hits" => Value::Num(hits),
                other => Value::Num(
                    regs.named(other)
                        .ok_or_else(|| CondError::UnknownVar(other.into()))?,
                ),
            },
        })
    }
}

/// A `FACT` value as a condition operand: `0x…` is hex, digits are decimal, anything
/// else is a string (the harness sends addresses as `0x…` and counts in decimal).
fn fact_value(v: &str) -> Value {
    let n = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    n.map(Value::Num)
        .unwrap_or_else(|| Value::Str(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_guest_pointer_is_an_error_not_a_wrapped_address() {
        assert_eq!(
            guest_addr("task_struct.pid", 0xffff_8880_0000_0000, 0x9a8),
            Ok(0xffff_8880_0000_09a8)
        );
        let err = guest_addr("task_struct.pid", u64::MAX - 4, 0x9a8).unwrap_err();
        assert!(
            err.contains("task_struct.pid") && err.contains("overflows"),
            "{err}"
        );
    }

    #[test]
    fn looks_up_registers_bindings_and_the_task() {
        let regs = Regs::X86_64(crate::arch::X86Regs {
            rdi: 7,
            rdx: 0x4000,
            ..Default::default()
        });
        let mut b = Bindings::default();
        b.ready.insert("reader".into(), (1, 42));
        b.facts.insert("addr.y".into(), "0x800000000".into());
        b.facts.insert("numa_nodes".into(), "10".into());
        b.facts.insert("kernel".into(), "6.12.117".into());
        let task = Ok(Task {
            tid: 42,
            tgid: 40,
            comm: "reader".into(),
        });
        let get = |o: Operand| b.lookup(&o, &regs, &task, 3);
        assert_eq!(get(Operand::Var("arg1".into())), Ok(Value::Num(7)));
        assert_eq!(get(Operand::Var("rdx".into())), Ok(Value::Num(0x4000)));
        assert_eq!(get(Operand::Var("tid".into())), Ok(Value::Num(42)));
        assert_eq!(get(Operand::Var("tgid".into())), Ok(Value::Num(40)));
        assert_eq!(
            get(Operand::Var("comm".into())),
            Ok(Value::Str("reader".into()))
        );
        assert_eq!(get(Operand::Var("hits".into())), Ok(Value::Num(3)));
        assert_eq!(get(Operand::Ref("reader.tid".into())), Ok(Value::Num(42)));
        assert_eq!(get(Operand::Ref("reader.cpu".into())), Ok(Value::Num(1)));
        assert_eq!(
            get(Operand::Ref("fact.addr.y".into())),
            Ok(Value::Num(0x8_0000_0000))
        );
        assert_eq!(
            get(Operand::Ref("fact.numa_nodes".into())),
            Ok(Value::Num(10)),
            "decimal facts are decimal"
        );
        assert_eq!(
            get(Operand::Ref("fact.kernel".into())),
            Ok(Value::Str("6.12.117".into()))
        );
        assert!(matches!(
            get(Operand::Ref("writer.tid".into())),
            Err(CondError::UnboundRef(_))
        ));
        let no_task: Result<Task, String> = Err("no DWARF".into());
        assert!(matches!(
            b.lookup(&Operand::Var("tid".into()), &regs, &no_task, 1),
            Err(CondError::Read { .. })
        ));
    }
}
