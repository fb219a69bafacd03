//! Fault generation on the real kernel image: deterministic, every model
//! produces faults, code faults carry the vmlinux's bytes and avoid the
//! sites the kernel patches at boot.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::sync::OnceLock;

use injector::fault::{generate, FaultModel, Generator, ModelKind, Target, TargetSelection, Trigger};
use injector::KernelCode;

fn code() -> &'static KernelCode {
    static CODE: OnceLock<KernelCode> = OnceLock::new();
    CODE.get_or_init(|| KernelCode::open(support::vmlinux()).unwrap())
}

#[test]
fn the_same_inputs_give_the_same_faults() {
    let image = support::image();
    let all = TargetSelection::default();
    let g = Generator::new(image, code(), &all, &ModelKind::ALL).unwrap();
    let first: Vec<String> = (0..60).map(|i| serde_json::to_string(&g.generate(42, i).unwrap()).unwrap()).collect();
    // A second generator (fresh candidate lists) and the free function agree.
    let g2 = Generator::new(image, code(), &all, &ModelKind::ALL).unwrap();
    let second: Vec<String> = (0..60).map(|i| serde_json::to_string(&g2.generate(42, i).unwrap()).unwrap()).collect();
    assert_eq!(first, second);
    let one = generate(42, 7, image, code(), &all, &ModelKind::ALL).unwrap();
    assert_eq!(serde_json::to_string(&one).unwrap(), first[7]);
    // Another seed gives another list; model order in the request does not matter.
    let other: Vec<String> = (0..60).map(|i| serde_json::to_string(&g.generate(43, i).unwrap()).unwrap()).collect();
    assert_ne!(first, other);
    let mut reversed = ModelKind::ALL;
    reversed.reverse();
    let g3 = Generator::new(image, code(), &all, &reversed).unwrap();
    assert_eq!(serde_json::to_string(&g3.generate(42, 3).unwrap()).unwrap(), first[3]);
}

#[test]
fn golden_faults_of_the_debian_kernel() {
    // Pinned for the Debian 6.1 build in the cache: a change here means
    // the generator (or the kernel) changed, and old campaign indices no
    // longer name the same faults.
    let image = support::image();
    let g = Generator::new(image, code(), &TargetSelection::default(), &ModelKind::ALL).unwrap();
    let golden: Vec<String> = (0..4).map(|i| g.generate(1, i).unwrap().describe()).collect();
    eprintln!("{golden:#?}");
    let expected: [&str; 4] = include!("golden_faults.in");
    assert_eq!(golden, expected);
}

#[test]
fn every_model_yields_faults_that_fit_the_image() {
    let image = support::image();
    let code = code();
    assert!(code.patch_sites() > 20_000, "only {} boot-time patch sites found", code.patch_sites());
    let net = TargetSelection { subsystems: vec!["net".into()], ..TargetSelection::default() };
    for model in ModelKind::ALL {
        // A selection places code faults only; the flips are drawn from
        // everything (a selection with only them is refused, see below).
        let selection = if model.needs_instruction() { net.clone() } else { TargetSelection::default() };
        let g = Generator::new(image, code, &selection, &[model]).unwrap();
        for i in 0..15 {
            let spec = g.generate(9, i).unwrap();
            assert_eq!(spec.model().kind(), model);
            let line = spec.describe();
            assert!(!line.contains('\n'), "{line}");
            if let Target::Instruction { function, address, original, subsystem, offset, .. } = spec.target() {
                let f = image.function(function).unwrap();
                assert_eq!(f.address + offset, *address);
                assert_eq!(subsystem.as_deref(), Some("net"), "{line}");
                assert_eq!(code.bytes(*address, original.0.len()).unwrap(), original.0.as_slice(), "{line}");
                assert!(!code.is_patched(*address, original.0.len() as u64), "{line}");
                if let Some(p) = spec.model().patch() {
                    assert_eq!(p.bytes.0.len(), original.0.len(), "{line}");
                }
            }
            match spec.model() {
                FaultModel::Dst { .. } | FaultModel::Src { .. } | FaultModel::Ptr { .. } => {
                    assert!(matches!(spec.trigger(), Trigger::Hit { .. }))
                }
                _ => assert!(matches!(spec.trigger(), Trigger::Delay { .. })),
            }
        }
    }
    // Selections by name and regex.
    let by_name = TargetSelection { functions: vec!["tcp_v4_rcv".into()], ..TargetSelection::default() };
    let g = Generator::new(image, code, &by_name, &[ModelKind::Nop]).unwrap();
    assert_eq!(g.functions().len(), 1);
    assert_eq!(g.generate(1, 0).unwrap().function(), Some("tcp_v4_rcv"));
    let re = TargetSelection { regex: Some("^tcp_v4_".into()), ..TargetSelection::default() };
    let g = Generator::new(image, code, &re, &[ModelKind::Branch]).unwrap();
    assert!(g.functions().iter().all(|f| f.name.starts_with("tcp_v4_")) && g.functions().len() > 3);
}

