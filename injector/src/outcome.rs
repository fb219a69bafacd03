//! What a fault did: the [`Outcome`] classes shared with the rest of the
//! project, the [`Event`]s an experiment's failure went through (first
//! manifestation to final outcome), and the kernel's oops/BUG/GPF/panic
//! reports parsed from the serial console into [`OopsRecord`]s.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How an experiment ended. The kebab-case names are the ones stored and
/// grouped by in `analysis` (`analysis::record::outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The kernel panicked (GUEST_PANICKED, or a panic on the console).
    Panic,
    /// The virtual machine went away without a panic report: QEMU exited,
    /// or the guest reset itself (a triple fault resets an x86 machine).
    VmExit,
    /// An oops, BUG or general-protection fault that did not panic.
    Oops,
    /// No heartbeat and no service answer for the hang timeout.
    Hang,
    /// The kernel stayed alive and the service answered wrongly, or not at
    /// all for at least the outage threshold (see [`ServiceCriterion`]).
    ServiceError,
    /// The fault ran and nothing visible happened.
    Benign,
    /// The faulty instruction or data was never reached in the window, or
    /// the flipped bit was overwritten before anything read it.
    NotActivated,
    /// Nothing visible happened, and whether the fault was activated
    /// could not be decided (a flipped register neither read nor
    /// overwritten before the CPU went idle or left the kernel).
    ActivationUnknown,
}

impl Outcome {
    /// Every outcome, most severe first.
    pub const ALL: [Outcome; 8] = [
        Outcome::Panic,
        Outcome::VmExit,
        Outcome::Oops,
        Outcome::Hang,
        Outcome::ServiceError,
        Outcome::Benign,
        Outcome::NotActivated,
        Outcome::ActivationUnknown,
    ];

    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Panic => "panic",
            Outcome::VmExit => "vm-exit",
            Outcome::Oops => "oops",
            Outcome::Hang => "hang",
            Outcome::ServiceError => "service-error",
            Outcome::Benign => "benign",
            Outcome::NotActivated => "not-activated",
            Outcome::ActivationUnknown => "activation-unknown",
        }
    }

    /// Whether the kernel or the service failed (recovery is needed).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Panic | Outcome::VmExit | Outcome::Oops | Outcome::Hang | Outcome::ServiceError)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown outcome name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown outcome `{0}`: the outcomes are panic, vm-exit, oops, hang, service-error, benign, \
                 not-activated, activation-unknown"
)]
pub struct UnknownOutcome(String);

impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, UnknownOutcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| UnknownOutcome(s.to_string()))
    }
}

/// What was observed in an experiment's window, for [`classify`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    /// GUEST_PANICKED, or `Kernel panic` on the console.
    pub panicked: bool,
    /// QEMU exited, or the guest reset, without a panic report.
    pub vm_exit: bool,
    /// An oops/BUG/GPF report on the console.
    pub oops: bool,
    /// Neither heartbeat nor a correct answer for the hang timeout.
    pub hung: bool,
    /// The service failed by [`ServiceCriterion`] after the injection,
    /// kernel alive.
    pub service_errors: bool,
    /// The fault was executed (code) or read (data).
    pub activated: bool,
    /// Whether it was activated could not be decided.
    pub activation_unknown: bool,
}

/// The outcome of the evidence. A failure counts even when activation was
/// not seen (a flipped byte read by a DMA engine, a watchpoint the access
/// slipped past): the failure is the fact, and [`unattributed`] flags it.
///
#[doc = kfi_stats::outcome_definition!()]
pub fn classify(e: &Evidence) -> Outcome {
    if e.panicked {
        Outcome::Panic
    } else if e.vm_exit {
        Outcome::VmExit
    } else if e.oops {
        Outcome::Oops
    } else if e.hung {
        Outcome::Hang
    } else if e.service_errors {
        Outcome::ServiceError
    } else if e.activated {
        Outcome::Benign
    } else if e.activation_unknown {
        Outcome::ActivationUnknown
    } else {
        Outcome::NotActivated
    }
}

