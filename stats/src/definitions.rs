//! The measures' definitions in words, shared by the code that computes
//! them (their documentation is built from these texts) and the reports
//! that state them, so that a report's method section says what the code
//! does. A definition that changes changes both.

/// The client-seen downtime, as `workloads::downtime::downtime` computes
/// it (a macro so the function's documentation can be built from it).
#[macro_export]
macro_rules! downtime_definition {
    () => {
        "Downtime is client-seen: from the end of the last correct answer that completed at or before the \
         failure instant (the detection of a panic; a hang's estimated start) to the end of the first correct \
         answer to a request the workload's clients sent at or after it."
    };
}

/// See [`downtime_definition`].
pub const DOWNTIME: &str = downtime_definition!();

/// The client-seen downtime of a kernel update, as
/// `workloads::downtime::update_downtime` computes it.
#[macro_export]
macro_rules! update_downtime_definition {
    () => {
        "An update's downtime is client-seen: the longest time between the ends of two consecutive correct \
         answers (any client, in order of completion) that begins between the last correct answer completed at or \
         before the switch (the old kernel told to stop writing) and the VMM's own first correct answer from the new \
         kernel. The old kernel may still answer for a moment after the switch began, so there is no single failure \
         instant; a stall that begins after the new kernel served is not the update's."
    };
}

/// See [`update_downtime_definition`].
pub const UPDATE_DOWNTIME: &str = update_downtime_definition!();

/// Which answers count for the RUBiS workload's downtime (the campaign
/// hands `workloads::downtime` only these records).
pub const RUBIS_DOWNTIME_ANSWERS: &str = "With the RUBiS workload only answers of pages that read or write the \
     database count, for the downtime, the throughput's recovery and the first correct answer: the home page, the menus and the login and \
     empty forms, which Apache and PHP answer without it, say nothing about the auction site.";

/// The outcome classes, most severe first, as the injector's `classify`
/// decides them (a macro for its documentation).
#[macro_export]
macro_rules! outcome_definition {
    () => {
        "The outcome is the most severe failure seen in the window: panic (GUEST_PANICKED, or a panic on the \
         console), vm-exit (QEMU exited, or the guest reset, with no panic report), oops (an oops, BUG or \
         general-protection report the kernel survived), hang (neither heartbeat nor a correct answer for the \
         hang timeout), service-error (the kernel alive and the service failing by the service-error rule); \
         without one, benign if the fault was activated, activation-unknown if that could not be decided, else \
         not-activated. A failure with no activation evidence is kept, flagged unattributed and counted apart. \
         A harness failure (QEMU refused to start, the gdbstub connection lost while QEMU ran) is no outcome: \
         the experiment is retried and stored as harness-error. Each failure keeps its events in order; the \
         first is its first manifestation."
    };
}

/// See [`outcome_definition`].
pub const OUTCOMES: &str = outcome_definition!();

/// The outage threshold of the service-error rule unless an experiment
/// file says otherwise, seconds: twice the clients' 1 s timeout, so one
/// timed-out request followed by a slow answer is no outage.
pub const DEFAULT_MIN_OUTAGE_S: f64 = 2.0;

/// The service-error rule with its outage threshold, seconds.
pub fn service_error(min_outage_s: f64) -> String {
    format!(
        "a wrong answer (a status other than 200, or a body other than the document's) to a request sent after \
         the injection, or an outage: a failed request (timeout, refused or reset connection) after which no \
         correct answer came for at least {min_outage_s} s; shorter runs of failed requests are counted in the \
         record, not made an outcome"
    )
}

/// The propagation verdicts, as the tracer's `scope::classify` decides
/// them (a macro for its documentation).
#[macro_export]
macro_rules! scope_definition {
    () => {
        "An error is kernel-global when a context other than the one that activated it read tainted data \
         (settled however short the watch); unknown when the step budget ran out with taint live, tainted \
         shared memory went unwatched, or tainted memory was watched for less than the minimum watch; masked \
         when nothing read it (its registers' taint died with no memory tainted, or every tainted cell was \
         overwritten first); latent when tainted memory nothing read in the window still held it at the end; \
         process-local when only the activating context read tainted data, or its taint went back to user mode \
         or crashed that context with no memory tainted. Reads by the kernel's own failure reporting (oops, \
         panic, register and stack dumping, printk's ring buffer and consoles) are listed apart and are no \
         propagation."
    };
}

/// See [`scope_definition`].
pub const SCOPES: &str = scope_definition!();
