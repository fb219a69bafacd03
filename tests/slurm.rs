//! A campaign on a real Slurm cluster: the test starts a single-node
//! cluster from Debian's packages (munged, slurmctld, slurmd, on ports
//! and sockets of its own in a temporary directory), runs a small
//! tiny-guest campaign through `kfi campaign slurm --submit` as a 2-task
//! array plus the merge job, and checks the merged store against a
//! one-machine run of the same file; then it loses a shard, as a failed
//! node would, and a second submission runs only that one. Every daemon
//! it started is stopped when it ends, passes or fails.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use analysis::record::ExperimentRecord;
use analysis::store::Store;
use support::kfi;

mod support;

/// A single-node Slurm cluster in a directory of its own.
struct Cluster {
    dir: PathBuf,
    daemons: Vec<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn program(name: &str) -> PathBuf {
    which::which(name)
        .or_else(|_| which::which_in(name, Some("/usr/sbin:/sbin"), "/"))
        .unwrap_or_else(|_| panic!("`{name}` is missing: scripts/setup-host installs Slurm (slurm-wlm, munge)"))
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let dir = dir.to_path_buf();
        for sub in ["munge", "key", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        let key_file = dir.join("key").join("munge.key");
        std::fs::write(&key_file, key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::set_permissions(dir.join("key"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.join("munge").join("munge.socket");
        let mut cluster = Cluster { dir: dir.clone(), daemons: Vec::new() };
        cluster.spawn(Command::new(program("munged")).args(["--force", "--foreground"]).args([
            format!("--socket={}", socket.display()),
            format!("--key-file={}", key_file.display()),
            format!("--pid-file={}", dir.join("munge/munged.pid").display()),
            format!("--log-file={}", dir.join("log/munged.log").display()),
            format!("--seed-file={}", dir.join("munge/seed").display()),
        ]));
        wait_for("munged's socket", Duration::from_secs(20), || socket.exists());

        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
        let host = host.trim();
        let cpus = std::thread::available_parallelism().unwrap().get();
        let d = dir.display();
        std::fs::write(dir.join("plugstack.conf"), "").unwrap();
        let conf = format!(
            "ClusterName=kfitest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={}\nSlurmdPort={}\n\
             AuthType=auth/munge\nAuthInfo=socket={}\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
             PlugStackConfig={d}/plugstack.conf\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nSchedulerType=sched/backfill\n\
             AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n\
             JobCompType=jobcomp/none\nMpiDefault=none\nSwitchType=switch/none\nReturnToService=2\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            free_port(),
            free_port(),
            socket.display()
        );
        std::fs::write(cluster.conf(), conf).unwrap();
        cluster.spawn(Command::new(program("slurmctld")).arg("-D").arg("-f").arg(cluster.conf()));
        cluster.spawn(Command::new(program("slurmd")).arg("-D").arg("-f").arg(cluster.conf()));
        wait_for("the node to be idle", Duration::from_secs(60), || {
            cluster.command("sinfo").args(["-h", "-o", "%t"]).output().is_ok_and(|o| o.stdout.starts_with(b"idle"))
        });
        cluster
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    fn spawn(&mut self, cmd: &mut Command) {
        let log =
            std::fs::File::create(self.dir.join("log").join(format!("daemon-{}.out", self.daemons.len()))).unwrap();
        let child =
            cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).process_group(0).spawn().unwrap();
        self.daemons.push(child);
    }

    /// A Slurm client command talking to this cluster.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.conf());
        cmd
    }

    fn queue_is_empty(&self) -> bool {
        self.command("squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
    }

    /// Waits until every job has left the queue; on timeout, shows the logs.
    fn wait_idle(&self, logs: &Path, limit: Duration) {
        let started = Instant::now();
        while !self.queue_is_empty() {
            if started.elapsed() > limit {
                let queue = self.command("squeue").output().unwrap();
                panic!(
                    "jobs still queued after {limit:?}:\n{}\n{}",
                    String::from_utf8_lossy(&queue.stdout),
                    dump(logs)
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their kfi and QEMU processes end with them), then the daemons.
        let _ = self.command("scancel").arg("--user").arg("root").output();
        let started = Instant::now();
        while !self.queue_is_empty() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(500));
        }
        for child in self.daemons.iter_mut().rev() {
            let pgid = child.id() as i32;
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let stop = Instant::now();
            while child.try_wait().ok().flatten().is_none() && stop.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every log under `dir`, for a failure message.
fn dump(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let tail: String = text.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
        out += &format!("--- {}\n{tail}\n", entry.path().display());
    }
    out
}

const CAMPAIGN: &str = "cluster";

fn experiment_file(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "{CAMPAIGN}"
seed = 11
repetitions = 2

[guest]
profile = "tiny"
accel = "auto"

[workload]
kind = "apache"
clients = 1
warmup_s = 0.5

[observe]
window_s = 20.0
tail_s = 0.2
hang_timeout_s = 5.0

[[inject]]
crash = "sysrq"

[recovery]
strategies = ["service-restore", "full-reboot"]
"#
        ),
    )
    .unwrap();
    path
}

fn records(results: &Path) -> BTreeMap<u64, ExperimentRecord> {
    let store = Store::open_read_only(results.join("campaign.sqlite")).unwrap();
    store.records(CAMPAIGN).unwrap().into_iter().map(|r| (r.experiment, r)).collect()
}

fn slurm_submit(cluster: &Cluster, file: &Path, results: &Path, scratch: &Path) -> String {
    let out = kfi()
        .args(["campaign", "slurm"])
        .arg(file)
        .args(["--shards", "2", "--cpus-per-task", "1", "--accel", "tcg", "--submit", "--results"])
        .arg(results)
        .env("SLURM_CONF", cluster.conf())
        .env("KFI_SCRATCH", scratch)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `kfi campaign status --complete`: whether it passed, and what it printed.
fn status(file: &Path, results: &Path) -> (bool, String) {
    let out = kfi().args(["campaign", "status"]).arg(file).arg("--results").arg(results).arg("--complete").output();
    let out = out.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_campaign_runs_as_a_slurm_job_array_and_merges_into_the_one_machine_result() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "the Slurm test runs its own slurmd, which needs root");
    let tmp = tempfile::tempdir().unwrap();
    let file = experiment_file(tmp.path());

    let one = tmp.path().join("one");
    let out =
        kfi().args(["campaign", "run"]).arg(&file).args(["--accel", "tcg", "--results"]).arg(&one).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alone = records(&one);
    assert_eq!(alone.len(), 4);

    let cluster = Cluster::start(&tmp.path().join("slurm"));
    let (results, scratch) = (tmp.path().join("cluster"), tmp.path().join("scratch"));
    let logs = results.join("slurm").join("logs");
    let printed = slurm_submit(&cluster, &file, &results, &scratch);
    assert!(
        printed.contains("submitted shards 1, 2 as job array") && printed.contains("every task on tcg"),
        "{printed}"
    );
    cluster.wait_idle(&logs, Duration::from_secs(900));

    let merged = records(&results);
    assert_eq!(merged.keys().collect::<Vec<_>>(), alone.keys().collect::<Vec<_>>(), "{}", dump(&logs));
    for (i, r) in &merged {
        let a = &alone[i];
        assert_eq!(r.key, a.key);
        assert_eq!(r.outcome, a.outcome, "experiment {i} ({})", r.key);
        assert_eq!(r.provenance.accel, a.provenance.accel);
        assert!(r.recovery.as_ref().is_some_and(|rec| rec.recovered), "experiment {i}: {r:?}");
    }
    for shard in ["1-of-2", "2-of-2"] {
        let part = records(&results.join("shards").join(shard));
        assert_eq!(part.len(), 2, "{shard}");
        assert!(part.iter().all(|(i, r)| merged[i] == *r), "{shard}: the merged records are the shard's");
    }
    assert!(results.join("report.md").exists(), "the merge job writes the report: {}", dump(&logs));
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "every task and the merge cleared their scratch");
    let (complete, shown) = status(&file, &results);
    assert!(complete, "{shown}");
    assert!(
        shown.contains("4/4 experiments stored") && shown.contains("shard 2/2: 2 of 2 stored, 0 pending"),
        "{shown}"
    );

    // Shard 2's node failed before it stored anything: a new submission runs shard 2 alone.
    let shard_1 = records(&results.join("shards").join("1-of-2"));
    std::fs::remove_dir_all(results.join("shards").join("2-of-2")).unwrap();
    std::fs::remove_file(results.join("campaign.sqlite")).unwrap();
    let (complete, shown) = status(&file, &results);
    assert!(!complete && shown.contains("shard 2/2: 0 of 2 stored, 2 pending"), "{shown}");
    let printed = slurm_submit(&cluster, &file, &results, &scratch);
    assert!(printed.contains("submitted shards 2 as job array"), "{printed}");
    cluster.wait_idle(&logs, Duration::from_secs(900));
    assert_eq!(records(&results.join("shards").join("1-of-2")), shard_1, "shard 1 did not run again");
    assert_eq!(records(&results).keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3], "{}", dump(&logs));
    let jobs: Vec<kfi::campaign::slurm::Submission> =
        serde_json::from_str(&std::fs::read_to_string(results.join("slurm").join("jobs.json")).unwrap()).unwrap();
    assert_eq!(jobs.iter().map(|j| j.shards.clone()).collect::<Vec<_>>(), [vec![1, 2], vec![2]]);
}