/// Whether `outcome` is a failure with no evidence that the fault caused
/// it: neither its activation nor an undecided activation was seen. Such
/// a record is kept (the failure happened) and flagged, never counted as
/// the fault's doing.
pub fn unattributed(outcome: Outcome, e: &Evidence) -> bool {
    outcome.is_failure() && !e.activated && !e.activation_unknown
}

/// When the service counts as failed while the kernel lives, as
/// [`Evidence::service_errors`] is judged: a wrong answer (a status other
/// than 200, or a body other than the document's), which a working server
/// never gives, or an outage: a failed request (timeout, refused or reset
/// connection) after which no correct answer came for at least
/// `min_outage_s`. Shorter runs of failed requests are counted in the
/// record but are no outcome: a loaded two-core host stalls a guest for
/// up to a second now and then, faults or no faults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceCriterion {
    /// The shortest outage that is a service error, seconds.
    pub min_outage_s: f64,
}

pub use kfi_stats::definitions::DEFAULT_MIN_OUTAGE_S;

impl Default for ServiceCriterion {
    fn default() -> Self {
        ServiceCriterion { min_outage_s: DEFAULT_MIN_OUTAGE_S }
    }
}

impl ServiceCriterion {
    /// The definition in words, as reports print it.
    pub fn describe(&self) -> String {
        kfi_stats::definitions::service_error(self.min_outage_s)
    }
}

/// One step of a failure, in order: what showed first (an oops in
/// `httpd`) and what it became (a panic killing init).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The failure class this step is (`oops`, `panic`, `hang`,
    /// `vm-exit`, `service-error`).
    pub outcome: Outcome,
    /// Seconds from the injection to when the harness saw it.
    pub at_s: f64,
    /// The kernel's own timestamp of the console line, seconds since its
    /// boot, when the console gave one (oops and panic lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_s: Option<f64>,
    /// What it was: the oops headline, the panic reason, how QEMU ended.
    pub what: String,
    /// The function it surfaced in (an oops's RIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The process it surfaced in (`httpd[97]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

impl Event {
    /// An event with no console details.
    pub fn new(outcome: Outcome, at_s: f64, what: String) -> Event {
        Event { outcome, at_s, kernel_s: None, what, function: None, process: None }
    }

    /// An oops as an event.
    pub fn oops(o: &OopsRecord, at_s: f64) -> Event {
        Event {
            outcome: Outcome::Oops,
            at_s,
            kernel_s: o.kernel_s,
            what: o.headline.clone(),
            function: o.function.clone(),
            process: o.comm.as_ref().map(|c| match o.pid {
                Some(pid) => format!("{c}[{pid}]"),
                None => c.clone(),
            }),
        }
    }
}

/// The kind of kernel report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OopsKind {
    /// `BUG: kernel NULL pointer dereference`.
    NullPointer,
    /// `BUG: unable to handle page fault`.
    PageFault,
    /// `general protection fault`.
    GeneralProtection,
    /// `kernel BUG at file:line!` (and the `invalid opcode` that follows).
    Bug,
    /// `invalid opcode` without a BUG() line: corrupted code.
    InvalidOpcode,
    /// `double fault`.
    DoubleFault,
    /// `stack segment` fault.
    StackSegment,
    /// `divide error`.
    DivideError,
    /// `int3` in the kernel.
    Int3,
    /// `BUG: soft lockup` / `rcu_sched self-detected stall`.
    Lockup,
    /// Another `BUG:` line (scheduling while atomic, bad page state...).
    OtherBug,
}

/// One oops-like report parsed from the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OopsRecord {
    /// The kind, when recognised.
    pub kind: Option<OopsKind>,
    /// The first line of the report (timestamp removed).
    pub headline: String,
    /// `function+0xoff` of RIP (the kernel's `RIP: 0010:f+0x1/0x20`).
    pub rip: Option<String>,
    /// The function of RIP.
    pub function: Option<String>,
    /// The faulting address, for page faults and NULL dereferences.
    pub address: Option<u64>,
    /// `file:line` of a `kernel BUG at` report.
    pub bug_at: Option<String>,
    /// The task that ran (`Comm:`).
    pub comm: Option<String>,
    /// Its PID.
    pub pid: Option<u32>,
    /// Functions of the call trace, innermost first, without the
    /// unreliable `? ` entries.
    pub call_trace: Vec<String>,
    /// The kernel's timestamp of the first line, seconds since its boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_s: Option<f64>,
}

