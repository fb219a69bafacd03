//! The recovery loop's errors.

use std::time::Duration;

use super::strategy::Strategy;
use crate::snapshot::SnapshotError;
use crate::vm::VmError;

/// Errors of the recovery loop.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// QEMU failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// No failure was seen in time.
    #[error("no failure detected within {0:?}")]
    NoFailure(Duration),
    /// The service did not come back.
    #[error("the service did not come back within {timeout:?} after {strategy}: {last}")]
    NotRecovered {
        /// Strategy.
        strategy: Strategy,
        /// How long it waited.
        timeout: Duration,
        /// The last probe failure.
        last: String,
    },
    /// A file operation failed.
    #[error("cannot create {what}: {source}")]
    Io {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}
