//! `kfi update`: update a serving guest's kernel under client load, by
//! reboot, kexec or ShadowReboot, and measure the downtime the clients saw,
//! what the preparation cost the serving primary, and that every
//! acknowledged write survived.
//!
//! One fresh guest per trial, booted on the lock's default kernel from an
//! image that carries the kernel to update to. Statistics are `kfi-stats`'
//! (type-7 quantiles), the downtime is `workloads::update_downtime`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::workload_run::WorkloadKind;
use anyhow::{bail, Context, Result};
use recovery_sut::recovery::{UpdateStrategy, UpdateTiming};
use recovery_sut::{probe, GuestImage, Sut, VmConfig};
use serde::Serialize;
use workloads::{seconds_since, update_downtime, DocList, Record};

use crate::load::{ClientLoad, Clients, RunningLoad};

pub mod campaign;
pub mod spec;

/// Knobs of one `kfi update` run.
pub struct UpdatePlan {
    /// Strategies, in order.
    pub strategies: Vec<UpdateStrategy>,
    /// Updates per strategy (each on a freshly booted guest).
    pub repeat: usize,
    /// Load before the update, seconds.
    pub warmup: Duration,
    /// Load after the service is back.
    pub tail: Duration,
    /// Closed-loop clients.
    pub clients: usize,
    /// Seed of the request mix.
    pub seed: u64,
}

/// One update and what the clients saw.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateTrial {
    /// Strategy.
    pub strategy: UpdateStrategy,
    /// Repetition number.
    pub rep: usize,
    /// Client-seen downtime (see `kfi_stats::definitions::UPDATE_DOWNTIME`),
    /// seconds; `None`: the service did not come back in the run.
    pub downtime_s: Option<f64>,
    /// The availability probe's outage by the same measure, seconds.
    pub probe_outage_s: Option<f64>,
    /// Correct answers per second in the warm-up before the preparation.
    pub baseline_rps: f64,
    /// Correct answers per second while the preparation ran (the shadow's
    /// boot or kexec's load) with the old kernel serving; `None` when the
    /// preparation was too short to measure (under 0.5 s).
    pub prepare_rps: Option<f64>,
    /// The SUT's own timing.
    pub timing: UpdateTiming,
    /// Writes the guest acknowledged as durable (before, during and after).
    pub writes_acked: usize,
    /// Acknowledged writes missing from the data disk afterwards.
    pub writes_lost: Vec<u64>,
    /// Requests sent.
    pub requests: usize,
    /// Correct answers.
    pub correct: usize,
}

/// Runs every trial on `image` (which must carry a second kernel);
/// `progress` hears about each one.
pub fn run(
    image: &GuestImage,
    config: &VmConfig,
    plan: &UpdatePlan,
    progress: &dyn Fn(&UpdateTrial),
) -> Result<Vec<UpdateTrial>> {
    let mut trials = Vec::new();
    for &strategy in &plan.strategies {
        for rep in 0..plan.repeat {
            let trial = one(image, config, plan, strategy, rep)?;
            progress(&trial);
            trials.push(trial);
        }
    }
    Ok(trials)
}

/// One update by `strategy` on a freshly booted guest of `image` (on its
/// old kernel, service snapshot taken).
pub fn one(
    image: &GuestImage,
    config: &VmConfig,
    plan: &UpdatePlan,
    strategy: UpdateStrategy,
    rep: usize,
) -> Result<UpdateTrial> {
    let Some(next) = &image.update_to else { bail!("the guest image carries no kernel to update to") };
    let docs = DocList::load(&image.dir.join("docs.json"))?;
    let mut sut = Sut::boot(image, config).context("booting the system under test")?;
    // The trial's clients ask for static pages (see `trial`).
    sut.set_clients_need(WorkloadKind::Apache.clients_need());
    sut.snapshot_service().context("taking the service snapshot")?;
    trial(&mut sut, &docs, strategy, rep, plan)
        .with_context(|| format!("update to {} by {strategy}, trial {}", next.release, rep + 1))
}

