//! Failure detectors: pvpanic and QEMU's exit always, the agent's
//! heartbeat, the i6300esb watchdog's QMP `WATCHDOG` and a host-side
//! service probe (on a thread of its own) when asked for; the watch loop
//! over them names the first failure.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::probe;
use crate::vm::Vm;

/// What gave the failure away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// pvpanic raised GUEST_PANICKED.
    GuestPanicked,
    /// pvpanic raised GUEST_CRASHLOADED: the kernel panicked with a crash
    /// kernel loaded and goes on into it (QEMU does not pause it).
    GuestCrashLoaded,
    /// The agent's heartbeat stopped.
    HeartbeatLost,
    /// The QEMU process died.
    QemuExited,
    /// The guest reset itself (QMP `RESET` with reason `guest-reset`, or
    /// the kernel booting again on the console): a triple fault does that.
    GuestReset,
    /// The guest stopped feeding its i6300esb watchdog (QMP `WATCHDOG`).
    Watchdog,
    /// The host's periodic probe of the service failed several times in a
    /// row (no answer, or a wrong one).
    ServiceProbe,
}

impl FailureCause {
    /// Every cause.
    pub const ALL: [FailureCause; 7] = [
        FailureCause::GuestPanicked,
        FailureCause::GuestCrashLoaded,
        FailureCause::HeartbeatLost,
        FailureCause::QemuExited,
        FailureCause::GuestReset,
        FailureCause::Watchdog,
        FailureCause::ServiceProbe,
    ];

    /// Its name in results.
    pub fn name(self) -> &'static str {
        match self {
            FailureCause::GuestPanicked => "guest-panicked",
            FailureCause::GuestCrashLoaded => "guest-crash-loaded",
            FailureCause::HeartbeatLost => "heartbeat-lost",
            FailureCause::QemuExited => "qemu-exited",
            FailureCause::GuestReset => "guest-reset",
            FailureCause::Watchdog => "watchdog",
            FailureCause::ServiceProbe => "service-probe",
        }
    }
}

/// The host's periodic probe of the service as a failure detector.
#[derive(Debug, Clone, Copy)]
pub struct ServiceProbe {
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Consecutive failed probes that make a failure.
    pub failures: u32,
}

impl Default for ServiceProbe {
    /// Tolerant enough for a TCG guest under load: 3 failures of 1 s
    /// probes every 0.5 s.
    fn default() -> Self {
        ServiceProbe { interval: Duration::from_millis(500), timeout: Duration::from_secs(1), failures: 3 }
    }
}

/// Which failure detectors watch the guest. pvpanic (GUEST_PANICKED,
/// GUEST_CRASHLOADED) and QEMU's exit are always watched.
#[derive(Debug, Clone, Copy)]
pub struct Detectors {
    /// A heartbeat older than this is a failure; `None`: not watched.
    pub heartbeat_timeout: Option<Duration>,
    /// Watch for QMP `WATCHDOG` events (needs [`crate::vm::VmConfig::watchdog_s`]).
    pub watchdog: bool,
    /// Probe the service from the host; `None`: no probe.
    pub probe: Option<ServiceProbe>,
}

impl Detectors {
    /// Only the heartbeat (with pvpanic and QEMU's exit).
    pub fn heartbeat(timeout: Duration) -> Detectors {
        Detectors { heartbeat_timeout: Some(timeout), watchdog: false, probe: None }
    }

    /// Watches `vm` until one of the detectors fires (`Some`, the first
    /// one names the cause), `deadline` passes or `stop` returns true
    /// (`None`; both polled every few milliseconds).
    pub(super) fn watch(&self, vm: &mut Vm, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> Option<Failure> {
        let probe = self.probe.map(|p| ProbeThread::start(vm, p));
        let events: &[&str] = if self.watchdog {
            &["GUEST_PANICKED", "GUEST_CRASHLOADED", "WATCHDOG"]
        } else {
            &["GUEST_PANICKED", "GUEST_CRASHLOADED"]
        };
        let watch_from = Instant::now();
        loop {
            if let Some(event) = vm.qmp().wait_any(events, Duration::from_millis(2)) {
                let cause = match event.name.as_str() {
                    "WATCHDOG" => FailureCause::Watchdog,
                    "GUEST_CRASHLOADED" => FailureCause::GuestCrashLoaded,
                    _ => FailureCause::GuestPanicked,
                };
                return Some(Failure { cause, detected_at: event.at });
            }
            let now = Instant::now();
            if vm.check_alive().is_err() {
                return Some(Failure { cause: FailureCause::QemuExited, detected_at: now });
            }
            if let Some(heartbeat_timeout) = self.heartbeat_timeout {
                let last_beat = vm.agent().last_heartbeat().map(|h| h.at).unwrap_or(watch_from).max(watch_from);
                if now.duration_since(last_beat) > heartbeat_timeout {
                    return Some(Failure { cause: FailureCause::HeartbeatLost, detected_at: now });
                }
            }
            if let Some(at) = probe.as_ref().and_then(ProbeThread::failed_at) {
                return Some(Failure { cause: FailureCause::ServiceProbe, detected_at: at });
            }
            if deadline.is_some_and(|d| now >= d) || stop() {
                return None;
            }
        }
    }
}

/// Probes the service on its own thread, so that a slow probe never delays
/// the other detectors; says when the last of `failures` consecutive
/// failures happened. It stops when dropped.
struct ProbeThread {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl ProbeThread {
    fn start(vm: &Vm, probe: ServiceProbe) -> ProbeThread {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let failed_at = Arc::new(Mutex::new(None));
        let (addr, doc) = (vm.http_addr(), vm.image().docs.index().clone());
        let (thread_stop, thread_failed) = (stop.clone(), failed_at.clone());
        let body = move || {
            let mut failures = 0;
            while !thread_stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match probe::check_doc(addr, &doc, probe.timeout) {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!("service probe {failures}/{} failed: {e}", probe.failures);
                        if failures >= probe.failures {
                            *thread_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                            return;
                        }
                    }
                }
                std::thread::sleep(probe.interval.saturating_sub(started.elapsed()));
            }
        };
        if let Err(e) = std::thread::Builder::new().name("service-probe".into()).spawn(body) {
            tracing::warn!("cannot start the service probe thread: {e}");
        }
        ProbeThread { stop, failed_at }
    }

    fn failed_at(&self) -> Option<Instant> {
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ProbeThread {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A detected failure.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// Its cause.
    pub cause: FailureCause,
    /// When the VMM noticed it.
    pub detected_at: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_names_match_their_serialized_form() {
        for cause in FailureCause::ALL {
            assert_eq!(serde_json::to_value(cause).unwrap(), cause.name());
        }
    }
}
