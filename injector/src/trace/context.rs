//! Who the CPU is running for at a stop: the current task (through the
//! per-CPU `current_task` at the GS base) with its pid, tgid and comm, and
//! whether it runs in interrupt context (`__preempt_count`).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::layout::KernelLayout;
use super::scope::InterruptContext;
use crate::gdb::{GdbClient, GdbError, Reg, Registers};

/// `PF_KTHREAD` in `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;
/// `preempt_count` masks (include/linux/preempt.h).
const NMI_MASK: u32 = 0x00f0_0000;
const HARDIRQ_MASK: u32 = 0x000f_0000;
const SOFTIRQ_OFFSET: u32 = 0x0000_0100;
/// Lowest kernel address (canonical upper half).
const KERNEL_BASE: u64 = 0xffff_8000_0000_0000;

/// The interrupt state of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IrqState {
    /// Process (task) context.
    Task,
    /// Serving a softirq.
    Softirq,
    /// A hardware interrupt handler.
    Hardirq,
    /// A non-maskable interrupt.
    Nmi,
}

/// One execution context: a task, and whether an interrupt borrowed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Context {
    /// `task_struct` address.
    pub task: u64,
    /// Thread id.
    pub pid: i32,
    /// Process id.
    pub tgid: i32,
    /// Command name.
    pub comm: String,
    /// A kernel thread (no user memory).
    pub kthread: bool,
    /// Interrupt state.
    pub irq: IrqState,
    /// The CPU was in user mode.
    pub user: bool,
}

impl Context {
    /// Whether both are the same task in the same interrupt state: an
    /// interrupt handler is a context of its own even on the task it
    /// interrupted.
    pub fn same(&self, other: &Context) -> bool {
        self.task == other.task && self.irq == other.irq
    }

    /// Whether both are one context under `rule`: [`same`](Self::same), or
    /// with [`InterruptContext::Task`] the same task whatever interrupt
    /// ran on it.
    pub fn same_under(&self, other: &Context, rule: InterruptContext) -> bool {
        match rule {
            InterruptContext::Separate => self.same(other),
            InterruptContext::Task => self.task == other.task,
        }
    }

    /// Whether `address` is this task's own: its kernel stack, its
    /// `task_struct`, or user memory (when it is a process).
    pub fn owns(&self, address: u64, stack: Option<u64>, layout: &KernelLayout) -> bool {
        if address < KERNEL_BASE {
            return !self.kthread;
        }
        let in_task = address >= self.task && address < self.task + layout.task.size;
        let in_stack = stack.is_some_and(|s| address >= s && address < s + layout.thread_size);
        in_task || in_stack
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)?;
        match self.irq {
            IrqState::Task => Ok(()),
            IrqState::Softirq => f.write_str(" in softirq"),
            IrqState::Hardirq => f.write_str(" in hardirq"),
            IrqState::Nmi => f.write_str(" in NMI"),
        }
    }
}

#[derive(Debug, Clone)]
struct TaskInfo {
    pid: i32,
    tgid: i32,
    comm: String,
    kthread: bool,
    stack: u64,
}

/// Reads contexts, caching each task's identity (pid and comm of a task
/// address do not change within one trace; `exec` renames, but the tracer
/// only needs to tell tasks apart).
#[derive(Debug)]
pub struct ContextReader {
    layout: KernelLayout,
    tasks: HashMap<u64, TaskInfo>,
}

impl ContextReader {
    /// A reader for a kernel of this layout.
    pub fn new(layout: KernelLayout) -> ContextReader {
        ContextReader { layout, tasks: HashMap::new() }
    }

    /// The layout.
    pub fn layout(&self) -> &KernelLayout {
        &self.layout
    }

    /// The per-CPU base of the stopped CPU: GS in kernel mode, the swapped
    /// KERNEL_GS in user mode (and in the few entry instructions before
    /// `swapgs`, where GS still holds the user's value).
    pub fn percpu_base(regs: &Registers) -> Option<u64> {
        let gs = regs.get(Reg::GsBase).unwrap_or(0);
        if gs >= KERNEL_BASE {
            return Some(gs);
        }
        regs.get(Reg::KernelGsBase).filter(|&k| k >= KERNEL_BASE)
    }

    /// The context the CPU runs in at this stop.
    pub fn read(&mut self, gdb: &mut GdbClient, regs: &Registers) -> Result<Context, GdbError> {
        let base = Self::percpu_base(regs).unwrap_or(0);
        let task = u64::from_le_bytes(read_array(gdb, base.wrapping_add(self.layout.current_task))?);
        let preempt = u32::from_le_bytes(read_array(gdb, base.wrapping_add(self.layout.preempt_count))?);
        let irq = if preempt & NMI_MASK != 0 {
            IrqState::Nmi
        } else if preempt & HARDIRQ_MASK != 0 {
            IrqState::Hardirq
        } else if preempt & SOFTIRQ_OFFSET != 0 {
            IrqState::Softirq
        } else {
            IrqState::Task
        };
        let info = self.task(gdb, task)?;
        Ok(Context {
            task,
            pid: info.pid,
            tgid: info.tgid,
            comm: info.comm,
            kthread: info.kthread,
            irq,
            user: regs.cs & 3 == 3,
        })
    }

    /// The kernel stack of a task read before.
    pub fn stack_of(&self, task: u64) -> Option<u64> {
        self.tasks.get(&task).map(|t| t.stack)
    }

    fn task(&mut self, gdb: &mut GdbClient, task: u64) -> Result<TaskInfo, GdbError> {
        if let Some(t) = self.tasks.get(&task) {
            return Ok(t.clone());
        }
        let o = self.layout.task;
        let pid = i32::from_le_bytes(read_array(gdb, task + o.pid)?);
        let tgid = i32::from_le_bytes(read_array(gdb, task + o.tgid)?);
        let comm_raw: [u8; 16] = read_array(gdb, task + o.comm)?;
        let end = comm_raw.iter().position(|&b| b == 0).unwrap_or(16);
        let comm = String::from_utf8_lossy(&comm_raw[..end]).into_owned();
        let flags = u32::from_le_bytes(read_array(gdb, task + o.flags)?);
        let stack = u64::from_le_bytes(read_array(gdb, task + o.stack)?);
        let info = TaskInfo { pid, tgid, comm, kthread: flags & PF_KTHREAD != 0, stack };
        self.tasks.insert(task, info.clone());
        Ok(info)
    }
}

fn read_array<const N: usize>(gdb: &mut GdbClient, address: u64) -> Result<[u8; N], GdbError> {
    let bytes = gdb.read_memory(address, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    Ok(out)
}
