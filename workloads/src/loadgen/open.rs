//! Open loop: requests start at a fixed rate whatever happens to earlier
//! ones, as independent users arriving would, with a bound on how many are
//! in flight at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::exchange::Conn;
use super::{LoadError, OpenLoop, Plan};
use crate::docs::RequestPicker;
use crate::record::{Record, RequestOutcome};

/// Idle kept-alive connections shared by the open loop's requests.
type Pool = Arc<Mutex<Vec<Conn>>>;

/// Starts requests at the plan's rate until its stop instant, then waits for
/// the ones in flight (each ends by its deadline); returns every record.
pub(crate) async fn run(plan: Arc<Plan>, spec: OpenLoop, mut picker: RequestPicker) -> Result<Vec<Record>, LoadError> {
    let slots = Arc::new(Semaphore::new(spec.max_in_flight));
    let pool: Pool = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let mut records = Vec::new();
    let begin = Instant::now();
    for k in 0u64.. {
        // Each due instant is computed from the start, not by adding an
        // interval to the previous one, so rounding never drifts the rate.
        let due = begin + Duration::from_secs_f64(k as f64 / spec.rate);
        if plan.over(due) {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let index = picker.next_index();
        tasks.spawn(request(Arc::clone(&plan), Arc::clone(&slots), Arc::clone(&pool), index, due));
        // Reap finished requests as we go so the task set stays as small as
        // what is actually in flight or queued.
        while let Some(done) = tasks.try_join_next() {
            records.push(done.map_err(LoadError::Task)?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        records.push(done.map_err(LoadError::Task)?);
    }
    Ok(records)
}

/// One request due at `due`: waits for an in-flight slot, then for the
/// answer, both within the same deadline.
async fn request(plan: Arc<Plan>, slots: Arc<Semaphore>, pool: Pool, index: usize, due: Instant) -> Record {
    let deadline = due + plan.timeout;
    let _permit = match tokio::time::timeout_at(deadline.into(), slots.acquire()).await {
        Ok(Ok(permit)) => permit,
        // Still queued at its deadline: a user would have given up, so this
        // is a timeout the server caused by being slow, and it is recorded.
        Err(_elapsed) => return plan.record(index, due, RequestOutcome::Timeout, 0),
        // The semaphore is never closed; answering instead of panicking
        // keeps the run total even if that changes.
        Ok(Err(_closed)) => return plan.record(index, due, RequestOutcome::IoError, 0),
    };
    let mut conn = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let record = plan.request(&mut conn, index, due).await;
    if let Some(conn) = conn {
        pool.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
    }
    record
}
