//! What happened during a trial, in order, for reports and `memrace replay`.

use crate::backend::{Regs, VcpuId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TraceEvent {
    /// A schedule step started (its line in the schedule file).
    Step {
        t_us: u64,
        line: usize,
        action: String,
    },
    /// A breakpoint fired with its condition true and its vCPU parked.
    Hit {
        t_us: u64,
        name: String,
        cpu: VcpuId,
        symbol: String,
        tid: Option<u64>,
        comm: Option<String>,
        regs: Box<Regs>,
    },
    /// Fault injection: a breakpoint at a function's entry fired with its condition
    /// true, and the function returned `value` at once, to `returned_to`.
    Inject {
        t_us: u64,
        name: String,
        cpu: VcpuId,
        symbol: String,
        tid: Option<u64>,
        comm: Option<String>,
        value: i64,
        returned_to: String,
    },
    /// A breakpoint fired but its condition was false: the vCPU continued.
    Filtered {
        t_us: u64,
        name: String,
        cpu: VcpuId,
        tid: Option<u64>,
    },
    /// A detector fired: the schedule cannot go on without deadlocking (deadlock rule R3,
    /// docs/schedules.md).
    Detector {
        t_us: u64,
        name: String,
        cpu: VcpuId,
        symbol: String,
    },
    /// A parked vCPU was released.
    Release { t_us: u64, cpu: VcpuId },
    /// A gate was opened.
    Open { t_us: u64, gate: String },
    /// A control message from the guest.
    Control { t_us: u64, line: String },
    /// A step could not complete.
    Infeasible {
        t_us: u64,
        line: usize,
        reason: String,
        vcpus: Vec<String>,
    },
}

impl TraceEvent {
    pub fn hit_name(&self) -> Option<&str> {
        match self {
            TraceEvent::Hit { name, .. } | TraceEvent::Inject { name, .. } => Some(name),
            _ => None,
        }
    }
}
