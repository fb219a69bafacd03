//! Golden-run profiles and the faults drawn from them, with the real tiny
//! guest: the profile of the HTTP workload shows the network and file code
//! it runs and not code it cannot reach; code faults drawn from it fire;
//! data flips drawn from it are read before they are overwritten; the same
//! seed and profile give the same fault list.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use analysis::record::Injection;
use analysis::store::Store;
use support::kfi;

mod support;

const CODE_MODELS: &str =
    r#"["text-flip", "nop", "branch", "inverse", "init", "off-by-one", "ret-zero", "dst", "src", "ptr"]"#;

fn experiment_file(dir: &Path) -> PathBuf {
    let path = dir.join("guided.toml");
    let text = format!(
        r#"
name = "guided"
seed = 11
repetitions = 1

[guest]
profile = "tiny"
accel = "tcg"
data_disk = true

[workload]
kind = "apache"
clients = 2
warmup_s = 0.5

[observe]
window_s = 3.0
tail_s = 0.2
hang_timeout_s = 2.0

[[inject]]
faults = {{ models = {CODE_MODELS}, count = 20, targets = "profile" }}

[[inject]]
faults = {{ models = ["data-flip"], count = 4, targets = "profile" }}

[recovery]
strategies = ["service-restore"]
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The plugin is a cdylib of its own crate, which `cargo test` does not
/// build for the binary under test.
fn ensure_profiler() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(["build", "--quiet", "-p", "kfi-profiler"]).status().unwrap();
    assert!(status.success(), "building the profiler plugin");
}

fn json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn faults_drawn_from_the_profile_fire_and_the_same_seed_draws_the_same_list() {
    ensure_profiler();
    let dir = tempfile::tempdir().unwrap();
    let file = experiment_file(dir.path());
    let results = dir.path().join("results");
    let summary = json(kfi().arg("profile").arg(&file).arg("--results").arg(&results).arg("--json"));
    let ran = |name: &str| summary["functions"].as_array().unwrap().iter().any(|f| f["name"] == name);
    assert!(ran("tcp_v4_rcv") && ran("do_sys_openat2"), "the HTTP workload's receive and open paths ran");
    assert!(!ran("__do_sys_kexec_file_load"), "nothing in the workload loads a kexec kernel");
    assert!(summary["data_reads"].as_u64().unwrap() > 0, "kernel variables were read");

    // The same seed on the same profile lists the same faults; another
    // seed does not.
    let list = |seed: &str| {
        json(
            kfi()
                .args(["faults", "--seed", seed, "--count", "10", "--json", "--model", "nop,data-flip,stack-flip"])
                .arg("--profile")
                .arg(&results),
        )
    };
    assert_eq!(list("3"), list("3"));
    assert_ne!(list("3"), list("4"));

    let out = kfi()
        .args(["campaign", "run"])
        .arg(&file)
        .arg("--results")
        .arg(&results)
        .args(["--jobs", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = Store::open(results.join("campaign.sqlite")).unwrap().records("guided").unwrap();
    assert_eq!(records.len(), 24);
    let mut code = (0, 0);
    let mut data = (0, 0);
    for r in &records {
        let Injection::Fault { activated, profile, class_weight, description, spec, .. } = &r.injection else {
            panic!("a crash in a fault campaign")
        };
        assert!(profile.is_some() && class_weight.is_some_and(|w| w > 0), "{description}: drawn from the profile");
        let counter = if spec["target"]["kind"] == "data" { &mut data } else { &mut code };
        counter.0 += 1;
        counter.1 += usize::from(*activated);
        if !activated {
            eprintln!("not activated: {description}");
        }
    }
    assert_eq!((code.0, data.0), (20, 4));
    assert!(code.1 >= 18, "{} of 20 profile-guided code faults activated", code.1);
    // A flip applied just before the instruction the profile saw read the
    // byte: that read comes first.
    assert!(data.1 >= 3, "{} of 4 profile-guided data flips were read before being overwritten", data.1);
}