/// Everything kernel-failure-like on a console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsoleReport {
    /// Oops-like reports, in order.
    pub oopses: Vec<OopsRecord>,
    /// The `Kernel panic - not syncing:` reason, if the kernel panicked.
    pub panic: Option<String>,
    /// The kernel's timestamp of that line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_kernel_s: Option<f64>,
    /// The console shows the kernel booting again (`Linux version`): the
    /// guest reset.
    #[serde(default)]
    pub rebooted: bool,
    /// `WARNING:` lines (not failures by themselves).
    pub warnings: Vec<String>,
}

impl ConsoleReport {
    /// The first oops, the one the fault caused (later ones are often its
    /// consequences).
    pub fn first(&self) -> Option<&OopsRecord> {
        self.oopses.first()
    }
}

/// Removes `[   12.345678] ` and a `<4>` level prefix.
fn strip_prefix(line: &str) -> &str {
    let mut s = line.trim_end_matches('\r');
    if let Some(rest) = s.strip_prefix('<') {
        if let Some(end) = rest.find('>') {
            if rest[..end].chars().all(|c| c.is_ascii_digit()) {
                s = &rest[end + 1..];
            }
        }
    }
    let t = s.trim_start();
    if let Some(rest) = t.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let stamp = rest[..end].trim();
            if !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return rest[end + 1..].strip_prefix(' ').unwrap_or(&rest[end + 1..]);
            }
        }
    }
    s
}

/// The `[   12.345678]` timestamp of a console line, seconds.
fn kernel_time(line: &str) -> Option<f64> {
    let mut s = line.trim_end_matches('\r');
    if let Some(rest) = s.strip_prefix('<') {
        s = rest.split_once('>').map_or(s, |(_, r)| r);
    }
    let rest = s.trim_start().strip_prefix('[')?;
    rest.split_once(']')?.0.trim().parse().ok()
}

fn hex_u64(s: &str) -> Option<u64> {
    let s = s.trim().trim_start_matches("0x");
    let end = s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len());
    u64::from_str_radix(&s[..end], 16).ok()
}

/// The kind of a report's first line, if it starts one.
fn headline_kind(line: &str) -> Option<OopsKind> {
    let l = line.trim_start();
    if l.starts_with("BUG: kernel NULL pointer dereference") {
        Some(OopsKind::NullPointer)
    } else if l.starts_with("BUG: unable to handle page fault") || l.starts_with("BUG: unable to handle kernel") {
        Some(OopsKind::PageFault)
    } else if l.starts_with("general protection fault") {
        Some(OopsKind::GeneralProtection)
    } else if l.starts_with("kernel BUG at ") {
        Some(OopsKind::Bug)
    } else if l.starts_with("invalid opcode:") {
        Some(OopsKind::InvalidOpcode)
    } else if l.starts_with("double fault:") || l.starts_with("traps: PANIC: double fault") {
        Some(OopsKind::DoubleFault)
    } else if l.starts_with("stack segment:") {
        Some(OopsKind::StackSegment)
    } else if l.starts_with("divide error:") {
        Some(OopsKind::DivideError)
    } else if l.starts_with("int3:") {
        Some(OopsKind::Int3)
    } else if l.contains("BUG: soft lockup") || l.starts_with("rcu: INFO: rcu_sched self-detected stall") {
        Some(OopsKind::Lockup)
    } else if l.starts_with("BUG: ") || l.starts_with("Oops: ") {
        Some(OopsKind::OtherBug)
    } else {
        None
    }
}

/// `func+0x1a/0x80` -> (`func+0x1a`, `func`); `? func+0x1a/0x80` -> None
/// (unreliable entries are guesses from stack contents).
fn trace_entry(line: &str) -> Option<(String, String)> {
    let l = line.trim();
    if l.starts_with('?') || l.starts_with('<') {
        return None;
    }
    let word = l.split_whitespace().next()?;
    let (sym, _size) = word.split_once('/')?;
    let (func, off) = sym.rsplit_once("+0x")?;
    if func.is_empty() || off.is_empty() || !off.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some((sym.to_string(), func.to_string()))
}