/// A selection that names what the image does not have, matches nothing,
/// or applies to none of the requested models is refused with the names
/// and the nearest real ones, instead of silently narrowing or voiding
/// the campaign.
#[test]
fn selections_that_name_nothing_are_refused_with_the_nearest_names() {
    let image = support::image();
    let code = code();
    let refused = |selection: TargetSelection, models: &[ModelKind]| {
        Generator::new(image, code, &selection, models).unwrap_err().to_string()
    };
    // A typo beside a real name is not dropped.
    let err = refused(
        TargetSelection { functions: vec!["tcp_sendmsgg".into(), "tcp_v4_rcv".into()], ..TargetSelection::default() },
        &[ModelKind::Nop],
    );
    assert!(err.contains("no function `tcp_sendmsgg`") && err.contains("nearest: tcp_sendmsg"), "{err}");
    assert!(!err.contains("tcp_v4_rcv"), "only the unknown name is named: {err}");
    let err = refused(
        TargetSelection { functions: vec!["qqqq_no_such_function_zzzz".into()], ..TargetSelection::default() },
        &[ModelKind::Nop],
    );
    assert!(err.contains("no function `qqqq_no_such_function_zzzz`") && !err.contains("nearest"), "{err}");
    // Init code is named as such.
    let err = refused(
        TargetSelection { functions: vec!["start_kernel".into()], ..TargetSelection::default() },
        &[ModelKind::Nop],
    );
    assert!(err.contains("`start_kernel` is in .init.text, not .text"), "{err}");
    let err =
        refused(TargetSelection { subsystems: vec!["nett".into()], ..TargetSelection::default() }, &[ModelKind::Nop]);
    assert!(err.contains("no subsystem `nett`") && err.contains("nearest: net"), "{err}");
    let err = refused(
        TargetSelection { regex: Some("^no_such_prefix_".into()), ..TargetSelection::default() },
        &[ModelKind::Branch],
    );
    assert!(err.contains("matches no function"), "{err}");
    // Register, data, stack and heap flips are not placed by a selection.
    let err = refused(
        TargetSelection { functions: vec!["tcp_sendmsg".into()], ..TargetSelection::default() },
        &[ModelKind::RegFlip, ModelKind::DataFlip],
    );
    assert!(err.contains("limits only code faults") && err.contains("reg-flip,data-flip"), "{err}");
    // With a code model among them the selection places that model's faults.
    let mixed = TargetSelection { functions: vec!["tcp_sendmsg".into()], ..TargetSelection::default() };
    let g = Generator::new(image, code, &mixed, &[ModelKind::RegFlip, ModelKind::Dst]).unwrap();
    assert_eq!(g.functions().len(), 1);
    let note = g.selection_note().expect("the flips are not placed: say so");
    assert!(note.contains("faults of reg-flip are drawn from the whole kernel"), "{note}");
    assert_eq!(Generator::new(image, code, &mixed, &[ModelKind::Dst]).unwrap().selection_note(), None);
}

#[test]
fn known_patch_sites_are_recognised() {
    let image = support::image();
    let code = code();
    // Every function starts with `call __fentry__` (ftrace), NOPed at boot.
    let f = image.function("tcp_v4_rcv").unwrap();
    let head = code.bytes(f.address, 9).unwrap();
    let fentry = if head[..4] == [0xf3, 0x0f, 0x1e, 0xfa] { f.address + 4 } else { f.address };
    assert_eq!(code.bytes(fentry, 1).unwrap()[0], 0xe8, "{head:02x?}");
    assert!(code.is_patched(fentry, 5));
    assert!(code.is_patched(fentry + 4, 1));
    assert!(!code.is_patched(fentry + 5, 1) || !code.is_patched(fentry + 6, 1));
}
