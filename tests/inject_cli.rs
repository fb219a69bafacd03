//! `kfi faults` and `kfi inject` end to end: the fault list is the same on
//! every run, and one fault drawn from it runs against the real tiny guest
//! and comes back classified.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use support::kfi;

fn run(args: &[&str]) -> String {
    let out = kfi().args(args).output().unwrap();
    assert!(out.status.success(), "kfi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn faults_lists_are_identical_run_after_run() {
    let args = ["faults", "--guest", "tiny", "--seed", "11", "--count", "40", "--json"];
    let first = run(&args);
    let second = run(&args);
    assert_eq!(first, second);
    let list: serde_json::Value = serde_json::from_str(&first).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 40);
    assert!(list.iter().all(|f| f["description"].as_str().is_some_and(|d| !d.is_empty())));
    let table = run(&["faults", "--guest", "tiny", "--seed", "11", "--count", "5", "--model", "nop,ret-zero"]);
    assert_eq!(table.lines().count(), 2 + 5, "{table}");
    assert!(table.lines().skip(2).all(|l| l.contains("nop") || l.contains("ret-zero")), "{table}");
}

/// A register flip at a random moment (seed 5, index 0 of the reg-flip
/// list): some outcome, and the fault that ran is exactly the one the list
/// names, so the run can be repeated from its spec.
#[test]
fn a_register_flip_runs_and_is_reproducible_from_its_spec() {
    let listed = run(&["faults", "--guest", "tiny", "--seed", "5", "--count", "1", "--model", "reg-flip", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let spec = &listed[0]["spec"];
    let out = run(&[
        "inject", "--guest", "tiny", "--accel", "tcg", "--seed", "5", "--index", "0", "--model", "reg-flip",
        "--window", "4s", "--json",
    ]);
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("{result:#}");
    assert_eq!(&result["fault"], spec);
    let outcome = result["outcome"].as_str().unwrap();
    assert!(
        ["panic", "oops", "hang", "service-error", "benign"].contains(&outcome),
        "a register flip is applied to live state, so it is never not-activated: {outcome}"
    );
    assert_eq!(result["activated"], true);
    assert!(result["timings"]["injection_latency_ms"].as_f64().is_some());
    // The same spec, given as JSON, names the same fault.
    let again =
        run(&["inject", "--guest", "tiny", "--accel", "tcg", "--fault", &spec.to_string(), "--window", "2s", "--json"]);
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["fault"], result["fault"]);
    assert_eq!(again["injection"]["applied"]["reg"], result["injection"]["applied"]["reg"]);
}
