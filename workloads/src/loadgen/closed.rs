//! Closed loop: each client sends a request, waits for its outcome, thinks,
//! and repeats, so the offered load falls when the server slows down.

use std::sync::Arc;
use std::time::Instant;

use super::exchange::Conn;
use super::{ClosedLoop, Plan};
use crate::docs::RequestPicker;
use crate::record::Record;

/// One client's loop until the plan's stop instant; returns its records.
pub(crate) async fn client(plan: Arc<Plan>, spec: ClosedLoop, mut picker: RequestPicker) -> Vec<Record> {
    let mut records = Vec::new();
    let mut conn: Option<Conn> = None;
    loop {
        let start = Instant::now();
        if plan.over(start) {
            break;
        }
        let record = plan.request(&mut conn, picker.next_index(), start).await;
        // A refused connection fails in microseconds; without a pause a
        // client would spin through an outage and write a record per
        // microsecond. The pause bounds that, and with it the resolution at
        // which the end of an outage is seen.
        let pause = if record.is_correct() { spec.think } else { spec.think.max(spec.failure_pause) };
        records.push(record);
        if !pause.is_zero() {
            let wake = (Instant::now() + pause).min(plan.stop_at);
            tokio::time::sleep_until(wake.into()).await;
        }
    }
    records
}