/// Parses a console log for oops-like reports, panics and warnings. Any
/// text is accepted; what is not recognised is skipped.
pub fn parse_console(text: &str) -> ConsoleReport {
    let mut report = ConsoleReport::default();
    let mut current: Option<OopsRecord> = None;
    let mut in_trace = false;
    for raw in text.lines() {
        let line = strip_prefix(raw);
        if line.trim_start().starts_with("Linux version ") {
            report.rebooted = true;
        }
        if let Some(reason) = line.trim_start().strip_prefix("Kernel panic - not syncing:") {
            if report.panic.is_none() {
                report.panic = Some(reason.trim().to_string());
                report.panic_kernel_s = kernel_time(raw);
            }
            in_trace = false;
            continue;
        }
        if line.trim_start().starts_with("WARNING:") {
            report.warnings.push(line.trim().to_string());
            continue;
        }
        if let Some(kind) = headline_kind(line) {
            // `invalid opcode` right after `kernel BUG at`, and the
            // `Oops:` line after `BUG: ...` headlines, continue one report.
            let continues = match (&current, &kind) {
                (Some(c), OopsKind::InvalidOpcode) => c.kind == Some(OopsKind::Bug) && c.rip.is_none(),
                (Some(c), OopsKind::OtherBug) if line.trim_start().starts_with("Oops: ") => c.rip.is_none(),
                _ => false,
            };
            if !continues {
                report.oopses.extend(current.take());
                let mut record = OopsRecord {
                    kind: Some(kind.clone()),
                    headline: line.trim().to_string(),
                    kernel_s: kernel_time(raw),
                    ..Default::default()
                };
                let l = line.trim_start();
                if let Some(rest) = l.strip_prefix("kernel BUG at ") {
                    record.bug_at = Some(rest.trim_end().trim_end_matches('!').to_string());
                }
                if let Some(at) = l.find("address: ").map(|i| &l[i + 9..]) {
                    record.address = hex_u64(at);
                } else if let Some(at) = l.find("address ").map(|i| &l[i + 8..]) {
                    record.address = hex_u64(at);
                }
                current = Some(record);
                in_trace = false;
            }
            continue;
        }
        let Some(rec) = current.as_mut() else { continue };
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("RIP: ") {
            // `RIP: 0010:tcp_v4_rcv+0x40/0xe80`; a user RIP is `0033:0x7f...`.
            if rec.rip.is_none() {
                let sym = rest.split_once(':').map_or(rest, |(_, s)| s).trim();
                let sym = sym.split_whitespace().next().unwrap_or("");
                let sym = sym.split('/').next().unwrap_or("");
                if let Some((func, _)) = sym.rsplit_once("+0x") {
                    if !func.is_empty() && !func.starts_with("0x") {
                        rec.rip = Some(sym.to_string());
                        rec.function = Some(func.to_string());
                    }
                }
            }
            in_trace = false;
        } else if l.starts_with("CPU: ") {
            // `CPU: 0 PID: 123 Comm: httpd Not tainted 6.1.0-56-amd64 #1 ...`
            if let Some(p) = l.find("PID: ") {
                rec.pid = l[p + 5..].split_whitespace().next().and_then(|v| v.parse().ok());
            }
            if let Some(c) = l.find("Comm: ") {
                rec.comm = l[c + 6..].split_whitespace().next().map(str::to_string);
            }
        } else if l == "Call Trace:" {
            in_trace = true;
        } else if l.starts_with("Modules linked in:") || l.starts_with("---[ end trace") || l.starts_with("CR2: ") {
            in_trace = false;
        } else if in_trace {
            if let Some((_, func)) = trace_entry(l) {
                rec.call_trace.push(func);
            } else if l.starts_with("RIP: ") || l.contains("RSP: ") || l.starts_with("Code: ") {
                in_trace = false;
            }
        }
    }
    report.oopses.extend(current);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NULL_DEREF: &str = "\
[   23.418127] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   23.418536] #PF: supervisor read access in kernel mode
[   23.418803] #PF: error_code(0x0000) - not-present page
[   23.419068] PGD 0 P4D 0 
[   23.419221] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   23.419455] CPU: 0 PID: 97 Comm: httpd Not tainted 6.1.0-56-amd64 #1  Debian 6.1.123-1
[   23.419912] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   23.420468] RIP: 0010:tcp_sendmsg_locked+0x5a/0xc80
[   23.420734] Code: 41 56 41 55 41 54 55 53 48 83 ec 58 <48> 8b 47 08 48 89 44 24 08
[   23.421332] RSP: 0018:ffffc90000217c40 EFLAGS: 00010246
[   23.421602] RAX: 0000000000000000 RBX: ffff888004d3c000 RCX: 0000000000000000
[   23.423978] Call Trace:
[   23.424124]  <TASK>
[   23.424250]  ? __die+0x23/0x70
[   23.424449]  ? page_fault_oops+0x17d/0x4c0
[   23.424706]  tcp_sendmsg+0x28/0x40
[   23.424907]  sock_sendmsg+0x5e/0x70
[   23.425103]  __sys_sendto+0x117/0x170
[   23.425309]  __x64_sys_sendto+0x24/0x30
[   23.425508]  do_syscall_64+0x55/0xb0
[   23.425712]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   23.425979] RIP: 0033:0x4a8e2b
[   23.426160] Code: ff ff
[   23.426300]  </TASK>
[   23.426425] Modules linked in: virtio_net net_failover failover virtio_pci
[   23.426881] CR2: 0000000000000008
[   23.427070] ---[ end trace 0000000000000000 ]---
";

    const GPF_IN_IRQ: &str = "\
[   41.002100] general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI
[   41.002712] CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.123-1
[   41.003201] RIP: 0010:tcp_v4_rcv+0x40/0xe80
[   41.003500] RSP: 0018:ffffc90000003d28 EFLAGS: 00010286
[   41.004000] Call Trace:
[   41.004100]  <IRQ>
[   41.004200]  ip_protocol_deliver_rcu+0x32/0x180
[   41.004300]  ip_local_deliver_finish+0x77/0xa0
[   41.004400]  __netif_receive_skb_one_core+0x86/0xa0
[   41.004500]  </IRQ>
[   41.004600]  <TASK>
[   41.004700]  default_idle+0x9/0x20
[   41.004800]  </TASK>
[   41.004900] ---[ end trace 0000000000000000 ]---
[   41.005000] Kernel panic - not syncing: Fatal exception in interrupt
[   41.005100] Kernel Offset: disabled
";

    const BUG_AT: &str = "\
<4>[    9.100000] kernel BUG at mm/slub.c:379!
<4>[    9.100100] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
<4>[    9.100200] CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-56-amd64 #1  Debian 6.1.123-1
<4>[    9.100300] RIP: 0010:__slab_free+0x2b1/0x2c0
<4>[    9.100400] Call Trace:
<4>[    9.100500]  <TASK>
<4>[    9.100600]  kmem_cache_free+0x2ae/0x3a0
<4>[    9.100700]  do_exit+0x33c/0xa70
";

    #[test]
    fn null_dereference_in_process_context() {
        let r = parse_console(NULL_DEREF);
        assert_eq!(r.oopses.len(), 1);
        assert_eq!(r.panic, None);
        let o = r.first().unwrap();
        assert_eq!(o.kind, Some(OopsKind::NullPointer));
        assert_eq!(o.address, Some(8));
        assert_eq!(o.rip.as_deref(), Some("tcp_sendmsg_locked+0x5a"));
        assert_eq!(o.function.as_deref(), Some("tcp_sendmsg_locked"));
        assert_eq!((o.comm.as_deref(), o.pid), (Some("httpd"), Some(97)));
        assert_eq!(o.kernel_s, Some(23.418127));
        assert!(!r.rebooted);
        assert_eq!(
            o.call_trace,
            [
                "tcp_sendmsg",
                "sock_sendmsg",
                "__sys_sendto",
                "__x64_sys_sendto",
                "do_syscall_64",
                "entry_SYSCALL_64_after_hwframe"
            ]
        );
    }

    #[test]
    fn gpf_in_interrupt_then_panic() {
        let r = parse_console(GPF_IN_IRQ);
        assert_eq!(r.panic.as_deref(), Some("Fatal exception in interrupt"));
        assert_eq!(r.panic_kernel_s, Some(41.005));
        let again =
            format!("{GPF_IN_IRQ}[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n");
        assert!(parse_console(&again).rebooted);
        let o = r.first().unwrap();
        assert_eq!(o.kind, Some(OopsKind::GeneralProtection));
        assert_eq!(o.address, Some(0xdead_0000_0000_0122));
        assert_eq!(o.function.as_deref(), Some("tcp_v4_rcv"));
        assert_eq!((o.comm.as_deref(), o.pid), (Some("swapper/0"), Some(0)));
        assert_eq!(o.call_trace[..2], ["ip_protocol_deliver_rcu", "ip_local_deliver_finish"]);
        assert!(o.call_trace.contains(&"default_idle".to_string()));
    }

    #[test]
    fn bug_with_level_prefixes_is_one_report() {
        let r = parse_console(BUG_AT);
        assert_eq!(r.oopses.len(), 1, "{r:?}");
        let o = r.first().unwrap();
        assert_eq!(o.kind, Some(OopsKind::Bug));
        assert_eq!(o.bug_at.as_deref(), Some("mm/slub.c:379"));
        assert_eq!(o.function.as_deref(), Some("__slab_free"));
        assert_eq!(o.call_trace, ["kmem_cache_free", "do_exit"]);
    }

    #[test]
    fn invalid_opcode_alone_and_warnings() {
        let text = "[    5.0] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 foo+0x1/0x2\n\
                    [    6.0] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n\
                    [    6.1] RIP: 0010:schedule+0x3/0x90\n";
        let r = parse_console(text);
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(r.first().unwrap().kind, Some(OopsKind::InvalidOpcode));
        assert_eq!(r.first().unwrap().rip.as_deref(), Some("schedule+0x3"));
        assert_eq!(parse_console("all quiet\n[ 1.0] eth0: link up\n"), ConsoleReport::default());
    }

    #[test]
    fn classification_order_and_names() {
        let none = Evidence::default();
        assert_eq!(classify(&none), Outcome::NotActivated);
        assert_eq!(classify(&Evidence { activated: true, ..none }), Outcome::Benign);
        assert_eq!(classify(&Evidence { activation_unknown: true, ..none }), Outcome::ActivationUnknown);
        assert_eq!(classify(&Evidence { activation_unknown: true, hung: true, ..none }), Outcome::Hang);
        assert_eq!(classify(&Evidence { service_errors: true, ..none }), Outcome::ServiceError);
        assert_eq!(classify(&Evidence { oops: true, service_errors: true, ..none }), Outcome::Oops);
        assert_eq!(classify(&Evidence { panicked: true, oops: true, hung: true, ..none }), Outcome::Panic);
        assert_eq!(classify(&Evidence { vm_exit: true, oops: true, ..none }), Outcome::VmExit);
        assert_eq!(classify(&Evidence { panicked: true, vm_exit: true, ..none }), Outcome::Panic);
        let service = Evidence { service_errors: true, ..none };
        assert!(unattributed(classify(&service), &service));
        let attributed = Evidence { activated: true, ..service };
        assert!(!unattributed(classify(&attributed), &attributed));
        assert!(!unattributed(Outcome::NotActivated, &none));
        let names: Vec<String> = Outcome::ALL.iter().map(|o| serde_json::to_string(o).unwrap()).collect();
        assert_eq!(
            names,
            [
                "\"panic\"",
                "\"vm-exit\"",
                "\"oops\"",
                "\"hang\"",
                "\"service-error\"",
                "\"benign\"",
                "\"not-activated\"",
                "\"activation-unknown\""
            ]
        );
        for o in Outcome::ALL {
            assert_eq!(o.name().parse::<Outcome>().unwrap(), o);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse_console(&text);
        }

        #[test]
        fn mangled_reports_never_panic(cut in 0usize..2000, junk in "[ -~]{0,40}") {
            let mut text = String::from(GPF_IN_IRQ);
            text.push_str(BUG_AT);
            let cut = cut.min(text.len());
            let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.insert_str(cut, &junk);
            let _ = parse_console(&text);
        }
    }
}
