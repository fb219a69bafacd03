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
/// list): an outcome that agrees with its activation verdict, and the fault that ran is exactly the one the list
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
    // Activated when an instruction reads the flipped bit before one
    // overwrites it: the injector says which happened, or why it cannot.
    let injection = &result["injection"];
    let verdicts =
        [injection["activated"] == true, injection["masked"] == true, injection["activation_unknown"].is_string()];
    assert_eq!(verdicts.iter().filter(|v| **v).count(), 1, "activated, masked or unknown: {injection}");
    assert!(injection["register_steps"].as_u64().is_some(), "{injection}");
    let expected: &[&str] = match verdicts {
        [true, _, _] => &["panic", "oops", "hang", "service-error", "benign"],
        [_, true, _] => &["panic", "oops", "hang", "service-error", "not-activated"],
        _ => &["panic", "oops", "hang", "service-error", "activation-unknown"],
    };
    assert!(expected.contains(&outcome), "{outcome} for {injection}");
    assert_eq!(result["activated"], injection["activated"]);
    assert!(result["timings"]["injection_latency_ms"].as_f64().is_some());
    // The same spec, given as JSON, names the same fault.
    let again =
        run(&["inject", "--guest", "tiny", "--accel", "tcg", "--fault", &spec.to_string(), "--window", "2s", "--json"]);
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["fault"], result["fault"]);
    assert_eq!(again["injection"]["applied"]["reg"], result["injection"]["applied"]["reg"]);
}

/// A committed fault campaign's faults are a pure function of (seed,
/// index, kernel, and for profile-guided tables the profile kept beside
/// the store): `kfi faults` with the store's seed and each group's
/// selection lists exactly the faults stored, on the kernel the store
/// names (the pinned one).
#[test]
fn kfi_faults_lists_exactly_the_faults_of_the_committed_campaigns() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = std::fs::read_to_string(root.join("kernel.lock")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for campaign in ["faults-sample", "faults"] {
        // A copy: opening a store may migrate it, and the committed one
        // must stay as it was written.
        let copy = scratch.path().join(format!("{campaign}.sqlite"));
        std::fs::copy(root.join("results").join(campaign).join("campaign.sqlite"), &copy).unwrap();
        let store = analysis::store::Store::open(&copy).unwrap();
        let meta = store.campaign(campaign).unwrap().unwrap();
        let records = store.records(campaign).unwrap();
        let kernel = &records[0].provenance.kernel_version;
        assert!(
            lock.contains(&format!("default = \"{kernel}\"")),
            "{campaign} ran on {kernel}, which kernel.lock does not pin as the default"
        );
        let stored: std::collections::BTreeMap<u64, &serde_json::Value> = records
            .iter()
            .filter_map(|r| match &r.injection {
                analysis::record::Injection::Fault { spec, .. } => {
                    let index = r.key.strip_prefix("fault=")?.split(' ').next()?.parse().ok()?;
                    Some((index, spec))
                }
                _ => None,
            })
            .collect();
        assert!(!stored.is_empty(), "{campaign} has fault records");
        let mut first = 0u64;
        let mut compared = 0;
        for group in meta.definition["inject"].as_array().unwrap() {
            let Some(f) = group.get("faults").filter(|f| !f.is_null()) else { continue };
            let count = f["count"].as_u64().unwrap();
            assert!(!f["transient"].as_bool().unwrap(), "transient groups change the listed persistence");
            let join =
                |k: &str| f[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>().join(",");
            let (seed, start, n) = (meta.seed.to_string(), first.to_string(), count.to_string());
            let mut args =
                vec!["faults", "--guest", "tiny", "--seed", &seed, "--start", &start, "--count", &n, "--json"];
            let (models, subsystems, functions) = (join("models"), join("subsystems"), join("functions"));
            for (flag, value) in [("--model", &models), ("--subsystem", &subsystems), ("--function", &functions)] {
                if !value.is_empty() {
                    args.extend([flag, value.as_str()]);
                }
            }
            // A table drawn from the golden-run profile names it; the
            // profile is kept beside the store.
            let profile = root.join("results").join(campaign).display().to_string();
            if f.get("targets").and_then(|t| t.as_str()) == Some("profile") {
                args.extend(["--profile", profile.as_str(), "--weighting", f["weighting"].as_str().unwrap()]);
            }
            let listed: serde_json::Value = serde_json::from_str(&run(&args)).unwrap();
            for (k, fault) in listed.as_array().unwrap().iter().enumerate() {
                let index = first + k as u64;
                if let Some(spec) = stored.get(&index) {
                    assert_eq!(&&fault["spec"], spec, "{campaign} fault {index}");
                    compared += 1;
                }
            }
            first += count;
        }
        assert_eq!(compared, stored.len(), "{campaign}: every stored fault was listed");
    }
}
