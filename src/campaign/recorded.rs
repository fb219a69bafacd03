//! The one place where the producing crates' enums (the injector's
//! outcomes, fault models and scopes, the VMM's strategies, failure causes,
//! accelerators and profiles, the harness's crashes and workloads) become
//! the stored `analysis::record::Recorded*` values. Every match is
//! exhaustive, so a new variant upstream does not compile until it has a
//! stored name.

use analysis::record::{
    FailureEvent, RecordedAccel, RecordedCause, RecordedCrash, RecordedModel, RecordedOutcome, RecordedProfile,
    RecordedScope, RecordedStrategy, RecordedWorkload,
};
use injector::fault::ModelKind;
use injector::outcome::Outcome;
use injector::trace::Scope;
use recovery_sut::recovery::FailureCause;
use recovery_sut::{Accel, Profile, Strategy};

use crate::crash::Crash;
use crate::workload_run::WorkloadKind;

/// The injector's verdict.
pub fn outcome(o: Outcome) -> RecordedOutcome {
    match o {
        Outcome::Panic => RecordedOutcome::Panic,
        Outcome::VmExit => RecordedOutcome::VmExit,
        Outcome::Oops => RecordedOutcome::Oops,
        Outcome::Hang => RecordedOutcome::Hang,
        Outcome::ServiceError => RecordedOutcome::ServiceError,
        Outcome::Benign => RecordedOutcome::Benign,
        Outcome::NotActivated => RecordedOutcome::NotActivated,
        Outcome::ActivationUnknown => RecordedOutcome::ActivationUnknown,
    }
}

/// A fault model.
pub fn model(m: ModelKind) -> RecordedModel {
    match m {
        ModelKind::RegFlip => RecordedModel::RegFlip,
        ModelKind::DataFlip => RecordedModel::DataFlip,
        ModelKind::StackFlip => RecordedModel::StackFlip,
        ModelKind::HeapFlip => RecordedModel::HeapFlip,
        ModelKind::TextFlip => RecordedModel::TextFlip,
        ModelKind::Nop => RecordedModel::Nop,
        ModelKind::Branch => RecordedModel::Branch,
        ModelKind::Inverse => RecordedModel::Inverse,
        ModelKind::Init => RecordedModel::Init,
        ModelKind::OffByOne => RecordedModel::OffByOne,
        ModelKind::RetZero => RecordedModel::RetZero,
        ModelKind::Dst => RecordedModel::Dst,
        ModelKind::Src => RecordedModel::Src,
        ModelKind::Ptr => RecordedModel::Ptr,
    }
}

/// A propagation scope.
pub fn scope(s: Scope) -> RecordedScope {
    match s {
        Scope::Masked => RecordedScope::Masked,
        Scope::Latent => RecordedScope::Latent,
        Scope::ProcessLocal => RecordedScope::ProcessLocal,
        Scope::KernelGlobal => RecordedScope::KernelGlobal,
        Scope::Unknown => RecordedScope::Unknown,
    }
}

/// One step of a failure.
pub fn event(e: &injector::outcome::Event) -> FailureEvent {
    FailureEvent {
        outcome: outcome(e.outcome),
        at_s: e.at_s,
        kernel_s: e.kernel_s,
        what: e.what.clone(),
        function: e.function.clone(),
        process: e.process.clone(),
    }
}

/// A recovery strategy.
pub fn strategy(s: Strategy) -> RecordedStrategy {
    match s {
        Strategy::FullReboot => RecordedStrategy::FullReboot,
        Strategy::KexecReboot => RecordedStrategy::KexecReboot,
        Strategy::PhaseRestore => RecordedStrategy::PhaseRestore,
        Strategy::ServiceRestore => RecordedStrategy::ServiceRestore,
    }
}

/// What gave a failure away.
pub fn cause(c: FailureCause) -> RecordedCause {
    match c {
        FailureCause::GuestPanicked => RecordedCause::GuestPanicked,
        FailureCause::GuestCrashLoaded => RecordedCause::GuestCrashLoaded,
        FailureCause::HeartbeatLost => RecordedCause::HeartbeatLost,
        FailureCause::QemuExited => RecordedCause::QemuExited,
        FailureCause::GuestReset => RecordedCause::GuestReset,
        FailureCause::Watchdog => RecordedCause::Watchdog,
        FailureCause::ServiceProbe => RecordedCause::ServiceProbe,
    }
}

/// A forced crash.
pub fn crash(c: Crash) -> RecordedCrash {
    match c {
        Crash::Sysrq => RecordedCrash::Sysrq,
        Crash::Panic => RecordedCrash::Panic,
        Crash::Hang => RecordedCrash::Hang,
    }
}

/// The accelerator.
pub fn accel(a: Accel) -> RecordedAccel {
    match a {
        Accel::Kvm => RecordedAccel::Kvm,
        Accel::Tcg => RecordedAccel::Tcg,
    }
}

/// The guest profile.
pub fn profile(p: Profile) -> RecordedProfile {
    match p {
        Profile::Tiny => RecordedProfile::Tiny,
        Profile::Debian => RecordedProfile::Debian,
    }
}

/// The workload.
pub fn workload(w: WorkloadKind) -> RecordedWorkload {
    match w {
        WorkloadKind::Apache => RecordedWorkload::Apache,
        WorkloadKind::Rubis => RecordedWorkload::Rubis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same stored name as the producer's own name, for every value.
    #[test]
    fn stored_names_are_the_producers_names() {
        for o in Outcome::ALL {
            assert_eq!(outcome(o).name(), o.name());
        }
        for m in ModelKind::ALL {
            assert_eq!(model(m).name(), m.name());
        }
        for s in Scope::ALL {
            assert_eq!(scope(s).name(), s.name());
        }
        for s in Strategy::ALL {
            assert_eq!(strategy(s).name(), s.name());
        }
        for c in FailureCause::ALL {
            assert_eq!(cause(c).name(), c.name());
        }
        for a in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(accel(a).name(), a.name());
        }
        for p in Profile::ALL {
            assert_eq!(profile(p).name(), p.name());
        }
        for c in [Crash::Sysrq, Crash::Panic, Crash::Hang] {
            assert_eq!(crash(c).name(), c.to_string());
        }
        for w in [WorkloadKind::Apache, WorkloadKind::Rubis] {
            assert_eq!(workload(w).name(), w.to_string());
        }
    }
}