/// Appends acknowledged writes to the data disk through the agent channel
/// it is given, one at a time (the next 100 ms after the last one's answer
/// or 2 s without one, so the agent's command queue never grows and its
/// other commands are not delayed), until told to stop; returns the
/// acknowledged numbers. Writes sent once the data disk is read-only are
/// not acknowledged, and do not count.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl Writer {
    fn start(agent: recovery_sut::agent::AgentChannel, first: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seq = first;
            while !flag.load(Ordering::SeqCst) {
                if agent.send(&format!("append {seq}")).is_err() {
                    break;
                }
                agent.wait_ack(seq, Duration::from_secs(2));
                seq += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            // Answers to the last writes may still be on their way.
            std::thread::sleep(Duration::from_millis(300));
            agent.acked().into_iter().filter(|&s| s >= first && s < seq).collect()
        });
        Writer { stop, thread }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

fn trial(
    sut: &mut Sut,
    docs: &DocList,
    strategy: UpdateStrategy,
    rep: usize,
    plan: &UpdatePlan,
) -> Result<UpdateTrial> {
    let load = ClientLoad {
        clients: Clients::Static(docs.clone()),
        count: plan.clients,
        think: Duration::ZERO,
        failure_pause: crate::load::DOWNTIME_FAILURE_PAUSE,
        timeout: Duration::from_secs(1),
        duration: Duration::from_secs(600),
        seed: plan.seed.wrapping_add(rep as u64),
    };
    let origin = Instant::now();
    let probe_load =
        RunningLoad::start(sut.vm().http_addr(), ClientLoad::probe(docs, Duration::from_secs(600)), origin);
    let load = RunningLoad::start(sut.vm().http_addr(), load, origin);
    // Writes from the old kernel, before and during the preparation.
    let writer = Writer::start(sut.vm().agent().clone(), 1);
    std::thread::sleep(plan.warmup);
    load.wait_answered(origin, crate::load::ANSWER_GATE_TIMEOUT)?;
    let outcome = sut.update(strategy);
    let mut acked = writer.finish();
    if outcome.is_ok() {
        // Writes to the new kernel.
        let first = acked.iter().max().map_or(1, |m| m + 1).max(1_000_000);
        let writer = Writer::start(sut.vm().agent().clone(), first);
        std::thread::sleep(plan.tail.max(crate::load::PROBE_TAIL));
        acked.extend(writer.finish());
    }
    let records = load.finish()?.records;
    let probed = probe_load.finish()?.records;
    let timing = outcome.with_context(|| format!("updating by {strategy}"))?;
    let switch_at = seconds_since(origin, timing.switch_at);
    let served_at = seconds_since(origin, timing.served_at);
    let prepare_at = seconds_since(origin, timing.prepare_at);
    let on_disk = probe::acked_on_disk(sut.vm().http_addr(), Duration::from_secs(10))
        .context("reading the acknowledged writes back")?;
    let writes_lost: Vec<u64> = acked.iter().copied().filter(|s| !on_disk.contains(s)).collect();
    Ok(UpdateTrial {
        strategy,
        rep,
        downtime_s: update_downtime(&records, switch_at, served_at),
        probe_outage_s: update_downtime(&probed, switch_at, served_at),
        baseline_rps: correct_rate(&records, (prepare_at - 1.0).max(0.0), prepare_at).unwrap_or(0.0),
        prepare_rps: (switch_at - prepare_at >= 0.5).then(|| correct_rate(&records, prepare_at, switch_at)).flatten(),
        timing,
        writes_acked: acked.len(),
        writes_lost,
        requests: records.len(),
        correct: records.iter().filter(|r| r.is_correct()).count(),
    })
}

/// Correct answers per second that completed in `[from, to)`.
fn correct_rate(records: &[Record], from: f64, to: f64) -> Option<f64> {
    (to > from).then(|| {
        let n = records.iter().filter(|r| r.is_correct() && r.end >= from && r.end < to).count();
        n as f64 / (to - from)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_correct_rate_counts_answers_that_ended_in_the_window() {
        let rec = |end: f64, ok: bool| Record {
            start: end - 0.01,
            end,
            path: "/".into(),
            outcome: if ok { workloads::RequestOutcome::Ok } else { workloads::RequestOutcome::ConnectError },
            bytes: 0,
        };
        let records = vec![rec(0.5, true), rec(1.0, true), rec(1.5, false), rec(1.9, true), rec(2.0, true)];
        assert_eq!(correct_rate(&records, 1.0, 2.0), Some(2.0));
        assert_eq!(correct_rate(&records, 2.0, 2.0), None);
    }
}
